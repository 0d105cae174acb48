"""The naive peer's worker side: a plain RQ `SimpleWorker` on queue "naive" running
`store_one`, one event per job, each in its own transaction; RQ's defaults otherwise.

    python -m bench.naive worker      # one worker process (REDIS_URL, DATABASE_URL)
"""

from __future__ import annotations

import os
import sys
from typing import Any

import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
from sqlalchemy import create_engine, select

from shared.clock import iso_ms, utcnow
from shared.db import insert_ignoring_duplicates
from shared.ids import new_id
from shared.models import contacts, events
from worker.events import event_row

QUEUE_NAME = "naive"
BACKLOG_KEY = f"rq:queue:{QUEUE_NAME}"

# Module level, as in the tutorial: created lazily by SQLAlchemy, one pool per process.
engine = create_engine(os.environ.get("DATABASE_URL", "sqlite://"))


def make_event(project_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """An event dict in eventpipe's shape, from a send body (no coercion: the tutorial's)."""
    email = body.get("email")
    return {
        "id": new_id(),
        "projectId": project_id,
        "eventName": body["eventName"],
        "email": email.strip().lower() if isinstance(email, str) else None,
        "contactId": body.get("contactId"),
        "properties": body.get("eventProperties") or {},
        "createdAt": iso_ms(utcnow()),
    }


def store_one(event: dict[str, Any]) -> None:
    """Resolve the contact by email and insert the one row, in one transaction."""
    with engine.begin() as conn:
        contact_id = conn.execute(
            select(contacts.c.id).where(
                contacts.c.project_id == event["projectId"], contacts.c.email == event["email"]
            )
        ).scalar()
        if contact_id is None:
            raise LookupError(f"no contact {event['email']!r}")
        insert_ignoring_duplicates(conn, events, [event_row(event, contact_id, utcnow())])


def make_queue(connection: redis.Redis) -> Queue:
    return Queue(QUEUE_NAME, connection=connection, serializer=JSONSerializer)


def enqueue_backlog(
    connection: redis.Redis, project_id: str, body: dict[str, Any], count: int
) -> None:
    """`count` tutorial jobs (one event each), written with `enqueue_many` in pipelines."""
    queue = make_queue(connection)
    for start in range(0, count, 1000):
        datas = [
            Queue.prepare_data(store_one, args=(make_event(project_id, body),))
            for _ in range(min(1000, count - start))
        ]
        with connection.pipeline() as pipe:
            queue.enqueue_many(datas, pipeline=pipe)
            pipe.execute()


def run_worker() -> None:
    connection = redis.Redis.from_url(os.environ["REDIS_URL"])
    worker = SimpleWorker(
        [make_queue(connection)], connection=connection, serializer=JSONSerializer
    )
    # WARNING, as eventpipe's workers run here (LOG_LEVEL=WARNING): no log line per job.
    worker.work(logging_level="WARNING")


if __name__ == "__main__":
    if sys.argv[1:] != ["worker"]:
        sys.exit("usage: python -m bench.naive worker")
    run_worker()
