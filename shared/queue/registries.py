"""RQ's registries and job hashes as eventpipe reads and writes them: failed events split out
of their batch, forgetting them, replay's atomic requeue, the queue's figures, a queued job's
events, and the job running in this worker."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from rq import Worker, get_current_job
from rq.job import JobStatus
from rq.serializers import JSONSerializer
from rq.utils import utcparse

from shared.clock import aware, utcnow
from shared.errors import EventpipeError
from shared.queue.connect import JobQueue
from shared.queue.enqueue import JOB_FUNC, JobWriter, job_options, new_job_id, payload_of
from shared.queue.keys import PENDING_KEY, PROJECT_QUEUED_KEY, RQKeys
from shared.queue.payload import EVENT, REPLAY, Event, Payload, make_payload, read_payload

# Statuses of a job on its way (queued, running, or about to be queued again): an event whose
# own job has one of them is not requeued by a replay.
ON_ITS_WAY = tuple(
    s.value
    for s in (
        JobStatus.QUEUED,
        JobStatus.STARTED,
        JobStatus.SCHEDULED,
        JobStatus.DEFERRED,
        JobStatus.READY_TO_ENQUEUE,
        JobStatus.RATE_LIMITED,
    )
)

# --- failed events -------------------------------------------------------------------------


def add_failed_event(queue: JobQueue, pipe: Any, event: Event, error: EventpipeError) -> None:
    """On `pipe`: `event` as a failed job of its own, keyed by its id, its error in the meta,
    in RQ's FailedJobRegistry, so `rq requeue` (or `eventpipe replay`) runs exactly it again.
    No retries: a replay that fails again is listed again, it does not loop."""
    job = queue.rq.create_job(
        JOB_FUNC,
        args=(make_payload([event], EVENT),),
        job_id=event["id"],
        meta={"code": error.code, "message": error.message, "projectId": event["projectId"]},
        status=JobStatus.FAILED,
        **{**job_options(queue.settings, EVENT), "retry": None},
    )
    job.origin = queue.name
    job.save(pipeline=pipe)
    queue.rq.failed_job_registry.add(
        job,
        ttl=queue.settings.failure_ttl,
        exc_string=f"{error.code}: {error.message}",
        pipeline=pipe,
    )


def forget_failed_jobs(queue: JobQueue, ids: Sequence[str]) -> None:
    """Remove the events' own failed jobs from RQ, so `rq requeue` cannot bring a purged
    event back. Only jobs RQ lists as failed: a job queued or running is left alone."""
    if not ids:
        return
    keys = queue.keys
    with queue.connection.pipeline(transaction=False) as pipe:
        for event_id in ids:
            pipe.hget(keys.job(event_id), "status")
        statuses: list[bytes | None] = pipe.execute()
    failed_status = JobStatus.FAILED.value.encode()
    failed = [i for i, s in zip(ids, statuses, strict=True) if s in (None, failed_status)]
    with queue.connection.pipeline(transaction=True) as pipe:
        for event_id in failed:
            pipe.zrem(keys.failed, event_id)
            pipe.delete(keys.job(event_id))
        pipe.execute()


# --- replay --------------------------------------------------------------------------------

# KEYS: pending hash, set of queues, queue list, new job hash, failed registry, then the
# events' own job hashes, then the per-project counts. ARGV: job id, queue key, n, n event
# ids, the statuses of a job on its way (as one space-separated string), n project ids, then
# the job's fields. Returns the ids that are already on their way (nothing is written then),
# or {} when done.
_REQUEUE = """
local n = tonumber(ARGV[3])
local on_way = {}
for s in string.gmatch(ARGV[4 + n], '%S+') do on_way[s] = true end
local busy = {}
for i = 1, n do
  local id = ARGV[3 + i]
  local status = redis.call('HGET', KEYS[5 + i], 'status')
  if redis.call('HEXISTS', KEYS[1], id) == 1 or (status and on_way[status]) then
    busy[#busy + 1] = id
  end
end
if #busy > 0 then return busy end
local fields = {}
for i = 5 + 2 * n, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[4], unpack(fields))
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('RPUSH', KEYS[3], ARGV[1])
for i = 1, n do
  redis.call('HSET', KEYS[1], ARGV[3 + i], ARGV[1])
  redis.call('ZINCRBY', KEYS[6 + n], 1, ARGV[4 + n + i])
  redis.call('ZREM', KEYS[5], ARGV[3 + i])
  redis.call('DEL', KEYS[5 + i])
