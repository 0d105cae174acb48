"""The operator console in a real browser (Debian's chromium, headless, through Playwright)
against a real API process, a real worker, PostgreSQL and Redis: sign-in, the overview
against `eventpipe stats --json`, failed events found by code and replayed after the dry run,
the replayed events seen stored in the live tail, the refusals, the outages; every page
checked by axe-core (tests/vendor/axe.min.js) and photographed at 1280x800.

Screenshots go to $CONSOLE_SCREENSHOTS (the README's pictures: `CONSOLE_SCREENSHOTS=
docs/console`), else to a temporary folder; the figures of the closing note (page weight,
first render) are written beside them as figures.json."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from sqlalchemy import Engine

from api.console import session as sess
from shared.settings import load_settings
from tests.integration.conftest import REQUIRED, service_env
from tests.integration.services import (
    ROOT,
    PostgresCluster,
    Proc,
    RedisServer,
    run_cli,
    start_api,
    start_worker,
    wait_until,
)
from tests.integration.test_operations import failed_rows, send
from tests.integration.test_pipeline import SEED_DEFINITION, auth, new_project

TOKEN = "console-operator-" + "k" * 20
CNF = "CONTACT_NOT_FOUND_FOR_EVENT"
AXE = ROOT / "tests" / "vendor" / "axe.min.js"
VIEWPORT = {"width": 1280, "height": 800}
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _chromium() -> str | None:
    return (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # the dev extra holds it
        pytest.fail(f"playwright is not installed: {exc}")
    if executable is None:
        message = "chromium is not installed (apt-get install chromium)"
        if REQUIRED:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    with sync_playwright() as p:
        found = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield found
        found.close()


@pytest.fixture(scope="module")
def shots() -> Iterator[Path]:
    chosen = os.environ.get("CONSOLE_SCREENSHOTS")
    folder = Path(chosen) if chosen else Path(tempfile.mkdtemp(prefix="eventpipe-console-"))
    if not folder.is_absolute():
        folder = ROOT / folder
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    if not chosen:
        shutil.rmtree(folder, ignore_errors=True)


def check_a11y(page: Any, what: str) -> None:
    """axe-core's WCAG 2.1 A/AA and best-practice rules (labels, contrast, focus, ...)."""
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        """async () => {
            const r = await axe.run(document, {runOnly: {type: 'tag',
                values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}});
            return r.violations.map(v => ({id: v.id, impact: v.impact,
                nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}));
        }"""
    )
    assert result == [], f"{what}: accessibility violations {json.dumps(result, indent=1)}"


def shoot(page: Any, shots: Path, name: str) -> None:
    page.screenshot(path=str(shots / f"{name}.png"))


def console_env(env: dict[str, str], **extra: Any) -> dict[str, str]:
    return {**env, "OPERATOR_TOKEN": TOKEN, **{k: str(v) for k, v in extra.items()}}


