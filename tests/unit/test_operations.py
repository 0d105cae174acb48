"""The operators' tools on SQLite and fakeredis: the admin API's guard and checks, replay's
skip rules, time filters, settings."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, cast

import fakeredis
import pytest
from sqlalchemy import Engine

from ops.failed import FailedFilter, parse_time
from ops.replay import Replayer
from shared.errors import ValidationFailed
from shared.queue import PENDING_KEY
from shared.settings import Settings, load_settings
from tests.unit.conftest import auth, make_client
from tests.unit.test_worker import an_event, count
from worker.context import WorkerContext
from worker.jobs import store_events

Project = tuple[str, str, str]
TOKEN = "op-" + "x" * 29


def fail_events(project_id: str, n: int) -> list[str]:
    """`n` contact-not-found failures, recorded by the job function itself."""
    from shared.queue import make_payload

    batch = [an_event(project_id, email=f"ghost{i}@example.com") for i in range(n)]
    store_events(make_payload(batch))
    return sorted(e["id"] for e in batch)


@pytest.fixture
def admin(
    settings: Settings,
    engine: Engine,
    fake_server: fakeredis.FakeServer,
    worker_ctx: WorkerContext,
    project: Project,
) -> Any:
    with make_client(settings, engine, fake_server, operator_token=TOKEN) as client:
        yield client


def op_auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def test_admin_api_is_off_without_a_token(
    settings: Settings,
    engine: Engine,
    fake_server: fakeredis.FakeServer,
    worker_ctx: WorkerContext,
    project: Project,
) -> None:
    with make_client(settings, engine, fake_server) as client:
        answer = client.get("/v1/admin/failed", headers=op_auth())
        assert answer.status_code == 401
        assert "OPERATOR_TOKEN" in answer.json()["error"]["message"]


def test_admin_api_takes_the_operator_token_only(admin: Any, project: Project) -> None:
    for headers in ({}, auth(project[1]), {"Authorization": f"Bearer {TOKEN}x"}):
        for answer in (
            admin.get("/v1/admin/failed", headers=headers),
            admin.post("/v1/admin/replay", json={"all": True}, headers=headers),
        ):
            assert answer.status_code == 401
            assert answer.json()["error"]["code"] == "UNAUTHORIZED"
    assert admin.get("/v1/admin/failed", headers=op_auth()).status_code == 200


@pytest.mark.parametrize(
    "query",
    [
        "since=yesterday",
        "until=2026-13-01",
        "since=20260508",  # ISO 8601 basic form: not RFC 3339
        "since=2026-W19",
        "limit=0",
        "limit=1001",
        "limit=x",
        "cursor=zz",
    ],
)
def test_admin_list_refuses_bad_filters_with_400(admin: Any, query: str) -> None:
    answer = admin.get(f"/v1/admin/failed?{query}", headers=op_auth())
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "VALIDATION_FAILED"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"all": "yes"},
        [1],
        {"ids": "abc"},
        {"ids": ["not-an-id"]},
        {"all": True, "wait": 31},
        {"all": True, "wait": "5"},
        {"all": True, "limit": -1},
        {"code": 5},
    ],
)
def test_admin_replay_refuses_bad_bodies_with_400(admin: Any, body: Any) -> None:
    answer = admin.post("/v1/admin/replay", json=body, headers=op_auth())
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "VALIDATION_FAILED"


def test_admin_list_pages_and_filters(admin: Any, project: Project) -> None:
    ids = fail_events(project[0], 3)
    first = admin.get("/v1/admin/failed?limit=2", headers=op_auth()).json()["data"]
    assert [r["id"] for r in first["failed"]] == ids[::-1][:2]
    second = admin.get(
        f"/v1/admin/failed?limit=2&cursor={first['nextCursor']}", headers=op_auth()
    ).json()["data"]
    assert [r["id"] for r in second["failed"]] == [ids[0]] and second["nextCursor"] is None
    by_code = admin.get("/v1/admin/failed?code=OTHER", headers=op_auth()).json()["data"]
    assert by_code["failed"] == []
    recent = admin.get("/v1/admin/failed?since=1h", headers=op_auth()).json()["data"]
    assert len(recent["failed"]) == 3
    older = admin.get("/v1/admin/failed?until=1h", headers=op_auth()).json()["data"]
    assert older["failed"] == []


def test_admin_replay_with_redis_away_is_503(
    admin: Any, project: Project, fake_server: Any
) -> None:
    fail_events(project[0], 1)
    fake_server.connected = False
    answer = admin.post("/v1/admin/replay", json={"all": True}, headers=op_auth())
    fake_server.connected = True
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    assert answer.json()["error"]["code"] == "SERVICE_UNAVAILABLE"


def test_admin_replay_requeues_once_then_skips_what_is_queued(
    admin: Any, project: Project, worker_ctx: WorkerContext
) -> None:
    ids = fail_events(project[0], 2)
    body = {"code": "CONTACT_NOT_FOUND_FOR_EVENT"}
    dry = admin.post("/v1/admin/replay", json={**body, "dryRun": True}, headers=op_auth())
    assert dry.json()["data"]["requeued"] == 2 and worker_ctx.queue.rq.count == 0
    done = admin.post("/v1/admin/replay", json=body, headers=op_auth()).json()["data"]
    assert (done["matched"], done["requeued"], done["skipped"]) == (2, 2, {})
    assert worker_ctx.queue.rq.count == 1  # one replay job for both
    assert set(cast(list[bytes], worker_ctx.redis.hkeys(PENDING_KEY))) == {i.encode() for i in ids}
    again = admin.post("/v1/admin/replay", json=body, headers=op_auth()).json()["data"]
    assert (again["requeued"], again["skipped"]) == (0, {"already queued": 2})


def test_a_replay_job_that_fails_again_splits_its_failures_out(
    project: Project, worker_ctx: WorkerContext, engine: Engine, monkeypatch: Any
) -> None:
    from shared.queue import RunningJob
    from tests.unit.test_worker import add_contact

    ids = fail_events(project[0], 2)
    add_contact(engine, project[0], "ghost0@example.com")
    replayer = Replayer(worker_ctx.settings, engine, worker_ctx.redis, worker_ctx.queue)
    summary = replayer.run(FailedFilter(ids=tuple(ids)))
    assert summary.requeued == 2
    job = worker_ctx.queue.rq.fetch_job(worker_ctx.queue.rq.job_ids[0])
    assert job is not None and job.id.startswith("r")
    monkeypatch.setattr("worker.jobs.running_job", lambda: RunningJob(job.id, "w1"))
    # The replay job itself succeeds; the event that still fails is a failed job of its own.
    assert store_events(*job.args) == {"stored": 1, "failed": 1, "jobs": 1}
    from shared.models import events, failed_events

    assert count(engine, events) == 1 and count(engine, failed_events) == 1
    still = [i for i in ids if i in worker_ctx.queue.rq.failed_job_registry.get_job_ids()]
    assert len(still) == 1
    assert worker_ctx.redis.hlen(PENDING_KEY) == 0


def test_parse_time_reads_iso_dates_and_durations_ago() -> None:
    now = datetime(2026, 5, 8, 12, 0, tzinfo=UTC)
    assert parse_time("2h", now=now) == datetime(2026, 5, 8, 10, 0, tzinfo=UTC)
    assert parse_time("90s", now=now) == datetime(2026, 5, 8, 11, 58, 30, tzinfo=UTC)
    assert parse_time("7d", now=now) == datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_time("2026-05-08") == datetime(2026, 5, 8, tzinfo=UTC)
    assert parse_time("2026-05-08T13:45:00+02:00") == datetime(2026, 5, 8, 11, 45, tzinfo=UTC)
    with pytest.raises(ValidationFailed):
        parse_time("last tuesday")


def test_operator_settings_are_checked() -> None:
    assert load_settings({"OPERATOR_TOKEN": TOKEN}).operator_token == TOKEN
    assert load_settings({}).operator_token == ""
    with pytest.raises(ValueError, match="16"):
        load_settings({"OPERATOR_TOKEN": "short"})
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        load_settings({"LOG_FORMAT": "xml"})
    assert load_settings({"LOG_FORMAT": "json"}).log_format == "json"


# --- health, readiness, metrics ------------------------------------------------------------


def metric(text: str, name: str) -> float:
    """The value of one sample line (`name` with its labels, exactly), 0 when absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_healthz_and_readyz(client: Any) -> None:
    assert client.get("/healthz").json() == {"success": True, "data": {"status": "ok"}}
    ready = client.get("/readyz").json()["data"]
    assert ready == {"status": "ready", "checks": {"redis": True, "config": True}}


