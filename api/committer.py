"""Group commit: the events accepted by concurrent requests share one enqueue.

Requests hand their event to `submit` and wait; the group is written as one RQ job, in one
Redis round trip through redis.asyncio. A group goes when it is full or when its linger has
passed. The linger adapts to the arrival rate: it is the time the current rate needs to
gather `target_events`, kept between `min_linger` (what a lone request waits, ~1 ms) and
`max_linger`. Every job has a fixed cost (about 1 kB of Redis memory while queued, and RQ's
bookkeeping), so a group of one or two events at a moderate rate would cost several times
what the events themselves do; a few milliseconds of patience make that cost small. No
thread is involved: a writer thread would fight the event loop for the GIL (each hand-over
can cost the 5 ms switch interval), which measured at a third of the throughput. Every waiting
request learns the outcome of its own group: an event is reported accepted only once it is in
Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from shared.queue import Event, Record


class Linger:
    """How long a new group waits for company, from the recent arrival rate.

    The rate is measured over each group's own arrivals, from its first event to its last,
    not over the time between groups. A producer that waits for each answer before its next
    send (a pool of threads each sending one event: a closed loop) sends nothing while its
    events wait, so the time between groups is mostly the linger itself: measured that way,
    the rate looked as low as the linger was long, the linger stayed at its longest, and the
    linger then set the rate (64 connections at 11 ms are 5.8k sends/s). Its sends arrive
    together, right after the previous answers, and their own spread is short. A producer
    that sends whenever its events happen spreads them over the linger either way, so the
    measure agrees with the old one there. A lone event counts as one arrival in the time
    it waited: nobody came meanwhile, so the rate is at most that."""

    def __init__(self, target_events: int, min_seconds: float, max_seconds: float) -> None:
        self._target = target_events
        self._min = min_seconds
        self._max = max(min_seconds, max_seconds)
        self._fastest = target_events / min_seconds if min_seconds > 0 else 1e9
        self._rate = 0.0  # events/s, smoothed over the last few groups

    def seconds(self) -> float:
        if self._rate <= 0:
            return self._min
        return min(self._max, max(self._min, self._target / self._rate))

    def observe(self, events: int, spread: float, waited: float) -> None:
        """A group of `events` that arrived over `spread` seconds went after `waited`."""
        if events > 1:
            rate = (events - 1) / spread if spread > 0 else self._fastest
        else:
            rate = 1 / waited if waited > 0 else self._fastest
        self._rate = 0.7 * self._rate + 0.3 * min(rate, self._fastest)


class GroupCommitter:
    def __init__(
        self,
        write: Callable[[list[Event], list[Record]], Awaitable[Any]],
        linger: Linger,
        max_events: int,
        max_bytes: int,
    ) -> None:
        self._write = write
        self._linger = linger
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._events: list[Event] = []
        self._records: list[Record] = []
        self._futures: list[asyncio.Future[None]] = []
        self._bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._first_at = self._last_at = 0.0  # the group's first and last arrivals

    async def submit(self, event: Event, size: int, records: Sequence[Record] = ()) -> None:
        """Return once `event` is in Redis; raise (QueueUnavailable) if its group failed.

        `records` (an idempotency key's answer) are written in the same atomic write as the
        event's job: both are in Redis, or neither."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        now = time.monotonic()
        if not self._events:
            self._first_at = now
        self._last_at = now
        self._events.append(event)
        self._records.extend(records)
        self._futures.append(future)
        self._bytes += size
        if len(self._events) >= self._max_events or self._bytes >= self._max_bytes:
            self.flush()
        elif self._timer is None:
            wait = self._linger.seconds()
            self._timer = asyncio.get_running_loop().call_later(wait, self.flush)
        # Not shielded: the group's write is a task of its own and goes on when a request is
        # cancelled; the request's future is then cancelled with it, so _commit sets nothing
        # on it and no exception is left unread (a shield cost every send ~4% of its CPU).
        await future

    async def submit_batch(self, events: list[Event], records: Sequence[Record] = ()) -> None:
        """Write a batch request's events as one job of its own, at once: a batch is already
        a group, and one job keeps it whole (all of it in Redis, or none of it)."""
        task = asyncio.get_running_loop().create_task(self._write_batch(events, list(records)))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        task.add_done_callback(_consume_task_exception)
        await asyncio.shield(task)

    async def _write_batch(self, events: list[Event], records: list[Record]) -> None:
        await self._write(events, records)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._events:
            return
        events, records, futures = self._events, self._records, self._futures
        self._events, self._records, self._futures, self._bytes = [], [], [], 0
        now = time.monotonic()
        self._linger.observe(len(events), self._last_at - self._first_at, now - self._first_at)
        task = asyncio.get_running_loop().create_task(self._commit(events, records, futures))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _commit(
        self, events: list[Event], records: list[Record], futures: list[asyncio.Future[None]]
    ) -> None:
        try:
            await self._write(events, records)
        except Exception as exc:  # every waiter of the group gets the same failure
            for f in futures:
                if not f.done():
                    f.set_exception(exc)
            return
        for f in futures:
            if not f.done():
                f.set_result(None)

    async def close(self) -> None:
        """Write what is gathered and wait for every write in flight (shutdown)."""
        self.flush()
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)


def _consume_task_exception(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        with contextlib.suppress(Exception):
            task.exception()
