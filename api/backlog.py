"""Backpressure: how many events are queued, known without a Redis call per request.

The count is the length of the pending-marks hash (one field per event accepted and not yet
stored or failed; O(1) to read), polled every `backlog_poll_seconds`, plus what this process
enqueued since the last poll, so a burst between two polls cannot overshoot by much. The same
round trip reads the projects near their share of the backlog, for the fair shares
(api/shares.py).
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from api.poller import Poller
from api.shares import MAX_WATCHED, FairShares
from shared.errors import ServiceUnavailable
from shared.queue import read_backlog

log = logging.getLogger("eventpipe.api")


class Backlog:
    def __init__(
        self, redis: aioredis.Redis, limit: int, poll_seconds: float, shares: FairShares
    ) -> None:
        self._redis = redis
        self._limit = limit
        self._shares = shares
        self._queued = 0
        self._poller = Poller("backlog", poll_seconds, self._read)

    async def start(self) -> None:
        await self._poller.start()

    async def stop(self) -> None:
        await self._poller.stop()

    def check(self) -> None:
        """Raise 503 while the backlog is at or over the limit."""
        if self._queued >= self._limit:
            raise ServiceUnavailable(f"Too many events are queued ({self._queued}); retry later")

    def added(self, count: int) -> None:
        self._queued += count

    async def _read(self) -> None:
        try:
            queued, heavy = await read_backlog(self._redis, self._shares.watch_from(), MAX_WATCHED)
        except RedisError:
            return  # sends will meet the same error and answer 503 themselves
        self._queued = queued
        self._shares.observe_backlog(heavy)
