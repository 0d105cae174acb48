"""Fair shares in one API process: per-project rate limits and backlog shares, checked without
a Redis round trip per request.

`FairShares.guards` holds a `Guard` for each project that has a rate limit, or whose queued
events are near its share of the backlog; any other project costs the send path one dict
lookup and nothing more.

Rate limits are token buckets. The shared bucket of a project lives in Redis (refilled at
the rate up to the burst, from Redis's clock: shared/queue/shares.py); each API process
leases tokens from it into a local bucket and spends them there. A background task on the
event loop tops up every bucket in use to `hold` tokens (RATE_LIMIT_LEASE_SECONDS of the
rate) every RATE_LIMIT_LEASE_SECONDS; a request that finds its local bucket short wakes the
task and waits for its next round (all requests short at once share that one round trip);
once the shared bucket had nothing to give, the process refuses at once, without asking
Redis again, until it holds a token again by the rate. So in any window of t seconds the
processes admit at most burst + rate * t (what the shared bucket gives) plus what they held
at its start, at most N * hold for N processes (README, "Rate limits and backlog shares").

Backlog shares: the backlog poll (api/backlog.py) reads the projects whose queued events are
at least half of the smallest share, one sorted-set range in the same round trip as the
global count; those projects get a guard that refuses their sends (503) once their count,
plus what this process accepted for them since the poll, reaches their share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

from redis.exceptions import RedisError

from api.limits import ProjectLimits, backlog_limit
from api.poller import cancel_and_wait
from shared.errors import ProjectBacklogFull, QueueUnavailable, RateLimited
from shared.queue import Lease, RateLeaser

log = logging.getLogger("eventpipe.api")

# Where a request notes its project's X-RateLimit-* headers, for whichever answer it gets.
RATE_HEADERS = "eventpipe.rate_headers"
RATE_HEADER_NAMES = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
# Raw ASGI header lines, appended to the answer's own: Starlette's MutableHeaders.update
# cost ~15 us a request for these three (measured in-process), more than the check itself.
RawHeaders = list[tuple[bytes, bytes]]
# The backlog poll follows at most this many projects near their share (the biggest first).
MAX_WATCHED = 1000
# Lease rounds one request may wait for before it is refused (each one a Redis round trip).
MAX_ROUNDS = 3


@dataclass(frozen=True)
class RateLimit:
    rate: float  # tokens per second
    burst: int

    def hold(self, lease_seconds: float) -> int:
        """The most tokens one process keeps leased between rounds."""
        return min(self.burst, max(1, math.ceil(self.rate * lease_seconds)))


class Bucket:
    """One rate-limited project's tokens in this process. Plain arithmetic on a monotonic
    clock `now`; the leases come from FairShares."""

    def __init__(self, limit: RateLimit, lease_seconds: float) -> None:
        self.limit = limit
        self.limit_header = b"%d" % limit.burst
        self.lease_seconds = lease_seconds
        self.hold = limit.hold(lease_seconds)
        self.tokens = 0  # leased, not spent yet
        self.shared = float(limit.burst)  # the shared bucket's level at the last lease
        self.shared_at = 0.0  # (monotonic) when that was (0: the bucket is full by now)
        self.dry_until = 0.0  # (monotonic) the shared bucket had nothing left to lease
        self.used = False  # tokens asked for since the last round
        self.wanted = 0  # tokens the requests waiting for the next round lacked
        self.round: asyncio.Future[None] | None = None  # the next round, when one is awaited

    def retune(self, limit: RateLimit) -> None:
        """A changed limit: held tokens over the new hold are dropped."""
        self.limit = limit
        self.limit_header = b"%d" % limit.burst
        self.hold = limit.hold(self.lease_seconds)
        self.tokens = min(self.tokens, self.hold)
        self.shared = min(self.shared, float(limit.burst))

    def spend(self, n: int, partial: bool = False) -> int:
        """Take `n` tokens (or, `partial`, as many of them as are held): how many taken."""
        self.used = True
        if self.tokens >= n:
            self.tokens -= n
            return n
        if partial:
            taken, self.tokens = self.tokens, 0
            return taken
        return 0

    def dry(self, now: float) -> bool:
        return now < self.dry_until

    def want(self) -> int:
        """What to lease this round: what the waiting requests lack, and the hold."""
        return max(0, self.wanted + self.hold - self.tokens)

    def leased(self, lease: Lease, asked: int, now: float) -> None:
        self.tokens += lease.granted
        self.shared, self.shared_at = lease.left, now
        if lease.granted < asked:  # under one token left: none again before it refills
            refill = (1 - lease.left) / self.limit.rate
            self.dry_until = now + max(refill, self.lease_seconds)

    def level(self, now: float) -> float:
        """The tokens left for this project as this process sees them: its own, and the
        shared bucket's as refilled since the last lease."""
        limit = self.limit
        shared = min(limit.burst, self.shared + max(0.0, now - self.shared_at) * limit.rate)
        return min(float(limit.burst), self.tokens + shared)

    def retry_after(self, n: int, now: float) -> int:
        """Whole seconds until `n` tokens may be there again (at least 1)."""
        wait = max(self.dry_until - now, (n - self.level(now)) / self.limit.rate)
        return max(1, math.ceil(wait))

    def headers(self, now: float, epoch: float) -> dict[str, str]:
        """The contract's X-RateLimit-* headers: the burst, the tokens left, and when the
        bucket is full again (epoch seconds)."""
        return {
            name: value.decode()
            for name, (_, value) in zip(
                RATE_HEADER_NAMES, self.raw_headers(now, epoch), strict=True
            )
        }

    def raw_headers(self, now: float, epoch: float) -> RawHeaders:
        """`headers` as ASGI header lines (on every answer: kept cheap)."""
        limit = self.limit
        level = self.level(now)
        return [
            (b"x-ratelimit-limit", self.limit_header),
            (b"x-ratelimit-remaining", b"%d" % int(level)),  # level >= 0: int() floors
            (b"x-ratelimit-reset", b"%d" % math.ceil(epoch + (limit.burst - level) / limit.rate)),
        ]