def sign_in(page: Any, base: str, token: str = TOKEN) -> None:
    page.goto(f"{base}/console")
    assert page.url.endswith("/console/sign-in")
    page.get_by_label("Operator token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def text_of(page: Any, test_id: str) -> str:
    return str(page.get_by_test_id(test_id).inner_text()).strip()


def test_an_operator_finds_failed_events_replays_them_and_sees_them_stored(
    env: dict[str, str],
    engine: Engine,
    procs_cleanup: list[Proc],
    browser: Any,
    shots: Path,
) -> None:
    env = console_env(env)
    project = new_project(env)
    api, base = start_api(env)
    procs_cleanup.append(api)
    procs_cleanup.append(start_worker(env))
    http = httpx.Client(base_url=base, headers=auth(project["apiKey"]), timeout=10)
    assert http.post("/v1/events", json=SEED_DEFINITION).status_code == 201
    assert http.post("/v1/contacts/email", json={"email": "jane@example.com"}).status_code == 200
    for _ in range(2):
        send(http, "jane@example.com")
    failing = [send(http, "ghost@example.com") for _ in range(3)]
    wait_until(lambda: len(failed_rows(engine)) == 3, 30, "three failures")

    context = browser.new_context(viewport=VIEWPORT, bypass_csp=True)  # for axe's script
    page = context.new_page()
    page.goto(f"{base}/console")
    check_a11y(page, "sign-in")
    shoot(page, shots, "sign-in")

    # A wrong token is refused, the right one lands on the overview.
    sign_in(page, base, "wrong-" + "w" * 20)
    assert "Wrong operator token" in page.locator("#sign-in-error").inner_text(timeout=3000)
    sign_in(page, base)
    page.wait_for_url(f"{base}/console/overview")

    # The overview's numbers are `eventpipe stats --json`'s, once the pipeline is quiet.
    def quiet() -> bool:
        data = json.loads(run_cli(env, "stats", "--json"))
        return bool(data["queue"]["events"] == 0 and data["workers"])

    wait_until(quiet, 30, "the queue to drain")
    stats = json.loads(run_cli(env, "stats", "--json"))
    page.reload()
    page.get_by_test_id("accepted").wait_for()
    assert int(text_of(page, "accepted")) == stats["totals"]["accepted"] == 5
    assert int(text_of(page, "stored")) == stats["totals"]["stored"] == 2
    assert int(text_of(page, "failed")) == sum(stats["totals"]["failed"].values())
    assert int(text_of(page, f"failed-{CNF}")) == stats["totals"]["failed"][CNF]
    assert int(text_of(page, "queued")) == stats["queue"]["events"] == 0
    assert int(text_of(page, "workers")) == len(stats["workers"]) == 1
    assert int(text_of(page, "failed-held")) == sum(stats["store"]["failedHeld"].values())
    assert page.locator("#chart-accepted canvas").count() == 1
    check_a11y(page, "overview")
    shoot(page, shots, "overview")

    # Failed events found by code; one opened.
    page.get_by_role("link", name="Failed events").click()
    page.get_by_label("Code", exact=True).fill(CNF)
    page.get_by_role("button", name="Filter").click()
    held = stats["store"]["failedHeld"][CNF]
    assert held == 3
    assert int(text_of(page, "failed-total")) == held
    assert page.get_by_test_id("failed-row").count() == held
    check_a11y(page, "failed events")
    shoot(page, shots, "failed")
    page.get_by_role("link", name=failing[0]).click()
    assert CNF in page.content() and "ghost@example.com" in page.content()
    check_a11y(page, "failed event")
    shoot(page, shots, "failed-event")
    page.go_back()

    # The live tail, open in a second tab, filtered to the project.
    tail = context.new_page()
    tail.goto(f"{base}/console/tail?projectId={project['projectId']}")
    tail.locator("#tail-state").filter(has_text="live").wait_for()

    # The contact now exists: the dry run first, then the replay, with its progress.
    assert http.post("/v1/contacts/email", json={"email": "ghost@example.com"}).status_code == 200
    page.get_by_role("button", name="(dry run first)").filter(has_text="Replay all").click()
    assert int(text_of(page, "would-requeue")) == held
    assert not any(r.attempts > 1 for r in failed_rows(engine).values())  # nothing ran yet
    check_a11y(page, "replay dry run")
    shoot(page, shots, "replay-dry-run")
    page.get_by_role("button", name=f"Replay {held} events").click()
    page.locator('[data-testid="replay-status"][data-state="done"]').wait_for(timeout=60_000)
    assert f"stored {held}" in text_of(page, "replay-outcome")
    check_a11y(page, "replay progress")
    shoot(page, shots, "replay")

    # Each replayed event appears stored in the tail, live.
    for event_id in failing:
        tail.locator(f'tr[data-event-id="{event_id}"][data-status="stored"]').wait_for()
    check_a11y(tail, "live tail")
    shoot(tail, shots, "tail")

    # Paused, the tail shows nothing new; resumed, it catches up on what it missed.
    tail.get_by_role("button", name="Pause").click()
    later = send(http, "jane@example.com")
    wait_until(
        lambda: http.get(f"/v1/events/{later}").json()["data"]["status"] == "stored", 30, "stored"
    )
    assert tail.locator(f'tr[data-event-id="{later}"]').count() == 0
    tail.get_by_role("button", name="Resume").click()
    tail.locator(f'tr[data-event-id="{later}"][data-status="stored"]').wait_for()

    # Projects, keys (no secret shown) and a revoke behind its confirmation.
    second = json.loads(run_cli(env, "keys", "create", "--project", project["projectId"], "--json"))
    page.get_by_role("link", name="Projects").click()
    check_a11y(page, "projects")
    shoot(page, shots, "projects")
    page.get_by_role("link", name="acme").click()
    assert second["apiKey"].rsplit("_", 1)[1] not in page.content()
    check_a11y(page, "project")
    shoot(page, shots, "project")
    page.locator(f'a[href$="/keys/{second["keyId"]}/revoke"]').click()
    check_a11y(page, "revoke confirmation")
    shoot(page, shots, "revoke")
    page.get_by_role("button", name="Revoke the key").click()
    assert "revoked" in page.locator("p.notice").inner_text()
    wait_until(
        lambda: httpx.post(
            f"{base}/v1/events/send", json={"eventName": "x", "email": "a@b.co"},
            headers=auth(second["apiKey"]), timeout=5,
        ).status_code == 401,
        10,
        "the revoked key to be refused",
    )  # fmt: skip

    # A POST without the CSRF token is refused, with the session's cookie.
    refused = page.request.post(f"{base}/console/sign-out", form={"other": "x"})
    assert refused.status == 403
    still = page.request.get(f"{base}/console/overview")
    assert still.status == 200  # still signed in: the refused POST changed nothing

    # An expired session, correctly signed, is sent back to the sign-in.
    expired, _ = sess.new_cookie(
        load_settings({"OPERATOR_TOKEN": TOKEN}), now=time.time() - 9 * 3600
    )
    context.add_cookies([{"name": sess.COOKIE, "value": expired, "url": f"{base}/console"}])
    page.goto(f"{base}/console/overview")
    assert page.url.endswith("/console/sign-in")
    assert page.request.post(f"{base}/console/replay", form={"scope": "filter"}).status == 401
    context.close()
    http.close()


def test_pages_render_under_their_content_security_policy_and_their_weight(
    env: dict[str, str], procs_cleanup: list[Proc], browser: Any, shots: Path
) -> None:
    """Without bypass_csp: every script and style loads under the policy (no violation
    reported, the charts drawn). Each page's weight (bytes transferred, cold cache) and
    first contentful paint are written to figures.json, and held to a budget."""
    env = console_env(env)
    project = new_project(env)
    api, base = start_api(env)
    procs_cleanup.append(api)
    complaints: list[str] = []
    figures: dict[str, Any] = {}
    paths = {
        "sign-in": "/console/sign-in",
        "overview": "/console/overview",
        "failed": "/console/failed",
        "tail": "/console/tail",
        "projects": "/console/projects",
        "project": f"/console/projects/{project['projectId']}",
    }
    for name, path in paths.items():
        figures[name] = _measure(browser, base, path, signed_in=name != "sign-in", log=complaints)
    assert not [c for c in complaints if "Content Security Policy" in c], complaints
    (shots / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    print("console figures:", json.dumps(figures))
    for name, found in figures.items():
        assert found["bytes"] < 150_000, (name, found)
        assert found["firstContentfulPaintMs"] < 3000, (name, found)


def _measure(browser: Any, base: str, path: str, *, signed_in: bool, log: list[str]) -> Any:
    """One page loaded with a cold cache (a fresh context; signed in first in another one,
    whose cookie only is carried over): bytes transferred, requests, first paint, load."""
    state = None
    if signed_in:
        context = browser.new_context(viewport=VIEWPORT)
        sign_in(context.new_page(), base)
        context.pages[0].wait_for_url(f"{base}/console/overview")
        state = context.storage_state()
        context.close()
    context = browser.new_context(viewport=VIEWPORT, storage_state=state)
    tab = context.new_page()
    tab.on("console", lambda m: log.append(m.text) if m.type == "error" else None)
    responses: list[Any] = []
    tab.on("response", lambda r: responses.append(r))
    started = time.perf_counter()
    tab.goto(base + path, wait_until="load")
    wall = time.perf_counter() - started
    # The paint entry may be recorded a moment after the load event.
    fcp = "performance.getEntriesByName('first-contentful-paint')"
    tab.wait_for_function(f"() => {fcp}.length > 0", timeout=5000)
    paint = tab.evaluate(f"() => {fcp}[0].startTime")
    if path.endswith("/overview"):
        assert tab.locator("#chart-accepted canvas").count() == 1  # uPlot ran
    if path.endswith("/tail"):
        tab.locator("#tail-state").filter(has_text="live").wait_for()  # the stream opened
    found = {
        "bytes": sum(_transferred(r) for r in responses),
        "requests": len(responses),
        "firstContentfulPaintMs": round(paint, 1),
        "loadSeconds": round(wall, 3),
    }
    context.close()
    return found


def _transferred(response: Any) -> int:
    """Headers and body bytes of a finished response; the tail's event stream never
    finishes, and counts its headers only."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return len(str(response.headers))
    sizes = response.request.sizes()
    return int(sizes["responseBodySize"] + sizes["responseHeadersSize"])


def test_the_console_shows_an_outage_of_redis_or_postgresql_never_a_500(
    pg_and_redis: tuple[PostgresCluster, RedisServer],
    procs_cleanup: list[Proc],
    browser: Any,
    shots: Path,
) -> None:
    cluster, server = pg_and_redis
    env = console_env(
        service_env(cluster.url, server.url), REDIS_TIMEOUT_SECONDS=1, DB_CONNECT_TIMEOUT=1
    )
    api, base = start_api(env)
    procs_cleanup.append(api)
    context = browser.new_context(viewport=VIEWPORT, bypass_csp=True)
    page = context.new_page()
    sign_in(page, base)
    page.wait_for_url(f"{base}/console/overview")

    server.stop()
    started = time.perf_counter()
    answer = page.goto(f"{base}/console/overview")
    redis_down_seconds = time.perf_counter() - started
    assert answer is not None and answer.status == 200
    assert "UNREACHABLE" in text_of(page, "redis-state")
    assert "reachable" in text_of(page, "store-state")
    check_a11y(page, "overview, Redis down")
    shoot(page, shots, "overview-redis-down")
    failed = page.goto(f"{base}/console/failed")
    assert failed is not None and failed.status == 200  # PostgreSQL alone serves it
    page.goto(f"{base}/console/tail")
    page.locator("#tail-state").filter(has_text="unreachable").wait_for(timeout=15_000)

    server.start()
    cluster.stop()
    started = time.perf_counter()
    answer = page.goto(f"{base}/console/overview")
    store_down_seconds = time.perf_counter() - started
    assert answer is not None and answer.status == 200
    assert "UNREACHABLE" in text_of(page, "store-state")
    assert "UNREACHABLE" not in text_of(page, "redis-state")
    shoot(page, shots, "overview-store-down")
    failed = page.goto(f"{base}/console/failed")
    assert failed is not None and failed.status == 503
    assert "PostgreSQL is unreachable" in text_of(page, "error")
    check_a11y(page, "failed events, PostgreSQL down")
    shoot(page, shots, "failed-store-down")
    print(
        f"console outage figures: overview with Redis down {redis_down_seconds:.2f}s, "
        f"with PostgreSQL down {store_down_seconds:.2f}s"
    )
    context.close()
