"""Fair shares through the HTTP surface, on fakeredis and SQLite: the limits set through the
admin API, the 429 with its headers, a batch's receipts past its tokens, and a project at its
backlog share refused while another is accepted."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import fakeredis
import pytest
from sqlalchemy import Engine
from starlette.testclient import TestClient

from api.openapi import DOCUMENT
from shared.queue import make_queue
from shared.settings import Settings
from tests.unit.conftest import auth, make_client, make_project
from tests.unit.test_api import SEED, run_queued_jobs, setup_seed
from worker.context import WorkerContext

TOKEN = "operator-token-for-tests-0123456789"
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def op_auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def api(
    settings: Settings,
    engine: Engine,
    fake_server: fakeredis.FakeServer,
    worker_ctx: WorkerContext,
    project: tuple[str, str, str],
) -> Iterator[TestClient]:
    overrides: dict[str, Any] = {
        "operator_token": TOKEN,
        "max_queued_events": 100,
        "backlog_poll_seconds": 0.01,
    }
    with make_client(settings, engine, fake_server, **overrides) as client:
        yield client


def set_limits(client: TestClient, project_id: str, **body: Any) -> dict[str, Any]:
    r = client.put(f"/v1/admin/projects/{project_id}/limits", json=body, headers=op_auth())
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


def test_limits_are_set_shown_and_cleared_through_the_admin_api(
    api: TestClient, project: tuple[str, str, str]
) -> None:
    path = f"/v1/admin/projects/{project[0]}/limits"
    shown = api.get(path, headers=op_auth()).json()["data"]
    assert shown["rate"] is None and shown["backlogShare"] == 0.5 and shown["backlogLimit"] == 50
    data = set_limits(api, project[0], rate="6000/min", backlogShare=0.2)
    assert data["rate"] == "100/s" and data["burst"] == 100 and data["backlogLimit"] == 20
    assert api.get(path, headers=op_auth()).json()["data"] == data
    cleared = api.delete(path, headers=op_auth()).json()["data"]
    assert cleared["rate"] is None and cleared["backlogShareIsDefault"] is True
    assert api.get(path, headers=auth(project[1])).status_code == 401  # a project key
    assert api.get("/v1/admin/projects/" + "0" * 24 + "/limits", headers=op_auth()).status_code == (
        404
    )


@pytest.mark.parametrize(
    "body",
    [
        {"rate": "fast"},
        {"rate": 0},
        {"rate": True},
        {"burst": 5},
        {"rate": "1/s", "burst": 0},
        {"rate": "1/s", "burst": 2.5},
        {"backlogShare": 0},
        {"backlogShare": 1.5},
        {"backlogShare": "half"},
    ],
)
def test_bad_limits_are_400(api: TestClient, project: tuple[str, str, str], body: Any) -> None:
    r = api.put(f"/v1/admin/projects/{project[0]}/limits", json=body, headers=op_auth())
    assert r.status_code == 400 and r.json()["error"]["code"] == "VALIDATION_FAILED"


def test_over_the_rate_limit_sends_get_429_with_retry_after_and_the_headers(
    api: TestClient, project: tuple[str, str, str]
) -> None:
    setup_seed(api, project[1])
    r = api.post("/v1/events/send", json=SEED, headers=auth(project[1]))
    assert r.status_code == 202 and not any(h in r.headers for h in RATE_HEADERS)
    set_limits(api, project[0], rate="1/h", burst=3)
    answers = [api.post("/v1/events/send", json=SEED, headers=auth(project[1])) for _ in range(4)]
    assert [a.status_code for a in answers] == [202, 202, 202, 429]
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
    assert {a.headers["X-RateLimit-Limit"] for a in answers} == {"3"}
    refused = answers[-1]
    error = refused.json()["error"]
    assert error["code"] == "RATE_LIMIT_EXCEEDED" and error["retryAfter"] >= 3000
    assert refused.headers["Retry-After"] == str(error["retryAfter"])
    # Reset: when the bucket is full again, 3 tokens at 1/h from now.
    assert abs(int(refused.headers["X-RateLimit-Reset"]) - (time.time() + 3 * 3600)) < 5
    # The rate check comes before the JSON (the contract's order), with the headers.
    bad = api.post("/v1/events/send", content=b"{", headers=auth(project[1]))
    assert bad.status_code == 429
    assert all(h in bad.headers for h in RATE_HEADERS)


def test_a_batch_past_its_tokens_gets_rate_limited_receipts_for_the_rest(
    api: TestClient, project: tuple[str, str, str]
) -> None:
    setup_seed(api, project[1])
    set_limits(api, project[0], rate="1/h", burst=4)
    items = [SEED, {"eventName": "nope", "email": "a@b.co"}, *([SEED] * 4)]
    r = api.post("/v1/events/batch", json={"events": items}, headers=auth(project[1]))
    assert r.status_code == 202
    receipts = r.json()["data"]["receipts"]
    assert [x["status"] for x in receipts] == ["accepted", "rejected"] + ["accepted"] * 3 + [
        "rejected"
    ]
    assert receipts[1]["error"]["code"] == "EVENT_NOT_FOUND"
    assert receipts[5]["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert r.headers["X-RateLimit-Remaining"] == "0" and r.headers["X-RateLimit-Limit"] == "4"
    again = api.post("/v1/events/batch", json={"events": [SEED]}, headers=auth(project[1]))
    assert again.status_code == 429 and again.json()["error"]["retryAfter"] >= 1
    assert "Retry-After" in again.headers and "X-RateLimit-Reset" in again.headers


def test_a_project_at_its_backlog_share_is_refused_while_another_is_accepted(
    api: TestClient,
    engine: Engine,
    fake_server: fakeredis.FakeServer,
    worker_ctx: WorkerContext,
    project: tuple[str, str, str],
) -> None:
    _, other_key, _ = make_project(engine, fakeredis.FakeRedis(server=fake_server), "quiet")
    setup_seed(api, project[1])
    wait_until(lambda: api.get("/v1/events", headers=auth(other_key)).status_code == 200, 5, "key")
    setup_seed(api, other_key)
    refused = None
    for _ in range(200):  # the share is 50 of MAX_QUEUED_EVENTS=100
        r = api.post("/v1/events/batch", json={"events": [SEED] * 5}, headers=auth(project[1]))
        if r.status_code == 503:
            refused = r
            break
        assert r.status_code == 202
    assert refused is not None, "the flooding project was never refused"
    assert "too many events queued" in refused.json()["error"]["message"]
    assert refused.headers["Retry-After"]
    for _ in range(20):
        r = api.post("/v1/events/send", json=SEED, headers=auth(other_key))
        assert r.status_code == 202, r.text
    flood = api.post("/v1/events/send", json=SEED, headers=auth(project[1]))
    assert flood.status_code == 503
    run_queued_jobs(worker_ctx)
    wait_until(
        lambda: api.post("/v1/events/send", json=SEED, headers=auth(project[1])).status_code == 202,
        5,
        "the drained project to be accepted again",
    )


def test_every_send_route_documents_429_and_the_rate_headers() -> None:
    for path in ("/v1/events/send", "/v1/events/batch"):
        responses = DOCUMENT["paths"][path]["post"]["responses"]
        assert "429" in responses
        assert "Retry-After" in responses["429"]["headers"]
        assert set(RATE_HEADERS) <= set(responses["202"]["headers"])


def test_stats_and_metrics_name_only_the_projects_over_a_limit(
    api: TestClient,
    engine: Engine,
    fake_server: fakeredis.FakeServer,
    worker_ctx: WorkerContext,
    project: tuple[str, str, str],
) -> None:
    from ops.stats import collect, describe_stats

    limited_id, limited_key = project[0], project[1]
    full_id, full_key, _ = make_project(engine, fakeredis.FakeRedis(server=fake_server), "full")
    calm_id, calm_key, _ = make_project(engine, fakeredis.FakeRedis(server=fake_server), "calm")
    wait_until(lambda: api.get("/v1/events", headers=auth(calm_key)).status_code == 200, 5, "keys")
    for key in (limited_key, full_key, calm_key):
        setup_seed(api, key)
    set_limits(api, limited_id, rate="1/h", burst=1)
    set_limits(api, full_id, backlogShare=0.02)  # 2 of MAX_QUEUED_EVENTS=100
    assert api.post("/v1/events/send", json=SEED, headers=auth(limited_key)).status_code == 202
    assert api.post("/v1/events/send", json=SEED, headers=auth(limited_key)).status_code == 429
    r = api.post("/v1/events/batch", json={"events": [SEED] * 3}, headers=auth(full_key))
    assert r.status_code == 202
    assert api.post("/v1/events/send", json=SEED, headers=auth(calm_key)).status_code == 202

    text = api.get("/metrics").text
    assert f'eventpipe_project_over_limit{{limit="rate",project="{limited_id}"}} 1.0' in text
    assert f'eventpipe_project_over_limit{{limit="backlog",project="{full_id}"}} 1.0' in text
    assert f'eventpipe_project_queued_events{{project="{full_id}"}} 3.0' in text
    assert calm_id not in text
    assert 'eventpipe_projects_over_limit{limit="rate"} 1.0' in text

    # As the CLI would run it, with the API's MAX_QUEUED_EVENTS.
    queue = make_queue(replace(worker_ctx.settings, max_queued_events=100), worker_ctx.redis)
    data = collect(engine, queue)
    limited = {x["projectId"]: x for x in data["shares"]["rateLimited"]}
    assert set(limited) == {limited_id} and limited[limited_id]["tokensLeft"] < 1
    queued = {x["projectId"]: x for x in data["shares"]["mostQueued"]}
    assert queued[full_id] == {"projectId": full_id, "queued": 3, "backlogLimit": 2}
    assert queued[calm_id]["queued"] == 1 and queued[limited_id]["queued"] == 1
    shown = describe_stats(data)
    assert f"{full_id} 3 of 2 (AT ITS SHARE" in shown
    assert f"{limited_id}: 1/h, burst 1, 0 tokens left (AT ITS LIMIT" in shown
