"""Batch dequeue on top of RQ: a running group job claims the next queued group jobs.

RQ costs milliseconds of worker time per job whatever the job carries, while the API writes
one job per group of concurrent requests, often a handful of events. So a running group job
takes up to WORKER_CLAIM_JOBS more group jobs from the head of the queue (one Lua script),
stores their events in its one transaction, and finishes them.

A claimed job is RQ started work, written the way RQ writes its own: status `started` and an
entry `<job id>:<claimer>` in the queue's StartedJobRegistry, scored by its expiry, where the
claimer is the worker's name. So `rq info` and rq-dashboard count it as executing; the worker
renews the entries with its heartbeat; a finished one is in the FinishedJobRegistry. If the
worker dies, the entries expire and RQ's StartedJobRegistry cleanup (at the next worker
maintenance) requeues each claimed job on its own, spending one of its retries: that cleanup
is the one recovery path, for the running job and its claims alike.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

from rq.job import JobStatus
from rq.utils import now, utcformat

from shared.queue.connect import JobQueue
from shared.queue.enqueue import DESCRIPTIONS, payload_of
from shared.queue.guard import CHECKED_FIELDS, fail_unrun, foreign_reason
from shared.queue.keys import LEGACY_CLAIMED_PREFIX
from shared.queue.payload import GROUP, Event, read_payload

# KEYS: queue, started registry. ARGV: how many, job key prefix, started-registry member
# suffix (":" + claimer), expiry score, status, a group job's description, now (RQ's
# format), worker name.
_CLAIM = """
local taken = {}
for _ = 1, tonumber(ARGV[1]) do
  local id = redis.call('LINDEX', KEYS[1], 0)
  if not id then break end
  local key = ARGV[2] .. id
  if redis.call('HGET', key, 'description') ~= ARGV[6] then break end
  redis.call('LPOP', KEYS[1])
  redis.call('ZADD', KEYS[2], ARGV[4], id .. ARGV[3])
  redis.call('HSET', key, 'status', ARGV[5], 'started_at', ARGV[7], 'last_heartbeat', ARGV[7],
    'worker_name', ARGV[8])
  taken[#taken + 1] = id
end
return taken
"""
# The started-registry members of one claimer. KEYS: started registry. ARGV: member suffix.
_MEMBERS = """
local found = {}
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(m, -#ARGV[1]) == ARGV[1] then found[#found + 1] = m end
end
"""
# Renew a claimer's entries. ARGV: member suffix, expiry score.
_RENEW = (
    _MEMBERS
    + """
for _, m in ipairs(found) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], m) end
return #found
"""
)
# Finish claimed jobs. KEYS: started registry, finished registry. ARGV: member suffix, job
# key prefix, finished status, end time, result_ttl (0: RQ keeps no finished job), its expiry
# score, then the job ids.
_FINISH = """
local ttl = tonumber(ARGV[5])
for i = 7, #ARGV do
  local key = ARGV[2] .. ARGV[i]
  redis.call('ZREM', KEYS[1], ARGV[i] .. ARGV[1])
  if ttl == 0 then
    redis.call('DEL', key)
  else
    redis.call('HSET', key, 'status', ARGV[3], 'ended_at', ARGV[4])
    redis.call('EXPIRE', key, ttl)
    redis.call('ZADD', KEYS[2], ARGV[6], ARGV[i])
  end
end
"""
# Give a live claimer's jobs back to the head of the queue, in their order. KEYS: started
# registry, queue. ARGV: member suffix, job key prefix, queued status.
_RELEASE = (
    _MEMBERS
    + """
