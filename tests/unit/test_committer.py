"""Group commit: grouping, failure reaching every waiter, cancellation losing nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from api.committer import GroupCommitter, Linger
from shared.errors import QueueUnavailable


def fixed(seconds: float) -> Linger:
    return Linger(1, seconds, seconds)


class Recorder:
    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.groups: list[list[dict[str, Any]]] = []
        self.delay = delay
        self.fail = fail

    async def __call__(self, events: list[dict[str, Any]], records: list[Any]) -> None:
        await asyncio.sleep(self.delay)
        if self.fail:
            raise QueueUnavailable()
        self.groups.append(events)


async def test_concurrent_submits_are_grouped() -> None:
    write = Recorder(delay=0.005)
    committer = GroupCommitter(write, fixed(0.002), max_events=500, max_bytes=1 << 20)
    await asyncio.gather(*(committer.submit({"n": i}, 100) for i in range(300)))
    await committer.close()
    assert sorted(e["n"] for g in write.groups for e in g) == list(range(300))
    assert len(write.groups) < 30


async def test_groups_are_bounded_in_count_and_bytes() -> None:
    write = Recorder()
    committer = GroupCommitter(write, fixed(0.05), max_events=10, max_bytes=1000)
    await asyncio.gather(*(committer.submit({"n": i}, 10) for i in range(35)))
    await asyncio.gather(*(committer.submit({"n": i}, 400) for i in range(6)))
    await committer.close()
    assert max(len(g) for g in write.groups[:4]) == 10
    assert all(len(g) <= 3 for g in write.groups[4:])


async def test_a_failed_write_fails_every_waiter_of_its_group() -> None:
    committer = GroupCommitter(Recorder(fail=True), fixed(0.001), 500, 1 << 20)
    results = await asyncio.gather(
        *(committer.submit({"n": i}, 10) for i in range(20)), return_exceptions=True
    )
    await committer.close()
    assert all(isinstance(r, QueueUnavailable) for r in results)


async def test_a_cancelled_request_does_not_cancel_its_group() -> None:
    write = Recorder(delay=0.05)
    committer = GroupCommitter(write, fixed(0.001), 500, 1 << 20)
    waiters = [asyncio.create_task(committer.submit({"n": i}, 10)) for i in range(10)]
    await asyncio.sleep(0.01)  # the group is being written
    for task in waiters[:5]:
        task.cancel()
    done = await asyncio.gather(*waiters, return_exceptions=True)
    await committer.close()
    assert sum(isinstance(d, asyncio.CancelledError) for d in done) == 5
    assert sorted(e["n"] for g in write.groups for e in g) == list(range(10))


async def test_close_flushes_what_is_gathered() -> None:
    write = Recorder()
    committer = GroupCommitter(write, fixed(10.0), 500, 1 << 20)
    waiter = asyncio.create_task(committer.submit({"n": 1}, 10))
    await asyncio.sleep(0.01)
    assert write.groups == []  # still lingering
    await committer.close()
    await waiter
    assert write.groups == [[{"n": 1}]]


@pytest.mark.parametrize("linger", [0.0, 0.001])
async def test_a_lone_event_waits_about_the_linger(linger: float) -> None:
    write = Recorder()
    committer = GroupCommitter(write, fixed(linger), 500, 1 << 20)
    await asyncio.wait_for(committer.submit({"n": 1}, 10), timeout=1.0)
    await committer.close()
    assert write.groups == [[{"n": 1}]]


def test_the_linger_follows_the_arrival_rate_within_its_bounds() -> None:
    linger = Linger(target_events=32, min_seconds=0.001, max_seconds=0.005)
    assert linger.seconds() == 0.001  # nothing seen yet: a lone request waits the minimum
    for _ in range(20):  # about 1,000 events/s: 32 events would take 32 ms, so the maximum
        linger.observe(5, spread=0.004, waited=0.005)
    assert linger.seconds() == 0.005
    for _ in range(20):  # about 100,000 events/s: 32 events arrive well within the minimum
        linger.observe(100, spread=0.001, waited=0.001)
    assert linger.seconds() == pytest.approx(0.001, rel=0.01)
    for _ in range(20):  # about 10,000 events/s: 3.2 ms gathers 32
        linger.observe(20, spread=0.0019, waited=0.002)
    assert 0.0015 < linger.seconds() < 0.0045


def test_lone_events_keep_the_longest_linger() -> None:
    """A trickle: each event waited the linger alone, so the rate is at most one a linger."""
    linger = Linger(target_events=32, min_seconds=0.001, max_seconds=0.005)
    for _ in range(20):
        linger.observe(1, spread=0.0, waited=linger.seconds())
    assert linger.seconds() == 0.005


def test_a_burst_after_a_quiet_wait_is_measured_by_its_own_spread() -> None:
    """A closed loop: 32 producers send together right after their answers, then wait for
    the next. The time between groups (the linger itself, plus the round trip) is not
    arrival time: the group's own spread (0.5 ms for 31 arrivals) gives the rate."""
    linger = Linger(target_events=32, min_seconds=0.001, max_seconds=0.005)
    for _ in range(20):
        linger.observe(32, spread=0.0005, waited=linger.seconds())
    assert linger.seconds() == pytest.approx(0.001, rel=0.01)