def test_readyz_is_503_when_redis_is_unreachable(client: Any, fake_server: Any) -> None:
    fake_server.connected = False
    answer = client.get("/readyz")
    fake_server.connected = True
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    assert answer.json()["error"] == {"message": "Not ready: redis", "code": "SERVICE_UNAVAILABLE"}


def test_metrics_count_requests_accepted_and_rejected_events(client: Any, project: Project) -> None:
    from tests.unit.test_api import setup_seed

    setup_seed(client, project[1])
    before = client.get("/metrics").text
    body = {"eventName": "order_completed", "email": "jane@example.com"}
    assert client.post("/v1/events/send", json=body, headers=auth(project[1])).status_code == 202
    missing = {"eventName": "nope", "email": "jane@example.com"}
    assert client.post("/v1/events/send", json=missing, headers=auth(project[1])).status_code == 404
    assert client.get("/v1/events/" + "a" * 24, headers=auth(project[1])).status_code == 404
    after = client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text

    def delta(name: str) -> float:
        return metric(text, name) - metric(before, name)

    assert delta("eventpipe_events_accepted_total") == 1
    assert delta('eventpipe_events_rejected_total{code="EVENT_NOT_FOUND"}') == 1
    send = 'eventpipe_http_requests_total{route="/v1/events/send",status="202"}'
    assert delta(send) == 1
    by_template = 'eventpipe_http_requests_total{route="/v1/events/{event_id}",status="404"}'
    assert delta(by_template) == 1
    assert delta("eventpipe_enqueue_seconds_count") == 1
    assert metric(text, "eventpipe_queue_events") == 1 and metric(text, "eventpipe_redis_up") == 1


