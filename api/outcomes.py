"""`Prefer: wait=N`: requests waiting for the worker's outcome of their event.

Each API process holds one Redis pub/sub subscription to `OUTCOMES_CHANNEL`; a worker
publishes, after its transaction commits, the outcome of every event that was sent with a
wait (and only those: the event carries `"wait": true`). A waiting request is a future in a
dict keyed by event id: no database polling, no Redis call per waiting request. A message that
finds no waiter (another process's event, or a request that stopped waiting) is dropped.

Pub/sub may lose a message across a reconnect; a waiter then simply times out and answers
202, which is always a true answer (the event is queued or done).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from api.poller import cancel_and_wait
from shared import jsonio
from shared.queue import OUTCOMES_CHANNEL

log = logging.getLogger("eventpipe.api")
RECONNECT_SECONDS = 0.5
# Digits of a wait: ASCII only (str.isdigit() takes "²", which int() refuses), and few enough
# that int() is cheap (past the cap, a larger number means the cap anyway).
_SECONDS = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class Outcome:
    event_id: str
    status: str  # "stored" or "failed"
    contact_id: str | None = None
    code: str | None = None


def parse_prefer_wait(header: str | None, cap: int) -> int | None:
    """Seconds from `Prefer: wait=N` (RFC 7240: comma-separated preferences, parameters after
    `;`, case-insensitive names), capped; None when absent or not 1 to 9 ASCII digits (a
    preference the server cannot honour is ignored, RFC 7240 section 2)."""
    if not header:
        return None
    for preference in header.split(","):
        name, _, value = preference.split(";", 1)[0].strip().partition("=")
        if name.strip().lower() == "wait":
            value = value.strip().strip('"')
            return min(int(value), cap) if _SECONDS.fullmatch(value) else None
    return None


class Outcomes:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._waiters: dict[str, asyncio.Future[Outcome]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="outcomes")
        # Waited for at most 2 s: without Redis the API still starts (waits then answer 202
        # until the subscription is up).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout=2)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()

    @contextlib.contextmanager
    def expect(self, event_id: str) -> Iterator[asyncio.Future[Outcome]]:
        """Register before the event is enqueued, so that its outcome cannot be missed."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiters[event_id] = future
        try:
            yield future
        finally:
            self._waiters.pop(event_id, None)

    async def _listen(self) -> None:
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(OUTCOMES_CHANNEL)
                    self._subscribed.set()
                    async for message in pubsub.listen():
                        self._dispatch(message["data"])
            except (RedisError, OSError) as exc:
                log.warning("outcome subscription lost (%s); resubscribing", exc)
            self._subscribed.clear()
            await asyncio.sleep(RECONNECT_SECONDS)

    def _dispatch(self, data: bytes) -> None:
        try:
            items = jsonio.loads(data)
        except ValueError:
            items = None
        if not isinstance(items, list):
            log.warning("ignoring a malformed outcome message")
            return
        for item in items:
            if not _well_formed(item):  # anyone can publish: one bad item must not end us
                log.warning("ignoring a malformed outcome item")
                continue
            event_id, status, detail = item
            future = self._waiters.get(event_id)
            if future is None or future.done():
                continue
            if status == "stored":
                future.set_result(Outcome(event_id, status, contact_id=detail))
            else:
                future.set_result(Outcome(event_id, status, code=detail))


def _well_formed(item: Any) -> bool:
    """[event id, "stored" | "failed", contact id or code (or None)]: the workers' shape."""
    return (
        isinstance(item, list)
        and len(item) == 3
        and isinstance(item[0], str)
        and item[1] in ("stored", "failed")
        and (item[2] is None or isinstance(item[2], str))
    )
