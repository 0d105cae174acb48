"""The HTTP surface on fakeredis and SQLite: envelopes, statuses, auth, cache invalidation."""

from __future__ import annotations

import dataclasses
import gzip
import time
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from sqlalchemy import Engine, func, select
from starlette.testclient import TestClient

from api.app import EventpipeApp
from api.store import revoke_key
from shared.db import transaction
from shared.models import events
from shared.queue import (
    CONFIG_VERSION_KEY,
    PENDING_KEY,
    connect_async,
    make_queue,
    read_payload,
)
from shared.settings import Settings
from tests.factories import SEND
from tests.unit.conftest import SEED_DEFINITION, auth, make_client, make_project
from worker.context import WorkerContext
from worker.jobs import store_events

SEED = SEND


def setup_seed(client: TestClient, key: str, with_contact: bool = True) -> None:
    r = client.post("/v1/events", json=SEED_DEFINITION, headers=auth(key))
    assert r.status_code == 201, r.text
    if with_contact:
        r = client.post("/v1/contacts/email", json={"email": "jane@example.com"}, headers=auth(key))
        assert r.status_code == 200, r.text


def run_queued_jobs(ctx: WorkerContext) -> list[Any]:
    """Run every queued job's function in this process, as the worker would."""
    results = []
    for job in ctx.queue.rq.jobs:
        results.append(store_events(*job.args))
        ctx.queue.rq.remove(job)
    return results


def test_seed_request_is_queued_then_stored(
    client: TestClient, project: tuple[str, str, str], worker_ctx: WorkerContext
) -> None:
    setup_seed(client, project[1])
    r = client.post("/v1/events/send", json=SEED, headers=auth(project[1]))
    assert r.status_code == 202
    data = r.json()["data"]
    assert r.json()["success"] is True
    assert data["status"] == "queued" and data["contactId"] is None
    assert data["properties"] == SEED["eventProperties"]
    # The event is in Redis before the answer: a job carries it, and it is marked pending.
    [job] = worker_ctx.queue.rq.jobs
    assert [e["id"] for e in read_payload(job.args[0]).events] == [data["id"]]
    assert worker_ctx.redis.hexists(PENDING_KEY, data["id"])
    queued = client.get(f"/v1/events/{data['id']}", headers=auth(project[1])).json()["data"]
    assert queued["status"] == "queued" and queued["eventName"] == "order_completed"

    run_queued_jobs(worker_ctx)
    stored = client.get(f"/v1/events/{data['id']}", headers=auth(project[1])).json()["data"]
    assert stored["status"] == "stored"
    assert stored["contactId"] is not None and len(stored["contactId"]) == 24
    assert stored["createdAt"] == data["createdAt"]
    assert not worker_ctx.redis.hexists(PENDING_KEY, data["id"])


def test_unknown_contact_ends_failed_with_its_code(
    client: TestClient, project: tuple[str, str, str], worker_ctx: WorkerContext
) -> None:
    setup_seed(client, project[1], with_contact=False)
    event_id = client.post("/v1/events/send", json=SEED, headers=auth(project[1])).json()["data"][
        "id"
    ]
    run_queued_jobs(worker_ctx)
    data = client.get(f"/v1/events/{event_id}", headers=auth(project[1])).json()["data"]
    assert data["status"] == "failed"
    assert data["error"]["code"] == "CONTACT_NOT_FOUND_FOR_EVENT"