def test_stats_report_an_unreachable_store_instead_of_failing() -> None:
    from ops.stats import describe_stats, store_stats
    from shared.db import make_engine
    from tests.integration.services import free_port

    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    engine = make_engine(Settings(database_url=url, db_connect_timeout=2))
    try:
        store = store_stats(engine)
    finally:
        engine.dispose()
    assert store["reachable"] is False and store["error"]
    text = describe_stats(
        {"at": "now", "queueName": "q", "redis": {"reachable": False, "error": "x"}, "store": store}
    )
    assert "redis: UNREACHABLE" in text and "store: UNREACHABLE" in text


def test_replay_summary_names_every_skip_reason() -> None:
    from ops.replay import ReplaySummary, describe

    summary = ReplaySummary(matched=5, requeued=2)
    summary.skipped.update({"already queued": 2, "already stored": 1, "never": 0})
    text = describe(summary)
    assert text.splitlines()[:2] == [
        "matched 5, requeued 2",
        "skipped 3: already queued 2, already stored 1",
    ]
    assert summary.to_json()["skipped"] == {"already queued": 2, "already stored": 1}


def test_replay_holds_off_while_the_backlog_is_over_half_its_limit(
    project: Project, worker_ctx: WorkerContext, engine: Engine, monkeypatch: Any
) -> None:
    from dataclasses import replace

    ids = fail_events(project[0], 3)
    settings = replace(worker_ctx.settings, max_queued_events=4)  # holds off from 2 queued
    worker_ctx.redis.hset(PENDING_KEY, mapping={"a" * 24: "g1", "b" * 24: "g1"})
    waits: list[float] = []

    def workers_drain(seconds: float) -> None:
        waits.append(seconds)
        worker_ctx.redis.delete(PENDING_KEY)

    monkeypatch.setattr("ops.replay.time.sleep", workers_drain)
    replayer = Replayer(settings, engine, worker_ctx.redis, worker_ctx.queue)
    summary = replayer.run(FailedFilter(ids=tuple(ids)))
    assert len(waits) == 1 and summary.requeued == 3


