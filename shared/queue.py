"""The queue contract between the API and the workers: names, the job payload, the enqueue.

A job carries a list of events as versioned JSON; the job function is named by its dotted path
so the API never imports the worker. Version 2 is `{"v": 2, "events": [event, ...]}`;
version 1 (one event per job, `{"v": 1, "event": event}`, the shape a one-job-per-event
producer writes) is still read. An event is the dict `accepted_event()` in shared.schema builds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from rq import Queue
from rq import Retry as JobRetry
from rq.serializers import JSONSerializer

from shared.errors import EventpipeError, QueueUnavailable
from shared.ids import new_id
from shared.settings import Settings

JOB_FUNC = "worker.jobs.store_events"
PAYLOAD_VERSION = 2
# event id -> "<project id>:<job id>" for every event between its enqueue and its outcome, so
# GET /v1/events/{id} can answer `queued` without a row per event in the store.
PENDING_KEY = "eventpipe:pending"
# Bumped on every change of keys or definitions; API processes poll it to drop their caches.
CONFIG_VERSION_KEY = "eventpipe:config-version"

Event = dict[str, Any]


def make_payload(events: Sequence[Event], *, replay: bool = False) -> dict[str, Any]:
    payload: dict[str, Any] = {"v": PAYLOAD_VERSION, "events": list(events)}
    if replay:
        payload["replay"] = True
    return payload


def read_payload(payload: Any) -> list[Event]:
    """The events of a job payload of either version; anything else is BAD_PAYLOAD."""
    version = payload.get("v") if isinstance(payload, Mapping) else None
    # `type(...) is int`: JSON true must not pass for version 1.
    if type(version) is int and version == 2 and isinstance(payload.get("events"), list):
        events = payload["events"]
    elif type(version) is int and version == 1 and isinstance(payload.get("event"), dict):
        events = [payload["event"]]
    else:
        raise EventpipeError(f"Unreadable job payload (version {version!r})", code="BAD_PAYLOAD")
    if not all(isinstance(e, dict) for e in events):
        raise EventpipeError("Job payload events must be objects", code="BAD_PAYLOAD")
    return list(events)


def connect_redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        health_check_interval=30,
        # redis-py's default retries back off for seconds; a request waiting on an enqueue
        # should hear "503, retry later" quickly instead.
        retry=quick_retry(),
    )


def quick_retry() -> Retry:
    return Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2)


def quick_async_retry() -> AsyncRetry:
    return AsyncRetry(ExponentialBackoff(cap=0.2, base=0.02), retries=2)


def make_queue(settings: Settings, connection: redis.Redis) -> Queue:
    return Queue(
        settings.queue_name,
        connection=connection,
        serializer=JSONSerializer,
        default_timeout=settings.job_timeout,
    )


def new_job_id() -> str:
    return f"g{new_id()}"


def add_job(
    queue: Queue,
    settings: Settings,
    payload: dict[str, Any],
    pipe: Any,
    *,
    job_id: str | None = None,
) -> str:
    """Put one job on `pipe` (not executed here); returns its id.

    `pipe` may be a redis.asyncio pipeline: RQ only queues commands on it, so the API can
    write RQ's own job format without a synchronous client.
    """
    job = queue.create_job(
        JOB_FUNC,
        args=(payload,),
        job_id=job_id or new_job_id(),
        timeout=settings.job_timeout,
        result_ttl=settings.result_ttl,
        failure_ttl=settings.failure_ttl,
        retry=JobRetry(max=settings.job_retries) if settings.job_retries > 0 else None,
    )
    queue.enqueue_job(job, pipeline=pipe)
    return str(job.id)


def mark_pending(pipe: Any, events: Iterable[Event], job_id: str) -> None:
    pipe.hset(PENDING_KEY, mapping={e["id"]: f"{e['projectId']}:{job_id}" for e in events})


def enqueue_events(queue: Queue, settings: Settings, events: Sequence[Event]) -> str:
    """One job for `events`, written with its pending marks in one MULTI/EXEC round trip.

    Raises QueueUnavailable when Redis cannot take it: the caller must not report the events
    as accepted.
    """
    try:
        with queue.connection.pipeline(transaction=True) as pipe:
            job_id = add_job(queue, settings, make_payload(events), pipe)
            mark_pending(pipe, events, job_id)
            pipe.execute()
    except redis.RedisError as exc:
        raise QueueUnavailable() from exc
    return job_id


async def enqueue_events_async(
    queue: Queue, settings: Settings, connection: aioredis.Redis, events: Sequence[Event]
) -> str:
    """`enqueue_events` for the event loop: the same job, written through redis.asyncio."""
    try:
        if not queue.redis_server_version:
            queue.redis_server_version = await server_version(connection)
        async with connection.pipeline(transaction=True) as pipe:
            job_id = add_job(queue, settings, make_payload(events), pipe)
            mark_pending(pipe, events, job_id)
            await pipe.execute()
    except redis.RedisError as exc:
        raise QueueUnavailable() from exc
    return job_id


async def server_version(connection: aioredis.Redis) -> tuple[int, int, int]:
    """What rq.utils.get_version reads, without a synchronous client (and its same fallback
    for servers without INFO, such as fakeredis)."""
    try:
        info = await connection.info("server")
    except redis.ResponseError:
        return (5, 0, 9)
    major, minor, patch = (str(info["redis_version"]).split(".") + ["0", "0"])[:3]
    return int(major), int(minor), int(patch)


def bump_config_version(connection: redis.Redis) -> None:
    connection.incr(CONFIG_VERSION_KEY)
