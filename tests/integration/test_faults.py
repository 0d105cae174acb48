"""Faults on private servers: PostgreSQL stopped under a queued job, Redis gone under the API.

Each test starts its own server on a free port, so stopping it leaves the machine's services
and the rest of the suite alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
import redis
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine

from shared.db import transaction
from shared.migrations import upgrade
from shared.models import events
from shared.queue import JobWriter, enqueue_events, make_queue
from shared.settings import Settings
from tests.integration.conftest import REDIS_URL, service_env
from tests.integration.services import (
    PostgresCluster,
    Proc,
    RedisServer,
    run_cli,
    start_api,
    start_worker,
    wait_until,
)
from tests.integration.test_pipeline import SEED, SEED_DEFINITION, _event, _seed_store, auth


@pytest.fixture
def pg_cluster(admin_engine: Engine) -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    yield cluster
    cluster.close()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.close()


def test_a_store_outage_is_waited_out_and_the_queued_job_is_stored(
    pg_cluster: PostgresCluster, redis_client: redis.Redis
) -> None:
    upgrade(pg_cluster.url)
    engine = create_engine(pg_cluster.url)
    project_id = _seed_store(engine)
    settings = Settings(database_url=pg_cluster.url, redis_url=REDIS_URL)
    queue = make_queue(settings, redis_client)
    event = _event(project_id, "jane@example.com")
    enqueue_events(JobWriter(queue, settings), queue.connection, [event])
    engine.dispose()
    pg_cluster.stop()

    worker = start_worker(service_env(pg_cluster.url, REDIS_URL))
    try:
        # The worker takes the job, finds the store down, puts the job back and waits.
        wait_until(lambda: "requeued" in worker.output(), 30, "the worker to meet the outage")
        time.sleep(3)
        assert queue.failed_job_registry.count == 0
        assert worker.proc.poll() is None, worker.output()
        pg_cluster.start()
        engine = create_engine(pg_cluster.url)

        def stored() -> bool:
            with transaction(engine) as conn:
                return conn.execute(select(events.c.id)).scalars().all() == [event["id"]]

        wait_until(stored, 60, "the event to be stored after the outage", step=0.3)
        assert queue.failed_job_registry.count == 0
        engine.dispose()
    finally:
        worker.stop()


def test_redis_unreachable_answers_503_never_202(
    private_redis: RedisServer, database_url: str, engine: Engine
) -> None:
    env = service_env(database_url, private_redis.url)
    project = json.loads(run_cli(env, "projects", "create", "acme", "--json"))
    api: Proc | None = None
    try:
        api, base = start_api(env)
        with httpx.Client(base_url=base, headers=auth(project["apiKey"]), timeout=10) as http:
            assert http.post("/v1/events", json=SEED_DEFINITION).status_code == 201
            assert http.post("/v1/events/send", json=SEED).status_code == 202
            private_redis.stop()
            answers = [http.post("/v1/events/send", json=SEED) for _ in range(5)]
            assert {a.status_code for a in answers} == {503}
            assert all(a.headers.get("Retry-After") for a in answers)
            assert {a.json()["error"]["code"] for a in answers} == {"SERVICE_UNAVAILABLE"}
            private_redis.start()
            wait_until(
                lambda: http.post("/v1/events/send", json=SEED).status_code == 202,
                15,
                "sends to be accepted again once Redis is back",
            )
    finally:
        if api is not None:
            api.stop()
