"""Fair shares: the local bucket's arithmetic, the Redis scripts (lease, queued counts) on
fakeredis's Lua, and FairShares' guards and lease rounds, several "processes" sharing one
Redis."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import fakeredis
import pytest

from api.limits import ProjectLimits, format_rate, parse_rate
from api.shares import Bucket, FairShares, RateLimit
from shared.errors import ProjectBacklogFull, ValidationFailed
from shared.ids import new_id
from shared.queue import (
    PENDING_KEY,
    PROJECT_QUEUED_KEY,
    Lease,
    RateLeaser,
    drop_pending,
    make_queue,
    rate_bucket_levels,
    top_queued,
)
from shared.queue.connect import JobQueue
from shared.queue.enqueue import JobWriter
from shared.queue.registries import ReplayQueue
from shared.settings import Settings

# --- the local bucket -----------------------------------------------------------------------


def bucket(rate: float = 10.0, burst: int = 20, lease_seconds: float = 0.1) -> Bucket:
    return Bucket(RateLimit(rate, burst), lease_seconds)


@pytest.mark.parametrize(
    ("rate", "burst", "hold"),
    [(10.0, 20, 1), (100.0, 200, 10), (1000.0, 50, 50), (0.5, 3, 1), (15.0, 20, 2)],
)
def test_the_hold_is_lease_seconds_of_the_rate_at_least_one_at_most_the_burst(
    rate: float, burst: int, hold: int
) -> None:
    assert RateLimit(rate, burst).hold(0.1) == hold


def test_spend_takes_all_or_nothing_and_partial_takes_what_is_held() -> None:
    b = bucket()
    b.tokens = 3
    assert b.spend(2) == 2 and b.tokens == 1
    assert b.spend(2) == 0 and b.tokens == 1
    assert b.spend(5, partial=True) == 1 and b.tokens == 0
    assert b.used


def test_want_is_what_waiters_lack_plus_the_hold() -> None:
    b = bucket(rate=100.0, burst=200)  # hold 10
    b.tokens, b.wanted = 4, 7
    assert b.want() == 7 + 10 - 4
    b.tokens, b.wanted = 30, 0  # more than the hold (a retuned limit): nothing to lease
    assert b.want() == 0


def test_a_short_lease_makes_the_bucket_dry_until_a_token_refills() -> None:
    b = bucket(rate=2.0, burst=4)
    b.leased(Lease(granted=4, left=0.0), asked=4, now=100.0)
    assert b.tokens == 4 and not b.dry(100.0)
    b.leased(Lease(granted=0, left=0.25), asked=1, now=101.0)
    # (1 - 0.25) / 2 = 0.375 s until the shared bucket holds a whole token again
    assert b.dry(101.3) and not b.dry(101.38)
    b.tokens = 0
    assert b.retry_after(1, 101.0) == 1
    assert b.retry_after(3, 101.0) == math.ceil((3 - 0.25) / 2)


def test_the_dry_window_is_at_least_one_lease_interval() -> None:
    b = bucket(rate=10_000.0, burst=100, lease_seconds=0.1)
    b.leased(Lease(granted=0, left=0.9), asked=5, now=10.0)
    assert b.dry(10.09) and not b.dry(10.11)


def test_level_and_headers_follow_the_shared_refill() -> None:
    b = bucket(rate=10.0, burst=20)
    b.leased(Lease(granted=2, left=3.0), asked=2, now=50.0)
    assert b.level(50.0) == 5.0  # 2 held here, 3 in Redis
    assert b.level(50.5) == 10.0  # the shared bucket refilled 5 meanwhile
    assert b.level(60.0) == 20.0  # never over the burst
    headers = b.headers(50.0, epoch=1_000_000.0)
    assert headers == {
        "X-RateLimit-Limit": "20",
        "X-RateLimit-Remaining": "5",
        "X-RateLimit-Reset": str(math.ceil(1_000_000.0 + (20 - 5) / 10)),
    }


def test_a_lowered_limit_drops_held_tokens_over_the_new_hold() -> None:
    b = bucket(rate=1000.0, burst=1000)  # hold 100
    b.tokens, b.shared = 100, 900.0
    b.retune(RateLimit(20.0, 5))  # hold 2
    assert (b.tokens, b.hold, b.shared) == (2, 2, 5.0)


@pytest.mark.parametrize(
    ("text", "rate"),
    [("100/s", 100.0), ("6000/min", 100.0), ("7200/h", 2.0), ("2.5", 2.5), (" 30 / m ", 0.5)],
)
def test_rates_are_parsed_per_second(text: str, rate: float) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "0/s", "-1/s", "10/day", "abc", "1e3/s", "9" * 50])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(ValidationFailed):
        parse_rate(text)


def test_rates_are_shown_as_written() -> None:
    assert [format_rate(r) for r in (100.0, 0.5, 1 / 3600)] == ["100/s", "30/min", "1/h"]
    assert ProjectLimits(rate=2.5).effective_burst == 3
    assert ProjectLimits(rate=2.5, burst=1).effective_burst == 1


# --- the lease script -------------------------------------------------------------------------


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def async_client(server: fakeredis.FakeServer) -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis(server=server)


async def test_the_shared_bucket_gives_its_burst_then_what_the_rate_refills(
    server: fakeredis.FakeServer,
) -> None:
    leaser = RateLeaser(async_client(server))
    first, other = await leaser.lease([("p1", 1.0, 10, 4), ("p2", 1.0, 3, 5)])
    assert (first.granted, other.granted) == (4, 3)  # p2's burst is all it has
    (again,) = await leaser.lease([("p1", 1.0, 10, 100)])
    assert again.granted == 6 and again.left < 1  # the rest of the burst, then empty
    (empty,) = await leaser.lease([("p1", 1.0, 10, 1)])
    assert empty.granted == 0
    sync = fakeredis.FakeRedis(server=server)
    at = float(sync.hget("eventpipe:rate:p1", "at") or 0)
    sync.hset("eventpipe:rate:p1", "at", str(at - 2.5))  # as if 2.5 s had passed
    (refilled,) = await leaser.lease([("p1", 1.0, 10, 100)])
    assert refilled.granted == 2  # 2.5 tokens refilled: whole ones are granted
    levels = rate_bucket_levels(sync, {"p1": (1.0, 10), "p3": (5.0, 7)})
    assert levels["p1"] < 1 and levels["p3"] == 7.0  # a bucket never used is full


async def test_a_lowered_burst_caps_the_shared_bucket_at_once(
    server: fakeredis.FakeServer,
) -> None:
    leaser = RateLeaser(async_client(server))
    await leaser.lease([("p", 1.0, 100, 0)])
    (capped,) = await leaser.lease([("p", 1.0, 5, 50)])
    assert capped.granted == 5


# --- queued events per project --------------------------------------------------------------


def event(project_id: str) -> dict[str, Any]:
    return {"id": new_id(), "projectId": project_id, "eventName": "e", "email": "a@b.co"}


@pytest.fixture
def queue(server: fakeredis.FakeServer) -> JobQueue:
    return make_queue(Settings(redis_url="redis://fake"), fakeredis.FakeRedis(server=server))


def enqueue(queue: JobQueue, events: list[dict[str, Any]]) -> None:
    with queue.connection.pipeline(transaction=True) as pipe:
        JobWriter(queue).add(pipe, events)
        pipe.execute()


def drop(queue: JobQueue, events: list[dict[str, Any]]) -> None:
    with queue.connection.pipeline(transaction=True) as pipe:
        drop_pending(pipe, events)
        pipe.execute()


def test_counts_move_with_the_marks_and_a_second_drop_changes_nothing(queue: JobQueue) -> None:
    a = [event("A") for _ in range(5)]
    b = [event("B") for _ in range(2)]
    enqueue(queue, a[:3] + b)
    enqueue(queue, a[3:])
    assert top_queued(queue.connection, 5) == {"A": 5, "B": 2}
    drop(queue, a[:2] + b[:1])
    drop(queue, a[:2] + b[:1])  # the job ran again (RQ is at-least-once)
    assert top_queued(queue.connection, 5) == {"A": 3, "B": 1}
    drop(queue, b)
    assert top_queued(queue.connection, 5) == {"A": 3}  # none left: no member at 0
    drop(queue, a)
    assert queue.connection.exists(PROJECT_QUEUED_KEY, PENDING_KEY) == 0


def test_a_count_never_goes_below_zero_and_drift_heals_when_the_backlog_empties(
    queue: JobQueue,
) -> None:
    old = [event("A") for _ in range(3)]
    # Queued by a release without counts: marks, no count.
    queue.connection.hset(PENDING_KEY, mapping={e["id"]: "job" for e in old})
    enqueue(queue, [event("A")])
    drop(queue, old)
    assert top_queued(queue.connection, 5) == {}  # 1 - 3: gone, not -2
    queue.connection.zadd(PROJECT_QUEUED_KEY, {"ghost": 7})  # a count with no marks left
    queue.connection.delete(PENDING_KEY)  # (the marks went some other way)
    drop(queue, [event("X")])  # the next drop finds the backlog empty
    assert queue.connection.exists(PROJECT_QUEUED_KEY) == 0


def test_split_parts_and_replays_count_their_events(queue: JobQueue) -> None:
    events = [event("A") for _ in range(4)]
    enqueue(queue, events)
    with queue.connection.pipeline(transaction=True) as pipe:  # as the worker hands off
        drop_pending(pipe, events)
        JobWriter(queue).add_split(pipe, [events[:2], events[2:3]], timeouts=1)
        pipe.execute()
    assert top_queued(queue.connection, 5) == {"A": 3}
    replayed = [event("B"), event("B")]
    assert ReplayQueue(queue).requeue(replayed) == set()
    assert top_queued(queue.connection, 5) == {"A": 3, "B": 2}
    assert ReplayQueue(queue).requeue(replayed[:1]) == {replayed[0]["id"]}  # on its way
    assert top_queued(queue.connection, 5) == {"A": 3, "B": 2}


# --- FairShares ---------------------------------------------------------------------------


def shares(server: fakeredis.FakeServer, max_queued: int = 1000) -> FairShares:
    return FairShares(RateLeaser(async_client(server)), max_queued, 0.5, 0.1)


def test_only_limited_or_heavy_projects_have_a_guard(server: fakeredis.FakeServer) -> None:
    fair = shares(server)
    fair.use_limits({"r": ProjectLimits(rate=10.0), "s": ProjectLimits(backlog_share=0.1)})
    assert set(fair.guards) == {"r"}
    assert fair.watch_from() == 50  # half of s's 100
    fair.observe_backlog({"s": 60, "t": 260, "u": 60})  # u: under half of the default 500
    assert set(fair.guards) == {"r", "s", "t"}
    fair.guards["s"].check_backlog(40)  # 60 queued: 40 more fit
    with pytest.raises(ProjectBacklogFull):
        fair.guards["s"].check_backlog(1)  # 60 + 40 reach the share of 100
    fair.observe_backlog({"t": 10})
    assert set(fair.guards) == {"r"}
    fair.use_limits({})
    assert fair.guards == {}


def test_a_changed_limit_reaches_the_guard_it_keeps(server: fakeredis.FakeServer) -> None:
    fair = shares(server)
    fair.use_limits({"r": ProjectLimits(rate=10.0)})
    guard = fair.guards["r"]
    fair.use_limits({"r": ProjectLimits(rate=50.0, burst=7, backlog_share=0.2)})
    assert fair.guards["r"] is guard and guard.bucket is not None
    assert guard.bucket.limit == RateLimit(50.0, 7) and guard.backlog_limit == 200


async def test_a_burst_is_admitted_then_refused_without_asking_redis_again(
    server: fakeredis.FakeServer,
) -> None:
    fair = shares(server)
    fair.use_limits({"p": ProjectLimits(rate=1.0, burst=5)})
    bucket = fair.guards["p"].bucket
    assert bucket is not None
    rounds: list[list[Any]] = []
    lease = fair._leaser.lease

    async def counted(wants: Any) -> list[Lease]:
        rounds.append(list(wants))
        return await lease(wants)

    fair._leaser.lease = counted  # type: ignore[method-assign]
    await fair.start()
    try:
        taken = await asyncio.gather(*(fair.take(bucket, 1) for _ in range(8)))
        assert sum(taken) == 5
        assert len(rounds) == 1  # the eight short requests shared one round trip
        assert bucket.dry(time.monotonic())
        assert await fair.take(bucket, 1) == 0  # refused here, Redis not asked
        assert len(rounds) == 1
    finally:
        await fair.stop()


async def test_processes_sharing_a_limit_stay_within_the_stated_bound(
    server: fakeredis.FakeServer,
) -> None:
    """Four "processes" (FairShares on one Redis), each sending as fast as it is let: what
    they admit in the window is at most burst + rate * t + N * hold (README), and not much
    less than what the shared bucket gave."""
    rate, burst, n = 200.0, 50, 4
    processes = [shares(server) for _ in range(n)]
    for fair in processes:
        fair.use_limits({"p": ProjectLimits(rate=rate, burst=burst)})
        await fair.start()
    admitted = 0
    started = time.monotonic()

    async def send(fair: FairShares) -> None:
        nonlocal admitted
        bucket = fair.guards["p"].bucket
        assert bucket is not None
        while time.monotonic() - started < 0.5:
            admitted += await fair.take(bucket, 1)
            await asyncio.sleep(0.001)

    try:
        await asyncio.gather(*(send(fair) for fair in processes))
    finally:
        for fair in processes:
            await fair.stop()
    window = time.monotonic() - started
    hold = RateLimit(rate, burst).hold(0.1)
    assert admitted <= burst + rate * window + n * hold
    # What Redis handed out, less what the processes still hold and the last dry windows.
    assert admitted >= burst + rate * (window - 0.2) - n * hold
