"""The resources of one API process, typed, opened by the lifespan and closed after it.

Endpoints reach them with `resources(request)`; nothing else of the process lives in
Starlette's untyped `app.state`.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass

import anyio
import anyio.to_thread
import redis
import redis.asyncio as aioredis
from sqlalchemy import Engine
from starlette.requests import Request

from api import observe, store
from api.backlog import Backlog
from api.committer import GroupCommitter, Linger
from api.config_cache import ConfigCache
from api.idempotency import Idempotency
from api.outcomes import Outcomes
from api.shares import FairShares
from shared.db import make_engine, transaction
from shared.queue import (
    Event,
    JobQueue,
    JobWriter,
    RateLeaser,
    Record,
    check_durability_support,
    connect_async,
    connect_redis,
    connect_subscriber,
    enqueue_function,
    make_queue,
)
from shared.settings import Settings


@dataclass(frozen=True)
class Clients:
    """Redis clients handed in by tests (fakeredis); None: made from REDIS_URL."""

    redis: redis.Redis | None = None
    async_redis: aioredis.Redis | None = None


@dataclass(frozen=True)
class Resources:
    settings: Settings
    engine: Engine
    queue: JobQueue
    redis: aioredis.Redis
    db_limiter: anyio.CapacityLimiter  # management endpoints' store work, off the loop
    replay_limiter: anyio.CapacityLimiter  # POST /v1/admin/replay, one at a time
    cache: ConfigCache
    committer: GroupCommitter
    idempotency: Idempotency
    backlog: Backlog
    outcomes: Outcomes
    shares: FairShares  # per-project rate limits and backlog shares


RESOURCES = "eventpipe.resources"  # the send fast lane puts them in its scope (api.app)


def resources(request: Request) -> Resources:
    # From the scope when the fast lane put them there: Starlette's State looks an attribute
    # up through __getattr__, and a send asks several times (1.7% of its CPU).
    found: Resources = request.scope.get(RESOURCES) or request.app.state.resources
    return found


async def open_resources(settings: Settings, clients: Clients) -> Resources:
    engine = make_engine(settings)
    queue = make_queue(settings, clients.redis or connect_redis(settings))
    redis_ = clients.async_redis or connect_async(settings)
    db_limiter = anyio.CapacityLimiter(settings.db_threads)
    # Refuse to start rather than promise in vain (fsync without WAITAOF, replicated without
    # a replica).
    await check_durability_support(settings, redis_)
    shares = FairShares(
        RateLeaser(redis_),
        settings.max_queued_events,
        settings.project_backlog_share,
        settings.rate_limit_lease_seconds,
    )
    found = Resources(
        settings=settings,
        engine=engine,
        queue=queue,
        redis=redis_,
        db_limiter=db_limiter,
        replay_limiter=anyio.CapacityLimiter(1),
        cache=ConfigCache(
            lambda: anyio.to_thread.run_sync(_load_snapshot, engine, limiter=db_limiter),
            redis_,
            settings.config_poll_seconds,
            settings.config_reload_seconds,
            lambda snapshot: shares.use_limits(snapshot.limits),
        ),
        committer=_committer(settings, JobWriter(queue), redis_),
        idempotency=Idempotency(
            redis_, settings.idempotency_claim_seconds, settings.idempotency_ttl_seconds
        ),
        backlog=Backlog(redis_, settings.max_queued_events, settings.backlog_poll_seconds, shares),
        outcomes=Outcomes(clients.async_redis or connect_subscriber(settings)),
        shares=shares,
    )
    await found.cache.start()
    await found.outcomes.start()
    await found.backlog.start()
    await found.shares.start()
    return found


async def close_resources(found: Resources) -> None:
    # Requests still waiting on a group get their answer before the process exits.
    await found.committer.close()
    await found.shares.stop()
    await found.backlog.stop()
    await found.cache.stop()
    await found.outcomes.stop()
    await found.redis.aclose()
    found.queue.close()
    found.engine.dispose()


def _committer(settings: Settings, writer: JobWriter, redis_: aioredis.Redis) -> GroupCommitter:
    enqueue = enqueue_function(settings)

    def write(events: list[Event], records: list[Record]) -> Awaitable[str]:
        return enqueue(writer, redis_, events, records)

    return GroupCommitter(
        observe.instrument_enqueue(write),
        Linger(
            settings.group_target_events,
            settings.group_linger_ms / 1000,
            settings.group_max_linger_ms / 1000,
        ),
        settings.group_max_events,
        settings.group_max_bytes,
    )


def _load_snapshot(engine: Engine) -> store.ConfigSnapshot:
    with transaction(engine) as conn:
        return store.load_snapshot(conn=conn)