end
return busy
"""


class ReplayQueue:
    """Requeues failed events in replay jobs, each event only if it is not on its way
    already (a pending mark, or its own job queued or running after `rq requeue`), checked
    and written in one script."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        self.writer = JobWriter(queue)
        self._script = queue.connection.register_script(_REQUEUE)

    def requeue(self, batch: list[Event]) -> set[str]:
        """One replay job for `batch`; or, when some are on their way, their ids (and no job)."""
        keys, job_id = self.queue.keys, new_job_id(REPLAY)
        ids = [e["id"] for e in batch]
        script_keys = [PENDING_KEY, keys.queues, keys.queue, keys.job(job_id), keys.failed]
        flat: list[Any] = []
        for name, value in self.writer.fields(batch, REPLAY).items():
            flat += [name, value]
        projects = [e.get("projectId", "") for e in batch]
        args = [job_id, keys.queue, len(ids), *ids, " ".join(ON_ITS_WAY), *projects, *flat]
        own_jobs = [keys.job(i) for i in ids]
        busy = self._script(keys=[*script_keys, *own_jobs, PROJECT_QUEUED_KEY], args=args)
        return {b.decode() for b in cast(list[bytes], busy)}

    def busy(self, ids: list[str]) -> set[str]:
        """The read-only half of the script's check, for a dry run."""
        if not ids:
            return set()
        with self.queue.connection.pipeline(transaction=False) as pipe:
            pipe.hmget(PENDING_KEY, ids)
            for event_id in ids:
                pipe.hget(self.queue.keys.job(event_id), "status")
            marks, *statuses = pipe.execute()
        on_way = {s.encode() for s in ON_ITS_WAY}
        return {
            i
            for i, mark, status in zip(ids, marks, statuses, strict=True)
            if mark is not None or status in on_way
        }


# --- figures -------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueFigures:
    events: int  # accepted, not yet stored or failed
    jobs: int  # waiting in the queue
    started: int  # running or claimed (RQ's StartedJobRegistry)
    failed_jobs: int  # in RQ's FailedJobRegistry
    oldest_age: float | None  # seconds the job at the head has been queued


def _read_figures(pipe: Any, keys: RQKeys) -> None:
    pipe.hlen(PENDING_KEY)
    pipe.llen(keys.queue)
    pipe.zcard(keys.started)
    pipe.zcard(keys.failed)
    pipe.lindex(keys.queue, 0)


def _figures(replies: Sequence[Any], enqueued_at: bytes | None) -> QueueFigures:
    events, jobs, started, failed, _head = replies
    return QueueFigures(
        int(events), int(jobs), int(started), int(failed), queued_seconds(enqueued_at)
    )


def queue_figures(queue: JobQueue) -> QueueFigures:
    with queue.connection.pipeline(transaction=False) as pipe:
        _read_figures(pipe, queue.keys)
        replies = pipe.execute()
    head = replies[-1]
    enqueued = (
        None
        if head is None
        else queue.connection.hget(queue.keys.job(head.decode()), "enqueued_at")
    )
    return _figures(replies, cast("bytes | None", enqueued))


async def queue_figures_async(queue: JobQueue, connection: aioredis.Redis) -> QueueFigures:
    """`queue_figures` on the event loop, through `connection`."""
    keys = queue.keys
    async with connection.pipeline(transaction=False) as pipe:
        _read_figures(pipe, keys)
        replies = await pipe.execute()
    head = replies[-1]
    enqueued = (
        None if head is None else await connection.hget(keys.job(head.decode()), "enqueued_at")
    )
    return _figures(replies, cast("bytes | None", enqueued))


def queued_seconds(enqueued_at: bytes | None) -> float | None:
    """How long ago an RQ job was enqueued, from its hash's `enqueued_at` field."""
    if not enqueued_at:
        return None
    return (utcnow() - aware(utcparse(enqueued_at.decode()))).total_seconds()


def workers(queue: JobQueue) -> list[dict[str, Any]]:
    """The live workers of the queue, as RQ registers them."""
    found = []
    for w in Worker.all(queue=queue.rq, serializer=JSONSerializer):
        found.append(
            {
                "name": w.name,
                "hostname": w.hostname,
                "pid": w.pid,
                "state": w.get_state(),
                "currentJob": w.get_current_job_id(),
                "jobsDone": w.successful_job_count,
                "jobsFailed": w.failed_job_count,
                "lastHeartbeat": aware(w.last_heartbeat) if w.last_heartbeat else None,
            }
        )
    return found


# --- one job -------------------------------------------------------------------------------


def queued_payload(queue: JobQueue, job_id: str) -> Payload | None:
    """The payload of a queued job, None if the job is gone."""
    data = cast("bytes | None", queue.connection.hget(queue.keys.job(job_id), "data"))
    return None if data is None else read_payload(payload_of(data), job_id)


@dataclass(frozen=True)
class RunningJob:
    id: str
    worker_name: str  # the claimer of the group jobs it claims (claims.py)


def running_job() -> RunningJob | None:
    """The job this worker runs (in the job function's thread), None outside a worker."""
    job = get_current_job()
    return None if job is None else RunningJob(job.id, job.worker_name or "")


def fail_running_job(error: EventpipeError) -> None:
    """Note `error` in the running job's meta, where operators and `rq` tools see it; the
    caller then raises, and RQ records the failure."""
    job = get_current_job()
    if job is not None:
        job.meta.update(code=error.code, message=error.message)
        job.save_meta()  # type: ignore[no-untyped-call]
