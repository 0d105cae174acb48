"""The operator console on SQLite and fakeredis: off without a token, the session cookie and
its refusals (wrong token, missing CSRF token, expired or forged session, throttled
sign-in), the pages and the outages they show; the counters and the tail the worker writes.
The browser tests are in tests/integration/test_console.py."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import fakeredis
import pytest
from sqlalchemy import Engine
from starlette.testclient import TestClient

from api.console import session as sess
from api.console import views
from shared.queue import activity, make_payload, read_rates
from shared.queue.activity import count_rate
from shared.settings import Settings, load_settings
from tests.unit.conftest import make_client
from tests.unit.test_operations import fail_events
from tests.unit.test_worker import add_contact, an_event
from worker.context import WorkerContext
from worker.jobs import store_events

Project = tuple[str, str, str]
TOKEN = "console-" + "t" * 24


@pytest.fixture
def console(
    settings: Settings,
    engine: Engine,
    fake_server: fakeredis.FakeServer,
    worker_ctx: WorkerContext,
    project: Project,
) -> Iterator[TestClient]:
    with make_client(settings, engine, fake_server, operator_token=TOKEN) as client:
        yield client


def sign_in(client: TestClient, token: str = TOKEN) -> Any:
    return client.post("/console/sign-in", data={"token": token}, follow_redirects=False)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF token in the page"
    return found.group(1)


@pytest.fixture
def signed_in(console: TestClient) -> TestClient:
    assert sign_in(console).status_code == 303
    return console


def test_the_console_is_off_without_an_operator_token(
    settings: Settings, engine: Engine, fake_server: Any, worker_ctx: Any, project: Project
) -> None:
    with make_client(settings, engine, fake_server) as client:
        for path in (
            "/console",
            "/console/sign-in",
            "/console/overview",
            "/console/static/console.js",
        ):
            assert client.get(path, follow_redirects=False).status_code == 404
        assert client.post("/console/sign-in", data={"token": "x" * 20}).status_code == 404


def test_pages_send_a_visitor_without_a_session_to_the_sign_in(console: TestClient) -> None:
    answer = console.get("/console/overview", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/console/sign-in"
    assert console.get("/console/overview/figures").status_code == 401  # data: no redirect
    page = console.get("/console/sign-in")
    assert page.status_code == 200 and 'type="password"' in page.text


def test_signing_in_sets_a_strict_http_only_signed_cookie(console: TestClient) -> None:
    answer = sign_in(console)
    assert answer.status_code == 303 and answer.headers["location"] == "/console/overview"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{sess.COOKIE}=")
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/console", "Max-Age=28800"):
        assert attribute.lower() in cookie.lower()
    assert "secure" not in cookie.lower()  # served over plain HTTP here
    assert TOKEN not in cookie
    assert console.get("/console/overview").status_code == 200


def test_the_cookie_is_secure_over_https(
    settings: Settings, engine: Engine, fake_server: Any, worker_ctx: Any, project: Project
) -> None:
    with make_client(settings, engine, fake_server, operator_token=TOKEN) as client:
        client.base_url = client.base_url.copy_with(scheme="https")
        answer = client.post(
            "/console/sign-in",
            data={"token": TOKEN},
            headers={"Origin": "https://testserver"},
            follow_redirects=False,
        )
    assert answer.status_code == 303 and "secure" in answer.headers["set-cookie"].lower()


def test_a_wrong_token_is_refused(console: TestClient) -> None:
    answer = sign_in(console, "nope-" + "n" * 20)
    assert answer.status_code == 401 and "Wrong operator token" in answer.text
    assert "set-cookie" not in answer.headers
    assert console.get("/console/overview", follow_redirects=False).status_code == 303


def test_a_post_without_the_csrf_token_is_refused(signed_in: TestClient) -> None:
    answer = signed_in.post("/console/sign-out", data={}, follow_redirects=False)
    assert answer.status_code == 403 and "CSRF" in answer.text
    wrong = signed_in.post("/console/sign-out", data={"csrf": "x" * 43}, follow_redirects=False)
    assert wrong.status_code == 403
    csrf = csrf_of(signed_in.get("/console/overview").text)
    out = signed_in.post("/console/sign-out", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]


def test_an_expired_or_forged_session_is_refused(console: TestClient) -> None:
    settings = load_settings({"OPERATOR_TOKEN": TOKEN})
    expired, _ = sess.new_cookie(settings, now=time.time() - 9 * 3600)
    forged = "abc." + str(int(time.time()) + 3600) + ".not-the-signature"
    other_key, _ = sess.new_cookie(load_settings({"OPERATOR_TOKEN": "another-" + "o" * 20}))
    for value in (expired, forged, other_key, "", "a.b.c.d"):
        console.cookies.set(sess.COOKIE, value, path="/console")
        answer = console.get("/console/overview", follow_redirects=False)
        assert answer.status_code == 303, value
        assert console.post("/console/replay", data={"csrf": "x"}).status_code == 401
    fresh, _ = sess.new_cookie(settings)
    console.cookies.set(sess.COOKIE, fresh, path="/console")
    assert console.get("/console/overview", follow_redirects=False).status_code == 200


def test_sign_in_attempts_are_throttled(
    console: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The counts are per minute window: a window turning mid-test would start them again.
    frozen = time.time()
    monkeypatch.setattr(activity, "time", SimpleNamespace(time=lambda: frozen))
    for _ in range(views.SIGN_INS_PER_ADDRESS):
        assert sign_in(console, "wrong-" + "w" * 20).status_code == 401
    answer = sign_in(console)  # even the right token, once over the limit
    assert answer.status_code == 429 and 1 <= int(answer.headers["retry-after"]) <= 60


def test_a_sign_in_posted_from_another_site_is_refused(console: TestClient) -> None:
    answer = console.post(
        "/console/sign-in", data={"token": TOKEN}, headers={"Origin": "https://evil.example"}
    )
    assert answer.status_code == 403


def test_pages_carry_a_strict_content_security_policy(signed_in: TestClient) -> None:
    for path in ("/console/overview", "/console/failed", "/console/tail", "/console/projects"):
        answer = signed_in.get(path)
        assert answer.status_code == 200, path
        assert "script-src 'self'" in answer.headers["content-security-policy"]
        assert answer.headers["cache-control"] == "no-store"
        assert "<script>" not in answer.text  # no inline script: the policy would block it
    js = signed_in.get("/console/static/uplot.min.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert signed_in.get("/console/static/nothing.js").status_code == 404


def test_the_overview_shows_the_stats_and_an_outage(
    signed_in: TestClient, project: Project, worker_ctx: WorkerContext, fake_server: Any
) -> None:
    fail_events(project[0], 3)
    page = signed_in.get("/console/overview").text
    assert 'data-testid="failed">3<' in page and 'data-testid="failed-held">3<' in page
    fake_server.connected = False
    try:
        down = signed_in.get("/console/overview")
        figures = signed_in.get("/console/overview/figures")
    finally:
        fake_server.connected = True
    assert down.status_code == 200 and "UNREACHABLE" in down.text
    assert "charts are unavailable" in down.text
    assert figures.status_code == 200 and figures.json()["rates"] is None


def test_other_pages_name_an_outage_with_503_not_500(
    signed_in: TestClient, fake_server: Any
) -> None:
    fake_server.connected = False
    try:
        answer = signed_in.get("/console/replays/0123456789abcdef")
    finally:
        fake_server.connected = True
    assert answer.status_code == 503 and "Redis is unreachable" in answer.text


def test_failed_events_are_counted_filtered_and_replayed_after_a_dry_run(
    signed_in: TestClient,
    project: Project,
    worker_ctx: WorkerContext,
    engine: Engine,
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(views, "REPLAY_WAIT_SECONDS", 0.1)
    ids = fail_events(project[0], 3)
    page = signed_in.get("/console/failed?code=CONTACT_NOT_FOUND_FOR_EVENT")
    assert 'data-testid="failed-total">3<' in page.text
    assert page.text.count('data-testid="failed-row"') == 3
    assert signed_in.get("/console/failed?code=OTHER").text.count('data-testid="failed-row"') == 0
    bad = signed_in.get("/console/failed?since=yesterday")
    assert bad.status_code == 400 and "is not a time" in bad.text
    detail = signed_in.get(f"/console/failed/{ids[0]}")
    assert detail.status_code == 200 and "ghost" in detail.text
    csrf = csrf_of(page.text)
    form = {"csrf": csrf, "scope": "selected", "ids": ids[:2]}
    dry = signed_in.post("/console/replay", data=form)
    assert dry.status_code == 200 and 'data-testid="would-requeue">2<' in dry.text
    assert worker_ctx.queue.rq.count == 0  # a dry run queues nothing
    run = signed_in.post("/console/replay", data={**form, "step": "run", "expected": "2"},
                         follow_redirects=False)  # fmt: skip
    assert run.status_code == 303
    progress = signed_in.get(run.headers["location"] + "/progress").json()
    assert progress["state"] == "done" and progress["requeued"] == 2
    assert worker_ctx.queue.rq.count == 1


def test_a_replay_of_no_filter_needs_the_explicit_all(signed_in: TestClient) -> None:
    csrf = csrf_of(signed_in.get("/console/failed").text)
    answer = signed_in.post("/console/replay", data={"csrf": csrf, "scope": "filter"})
    assert answer.status_code == 400 and "every failed event" in answer.text
    every = signed_in.post("/console/replay", data={"csrf": csrf, "scope": "filter", "all": "1"})
    assert every.status_code == 200


def test_a_form_must_be_urlencoded_and_small(signed_in: TestClient) -> None:
    answer = signed_in.post(
        "/console/replay", content=b"{}", headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400
    big = signed_in.post("/console/replay", data={"csrf": "x" * (views.MAX_FORM_BYTES + 1)})
    assert big.status_code == 413


def test_projects_list_keys_without_secrets_and_revoke_behind_a_confirmation(
    signed_in: TestClient, project: Project
) -> None:
    project_id, api_key, key_id = project
    page = signed_in.get(f"/console/projects/{project_id}")
    assert key_id in page.text and api_key.rsplit("_", 1)[1] not in page.text
    confirm = signed_in.get(f"/console/projects/{project_id}/keys/{key_id}/revoke")
    assert confirm.status_code == 200 and "cannot be undone" in confirm.text
    path = f"/console/projects/{project_id}/keys/{key_id}/revoke"
    assert signed_in.post(path, data={}).status_code == 403
    done = signed_in.post(path, data={"csrf": csrf_of(confirm.text)}, follow_redirects=False)
    assert done.status_code == 303
    sent = signed_in.post(
        "/v1/events/send",
        json={"eventName": "x", "email": "a@example.com"},
        headers={"Authorization": f"Bearer {api_key}"},
    )
    assert sent.status_code == 401


def test_the_worker_counts_the_rates_and_writes_one_tail_entry_per_job(
    project: Project, worker_ctx: WorkerContext, engine: Engine
) -> None:
    add_contact(engine, project[0], "jane@example.com")
    batch = [an_event(project[0]), an_event(project[0], email="ghost@example.com")]
    store_events(make_payload(batch))
    (entry,) = cast(
        list[tuple[bytes, dict[bytes, bytes]]], worker_ctx.redis.xrange("eventpipe:tail")
    )
    events = entry[1][b"events"].decode()
    assert f'"{batch[0]["id"]}","{project[0]}","order_completed","stored",""' in events
    assert '"failed","CONTACT_NOT_FOUND_FOR_EVENT"' in events
    assert "order_total" not in events  # names and codes, never property values
    rates = read_rates(worker_ctx.redis, 60, now=time.time() + 5)
    assert sum(rates["stored"]) * rates["step"] == 1 and sum(rates["failed"]) * rates["step"] == 1


def test_rates_are_read_back_bucket_by_bucket(fake_redis: fakeredis.FakeRedis) -> None:
    now = 1_800_000_000.0  # a minute's start
    with fake_redis.pipeline(transaction=True) as pipe:
        count_rate(pipe, "a", 10, now=now - 100)
        count_rate(pipe, "a", 5, now=now - 98)  # the same five seconds
        count_rate(pipe, "s", 7, now=now - 7)
        pipe.execute()
    rates = read_rates(fake_redis, 120, now=now)
    assert rates["start"] == now - 120 and len(rates["accepted"]) == 24
    assert rates["accepted"][4] == 3.0  # 15 events in 5 s (bucket now-100)
    assert rates["stored"][22] == 1.4 and sum(rates["failed"]) == 0
    ttl = fake_redis.ttl(f"eventpipe:rate:{int(now - 100) // 60}")
    assert 0 < ttl <= 3720


def test_the_tail_stream_sends_the_backlog_filtered(
    signed_in: TestClient, project: Project, worker_ctx: WorkerContext, monkeypatch: Any
) -> None:
    monkeypatch.setattr(views, "TAIL_STREAM_SECONDS", 0.3)
    monkeypatch.setattr(views, "TAIL_BLOCK_MS", 50)
    batch = [an_event(project[0], eventName="signup"), an_event("f" * 24, eventName="other")]
    store_events(make_payload(batch))
    body = signed_in.get(f"/console/tail/stream?projectId={project[0]}").text
    assert batch[0]["id"] in body and batch[1]["id"] not in body
    assert body.startswith("retry: ")
    by_name = signed_in.get("/console/tail/stream?eventName=other").text
    assert batch[1]["id"] in by_name and batch[0]["id"] not in by_name
    bad = signed_in.get("/console/tail/stream?after=zzz")
    assert bad.status_code == 400


def test_the_tail_is_not_written_while_redis_is_near_its_memory_limit(
    project: Project, worker_ctx: WorkerContext, monkeypatch: Any
) -> None:
    """Near maxmemory (noeviction) the tail's growth would make Redis refuse the worker's
    finishing transaction, and the backlog would never drain: the tail waits, the counts go
    on."""
    from shared.queue import activity

    memory = {"used_memory": 900, "maxmemory": 1000}
    monkeypatch.setattr(worker_ctx.redis, "info", lambda section: memory, raising=False)
    monkeypatch.setattr(activity, "_memory_checks", {})
    store_events(make_payload([an_event(project[0], email="ghost@example.com")]))
    assert worker_ctx.redis.xlen("eventpipe:tail") == 0
    assert sum(read_rates(worker_ctx.redis, 60, now=time.time() + 5)["failed"]) > 0
    memory["used_memory"] = 100
    monkeypatch.setattr(activity, "_memory_checks", {})  # (read again at once)
    store_events(make_payload([an_event(project[0], email="ghost@example.com")]))
    assert worker_ctx.redis.xlen("eventpipe:tail") == 1
