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
        self._stopping = False

    async def start(self) -> None:
        """Run one tick now (so the state is there before the first request), then repeat."""
        await self._tick()
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        self._stopping = True  # ends the loop even if a tick swallowed the cancellation
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._seconds)
            await self._tick()


async def cancel_and_wait(task: asyncio.Task[None], every: float = 0.1) -> None:
    """Cancel `task` until it ends. redis-py 8.1's asyncio client can swallow a cancellation
    that lands inside a command (measured here: 122 of 300 cancels of a task looping on HLEN
    against a real Redis; none with 7.4), which left a process's shutdown waiting forever on
    a poller that just went on polling."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=every)
    with contextlib.suppress(asyncio.CancelledError):
        await task
