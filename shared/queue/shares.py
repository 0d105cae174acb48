"""Fair shares in Redis: each project's count of queued events, and the shared token buckets
of rate-limited projects.

The count of a project is the number of its events holding a pending mark. It moves with the
marks, in the same MULTI/EXEC or script: up where a job is written (enqueue, split, replay),
down where the worker drops the marks, by a script that counts only the marks it actually
removed, so a job that runs twice (RQ is at-least-once) never takes its events off twice.
The counts heal themselves: a count is never left below zero, and an empty pending hash
empties them all (jobs queued by a release without counts can only make one read low, and
only until the backlog drains).

A rate bucket is a hash {tokens, at} refilled at the project's rate up to its burst by the
lease script, from Redis's own clock (TIME: one clock for every API process). API processes
lease tokens in chunks for their local buckets (api/shares.py); no request waits on Redis.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio as aioredis

from shared.queue.keys import PENDING_KEY, PROJECT_QUEUED_KEY, RATE_BUCKET_PREFIX
from shared.queue.payload import Event

# --- queued events per project --------------------------------------------------------------


def count_queued(pipe: Any, events: Sequence[Event]) -> None:
    """On `pipe`, beside the events' pending marks: their projects' counts, up."""
    for project_id, n in Counter(e.get("projectId", "") for e in events).items():
        pipe.zincrby(PROJECT_QUEUED_KEY, n, project_id)


# KEYS: pending hash, counts. ARGV: event id, project id, event id, project id, ... Returns
# how many marks were removed.
_DROP = """
local dropped, order, total = {}, {}, 0
for i = 1, #ARGV, 2 do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    local p = ARGV[i + 1]
    if not dropped[p] then dropped[p] = 0; order[#order + 1] = p end
    dropped[p] = dropped[p] + 1
    total = total + 1
  end
end
for _, p in ipairs(order) do
  if tonumber(redis.call('ZINCRBY', KEYS[2], -dropped[p], p)) <= 0 then
    redis.call('ZREM', KEYS[2], p)
  end
end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
return total
"""


def drop_pending(pipe: Any, events: Sequence[Event]) -> None:
    """On `pipe` (the job's outcome transaction): the events' pending marks removed and their
    projects' counts down by the marks that were there."""
    if not events:
        return
    args: list[str] = []
    for e in events:
        args += [e["id"], e.get("projectId", "")]
    pipe.eval(_DROP, 2, PENDING_KEY, PROJECT_QUEUED_KEY, *args)


async def read_backlog(
    connection: aioredis.Redis, watch_from: float, most: int
) -> tuple[int, dict[str, int]]:
    """In one round trip: the events queued in all, and the projects with at least
    `watch_from` of them (at most `most`, the biggest first)."""
    async with connection.pipeline(transaction=False) as pipe:
        pipe.hlen(PENDING_KEY)
        pipe.zrevrangebyscore(
            PROJECT_QUEUED_KEY, "+inf", watch_from, start=0, num=most, withscores=True
        )
        total, heavy = await pipe.execute()
    return int(total), {_text(p): int(n) for p, n in heavy}


def top_queued(connection: redis.Redis, most: int) -> dict[str, int]:
    """The `most` projects with the most events queued, for `eventpipe stats`."""
    found = connection.zrevrange(PROJECT_QUEUED_KEY, 0, most - 1, withscores=True)
    return {_text(p): int(n) for p, n in cast(list[tuple[bytes, float]], found)}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- rate buckets ---------------------------------------------------------------------------

# KEYS: the bucket. ARGV: rate (tokens/s), burst, tokens wanted. Refills the bucket from
# Redis's clock, grants what it holds up to the want, and returns {granted, tokens left (a
# string: Lua numbers reach redis-py as integers)}. The key lives as long as a refill to full
# takes: a bucket gone is a full one.
_LEASE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(held[1]), tonumber(held[2])
if not tokens or not at then tokens, at = burst, now end
if now > at then tokens = tokens + (now - at) * rate end
if tokens > burst then tokens = burst end
local granted = math.min(want, math.floor(tokens))
if granted < 0 then granted = 0 end
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {granted, tostring(tokens)}
"""


@dataclass(frozen=True)
class Lease:
    granted: int
    left: float  # tokens left in the shared bucket after the grant


def rate_bucket_key(project_id: str) -> str:
    return RATE_BUCKET_PREFIX + project_id


class RateLeaser:
    """Leases tokens from the shared buckets, every want of a round in one round trip."""

    def __init__(self, connection: aioredis.Redis) -> None:
        self._connection = connection
        self._script = connection.register_script(_LEASE)

    async def lease(self, wants: Sequence[tuple[str, float, int, int]]) -> list[Lease]:
        """For each (project id, rate, burst, tokens wanted): what the shared bucket gave."""
        if not wants:
            return []
        async with self._connection.pipeline(transaction=False) as pipe:
            for project_id, rate, burst, want in wants:
                await self._script(
                    keys=[rate_bucket_key(project_id)], args=[rate, burst, want], client=pipe
                )
            replies = await pipe.execute()
        return [Lease(int(granted), float(left)) for granted, left in replies]


def rate_bucket_levels(
    connection: redis.Redis, limits: dict[str, tuple[float, int]]
) -> dict[str, float]:
    """The tokens each shared bucket holds now, refilled as the lease script would: for
    `eventpipe stats`. `limits`: project id -> (rate, burst)."""
    if not limits:
        return {}
    with connection.pipeline(transaction=False) as pipe:
        pipe.time()
        for project_id in limits:
            pipe.hmget(rate_bucket_key(project_id), ["tokens", "at"])
        (seconds, micros), *held = pipe.execute()
    return _levels(limits, seconds + micros / 1e6, held)


async def rate_bucket_levels_async(
    connection: aioredis.Redis, limits: dict[str, tuple[float, int]]
) -> dict[str, float]:
    """`rate_bucket_levels` on the event loop (for /metrics)."""
    if not limits:
        return {}
    async with connection.pipeline(transaction=False) as pipe:
        pipe.time()
        for project_id in limits:
            pipe.hmget(rate_bucket_key(project_id), ["tokens", "at"])
        (seconds, micros), *held = await pipe.execute()
    return _levels(limits, seconds + micros / 1e6, held)


def _levels(
    limits: dict[str, tuple[float, int]], now: float, held: list[list[bytes | None]]
) -> dict[str, float]:
    levels = {}
    for (project_id, (rate, burst)), (tokens, at) in zip(limits.items(), held, strict=True):
        if tokens is None or at is None:
            levels[project_id] = float(burst)
            continue
        refilled = float(tokens) + max(0.0, now - float(at)) * rate
        levels[project_id] = min(float(burst), refilled)
    return levels
