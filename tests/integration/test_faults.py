"""Faults on private servers: PostgreSQL stopped under a queued job (more in test_guarantees).

Each test starts its own server on a free port, so stopping it leaves the machine's services
and the rest of the suite alone.
"""

from __future__ import annotations

import time

import redis
from sqlalchemy import create_engine, select

from cli.migrate import upgrade
from shared.db import transaction
from shared.models import events
from shared.queue import JobWriter, enqueue_events, make_queue
from shared.settings import Settings
from tests.integration.conftest import REDIS_URL, service_env
from tests.integration.services import (
    PostgresCluster,
    start_worker,
    wait_until,
)
from tests.integration.test_pipeline import _event, _seed_store


def test_a_store_outage_is_waited_out_and_the_queued_job_is_stored(
    pg_cluster: PostgresCluster, redis_client: redis.Redis
) -> None:
    upgrade(pg_cluster.url)
    engine = create_engine(pg_cluster.url)
    project_id = _seed_store(engine)
    settings = Settings(database_url=pg_cluster.url, redis_url=REDIS_URL)
    queue = make_queue(settings, redis_client)
    event = _event(project_id, "jane@example.com")
    enqueue_events(JobWriter(queue), queue.connection, [event])
    engine.dispose()
    pg_cluster.stop()

    worker = start_worker(service_env(pg_cluster.url, REDIS_URL))
    try:
        # The worker takes the job, finds the store down, puts the job back and waits.
        wait_until(lambda: "requeued" in worker.output(), 30, "the worker to meet the outage")
        time.sleep(3)
        assert queue.rq.failed_job_registry.count == 0
        assert worker.proc.poll() is None, worker.output()
        pg_cluster.start()
        engine = create_engine(pg_cluster.url)

        def stored() -> bool:
            with transaction(engine) as conn:
                return conn.execute(select(events.c.id)).scalars().all() == [event["id"]]

        wait_until(stored, 60, "the event to be stored after the outage", step=0.3)
        assert queue.rq.failed_job_registry.count == 0
        engine.dispose()
    finally:
        worker.stop()
