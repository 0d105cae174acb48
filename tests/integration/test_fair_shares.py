"""Fair shares against real API processes, workers, Redis and PostgreSQL: one project's flood
stops only itself, and a rate limit set with the CLI holds across two API processes and
follows a change within a second."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx2 as httpx
import redis
from sqlalchemy import Engine

from shared.queue import PENDING_KEY, PROJECT_QUEUED_KEY
from tests.integration.services import Proc, run_cli, start_api, start_worker, wait_until
from tests.integration.test_guarantees import _project, _stored_ids
from tests.integration.test_pipeline import SEED, auth

RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def _project_id(env: dict[str, str], key: str) -> str:
    """The project of `key` (the newest project: _project creates one each time)."""
    projects: list[dict[str, Any]] = json.loads(run_cli(env, "projects", "list", "--json"))
    return str(projects[-1]["id"])


def test_a_flooding_project_is_refused_alone_and_the_other_is_stored(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis, procs_cleanup: list[Proc]
) -> None:
    """Workers paused (none running): project A sends batches until refused at its share
    (a quarter of MAX_QUEUED_EVENTS: 1000); project B's sends are still accepted; once
    workers run, everything accepted is stored once and the per-project counts are gone."""
    env = {**env, "MAX_QUEUED_EVENTS": "4000", "PROJECT_BACKLOG_SHARE": "0.25"}
    api, base = start_api(env, workers=2)
    procs_cleanup.append(api)
    flood_key, quiet_key = _project(env, base), _project(env, base)
    accepted: list[str] = []
    refused = None
    with httpx.Client(base_url=base, headers=auth(flood_key), timeout=10) as http:
        for _ in range(400):
            r = http.post("/v1/events/batch", json={"events": [SEED] * 10})
            if r.status_code == 503:
                refused = r
                break
            assert r.status_code == 202, r.text
            accepted += [x["id"] for x in r.json()["data"]["receipts"]]
    assert refused is not None, "the flooding project was never refused"
    assert "too many events queued" in refused.json()["error"]["message"]
    assert refused.headers["Retry-After"]
    # Its share is 1000; soft by what one backlog poll (0.1 s) of two processes lets through,
    # and far from the global limit (4000), which would refuse every project.
    assert 1000 <= len(accepted) <= 2000, len(accepted)
    with httpx.Client(base_url=base, headers=auth(quiet_key), timeout=10) as http:
        quiet = [http.post("/v1/events/send", json=SEED) for _ in range(20)]
        assert {r.status_code for r in quiet} == {202}, [r.text for r in quiet]
        accepted += [r.json()["data"]["id"] for r in quiet]
    with httpx.Client(base_url=base, headers=auth(flood_key), timeout=10) as http:
        assert http.post("/v1/events/send", json=SEED).status_code == 503
    procs_cleanup.append(start_worker(env))
    wait_until(lambda: redis_client.hlen(PENDING_KEY) == 0, 60, "the backlog to drain")
    stored = _stored_ids(engine)
    assert sorted(stored) == sorted(accepted)  # every accepted event, once
    assert redis_client.exists(PROJECT_QUEUED_KEY) == 0
    with httpx.Client(base_url=base, headers=auth(flood_key), timeout=10) as http:
        wait_until(
            lambda: http.post("/v1/events/send", json=SEED).status_code == 202,
            5,
            "the flooding project to be accepted again",
        )


def _limit_seen(http: httpx.Client, limit: str | None) -> bool:
    """Four sends in a row answered with X-RateLimit-Limit `limit` (None: no header), so
    both API processes have the change (connections land on either)."""
    for _ in range(4):
        r = http.post("/v1/events/send", json=SEED)
        if r.headers.get("X-RateLimit-Limit") != limit:
            return False
    return True


def _follows_within_a_second(http: httpx.Client, limit: str | None) -> float:
    changed = time.monotonic()
    wait_until(lambda: _limit_seen(http, limit), 1.0, f"X-RateLimit-Limit {limit}")
    return time.monotonic() - changed


def test_a_rate_limit_set_with_the_cli_holds_across_processes_and_follows_changes(
    env: dict[str, str], procs_cleanup: list[Proc]
) -> None:
    api, base = start_api(env, workers=2)
    procs_cleanup.append(api)
    key = _project(env, base)
    project_id = _project_id(env, key)
    rate, burst, processes, hold = 5.0, 20, 2, 1
    with httpx.Client(base_url=base, headers=auth(key), timeout=10) as http:
        assert not any(h in http.post("/v1/events/send", json=SEED).headers for h in RATE_HEADERS)
        out = run_cli(env, "projects", "limits", project_id, "--rate", "5/s", "--burst", "20")
        assert "5/s, burst 20" in out
        _follows_within_a_second(http, "20")
        # The bucket refills at the rate: this long gives a full one to start from.
        time.sleep(burst / rate)
        started = time.monotonic()
        answers = [http.post("/v1/events/send", json=SEED) for _ in range(60)]
        window = time.monotonic() - started
        ok = [r for r in answers if r.status_code == 202]
        limited = [r for r in answers if r.status_code == 429]
        assert len(ok) + len(limited) == 60
        assert len(ok) <= burst + rate * window + processes * hold, (len(ok), window)
        assert len(ok) >= burst - processes * hold
        error = limited[0].json()["error"]
        assert error["code"] == "RATE_LIMIT_EXCEEDED" and error["retryAfter"] >= 1
        assert limited[0].headers["Retry-After"] == str(error["retryAfter"])
        for r in answers:
            assert r.headers["X-RateLimit-Limit"] == "20"
            assert int(r.headers["X-RateLimit-Remaining"]) <= burst
            assert int(r.headers["X-RateLimit-Reset"]) >= int(time.time()) - 60

        # A batch once the bucket has refilled: the items past its tokens are refused alone.
        time.sleep(burst / rate)  # (a refill takes this long by definition)
        r = http.post("/v1/events/batch", json={"events": [SEED] * 50})
        assert r.status_code == 202, r.text
        statuses = [x["status"] for x in r.json()["data"]["receipts"]]
        first_refused = statuses.index("rejected")
        assert burst - processes * hold <= first_refused <= burst + processes * hold + 2
        assert statuses == ["accepted"] * first_refused + ["rejected"] * (50 - first_refused)
        codes = {x["error"]["code"] for x in r.json()["data"]["receipts"][first_refused:]}
        assert codes == {"RATE_LIMIT_EXCEEDED"}
        assert all(h in r.headers for h in RATE_HEADERS)

        # Changes made with the CLI reach both processes within a second.
        run_cli(env, "projects", "limits", project_id, "--rate", "1000/s", "--burst", "1000")
        assert _follows_within_a_second(http, "1000") < 1.0
        run_cli(env, "projects", "limits", project_id, "--rate", "off")
        assert _follows_within_a_second(http, None) < 1.0
        assert {http.post("/v1/events/send", json=SEED).status_code for _ in range(50)} == {202}
