"""What the operator console reads from Redis: events a second (accepted, stored, failed) in
five-second buckets with a TTL, a capped stream of job outcomes (the live tail), a replay's
progress, and the sign-in throttle's counters.

The writers add one or two commands to transactions that run anyway (the group write, the
worker's finish): no round trip of their own, no work per event on the store path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

import redis
import redis.asyncio as aioredis

from shared import jsonio

# One hash per minute: field "<kind><second of the minute, floored to BUCKET_SECONDS>".
RATE_PREFIX = "eventpipe:rate:"
BUCKET_SECONDS = 5
# An hour of charts plus a minute's margin; the hash of a minute goes after that.
RATE_TTL_SECONDS = 3600 + 120
ACCEPTED, STORED, FAILED = "a", "s", "f"
RATE_KINDS = {"accepted": ACCEPTED, "stored": STORED, "failed": FAILED}

TAIL_KEY = "eventpipe:tail"
# Entries kept (approximately: MAXLEN ~ trims whole nodes, cheaply), and events listed in
# one job's entry (a bigger job's entry says how many more there were): at most ~1 MB.
TAIL_MAXLEN = 500
TAIL_EVENTS_PER_JOB = 25
# The tail is written only while Redis uses less than this share of its maxmemory, read
# at most every TAIL_MEMORY_CHECK_SECONDS: near the limit (noeviction), the tail's growth
# would make Redis refuse the worker's finishing transaction, and the backlog never drain.
TAIL_MEMORY_SHARE = 0.8
TAIL_MEMORY_CHECK_SECONDS = 5.0
_memory_checks: dict[int, tuple[float, bool]] = {}

REPLAY_PREFIX = "eventpipe:console:replay:"
REPLAY_TTL_SECONDS = 3600
SIGN_IN_PREFIX = "eventpipe:console:sign-in:"


def _rate_key(minute: int) -> str:
    return f"{RATE_PREFIX}{minute}"


def count_rate(pipe: Any, kind: str, n: int, now: float | None = None) -> None:
    """On `pipe` (an atomic write on its way): `n` events of `kind` in this bucket."""
    if n <= 0:
        return
    second = int(time.time() if now is None else now)
    key = _rate_key(second // 60)
    pipe.hincrby(key, f"{kind}{second % 60 // BUCKET_SECONDS * BUCKET_SECONDS}", n)
    pipe.expire(key, RATE_TTL_SECONDS, nx=True)


def read_rates(
    connection: redis.Redis, seconds: int = 3600, now: float | None = None
) -> dict[str, Any]:
    """Events a second over the last `seconds`, bucket by bucket, oldest first:
    {"start": epoch s of the first bucket, "step": 5, "accepted": [...], "stored": [...],
    "failed": [...]} (the bucket under way is left out: it is not over)."""
    end = int(time.time() if now is None else now) // BUCKET_SECONDS * BUCKET_SECONDS
    start = end - seconds
    minutes = range(start // 60, end // 60 + 1)
    with connection.pipeline(transaction=False) as pipe:
        for minute in minutes:
            pipe.hgetall(_rate_key(minute))
        hashes = cast(list[dict[bytes, bytes]], pipe.execute())
    counts: dict[tuple[str, int], int] = {}
    for minute, found in zip(minutes, hashes, strict=True):
        for name, value in found.items():
            text = name.decode()
            counts[(text[0], minute * 60 + int(text[1:]))] = int(value)
    buckets = range(start, end, BUCKET_SECONDS)
    data: dict[str, Any] = {"start": start, "step": BUCKET_SECONDS}
    for label, kind in RATE_KINDS.items():
        data[label] = [round(counts.get((kind, b), 0) / BUCKET_SECONDS, 2) for b in buckets]
    return data


# --- the live tail -------------------------------------------------------------------------


def tail_job(pipe: Any, job_id: str, items: Sequence[Sequence[str]]) -> None:
    """On `pipe`: one capped stream entry for a finished job. `items` are [event id, project
    id, event name, status, code]: ids, names and codes, never property values."""
    if not items:
        return
    entry = {
        "job": job_id,
        "events": jsonio.dumps([list(i) for i in items[:TAIL_EVENTS_PER_JOB]]),
        "more": max(0, len(items) - TAIL_EVENTS_PER_JOB),
    }
    pipe.xadd(TAIL_KEY, entry, maxlen=TAIL_MAXLEN, approximate=True)


def tail_has_room(connection: redis.Redis) -> bool:
    """Whether Redis has room for the tail: under TAIL_MEMORY_SHARE of its maxmemory (no
    limit: always), from an INFO read at most every TAIL_MEMORY_CHECK_SECONDS."""
    now = time.monotonic()
    checked = _memory_checks.get(id(connection))
    if checked is not None and now - checked[0] < TAIL_MEMORY_CHECK_SECONDS:
        return checked[1]
    try:
        memory = connection.info("memory")
        limit = int(memory.get("maxmemory", 0))
        room = not limit or int(memory.get("used_memory", 0)) < limit * TAIL_MEMORY_SHARE
    except redis.ResponseError:  # INFO refused (an ACL, a proxy): the tail's ~1 MB bound
        room = True
    _memory_checks[id(connection)] = (now, room)
    return room


def record_job_activity(
    pipe: Any,
    job_id: str,
    stored: Sequence[Any],
    failed: Sequence[tuple[Any, str]],
    *,
    tail: bool = True,
) -> None:
    """On the worker's finishing transaction: the job's stored and failed events counted for
    the charts, and (with `tail`) its entry in the live tail. `stored` are events, `failed`
    (event, code)."""
    count_rate(pipe, STORED, len(stored))
    count_rate(pipe, FAILED, len(failed))
    if not tail:
        return
    items = [[e["id"], e["projectId"], e["eventName"], "stored", ""] for e in stored]
    items += [[e["id"], e["projectId"], e["eventName"], "failed", code] for e, code in failed]
    tail_job(pipe, job_id, items)


def _entry(stream_id: bytes, fields: dict[bytes, bytes]) -> dict[str, Any]:
    return {
        "id": stream_id.decode(),
        "job": fields.get(b"job", b"").decode(),
        "events": jsonio.loads(fields.get(b"events", b"[]")),
        "more": int(fields.get(b"more", b"0")),
    }


# Stream replies in RESP2 (connect.py pins it): [(id, {field: value})], bytes throughout.
StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]


async def tail_latest(connection: aioredis.Redis, count: int) -> list[dict[str, Any]]:
    """The last `count` entries, oldest first."""
    found = cast(StreamEntries, await connection.xrevrange(TAIL_KEY, count=count))
    return [_entry(i, f) for i, f in reversed(found)]


async def tail_after(
    connection: aioredis.Redis, after: str, block_ms: int, count: int = 100
) -> list[dict[str, Any]]:
    """Entries after the stream id `after` ("$": from now on), waiting up to `block_ms`."""
    found = cast(
        "list[tuple[bytes, StreamEntries]] | None",
        await connection.xread({TAIL_KEY: after}, count=count, block=block_ms),
    )
    return [_entry(i, f) for _key, entries in found or [] for i, f in entries]


async def tail_last_id(connection: aioredis.Redis) -> str:
    found = cast(StreamEntries, await connection.xrevrange(TAIL_KEY, count=1))
    return found[0][0].decode() if found else "0-0"


# --- a replay's progress, readable by every API process ------------------------------------


def put_replay_progress(connection: redis.Redis, replay_id: str, data: dict[str, Any]) -> None:
    connection.set(REPLAY_PREFIX + replay_id, jsonio.dumps(data), ex=REPLAY_TTL_SECONDS)


async def get_replay_progress(connection: aioredis.Redis, replay_id: str) -> Any:
    found = await connection.get(REPLAY_PREFIX + replay_id)
    return None if found is None else jsonio.loads(found)


# --- the sign-in throttle ------------------------------------------------------------------


async def count_attempt(connection: aioredis.Redis, name: str, window: int) -> tuple[int, int]:
    """Count one attempt under `name` in the current `window` seconds: (attempts so far in
    the window, seconds left in it)."""
    now = int(time.time())
    key = f"{SIGN_IN_PREFIX}{name}:{now // window}"
    async with connection.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, window + 1, nx=True)
        attempts, _ = await pipe.execute()
    return int(attempts), window - now % window
