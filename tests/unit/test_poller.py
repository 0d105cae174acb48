"""Background tasks stop even when a cancellation is swallowed (redis-py 8.1's asyncio
client does that to a cancel landing inside a command)."""

from __future__ import annotations

import asyncio

from api.poller import Poller, cancel_and_wait


async def test_a_task_that_swallows_cancellations_is_cancelled_until_it_ends() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed == 3:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task, every=0.01), timeout=5)
    assert task.done() and swallowed == 3


async def test_a_poller_whose_tick_swallows_the_cancellation_still_stops() -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        ticks += 1
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass  # as redis-py 8.1 may do mid-command

    poller = Poller("test", 0, tick)
    await poller.start()
    await asyncio.sleep(0.02)
    await asyncio.wait_for(poller.stop(), timeout=5)
    assert ticks >= 1