def test_event_of_another_project_is_404(
    client: TestClient, project: tuple[str, str, str], engine: Engine, fake_redis: Any
) -> None:
    setup_seed(client, project[1])
    event_id = client.post("/v1/events/send", json=SEED, headers=auth(project[1])).json()["data"][
        "id"
    ]
    _, other_key, _ = make_project(engine, fake_redis, "other")
    time.sleep(0.2)  # the new key reaches the cache at its next poll
    r = client.get(f"/v1/events/{event_id}", headers=auth(other_key))
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
    r = client.get("/v1/events/" + "0" * 24, headers=auth(project[1]))
    assert r.status_code == 404
    assert client.get("/v1/events/nothex", headers=auth(project[1])).status_code == 404


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer",
        "Basic abc",
        "Bearer AS_nope",
        "Bearer AS_000000000000000000000000_" + "a" * 43,
    ],
)
def test_bad_keys_are_401(client: TestClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    r = client.post("/v1/events/send", json=SEED, headers=headers)
    assert r.status_code == 401
    assert r.json() == {
        "success": False,
        "error": {"message": "Missing, invalid or revoked API key", "code": "UNAUTHORIZED"},
    }


def test_wrong_secret_for_a_real_key_id_is_401(
    client: TestClient, project: tuple[str, str, str]
) -> None:
    key_id = project[2]
    r = client.post("/v1/events/send", json=SEED, headers=auth(f"AS_{key_id}_" + "b" * 43))
    assert r.status_code == 401


def test_revoked_key_is_refused_after_the_version_bump(
    client: TestClient, project: tuple[str, str, str], engine: Engine, fake_redis: Any
) -> None:
    setup_seed(client, project[1])
    assert client.post("/v1/events/send", json=SEED, headers=auth(project[1])).status_code == 202
    with transaction(engine) as conn:
        revoke_key(project[2], conn=conn)
    fake_redis.incr(CONFIG_VERSION_KEY)
    deadline = time.monotonic() + 1.0
    status = 202
    while time.monotonic() < deadline and status != 401:
        status = client.post("/v1/events/send", json=SEED, headers=auth(project[1])).status_code
        time.sleep(0.02)
    assert status == 401


def test_size_limit_is_checked_before_auth(client: TestClient) -> None:
    body = b'{"eventName": "' + b"x" * 40_000 + b'"}'
    r = client.post("/v1/events/send", content=body, headers={"Authorization": "Bearer bad"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


@pytest.mark.parametrize("path", ["/v1/events/send", "/v1/events/batch", "/v1/contacts"])
def test_the_key_is_checked_before_the_body_is_read(client: TestClient, path: str) -> None:
    read: list[bytes] = []

    def body() -> Iterator[bytes]:
        read.append(b"{}")
        yield b"{}"

    r = client.post(path, content=body(), headers={"Authorization": "Bearer bad"})
    assert r.status_code == 401
    assert read == []  # the app never asked for the body


def test_gzip_body_is_inflated_and_a_bomb_is_413(
    client: TestClient, project: tuple[str, str, str]
) -> None:
    setup_seed(client, project[1])
    headers = {**auth(project[1]), "Content-Encoding": "gzip"}
    import json

    r = client.post(
        "/v1/events/send", content=gzip.compress(json.dumps(SEED).encode()), headers=headers
    )
    assert r.status_code == 202, r.text
    bomb = gzip.compress(b'{"eventName": "' + b"a" * 10_000_000 + b'"}')
    assert len(bomb) < 32 * 1024
    r = client.post("/v1/events/send", content=bomb, headers=headers)
    assert r.status_code == 413


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "VALIDATION_FAILED"),
        (b"", "VALIDATION_FAILED"),
        (b"[1, 2]", "VALIDATION_FAILED"),
        (b'{"eventName": NaN, "email": "a@b.co"}', "VALIDATION_FAILED"),
        (b'{"eventName": "order_completed"}', "EMAIL_OR_CONTACT_ID_REQUIRED"),
        (b'{"eventName": "nope", "email": "a@b.co"}', "EVENT_NOT_FOUND"),
        (
            b'{"eventName": "order_completed", "email": "a@b.co",'
            b' "eventProperties": {"order_total": 1e400}}',
            "INVALID_PROPERTY_VALUE",
        ),
    ],
)
def test_bad_bodies_get_the_contract_envelope(
    client: TestClient, project: tuple[str, str, str], body: bytes, code: str
) -> None:
    setup_seed(client, project[1])
    r = client.post("/v1/events/send", content=body, headers=auth(project[1]))
    assert r.status_code in (400, 404)
    assert r.json()["success"] is False and r.json()["error"]["code"] == code


