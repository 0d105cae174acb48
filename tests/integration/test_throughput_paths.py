"""The grouped send path for real: backpressure, and cancelled requests losing nothing."""

from __future__ import annotations

import asyncio
import json
import signal

import httpx2 as httpx
import redis
from sqlalchemy import Engine, select

from shared.db import transaction
from shared.models import events
from shared.queue import PENDING_KEY
from tests.integration.services import Proc, run_cli, start_api, start_worker, wait_until
from tests.integration.test_pipeline import SEED, SEED_DEFINITION, auth


def _project_with_contact(env: dict[str, str], base: str) -> str:
    key: str = json.loads(run_cli(env, "projects", "create", "acme", "--json"))["apiKey"]
    with httpx.Client(base_url=base, headers=auth(key), timeout=10) as http:
        # A key created by the CLI reaches a running API at its next config poll.
        wait_until(lambda: http.get("/v1/events/" + "0" * 24).status_code == 404, 5, "the key")
        assert http.post("/v1/events", json=SEED_DEFINITION).status_code == 201
        assert http.post("/v1/contacts/email", json={"email": "jane@example.com"}).is_success
    return key


def test_backpressure_refuses_past_the_limit_and_recovers_when_drained(
    env: dict[str, str], redis_client: redis.Redis, procs_cleanup: list[Proc]
) -> None:
    # One project: its share is the whole backlog, so the global limit is what answers.
    env = {**env, "MAX_QUEUED_EVENTS": "30", "PROJECT_BACKLOG_SHARE": "1"}
    api, base = start_api(env)
    procs_cleanup.append(api)
    key = _project_with_contact(env, base)
    with httpx.Client(base_url=base, headers=auth(key), timeout=10) as http:
        statuses = [http.post("/v1/events/send", json=SEED).status_code for _ in range(40)]
        # The limit is soft by the events one backlog poll's round trip can miss: a few.
        assert statuses[:30] == [202] * 30
        assert statuses[-5:] == [503] * 5
        refused = http.post("/v1/events/send", json=SEED)
        assert refused.headers["Retry-After"] and refused.json()["error"]["code"] == (
            "SERVICE_UNAVAILABLE"
        )
        queued = redis_client.hlen(PENDING_KEY)
        assert queued == statuses.count(202) <= 35  # nothing refused reached Redis
        procs_cleanup.append(start_worker(env))
        wait_until(lambda: redis_client.hlen(PENDING_KEY) == 0, 30, "the backlog to drain")
        wait_until(
            lambda: http.post("/v1/events/send", json=SEED).status_code == 202,
            5,
            "sends to be accepted again",
        )


async def _send_many(base: str, key: str, count: int) -> tuple[list[str], int]:
    """Half the requests give up after 2 ms (the client closes the connection mid-flight)."""
    accepted: list[str] = []
    abandoned = 0
    patient = httpx.AsyncClient(base_url=base, headers=auth(key), timeout=10)
    hasty = httpx.AsyncClient(base_url=base, headers=auth(key), timeout=0.002)

    async def one(i: int) -> None:
        nonlocal abandoned
        client = hasty if i % 2 else patient
        try:
            r = await client.post("/v1/events/send", json=SEED)
        except httpx.TimeoutException:
            abandoned += 1
            return
        assert r.status_code == 202, r.text
        accepted.append(r.json()["data"]["id"])

    await asyncio.gather(*(one(i) for i in range(count)))
    await patient.aclose()
    await hasty.aclose()
    return accepted, abandoned


def test_requests_cancelled_mid_flight_lose_no_accepted_event(
    env: dict[str, str], engine: Engine, procs_cleanup: list[Proc]
) -> None:
    api, base = start_api(env)
    procs_cleanup.append(api)
    key = _project_with_contact(env, base)
    accepted, abandoned = asyncio.run(_send_many(base, key, 600))
    assert abandoned > 0, "no request was cancelled: the test did not test anything"
    procs_cleanup.append(start_worker(env))

    def all_stored() -> bool:
        with transaction(engine) as conn:
            stored = set(conn.execute(select(events.c.id)).scalars())
        return set(accepted) <= stored

    wait_until(all_stored, 60, "every accepted event to be stored", step=0.3)
    assert api.proc.poll() is None, api.output()
    assert "Traceback" not in api.output(), api.output()


async def _send_then_sigterm(base: str, key: str, api: Proc, count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(
        base_url=base, headers=auth(key), timeout=10, limits=limits
    ) as client:
        # Open the connections first, so the signal meets requests already in the server.
        await asyncio.gather(*(client.post("/v1/events/send", json=SEED) for _ in range(50)))
        sends = [
            asyncio.create_task(client.post("/v1/events/send", json=SEED)) for _ in range(count)
        ]
        # The signal comes once answers flow: others are then waiting on their group.
        pending: set[asyncio.Task[httpx.Response]] = set(sends)
        while pending and not any(_accepted(t) for t in sends if t.done()):
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        api.proc.send_signal(signal.SIGTERM)
        done = await asyncio.gather(*sends, return_exceptions=True)
    errors = [repr(r) for r in done if not isinstance(r, httpx.Response)]
    assert len(errors) < len(done), errors[:3]
    return [r for r in done if isinstance(r, httpx.Response)]


def _accepted(task: asyncio.Task[httpx.Response]) -> bool:
    return task.exception() is None and task.result().status_code == 202


def test_sigterm_answers_the_waiting_requests_and_every_202_is_in_redis(
    env: dict[str, str], redis_client: redis.Redis, procs_cleanup: list[Proc]
) -> None:
    env = {**env, "LOG_LEVEL": "INFO"}  # uvicorn says at INFO that it shut down gracefully
    api, base = start_api(env)
    procs_cleanup.append(api)
    key = _project_with_contact(env, base)
    answers = asyncio.run(_send_then_sigterm(base, key, api, 300))
    # uvicorn re-raises the signal once it has shut down gracefully: -15 is the clean exit.
    assert api.proc.wait(30) in (0, -signal.SIGTERM), api.output()
    assert "Application shutdown complete" in api.output()
    assert {a.status_code for a in answers} <= {202, 503}, {a.text for a in answers}
    accepted = [a.json()["data"]["id"] for a in answers if a.status_code == 202]
    assert accepted, f"no answer before SIGTERM: the test tested nothing ({answers})"
    with redis_client.pipeline() as pipe:
        for event_id in accepted:
            pipe.hexists(PENDING_KEY, event_id)
        assert all(pipe.execute())