class Guard:
    """What one project's sends are checked against."""

    def __init__(self, backlog_limit: int) -> None:
        self.bucket: Bucket | None = None
        self.backlog_limit = backlog_limit
        self.queued = 0  # at the last backlog poll (0: under half its share then)
        self.added = 0  # accepted by this process since that poll

    def check_backlog(self, count: int) -> None:
        """503 while the project's queued events reach its share; else count `count` more."""
        queued = self.queued + self.added
        if queued >= self.backlog_limit:
            raise ProjectBacklogFull(queued, self.backlog_limit)
        self.added += count

    @property
    def needed(self) -> bool:
        return self.bucket is not None or self.queued > 0


class FairShares:
    def __init__(
        self,
        leaser: RateLeaser,
        max_queued: int,
        default_share: float,
        lease_seconds: float,
    ) -> None:
        self.guards: dict[str, Guard] = {}
        self._leaser = leaser
        self._max_queued = max_queued
        self._default_limit = backlog_limit(max_queued, default_share)
        self._lease_seconds = lease_seconds
        self._rates: dict[str, RateLimit] = {}
        self._backlog_limits: dict[str, int] = {}  # projects with a share of their own
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # --- the limits, from the config snapshot; the backlog, from its poll ------------------

    def use_limits(self, limits: Mapping[str, ProjectLimits]) -> None:
        """The limits of a new config snapshot (the ConfigCache calls this on each load)."""
        rates: dict[str, RateLimit] = {}
        shares: dict[str, int] = {}
        for project_id, limit in limits.items():
            burst = limit.effective_burst
            if limit.rate is not None and burst is not None:
                rates[project_id] = RateLimit(limit.rate, burst)
            if limit.backlog_share is not None:
                shares[project_id] = backlog_limit(self._max_queued, limit.backlog_share)
        self._rates, self._backlog_limits = rates, shares
        for project_id in set(rates) | set(self.guards):
            guard = self._guard(project_id)
            guard.backlog_limit = self.backlog_limit(project_id)
            self._set_rate(guard, rates.get(project_id))
            self._forget_unneeded(project_id, guard)

    def _set_rate(self, guard: Guard, limit: RateLimit | None) -> None:
        if limit is None:
            guard.bucket = None
        elif guard.bucket is None:
            guard.bucket = Bucket(limit, self._lease_seconds)
        elif guard.bucket.limit != limit:
            guard.bucket.retune(limit)

    def backlog_limit(self, project_id: str) -> int:
        return self._backlog_limits.get(project_id, self._default_limit)

    def watch_from(self) -> float:
        """The backlog poll reads the projects with at least this many events queued."""
        return min([self._default_limit, *self._backlog_limits.values()]) / 2

    def observe_backlog(self, heavy: Mapping[str, int]) -> None:
        """The backlog poll's reading: the projects with at least watch_from() queued."""
        for project_id, queued in heavy.items():
            limit = self.backlog_limit(project_id)
            if queued * 2 >= limit:
                guard = self._guard(project_id)
                guard.queued, guard.added = queued, 0
        for project_id, guard in list(self.guards.items()):
            if heavy.get(project_id, 0) * 2 < guard.backlog_limit:
                guard.queued, guard.added = 0, 0
                self._forget_unneeded(project_id, guard)

    def _guard(self, project_id: str) -> Guard:
        guard = self.guards.get(project_id)
        if guard is None:
            guard = self.guards[project_id] = Guard(self.backlog_limit(project_id))
        return guard

    def _forget_unneeded(self, project_id: str, guard: Guard) -> None:
        if not guard.needed:
            self.guards.pop(project_id, None)

    def over_backlog(self) -> dict[str, tuple[int, int]]:
        """Projects at their share now, as this process sees them: (queued, limit)."""
        return {
            p: (g.queued + g.added, g.backlog_limit)
            for p, g in self.guards.items()
            if g.queued + g.added >= g.backlog_limit
        }

    def rate_limits(self) -> dict[str, RateLimit]:
        return dict(self._rates)

    # --- rate limits on the request path ----------------------------------------------------

    async def take(self, bucket: Bucket, n: int, partial: bool = False) -> int:
        """Spend `n` tokens of `bucket` (or, `partial`, as many of them as there are): how
        many were spent. Waits for a lease round only when the local bucket is short and the
        shared one was not found empty."""
        return await self.take_more(bucket, n, partial, bucket.spend(n, partial))

    async def take_more(self, bucket: Bucket, n: int, partial: bool, taken: int) -> int:
        """`take` once the local bucket gave `taken` of the `n`."""
        # A request that came after a round may take the tokens leased for the requests
        # waiting on it: those wait for another round while Redis still gives.
        for _ in range(MAX_ROUNDS):
            if taken == n or bucket.dry(time.monotonic()):
                break
            bucket.tokens += taken  # put back: the round may bring them all
            await self._next_round(bucket, n)
            taken = bucket.spend(n, partial)
        return taken

    async def _next_round(self, bucket: Bucket, n: int) -> None:
        bucket.wanted += n
        if bucket.round is None:
            bucket.round = asyncio.get_running_loop().create_future()
        round_ = bucket.round
        self._wake.set()
        try:
            await asyncio.shield(round_)
        except asyncio.CancelledError:
            if bucket.round is round_:  # the round has not gone out: it need not ask for us
                bucket.wanted -= n
            raise

    # --- the lease rounds, off the request path ---------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rate-leases")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            await cancel_and_wait(self._task)
        for guard in self.guards.values():  # no request may wait for a round that won't come
            if guard.bucket is not None:
                _fail(guard.bucket.round, QueueUnavailable())

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._lease_seconds)
            self._wake.clear()
            try:
                await self.lease_round()
            except Exception:  # the task must outlive any one failed round
                log.exception("rate-limit lease round failed")

    async def lease_round(self) -> None:
        """Top up every bucket in use, and answer every waiting request, in one round trip."""
        now = time.monotonic()
        due: list[tuple[Bucket, int, asyncio.Future[None] | None]] = []
        wants: list[tuple[str, float, int, int]] = []
        for project_id, guard in list(self.guards.items()):
            bucket = guard.bucket
            if bucket is None or not (bucket.round or (bucket.used and not bucket.dry(now))):
                continue
            want = bucket.want()
            if want == 0 and bucket.round is None:  # holds enough already
                bucket.used = False
                continue
            due.append((bucket, want, bucket.round))
            wants.append((project_id, bucket.limit.rate, bucket.limit.burst, want))
            bucket.round, bucket.wanted, bucket.used = None, 0, False
        if not due:
            return
        try:
            leases = await self._leaser.lease(wants)
        except RedisError as exc:
            log.warning("rate-limit leases failed: %s", exc)
            for _, _, round_ in due:
                _fail(round_, QueueUnavailable())
            return
        now = time.monotonic()
        for (bucket, want, round_), lease in zip(due, leases, strict=True):
            bucket.leased(lease, want, now)
            if round_ is not None and not round_.done():
                round_.set_result(None)


def _fail(round_: asyncio.Future[None] | None, exc: Exception) -> None:
    if round_ is not None and not round_.done():
        round_.set_exception(exc)
        round_.exception()  # read: a waiter gone meanwhile leaves no "never retrieved" noise


def refuses_now(bucket: Bucket) -> bool:
    """Whether a request would be refused at once (no token held, the shared bucket dry)."""
    return bucket.tokens == 0 and bucket.dry(time.monotonic())


def rate_limited(bucket: Bucket, n: int) -> RateLimited:
    return RateLimited(bucket.retry_after(n, time.monotonic()))


def rate_headers(bucket: Bucket) -> RawHeaders:
    return bucket.raw_headers(time.monotonic(), time.time())
