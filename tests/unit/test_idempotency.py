"""Idempotency-Key on the send path (fakeredis, SQLite)."""

from __future__ import annotations

import time
from typing import Any

import fakeredis
import pytest
from sqlalchemy import Engine
from starlette.testclient import TestClient

from api.idempotency import IN_FLIGHT, Answer, fingerprint, redis_key
from shared.errors import QueueUnavailable, ValidationFailed
from tests.factories import SEND
from tests.unit.conftest import auth, make_project, resources_of
from tests.unit.test_api import run_queued_jobs, setup_seed
from worker.context import WorkerContext

Project = tuple[str, str, str]


def send(client: TestClient, key: str, body: Any, idem: str | None, **kw: Any) -> Any:
    headers = auth(key) | ({"Idempotency-Key": idem} if idem is not None else {})
    if isinstance(body, bytes):
        return client.post("/v1/events/send", content=body, headers=headers, **kw)
    return client.post("/v1/events/send", json=body, headers=headers, **kw)


def queued_ids(ctx: WorkerContext) -> list[str]:
    return [e["id"] for job in ctx.queue.rq.jobs for e in job.args[0]["events"]]


def test_a_repeat_answers_the_first_answer_and_queues_nothing(
    client: TestClient, project: Project, worker_ctx: WorkerContext
) -> None:
    setup_seed(client, project[1])
    first = send(client, project[1], SEND, "order-1001")
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    # The same JSON written differently: keys reordered, other spacing.
    same = (
        b'{ "eventProperties": {"is_first_purchase": true, "currency": "USD",'
        b' "order_total": 129.99}, "email": "jane@example.com", "eventName": "order_completed"}'
    )
    again = send(client, project[1], same, "order-1001")
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert queued_ids(worker_ctx) == [first.json()["data"]["id"]]

    run_queued_jobs(worker_ctx)  # stored meanwhile: the repeat still answers the first answer
    later = send(client, project[1], SEND, "order-1001")
    assert later.json() == first.json() and later.headers["Idempotent-Replayed"] == "true"
    assert queued_ids(worker_ctx) == []


def test_the_same_key_with_another_body_is_422(client: TestClient, project: Project) -> None:
    setup_seed(client, project[1])
    assert send(client, project[1], SEND, "k").status_code == 202
    other = {**SEND, "eventProperties": {"order_total": 1}}
    r = send(client, project[1], other, "k")
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "IDEMPOTENCY_KEY_MISMATCH"


def test_a_key_in_flight_is_409(
    client: TestClient, project: Project, fake_redis: fakeredis.FakeRedis
) -> None:
    setup_seed(client, project[1])
    held = Answer(fingerprint(SEND), "6b07ed5912fdabcaa2e28e16", "t", IN_FLIGHT)
    fake_redis.set(redis_key(project[0], "k"), held.encode())
    r = send(client, project[1], SEND, "k")
    assert r.status_code == 409 and r.json()["error"]["code"] == "IDEMPOTENCY_KEY_IN_USE"


def test_a_refused_request_saves_nothing(
    client: TestClient, project: Project, fake_redis: fakeredis.FakeRedis
) -> None:
    setup_seed(client, project[1])
    bad = {**SEND, "eventProperties": {"order_total": "lots"}}
    assert send(client, project[1], bad, "k").json()["error"]["code"] == "INVALID_PROPERTY_VALUE"
    assert fake_redis.keys("eventpipe:idem:*") == []
    assert send(client, project[1], SEND, "k").status_code == 202


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (QueueUnavailable(), 503),
        # Not only the errors eventpipe models: any failure between the claim and the write.
        (RuntimeError("a bug"), 500),
    ],
)
def test_a_failed_enqueue_frees_the_key_at_once(
    client: TestClient,
    project: Project,
    fake_redis: fakeredis.FakeRedis,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    status: int,
) -> None:
    setup_seed(client, project[1])
    committer = resources_of(client).committer

    async def down(*args: Any) -> None:
        raise error

    with monkeypatch.context() as m:
        m.setattr(committer, "submit", down)
        r = send(client, project[1], SEND, "k")
        assert r.status_code == status
    assert fake_redis.keys("eventpipe:idem:*") == []
    r = send(client, project[1], SEND, "k")
    assert r.status_code == 202 and "Idempotent-Replayed" not in r.headers


def test_a_body_too_deep_to_fingerprint_is_400_and_claims_nothing(
    client: TestClient, project: Project, fake_redis: fakeredis.FakeRedis
) -> None:
    setup_seed(client, project[1])
    deep = b'{"eventName": "order_completed", "email": "jane@example.com", "x": '
    r = send(client, project[1], deep + b"[" * 260 + b"]" * 260 + b"}", "k")
    assert r.status_code == 400
    assert fake_redis.keys("eventpipe:idem:*") == []
    with pytest.raises(ValidationFailed):
        fingerprint(_nest(300))  # past what the encoder takes: 400, not orjson's error


def _nest(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def test_keys_belong_to_a_project_and_expire(
    client: TestClient,
    project: Project,
    engine: Engine,
    fake_redis: fakeredis.FakeRedis,
    worker_ctx: WorkerContext,
) -> None:
    setup_seed(client, project[1])
    first = send(client, project[1], SEND, "k").json()["data"]["id"]
    other = make_project(engine, fake_redis, "other")
    time.sleep(0.2)
    setup_seed(client, other[1])
    second = send(client, other[1], SEND, "k")
    assert second.status_code == 202 and second.json()["data"]["id"] != first
    ttl: int = fake_redis.ttl(redis_key(project[0], "k"))
    assert 24 * 3600 - 5 < ttl <= 24 * 3600
    assert sorted(queued_ids(worker_ctx)) == sorted([first, second.json()["data"]["id"]])


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_malformed_keys_are_400(client: TestClient, project: Project, key: str) -> None:
    setup_seed(client, project[1])
    headers = auth(project[1]) | {"Idempotency-Key": key}
    # httpx refuses to send some of these as str; bytes go through as the wire would carry them.
    r = client.post(
        "/v1/events/send",
        json=SEND,
        headers=[(k.encode(), v.encode("latin-1", "replace")) for k, v in headers.items()],
    )
    assert r.status_code == 400 and r.json()["error"]["details"][0]["field"] == "Idempotency-Key"


def test_fingerprints_compare_parsed_json() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert fingerprint({"a": [1, 2]}) != fingerprint({"a": [2, 1]})
