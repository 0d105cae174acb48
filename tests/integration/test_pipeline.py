"""The pipeline for real: uvicorn, RQ worker processes, Redis and PostgreSQL."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx2 as httpx
import redis
from sqlalchemy import Engine, func, select

from api.store import create_project, upsert_contact
from shared.clock import iso_ms, parse_iso_ms, utcnow
from shared.db import transaction
from shared.ids import new_id
from shared.models import contacts, events, failed_events
from shared.queue import JobWriter, enqueue_events, make_payload, make_queue
from shared.queue.enqueue import JOB_FUNC, job_options
from shared.settings import Settings
from tests.factories import DEFINITION, SEND
from tests.integration.services import Proc, run_cli, start_api, start_worker, wait_until

# The seed's definition and request: the same ones `eventpipe run` sets up for newcomers.
SEED_DEFINITION: dict[str, Any] = DEFINITION
SEED: dict[str, Any] = SEND


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_project(env: dict[str, str]) -> dict[str, str]:
    created: dict[str, str] = json.loads(run_cli(env, "projects", "create", "acme", "--json"))
    return created


def count(engine: Engine, table: Any) -> int:
    with transaction(engine) as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)


def test_seed_request_is_stored_with_coerced_properties_and_resolved_contact(
    env: dict[str, str], engine: Engine, procs_cleanup: list[Proc]
) -> None:
    project = new_project(env)
    api, base = start_api(env)
    procs_cleanup.append(api)
    procs_cleanup.append(start_worker(env))
    with httpx.Client(base_url=base, headers=auth(project["apiKey"]), timeout=10) as http:
        assert http.post("/v1/events", json=SEED_DEFINITION).status_code == 201
        contact = http.post("/v1/contacts/email", json={"email": "Jane@Example.com"}).json()
        body = {**SEED, "eventProperties": {**SEED["eventProperties"], "order_total": "129.99"}}
        accepted = http.post("/v1/events/send", json=body)
        assert accepted.status_code == 202, accepted.text
        data = accepted.json()["data"]
        assert data["status"] == "queued"

        def stored() -> bool:
            return bool(http.get(f"/v1/events/{data['id']}").json()["data"]["status"] == "stored")

        wait_until(stored, 20, "the event to be stored")
        record = http.get(f"/v1/events/{data['id']}").json()["data"]
    assert record["contactId"] == contact["data"]["id"]
    assert record["properties"] == SEED["eventProperties"]
    with transaction(engine) as conn:
        row = conn.execute(select(events).where(events.c.id == data["id"])).one()
    assert row.project_id == project["projectId"]
    assert row.contact_id == contact["data"]["id"]
    assert row.properties == {"order_total": 129.99, "currency": "USD", "is_first_purchase": True}
    assert row.created_at == parse_iso_ms(data["createdAt"])
    assert row.seq is not None


def _event(
    project_id: str, email: str = "jane@example.com", *, created_at: datetime | None = None
) -> dict[str, Any]:
    """An event as the API enqueues it, created now unless `created_at` says when."""
    return {
        "id": new_id(),
        "projectId": project_id,
        "eventName": "order_completed",
        "email": email,
        "contactId": None,
        "properties": {"order_total": 1},
        "createdAt": iso_ms(created_at or utcnow()),
    }


def _seed_store(engine: Engine) -> str:
    with transaction(engine) as conn:
        project_id, _ = create_project("direct", conn=conn)
        upsert_contact(project_id, "jane@example.com", {}, conn=conn)
    return project_id


def _settings(env: dict[str, str]) -> Settings:
    return Settings(database_url=env["DATABASE_URL"], redis_url=env["REDIS_URL"])


def test_unknown_contact_fails_alone_while_its_batch_mates_are_stored(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis
) -> None:
    project_id = _seed_store(engine)
    settings = _settings(env)
    queue = make_queue(settings, redis_client)
    good = [_event(project_id, "jane@example.com") for _ in range(3)]
    bad = _event(project_id, "ghost@example.com")
    enqueue_events(JobWriter(queue), queue.connection, [good[0], bad, *good[1:]])
    worker = start_worker(env, "--burst")
    assert worker.proc.wait(60) == 0, worker.output()

    with transaction(engine) as conn:
        stored = set(conn.execute(select(events.c.id)).scalars())
        failed = conn.execute(select(failed_events)).one()
    assert stored == {e["id"] for e in good}
    assert failed.id == bad["id"] and failed.code == "CONTACT_NOT_FOUND_FOR_EVENT"
    assert queue.rq.failed_job_registry.get_job_ids() == [bad["id"]]
    job = queue.rq.fetch_job(bad["id"])
    assert job is not None and job.meta["code"] == "CONTACT_NOT_FOUND_FOR_EVENT"


def test_the_same_events_enqueued_twice_are_stored_once(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis
) -> None:
    project_id = _seed_store(engine)
    settings = _settings(env)
    queue = make_queue(settings, redis_client)
    payload = make_payload([_event(project_id, "jane@example.com") for _ in range(50)])
    for _ in range(2):  # through RQ's own enqueue
        queue.rq.enqueue_job(
            queue.rq.create_job(JOB_FUNC, args=(payload,), **job_options(settings))
        )
    assert queue.rq.count == 2
    worker = start_worker(env, "--burst")
    assert worker.proc.wait(60) == 0, worker.output()
    assert count(engine, events) == 50
    assert queue.rq.failed_job_registry.count == 0


def test_revoked_key_is_refused_within_a_second_by_every_api_process(
    env: dict[str, str], engine: Engine, procs_cleanup: list[Proc]
) -> None:
    project = new_project(env)
    api, base = start_api(env, workers=2)
    procs_cleanup.append(api)
    key = json.loads(run_cli(env, "keys", "create", "--project", project["projectId"], "--json"))
    with httpx.Client(base_url=base, timeout=10) as http:
        # A key made by the CLI reaches this process at its next config poll (0.5 s).
        wait_until(
            lambda: (
                http.post(
                    "/v1/events", json=SEED_DEFINITION, headers=auth(key["apiKey"])
                ).status_code
                == 201
            ),
            timeout=2,
            what="the new key to be accepted",
        )

        # Other API processes learn of the new key and definition within a second (the
        # documented bound); one keep-alive connection would only ever reach one of them.
        time.sleep(1.0)
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(
                    lambda _: http.post("/v1/events/send", json=SEED, headers=auth(key["apiKey"])),
                    range(400),
                )
            )
        assert {a.status_code for a in answers} == {202}, [a.text for a in answers][:3]
        ids = [a.json()["data"]["id"] for a in answers]
        assert len(set(ids)) == 400
        run_cli(env, "keys", "revoke", key["keyId"])
        time.sleep(1.0)
        statuses = {
            http.post("/v1/events/send", json=SEED, headers=auth(key["apiKey"])).status_code
            for _ in range(40)
        }
        # The project's first key still works: revocation is per key.
        other = http.post("/v1/events/send", json=SEED, headers=auth(project["apiKey"]))
    assert statuses == {401}
    assert other.status_code == 202
    with transaction(engine) as conn:
        assert conn.execute(select(func.count()).select_from(contacts)).scalar() == 0
