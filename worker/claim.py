"""Batch dequeue on top of RQ: a job takes the next queued events jobs along with it.

RQ costs ~5 ms of worker time per job here, whatever the job carries, while the API writes
one job per group of concurrent requests, often a handful of events. So a running job moves
up to `worker_claim_jobs` more queued group jobs from the head of the queue into a list of
its own (atomically, in Redis), stores all their events in its one transaction, and marks
them finished. The list is keyed by the running job's id: if the worker dies, RQ gives the
job back (abandoned-job recovery, retries) and its next run finds the claimed jobs there and
stores them again, which the event-id primary key makes harmless. Only group jobs (ids
starting with "g") are claimed: a replay of one failed event keeps its own job and outcome.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any, cast

from rq.job import JobStatus
from rq.utils import now, utcformat

from shared.queue import Event, read_payload
from worker.context import WorkerContext

CLAIMED_PREFIX = "eventpipe:claimed:"
# Claimed lists outlive a crash for as long as a job can stay abandoned; then they go.
CLAIMED_TTL = 7 * 24 * 3600
_CLAIM = """
local taken = {}
for _ = 1, tonumber(ARGV[1]) do
  local id = redis.call('LINDEX', KEYS[1], 0)
  if not id or string.sub(id, 1, 1) ~= 'g' then break end
  redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  taken[#taken + 1] = id
end
if #taken > 0 then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
return taken
"""


def claimed_key(job_id: str) -> str:
    return CLAIMED_PREFIX + job_id


def claim_jobs(ctx: WorkerContext, job_id: str) -> list[str]:
    """Ids of the jobs this job stores along with its own: those an earlier run of it had
    claimed (after a crash), then up to the limit more from the head of the queue."""
    key = claimed_key(job_id)
    earlier = [i.decode() for i in cast(list[bytes], ctx.redis.lrange(key, 0, -1))]
    room = ctx.settings.worker_claim_jobs - len(earlier)
    if room <= 0:
        return earlier
    taken = cast(list[bytes], ctx.redis.eval(_CLAIM, 2, ctx.queue.key, key, room, CLAIMED_TTL))
    return earlier + [i.decode() for i in taken]


def claimed_events(ctx: WorkerContext, job_ids: Sequence[str]) -> list[Event]:
    if not job_ids:
        return []
    prefix = ctx.queue.job_class.redis_job_namespace_prefix
    with ctx.redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(prefix + job_id, "data")
        blobs: list[bytes | None] = pipe.execute()
    events: list[Event] = []
    for blob in blobs:
        if blob is not None:  # a job deleted meanwhile has nothing left to store
            events.extend(_events_of(blob))
    return events


def _events_of(blob: bytes) -> list[Event]:
    # RQ's JSONSerializer: (function, instance, args, kwargs) as JSON, zlib-compressed.
    _func, _instance, args, _kwargs = json.loads(zlib.decompress(blob))
    return read_payload(args[0])


def finish_claimed(ctx: WorkerContext, pipe: Any, job_id: str, claimed: Sequence[str]) -> None:
    """Mark the claimed jobs finished, as RQ would, and drop the claim list (on `pipe`)."""
    if not claimed:
        return
    prefix = ctx.queue.job_class.redis_job_namespace_prefix
    ended = utcformat(now())
    for claimed_id in claimed:
        key = prefix + claimed_id
        pipe.hset(key, mapping={"status": JobStatus.FINISHED.value, "ended_at": ended})
        pipe.expire(key, ctx.settings.result_ttl)
    pipe.delete(claimed_key(job_id))
