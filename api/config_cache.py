"""Keys and definitions, cached in-process so the send path never runs SQL.

The whole snapshot is reloaded (in a thread) when the Redis config version changes, polled
every `config_poll_seconds`, and at least every `config_reload_seconds` so that a bump lost
while Redis was away is caught anyway. Polling a counter, not pub/sub: pub/sub loses messages
across a reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from api.definitions import Definition
from api.poller import Poller
from api.store import ConfigSnapshot
from shared.errors import EventpipeError, ServiceUnavailable
from shared.queue import CONFIG_VERSION_KEY

log = logging.getLogger("eventpipe.api")


class ConfigCache:
    def __init__(
        self,
        load: Callable[[], Awaitable[ConfigSnapshot]],
        redis: aioredis.Redis,
        poll_seconds: float,
        reload_seconds: float,
        on_load: Callable[[ConfigSnapshot], None] | None = None,
    ) -> None:
        self._load = load
        self._on_load = on_load  # told of every snapshot loaded (the fair shares' limits)
        self._redis = redis
        self._max_age = reload_seconds
        self._snapshot: ConfigSnapshot | None = None
        self._version: bytes | str | None = None  # redis-py 8 types replies as either
        self._loaded_at = 0.0
        self._poller = Poller("config-cache", poll_seconds, self._check)
        # One load at a time: an older load finishing after a newer one would put back a
        # snapshot without the latest change (seen: a definition missing for ~0.5 s).
        self._loading = asyncio.Lock()

    async def start(self) -> None:
        await self._poller.start()

    async def stop(self) -> None:
        await self._poller.stop()

    @property
    def loaded(self) -> bool:
        return self._snapshot is not None

    @property
    def snapshot(self) -> ConfigSnapshot:
        if self._snapshot is None:
            raise ServiceUnavailable("eventpipe is starting: configuration not loaded yet")
        return self._snapshot

    def definition_finder(self, project_id: str) -> Callable[[str], Definition | None]:
        definitions = self.snapshot.definitions
        return lambda name: definitions.get((project_id, name))

    async def reload(self) -> None:
        """Load now (after a local change, so this process sees it before answering)."""
        async with self._loading:
            self._snapshot = await self._load()
            self._loaded_at = time.monotonic()
            if self._on_load is not None:
                self._on_load(self._snapshot)
        log.debug(
            "config loaded: %d keys, %d definitions",
            len(self._snapshot.keys),
            len(self._snapshot.definitions),
        )

    async def _check(self) -> None:
        try:
            version = await self._redis.get(CONFIG_VERSION_KEY)
        except RedisError:
            self._version = None  # reload once Redis is back: bumps may have been missed
            version = None
        stale = time.monotonic() - self._loaded_at > self._max_age
        if self._snapshot is None or stale or version != self._version:
            try:
                await self.reload()
                self._version = version
            except EventpipeError as exc:
                log.warning("config reload failed, keeping the previous one: %s", exc.message)
            except Exception:  # the poller must outlive any one failed reload
                log.exception("config reload failed, keeping the previous one")