for i = #found, 1, -1 do
  local id = string.sub(found[i], 1, #found[i] - #ARGV[1])
  redis.call('ZREM', KEYS[1], found[i])
  if redis.call('EXISTS', ARGV[2] .. id) == 1 then  -- a job deleted meanwhile stays gone
    redis.call('HSET', ARGV[2] .. id, 'status', ARGV[3])
    redis.call('LPUSH', KEYS[2], id)
  end
end
return #found
"""
)
# A list of the previous release's claimed jobs, given back unless its owner may still run
# (it has an entry in the started registry). KEYS: the list, started registry, queue.
# ARGV: owner id .. ":", job key prefix, queued status.
_LEGACY_RELEASE = """
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if string.sub(m, 1, #ARGV[1]) == ARGV[1] then return -1 end
end
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
for i = #ids, 1, -1 do
  if redis.call('HGET', ARGV[2] .. ids[i], 'status') == ARGV[3] then
    redis.call('LPUSH', KEYS[3], ids[i])
  end
end
redis.call('DEL', KEYS[1])
return #ids
"""


def _suffix(claimer: str) -> str:
    return f":{claimer}"


def claim_jobs(queue: JobQueue, claimer: str, room: int, ttl: int) -> list[str]:
    """Up to `room` group jobs from the head of the queue, now started work of `claimer`
    (the worker's name) for `ttl` seconds unless renewed."""
    if room <= 0:
        return []
    keys = queue.keys
    args: list[str | int | float] = [room, keys.job_prefix, _suffix(claimer), time.time() + ttl]
    args += [JobStatus.STARTED.value, DESCRIPTIONS[GROUP], utcformat(now()), claimer]
    taken = queue.connection.eval(_CLAIM, 2, keys.queue, keys.started, *args)
    return [i.decode() for i in cast(list[bytes], taken)]


def claimed_events(
    queue: JobQueue, claimer: str, job_ids: Sequence[str]
) -> tuple[list[Event], list[str]]:
    """The events of `claimer`'s claimed jobs, and the ids of those still claimed: a claimed
    job that is not one of eventpipe's (guard.py) is failed unrun and leaves the claim."""
    if not job_ids:
        return [], []
    with queue.connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hmget(queue.keys.job(job_id), list(CHECKED_FIELDS))
        replies: list[list[bytes | None]] = pipe.execute()
    events: list[Event] = []
    kept: list[str] = []
    for job_id, values in zip(job_ids, replies, strict=True):
        fields = dict(zip(CHECKED_FIELDS, values, strict=True))
        blob = fields[b"data"]
        if blob is None:  # a job deleted meanwhile has nothing left to store
            continue
        reason = foreign_reason(fields)
        if reason is not None:
            _fail_claimed(queue, claimer, job_id, reason)
            continue
        events.extend(read_payload(payload_of(blob), job_id).events)
        kept.append(job_id)
    return events, kept


def _fail_claimed(queue: JobQueue, claimer: str, job_id: str, reason: str) -> None:
    with queue.connection.pipeline(transaction=True) as pipe:
        pipe.zrem(queue.keys.started, job_id + _suffix(claimer))
        fail_unrun(queue, pipe, job_id, reason)
        pipe.execute()


def renew_claims(queue: JobQueue, pipe: Any, claimer: str, ttl: int) -> None:
    """Push the expiry of `claimer`'s claimed jobs `ttl` seconds ahead (with its heartbeat)."""
    keys = queue.keys
    pipe.eval(_RENEW, 1, keys.started, _suffix(claimer), time.time() + ttl)


def finish_claimed(queue: JobQueue, pipe: Any, claimer: str, job_ids: Sequence[str]) -> None:
    """On `pipe` (the job's outcome transaction): the claimed jobs finished, as RQ finishes
    its own (status, end time, result_ttl, the FinishedJobRegistry). One script for them all:
    four commands a job cost the worker more to pack than Redis to run."""
    if not job_ids:
        return
    keys, ttl = queue.keys, queue.settings.result_ttl
    args = [_suffix(claimer), keys.job_prefix, JobStatus.FINISHED.value, utcformat(now()), ttl]
    pipe.eval(_FINISH, 2, keys.started, keys.finished, *args, time.time() + ttl, *job_ids)


def release_claims(queue: JobQueue, claimer: str) -> int:
    """Give `claimer`'s claimed jobs back to the head of the queue (its job did not finish,
    but its worker lives on): they are queued again without spending a retry."""
    keys = queue.keys
    found = queue.connection.eval(
        _RELEASE,
        2,
        keys.started,
        keys.queue,
        _suffix(claimer),
        keys.job_prefix,
        JobStatus.QUEUED.value,
    )
    return int(cast(int, found))


def release_legacy_claims(queue: JobQueue) -> bool:
    """Give back the claimed lists the previous release left (after its worker died, or
    during a rolling upgrade). True when none is left to look at again later."""
    keys, done = queue.keys, True
    for raw in queue.connection.scan_iter(match=LEGACY_CLAIMED_PREFIX + "*", count=1000):
        owner = raw.decode()[len(LEGACY_CLAIMED_PREFIX) :]
        found = queue.connection.eval(
            _LEGACY_RELEASE,
            3,
            raw,
            keys.started,
            keys.queue,
            owner + ":",
            keys.job_prefix,
            JobStatus.QUEUED.value,
        )
        done = done and int(cast(int, found)) >= 0
    return done
