"""A background coroutine repeated at a fixed interval for the life of the API process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


class Poller:
    def __init__(self, name: str, seconds: float, tick: Callable[[], Awaitable[None]]) -> None:
        self._name = name
        self._seconds = seconds
        self._tick = tick
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Run one tick now (so the state is there before the first request), then repeat."""
        await self._tick()
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._seconds)
            await self._tick()