def test_unknown_routes_and_methods_use_the_envelope(client: TestClient) -> None:
    r = client.get("/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
    r = client.delete("/v1/events/send")
    assert r.status_code == 405 and r.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_redis_unreachable_is_503_with_retry_after(
    settings: Settings, engine: Engine, fake_server: fakeredis.FakeServer
) -> None:
    _, key, _ = make_project(engine, fakeredis.FakeRedis(server=fake_server))
    dead = connect_async(dataclasses.replace(settings, redis_url="redis://127.0.0.1:1"))
    app_client = make_client(settings, engine, fake_server)
    app = app_client.app
    assert isinstance(app, EventpipeApp)
    app.clients = dataclasses.replace(app.clients, async_redis=dead)
    with app_client as c:
        setup_seed(c, key)
        r = c.post("/v1/events/send", json=SEED, headers=auth(key))
    assert r.status_code == 503
    assert r.headers["Retry-After"] == str(settings.retry_after_seconds)
    assert r.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    with transaction(engine) as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar() == 0


def test_definition_rules(client: TestClient, project: tuple[str, str, str]) -> None:
    headers = auth(project[1])
    r = client.post("/v1/events", json=SEED_DEFINITION, headers=headers)
    assert r.status_code == 201
    d = r.json()["data"]
    assert d["projectId"] == project[0] and d["description"] is None
    assert [p["suggestedValues"] for p in d["properties"]] == [[], [], [], []]
    r = client.post("/v1/events", json=SEED_DEFINITION, headers=headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "EVENT_ALREADY_EXISTS"
    r = client.post("/v1/events", json={"eventName": "bad-name"}, headers=headers)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "INVALID_EVENT_NAME_CHARACTERS"
    r = client.post(
        "/v1/events",
        json={"eventName": "e", "properties": [{"propertyName": "p", "type": "uuid"}]},
        headers=headers,
    )
    assert r.status_code == 400 and r.json()["error"]["details"][0]["field"] == "properties[0].type"


def test_max_definitions_per_project(client: TestClient, project: tuple[str, str, str]) -> None:
    headers = auth(project[1])
    for i in range(100):
        assert (
            client.post("/v1/events", json={"eventName": f"e{i}"}, headers=headers).status_code
            == 201
        )
    r = client.post("/v1/events", json={"eventName": "one_too_many"}, headers=headers)
    assert r.status_code == 400
    assert r.json()["error"] == {
        "message": "Maximum number of events (100) reached for this project.",
        "code": "MAX_EVENTS_REACHED",
    }


def test_contact_upsert_by_email(client: TestClient, project: tuple[str, str, str]) -> None:
    headers = auth(project[1])
    first = client.post(
        "/v1/contacts/email",
        json={
            "email": "  Jane@Example.COM ",
            "firstName": "Jane",
            "userId": "u1",
            "customFields": {"plan": "pro", "seats": 3},
        },
        headers=headers,
    ).json()["data"]
    assert first["email"] == "jane@example.com" and first["firstName"] == "Jane"
    second = client.post(
        "/v1/contacts/email",
        json={
            "email": "jane@example.com",
            "firstName": None,
            "userId": "",
            "customFields": {"seats": 4, "beta": True},
        },
        headers=headers,
    ).json()["data"]
    assert second["id"] == first["id"]
    assert second["firstName"] == "Jane" and second["userId"] is None
    assert second["customFields"] == {"plan": "pro", "seats": 4, "beta": True}
    r = client.post("/v1/contacts/email", json={"email": "nope"}, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "VALIDATION_FAILED"


def test_concurrent_sends_share_jobs(
    client: TestClient, project: tuple[str, str, str], worker_ctx: WorkerContext
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    setup_seed(client, project[1])
    with ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(
                lambda _: client.post("/v1/events/send", json=SEED, headers=auth(project[1])),
                range(200),
            )
        )
    assert {a.status_code for a in answers} == {202}
    queued = [e["id"] for job in worker_ctx.queue.rq.jobs for e in read_payload(job.args[0]).events]
    assert sorted(queued) == sorted(a.json()["data"]["id"] for a in answers)
    assert len(worker_ctx.queue.rq.jobs) < 200


def test_job_from_the_fake_queue_has_json_payload(
    client: TestClient, project: tuple[str, str, str], fake_redis: Any, settings: Settings
) -> None:
    setup_seed(client, project[1])
    client.post("/v1/events/send", json=SEED, headers=auth(project[1]))
    [job_id] = make_queue(settings, fake_redis).rq.job_ids
    raw = fake_redis.hget(f"rq:job:{job_id}", "data")
    import json
    import zlib

    func_name, _instance, args, _kwargs = json.loads(zlib.decompress(raw))
    assert func_name == "worker.jobs.store_events" and args[0]["v"] == 3


def test_the_send_path_runs_no_sql(
    client: TestClient, project: tuple[str, str, str], monkeypatch: Any
) -> None:
    """Once keys and definitions are cached, a store that is gone does not stop sends."""
    setup_seed(client, project[1])
    app: Any = client.app

    def no_store(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the send path touched the store")

    monkeypatch.setattr(app.state.resources.engine, "connect", no_store)
    monkeypatch.setattr(app.state.resources.engine, "begin", no_store)
    r = client.post("/v1/events/send", json=SEED, headers=auth(project[1]))
    assert r.status_code == 202


def test_api_never_imports_the_worker() -> None:
    import subprocess
    import sys

    code = "import sys, api.app; print(any(m.split('.')[0] == 'worker' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_api_written_jobs_are_rq_jobs(
    client: TestClient, project: tuple[str, str, str], worker_ctx: WorkerContext
) -> None:
    """JobWriter's jobs read back through RQ as RQ's own enqueue would have written them,
    with the same fields (a field a new RQ adds fails this test)."""
    from shared.queue.enqueue import JOB_FUNC, job_options

    setup_seed(client, project[1])
    client.post("/v1/events/send", json=SEED, headers=auth(project[1]))
    [written] = worker_ctx.queue.rq.jobs
    rq_queue = worker_ctx.queue.rq
    reference = rq_queue.enqueue_job(
        rq_queue.create_job(JOB_FUNC, args=written.args, **job_options(worker_ctx.settings))
    )
    reference_id = reference.id
    keys = worker_ctx.queue.keys
    written_fields = set(worker_ctx.redis.hgetall(keys.job(written.id)))
    reference_fields = {k for k, v in worker_ctx.redis.hgetall(keys.job(reference_id)).items() if v}
    assert written_fields == reference_fields
    assert written.func_name == reference.func_name == "worker.jobs.store_events"
    assert written.args == reference.args and written.kwargs == reference.kwargs == {}
    assert written.get_status() == reference.get_status() == "queued"
    options = job_options(worker_ctx.settings)
    assert written.timeout == reference.timeout == options["timeout"]
    assert written.result_ttl == reference.result_ttl == options["result_ttl"]
    assert written.failure_ttl == reference.failure_ttl == options["failure_ttl"]
    assert written.retries_left == reference.retries_left == worker_ctx.settings.job_retries
    assert written.description == reference.description == "eventpipe: a group of events"
    assert written.origin == reference.origin == worker_ctx.queue.name
    assert rq_queue.job_ids == [written.id, reference_id]


def test_backpressure_answers_503_past_the_limit_and_recovers_once_drained(
    settings: Settings,
    engine: Engine,
    fake_server: fakeredis.FakeServer,
    worker_ctx: WorkerContext,
    project: tuple[str, str, str],
) -> None:
    # One project: its share is the whole backlog, so the global limit is what answers.
    with make_client(
        settings, engine, fake_server, max_queued_events=5, project_backlog_share=1.0
    ) as c:
        setup_seed(c, project[1])
        answers = [c.post("/v1/events/send", json=SEED, headers=auth(project[1])) for _ in range(8)]
        assert [a.status_code for a in answers] == [202] * 5 + [503] * 3
        assert answers[-1].headers["Retry-After"] == str(settings.retry_after_seconds)
        assert answers[-1].json()["error"]["code"] == "SERVICE_UNAVAILABLE"
        run_queued_jobs(worker_ctx)
        deadline = time.monotonic() + 5  # the next poll of the backlog sees it drained
        while (
            r := c.post("/v1/events/send", json=SEED, headers=auth(project[1]))
        ).status_code != 202:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.05)


async def test_a_slow_older_reload_cannot_overwrite_a_newer_one() -> None:
    import asyncio

    from api.config_cache import ConfigCache
    from api.store import ConfigSnapshot

    loads = 0

    async def load() -> ConfigSnapshot:
        nonlocal loads
        loads += 1
        mine = loads
        await asyncio.sleep(0.05 if mine == 1 else 0)  # the first load is the slow one
        return ConfigSnapshot({f"k{mine}": ("p", "h")}, {})

    cache = ConfigCache(load, fakeredis.FakeAsyncRedis(), 10, 60)
    await asyncio.gather(cache.reload(), cache.reload())
    assert set(cache.snapshot.keys) == {"k2"}