def test_a_replay_the_backlog_never_makes_room_for_stops_instead_of_hanging(
    project: Project, worker_ctx: WorkerContext, engine: Engine, monkeypatch: Any
) -> None:
    from dataclasses import replace

    ids = fail_events(project[0], 3)
    settings = replace(worker_ctx.settings, max_queued_events=4)
    worker_ctx.redis.hset(PENDING_KEY, mapping={"a" * 24: "g1", "b" * 24: "g1"})  # never drains
    clock = iter(range(1000))
    monkeypatch.setattr("ops.replay.time.monotonic", lambda: float(next(clock)))
    monkeypatch.setattr("ops.replay.time.sleep", lambda seconds: None)
    replayer = Replayer(settings, engine, worker_ctx.redis, worker_ctx.queue)
    summary = replayer.run(FailedFilter(ids=tuple(ids)), room_wait=5)
    assert summary.interrupted and summary.requeued == 0
    assert worker_ctx.queue.rq.count == 0


def test_request_log_lines_carry_the_event_id_or_the_error_code(
    settings: Settings,
    engine: Engine,
    fake_server: fakeredis.FakeServer,
    worker_ctx: WorkerContext,
    project: Project,
    caplog: Any,
) -> None:
    from tests.factories import SEND
    from tests.unit.test_api import setup_seed

    with make_client(settings, engine, fake_server, log_format="json") as client:
        setup_seed(client, project[1])
        caplog.clear()
        with caplog.at_level("INFO", logger="eventpipe"):
            sent = client.post("/v1/events/send", json=SEND, headers=auth(project[1]))
            bad = {**SEND, "eventName": "nope"}
            client.post("/v1/events/send", json=bad, headers=auth(project[1]))
            client.get("/v1/contacts/" + "0" * 24, headers=auth(project[1]))
    lines = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("kind") == "request"]
    assert [(f["status"], f.get("eventId"), f.get("code")) for f in lines] == [
        (202, sent.json()["data"]["id"], None),
        (404, None, "EVENT_NOT_FOUND"),
        (404, None, "CONTACT_NOT_FOUND"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "99999999999d",  # int() fine, timedelta overflows
        "999999d",  # timedelta fine, the date before year 1
        "9" * 5000 + "d",  # int() of 5000 digits
        "\u0663h",  # Arabic-Indic 3, which \d took
        "3651d",  # past MAX_AGO
        "1e3s",
    ],
)
def test_parse_time_refuses_what_it_cannot_bound(text: str) -> None:
    with pytest.raises(ValidationFailed):
        parse_time(text)
    assert parse_time("3650d") < parse_time("1s")


def test_a_long_time_that_is_no_time_is_shown_cut_short() -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_time("x" * 100_000)
    assert len(caught.value.message) < 200


def _requests_counted(route: str, status: int) -> float:
    from api.observe import REQUESTS

    return float(REQUESTS.labels(route, str(status))._value.get())


async def test_requests_of_one_tick_are_counted_once_the_tick_is_over() -> None:
    from api.observe import count_request

    before = _requests_counted("/tick-test", 202)
    for _ in range(100):
        count_request("/tick-test", 202)
    count_request("/tick-test", 503)
    await asyncio.sleep(0)  # the tick ends
    assert _requests_counted("/tick-test", 202) - before == 100
    assert _requests_counted("/tick-test", 503) >= 1


def test_requests_counted_without_an_event_loop_are_counted_at_once() -> None:
    from api.observe import count_request

    before = _requests_counted("/no-loop-test", 200)
    count_request("/no-loop-test", 200)
    assert _requests_counted("/no-loop-test", 200) - before == 1
