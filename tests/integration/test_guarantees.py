"""Delivery guarantees against real processes: `Prefer: wait`, idempotent retries, and faults
that must lose and double nothing. Rows are counted at the end against the ids the API
accepted. A test that stops or kills a server runs its own instance of it."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2 as httpx
import redis
from sqlalchemy import Engine, create_engine, func, select

from cli.migrate import upgrade
from shared.db import transaction
from shared.models import events, failed_event_attempts, failed_events
from shared.queue import PENDING_KEY, make_queue
from shared.settings import Settings
from tests.integration.conftest import REDIS_URL, service_env
from tests.integration.services import (
    Load,
    PostgresCluster,
    Proc,
    RedisServer,
    run_cli,
    send_event,
    start_api,
    start_worker,
    wait_until,
)
from tests.integration.test_pipeline import SEED, SEED_DEFINITION, auth


def _project(env: dict[str, str], base: str, contact: bool = True) -> str:
    key: str = json.loads(run_cli(env, "projects", "create", "acme", "--json"))["apiKey"]
    with httpx.Client(base_url=base, headers=auth(key), timeout=10) as http:
        wait_until(lambda: http.get("/v1/events").status_code == 200, 5, "the new key")
        assert http.post("/v1/events", json=SEED_DEFINITION).status_code == 201
        # The other API processes (workers=2) see the new definition at their next config
        # poll: within the documented second.
        time.sleep(1.0)
        if contact:
            assert http.post("/v1/contacts/email", json={"email": "jane@example.com"}).is_success
    return key


def _stored_ids(engine: Engine) -> list[str]:
    with transaction(engine) as conn:
        return list(conn.execute(select(events.c.id)).scalars())


def _count(engine: Engine, table: Any) -> int:
    with transaction(engine) as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)


def _load(base: str, key: str, threads: int) -> Load:
    """Threads sending the seed event until stopped (daemons), pausing after any answer but
    202 and after a request with no answer."""
    return Load(
        base,
        auth(key),
        [send_event(SEED)] * threads,
        pause_after=lambda status: status != 202,
        daemon=True,
        join_timeout=15,
    )


# --- Prefer: wait ------------------------------------------------------------------------


def test_prefer_wait_gives_autosends_answers(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis, procs_cleanup: list[Proc]
) -> None:
    api, base = start_api(env, workers=2)
    procs_cleanup.append(api)
    key = _project(env, base)
    wait = {"Prefer": "wait=10"}
    with httpx.Client(base_url=base, headers=auth(key), timeout=30) as http:
        # No worker yet: after the wait, the usual 202; the event goes on.
        late = http.post("/v1/events/send", json=SEED, headers={"Prefer": "wait=1"})
        assert late.status_code == 202 and late.headers["Preference-Applied"] == "wait=1"
        procs_cleanup.append(start_worker(env))
        wait_until(lambda: _stored_ids(engine) == [late.json()["data"]["id"]], 30, "stored")

        # Both API processes get their waiters' outcomes (one subscription each): a new
        # connection per request, in parallel, reaches both.
        def waited(_: int) -> httpx.Response:
            return httpx.post(
                f"{base}/v1/events/send", json=SEED, headers=auth(key) | wait, timeout=30
            )

        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(waited, range(10)))
        assert {a.status_code for a in answers} == {201}
        contact = http.post("/v1/contacts/email", json={"email": "jane@example.com"})
        assert {a.json()["data"]["contactId"] for a in answers} == {contact.json()["data"]["id"]}

        unknown = {**SEED, "email": "nobody@example.com"}
        missing = http.post("/v1/events/send", json=unknown, headers=wait)
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "CONTACT_NOT_FOUND_FOR_EVENT"
    # As AutoSend: nothing recorded, neither in the store nor in RQ's failed registry.
    assert _count(engine, failed_events) == _count(engine, failed_event_attempts) == 0
    assert redis_client.zcard("rq:failed:eventpipe") == 0
    assert _count(engine, events) == 11


def test_the_outcome_subscription_outlives_more_than_redis_pys_default_timeout_of_idle(
    env: dict[str, str], procs_cleanup: list[Proc]
) -> None:
    """redis-py 8.0.x dropped a pub/sub connection left idle past its 5 s default socket
    timeout; 8.1 does not, and the subscriber sets no timeout (why pyproject asks for
    redis>=8.1). After 7 s with no message at all, a waited send still gets its 201."""
    api, base = start_api(env)
    procs_cleanup.append(api)
    key = _project(env, base)
    procs_cleanup.append(start_worker(env))
    with httpx.Client(base_url=base, headers=auth(key), timeout=30) as http:
        time.sleep(7)  # the idle period is what is tested: no outcome is published meanwhile
        answer = http.post("/v1/events/send", json=SEED, headers={"Prefer": "wait=10"})
    assert answer.status_code == 201, answer.text


# --- fault 5: the same key retried in parallel while a worker is killed ---------------


def test_parallel_retries_of_one_key_make_one_event_while_a_worker_dies(
    env: dict[str, str], engine: Engine, procs_cleanup: list[Proc]
) -> None:
    api, base = start_api(env)
    procs_cleanup.append(api)
    key = _project(env, base)
    first_worker = start_worker(env)
    procs_cleanup.append(first_worker)
    headers = auth(key) | {"Idempotency-Key": "checkout-42"}

    def attempt(_: int) -> httpx.Response:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            return http.post("/v1/events/send", json=SEED)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(attempt, range(20)))
        os.kill(first_worker.proc.pid, signal.SIGKILL)
    procs_cleanup.append(start_worker(env))
    # Every answer is the one event, or "in flight, retry": never a second event.
    assert {a.status_code for a in answers} <= {202, 409}
    ids = {a.json()["data"]["id"] for a in answers if a.status_code == 202}
    assert len(ids) == 1
    retried = [attempt(0) for _ in range(3)]
    assert {r.json()["data"]["id"] for r in retried} == ids
    assert all(r.headers.get("Idempotent-Replayed") == "true" for r in retried)
    wait_until(lambda: _stored_ids(engine) == list(ids), 60, "the one event stored")
    time.sleep(1)
    assert _stored_ids(engine) == list(ids)


# --- fault 2: PostgreSQL stopped for 60 s under load --------------------------------------


def test_a_60_second_store_outage_under_load_loses_and_doubles_nothing(
    pg_cluster: PostgresCluster, redis_client: redis.Redis, procs_cleanup: list[Proc]
) -> None:
    upgrade(pg_cluster.url)
    env = service_env(pg_cluster.url, REDIS_URL)
    api, base = start_api(env)
    procs_cleanup.append(api)
    key = _project(env, base)
    for _ in range(2):
        procs_cleanup.append(start_worker(env))
    with _load(base, key, threads=3) as load:
        time.sleep(3)
        pg_cluster.stop()
        time.sleep(60)
        during = load.accepted()
        pg_cluster.start()
        time.sleep(3)
    accepted = load.accepted_ids()
    assert during > 0 and len(accepted) > during  # the API kept accepting throughout
    engine = create_engine(pg_cluster.url)
    try:
        wait_until(lambda: redis_client.hlen(PENDING_KEY) == 0, 120, "the backlog to drain")
        stored = _stored_ids(engine)
        assert len(stored) == len(set(stored))
        assert set(stored) == set(accepted)
        assert _count(engine, failed_events) == 0
        assert redis_client.zcard("rq:failed:eventpipe") == 0
    finally:
        engine.dispose()


# --- fault 3: Redis away and back, with the same API and workers --------------------------


def test_sending_works_again_when_redis_is_back_without_restarts(
    database_url: str, engine: Engine, procs_cleanup: list[Proc]
) -> None:
    server = RedisServer()
    try:
        env = service_env(database_url, server.url)
        api, base = start_api(env)
        procs_cleanup.append(api)
        key = _project(env, base)
        procs_cleanup.append(start_worker(env))
        with httpx.Client(base_url=base, headers=auth(key), timeout=10) as http:
            before = http.post("/v1/events/send", json=SEED).json()["data"]["id"]
            wait_until(lambda: _stored_ids(engine) == [before], 30, "the first event stored")
            server.stop()
            down = [http.post("/v1/events/send", json=SEED) for _ in range(5)]
            assert {(a.status_code, a.json()["error"]["code"]) for a in down} == {
                (503, "SERVICE_UNAVAILABLE")
            }
            assert all(a.headers.get("Retry-After") for a in down)
            server.start()  # empty: no AOF; the keys and definitions come from the store
            wait_until(
                lambda: http.post("/v1/events/send", json=SEED).status_code == 202,
                20,
                "sends to be accepted again",
            )
            after = http.post("/v1/events/send", json=SEED).json()["data"]["id"]
        # The same worker process takes the new events from the restarted Redis.
        wait_until(lambda: after in _stored_ids(engine), 60, "an event sent after the restart")
    finally:
        server.close()


# --- fault 6: the backlog over its limit, under load ---------------------------------------


def test_a_backlog_over_its_limit_refuses_before_redis_would(
    database_url: str, engine: Engine, procs_cleanup: list[Proc]
) -> None:
    """Redis capped at 4 MB with noeviction: with no backpressure the load would fill it
    within seconds, and Redis would answer OOM to writes. The API refuses first (503 with
    Retry-After), Redis refuses nothing, and sends succeed again once workers drain."""
    server = RedisServer(config={"maxmemory": "4mb", "maxmemory-policy": "noeviction"})
    try:
        # 2,000 events fill about half of the 4 MB in the small groups of this load (5,000
        # filled 97% of it, and a worker cannot drain a Redis too full for its own finishing
        # writes: the README's sizing advice, kept here).
        env = service_env(
            database_url, server.url, MAX_QUEUED_EVENTS="2000", PROJECT_BACKLOG_SHARE="1"
        )
        api, base = start_api(env)
        procs_cleanup.append(api)
        key = _project(env, base)
        with _load(base, key, threads=6) as load:
            wait_until(lambda: load.statuses()[503] >= 50, 60, "the backlog limit")
        accepted = load.accepted_ids()
        client = redis.Redis.from_url(server.url)
        errors: dict[str, Any] = client.info("errorstats")
        assert not any("OOM" in name for name in errors), errors
        # The limit is soft by what one backlog poll (0.1 s) lets through.
        assert 2000 <= len(accepted) <= 3000, len(accepted)
        memory: dict[str, Any] = client.info("memory")
        print(f"used_memory at the limit: {memory['used_memory_human']}")
        procs_cleanup.append(start_worker(env))
        with httpx.Client(base_url=base, headers=auth(key), timeout=10) as http:
            wait_until(
                lambda: http.post("/v1/events/send", json=SEED).status_code == 202,
                60,
                "sends to be accepted again",
            )
        wait_until(lambda: client.hlen(PENDING_KEY) == 0, 60, "the backlog to drain")
        stored = _stored_ids(engine)
        assert len(stored) == len(set(stored)) and set(accepted) <= set(stored)
        client.close()
    finally:
        server.close()


# --- fault 1: a worker SIGKILLed in the middle of a batch ---------------------------------


def test_a_worker_killed_mid_batch_is_recovered_with_the_default_settings(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis, procs_cleanup: list[Proc]
) -> None:
    """The worker is caught inside its insert (the events table is locked), then SIGKILLed.
    The job it ran and the group jobs it claimed are RQ started work; with the default
    settings their entries expire and RQ's StartedJobRegistry cleanup, at another worker's
    maintenance, requeues each of them exactly once (one retry spent each). Every accepted
    event is stored, once, within the 60 s the README promises, and every one of those jobs
    ends finished in RQ's finished registry."""
    defaults = {k: v for k, v in env.items() if not k.startswith("WORKER_")}
    api, base = start_api(defaults)
    procs_cleanup.append(api)
    key = _project(defaults, base)
    with httpx.Client(base_url=base, headers=auth(key), timeout=10) as http:
        accepted = [
            http.post("/v1/events/send", json=SEED).json()["data"]["id"] for _ in range(200)
        ]
    queue = make_queue(Settings(redis_url=REDIS_URL), redis_client)
    with engine.connect() as blocker:
        blocker.exec_driver_sql("BEGIN")
        blocker.exec_driver_sql("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        victim = start_worker(defaults)
        procs_cleanup.append(victim)
        wait_until(lambda: _waiting_on_lock(engine), 30, "the worker to be inside its insert")
        taken = queue.rq.started_job_registry.get_job_ids(cleanup=False)
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()
        blocker.exec_driver_sql("ROLLBACK")
    assert len(taken) > 1  # the running job and the group jobs it claimed
    killed_at = time.monotonic()
    procs_cleanup.append(start_worker(defaults))
    wait_until(lambda: len(_stored_ids(engine)) == len(accepted), 60, "every event stored")
    print(f"recovered {time.monotonic() - killed_at:.1f} s after the kill")
    stored = _stored_ids(engine)
    assert sorted(stored) == sorted(accepted)
    wait_until(lambda: redis_client.hlen(PENDING_KEY) == 0, 10, "the outcomes recorded")
    finished = set(queue.rq.finished_job_registry.get_job_ids())
    retries = Settings().job_retries
    for job_id in taken:
        job = queue.rq.fetch_job(job_id)
        assert job is not None and job.get_status() == "finished" and job_id in finished
        assert job.retries_left == retries - 1, job_id  # recovered once, by one path
    assert queue.rq.started_job_registry.get_job_ids(cleanup=False) == []
    assert redis_client.keys("eventpipe:claimed:*") == []


def _waiting_on_lock(engine: Engine) -> bool:
    with engine.connect() as conn:
        waiting = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'events'::regclass"
        ).scalar()
    return bool(waiting)
