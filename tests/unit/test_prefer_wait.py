"""`Prefer: wait=N`: AutoSend's synchronous answers, on fakeredis pub/sub and SQLite."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from starlette.testclient import TestClient

from api.outcomes import parse_prefer_wait
from shared.db import transaction
from shared.models import events, failed_event_attempts, failed_events
from tests.factories import SEND
from tests.unit.conftest import auth
from tests.unit.test_api import setup_seed
from worker.context import WorkerContext
from worker.jobs import store_events

Project = tuple[str, str, str]


@pytest.fixture
def worker(worker_ctx: WorkerContext) -> Iterator[None]:
    """A worker in a thread: runs every job that appears on the fake queue."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(0.01):
            for job in worker_ctx.queue.rq.jobs:
                worker_ctx.queue.rq.remove(job)
                store_events(*job.args)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()


def send(client: TestClient, key: str, body: Any, prefer: str, **headers: str) -> Any:
    return client.post(
        "/v1/events/send", json=body, headers=auth(key) | {"Prefer": prefer} | headers
    )


def count(engine: Engine, table: Any) -> int:
    with transaction(engine) as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)


def test_a_stored_event_answers_201_with_the_stored_record(
    client: TestClient, project: Project, worker: None
) -> None:
    setup_seed(client, project[1])
    contact = client.post(
        "/v1/contacts/email", json={"email": "jane@example.com"}, headers=auth(project[1])
    ).json()["data"]
    r = send(client, project[1], SEND, "wait=5")
    assert r.status_code == 201 and r.headers["Preference-Applied"] == "wait=5"
    data = r.json()["data"]
    assert data["contactId"] == contact["id"] and "status" not in data
    assert data["properties"] == {
        "order_total": 129.99,
        "currency": "USD",
        "is_first_purchase": True,
    }
    stored = client.get(f"/v1/events/{data['id']}", headers=auth(project[1])).json()["data"]
    assert stored["status"] == "stored" and stored["createdAt"] == data["createdAt"]


def test_an_unknown_contact_answers_404_and_records_nothing(
    client: TestClient, project: Project, worker: None, engine: Engine, worker_ctx: WorkerContext
) -> None:
    setup_seed(client, project[1], with_contact=False)
    r = send(client, project[1], SEND, "respond-async, wait=5")
    assert r.status_code == 404 and r.json()["error"]["code"] == "CONTACT_NOT_FOUND_FOR_EVENT"
    assert r.headers["Preference-Applied"] == "wait=5"
    assert count(engine, failed_events) == 0 and count(engine, events) == 0
    assert count(engine, failed_event_attempts) == 0  # gone with its record (cascade)
    assert worker_ctx.queue.rq.failed_job_registry.count == 0


def test_no_outcome_within_the_wait_answers_the_usual_202(
    client: TestClient, project: Project, worker_ctx: WorkerContext
) -> None:
    setup_seed(client, project[1])
    r = send(client, project[1], SEND, "wait=1")
    assert r.status_code == 202 and r.json()["data"]["status"] == "queued"
    assert r.headers["Preference-Applied"] == "wait=1"
    assert worker_ctx.queue.rq.count == 1  # and it goes on as usual


def test_a_waited_answer_is_what_the_idempotency_key_replays(
    client: TestClient, project: Project, worker: None, engine: Engine
) -> None:
    setup_seed(client, project[1], with_contact=False)
    first = send(client, project[1], SEND, "wait=5", **{"Idempotency-Key": "k1"})
    assert first.status_code == 404
    # Nothing was recorded, so the key is free: the retry (contact now created) is stored.
    client.post("/v1/contacts/email", json={"email": "jane@example.com"}, headers=auth(project[1]))
    second = send(client, project[1], SEND, "wait=5", **{"Idempotency-Key": "k1"})
    assert second.status_code == 201 and "Idempotent-Replayed" not in second.headers
    again = send(client, project[1], SEND, "wait=5", **{"Idempotency-Key": "k1"})
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == second.json()
    assert count(engine, events) == 1


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("wait=5", 5),
        ("respond-async, wait=10", 10),
        ("WAIT = 3", 3),
        ('wait="7"', 7),
        ("wait=100", 30),
        ("wait=0", 0),
        ("wait=-1", None),
        ("wait=soon", None),
        ("return=minimal", None),
        ("wait=5;foo=bar", 5),
    ],
)
def test_prefer_parsing(header: str | None, expected: int | None) -> None:
    assert parse_prefer_wait(header, cap=30) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("wait=10", 10),
        ("wait=999999999", 30),  # capped
        ("wait=" + "9" * 5000, None),  # past 9 digits: ignored, never int() of 5000 digits
        ("wait=\u00b9", None),  # "¹".isdigit() is True, int("¹") raises
        ("wait=\u0663", None),  # Arabic-Indic 3
        ("wait=1e3", None),
        ("wait=-1", None),
        ("respond-async, wait=5", 5),
        ("," * 10_000, None),
    ],
)
def test_prefer_wait_takes_ascii_digits_only(header: str, expected: int | None) -> None:
    assert parse_prefer_wait(header, 30) == expected


def test_an_unreadable_prefer_is_ignored_and_its_key_answers_again(
    client: TestClient, project: Project
) -> None:
    """Prefer is read before the key is claimed; one it cannot read is ignored (RFC 7240)."""
    setup_seed(client, project[1])
    key = {"Idempotency-Key": "prefer-1"}
    first = send(client, project[1], SEND, "wait=" + "9" * 5000, **key)
    assert first.status_code == 202
    again = send(client, project[1], SEND, "", **key)
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"


def test_the_outcome_listener_survives_malformed_messages() -> None:
    """Anyone who can publish on the channel can send junk: every later outcome still
    arrives (fakeredis: pub/sub on a real Redis would reach other APIs)."""
    import asyncio

    import fakeredis

    from api.outcomes import Outcomes
    from shared.queue import OUTCOMES_CHANNEL

    async def scenario() -> str | None:
        client = fakeredis.FakeAsyncRedis()
        outcomes = Outcomes(client)
        await outcomes.start()
        try:
            with outcomes.expect("e1") as future:
                for junk in (b"1", b"[1]", b'{"a": 1}', b'[["e1", "stored"]]', b"[[[1], 2, 3]]"):
                    await client.publish(OUTCOMES_CHANNEL, junk)
                await client.publish(OUTCOMES_CHANNEL, b'[["e1", "stored", "c1"]]')
                return (await asyncio.wait_for(future, 5)).contact_id
        finally:
            await outcomes.stop()

    assert asyncio.run(scenario()) == "c1"
