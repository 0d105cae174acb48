"""How eventpipe reaches Redis and its RQ queue: one factory per kind of client.

Every client speaks RESP2, pinned here: redis-py 8 defaults to RESP3 (reshaping its replies
back to the RESP2 shapes), but the raw replies of the fsync path (enqueue.py), the Lua
replies and RQ itself are what this adapter was verified against on RESP2, and some proxies
and managed servers refuse `HELLO 3`. Every timeout is given, since redis-py 8 otherwise
applies 5 s defaults.

With REDIS_SENTINELS set, every client here is a Sentinel-managed one (redis-py's
`master_for`): each new connection asks the Sentinels for the current primary, and a
connection that meets a demoted primary (READONLY) is dropped, so that API processes,
workers, the CLI and the `Prefer: wait` listener follow a failover without a restart.
"""

from __future__ import annotations

import socket
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import ExponentialBackoff
from redis.connection import parse_url
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    TryAgainError,
)
from redis.retry import Retry
from redis.sentinel import Sentinel
from rq import Queue
from rq.serializers import JSONSerializer

from shared.errors import EventpipeError
from shared.queue.keys import CONFIG_VERSION_KEY, RQKeys
from shared.settings import Settings, sentinel_addresses

PROTOCOL = 2
# A Sentinel answers from memory: a slow one is a dead one, and each new connection to the
# primary asks them in turn.
SENTINEL_TIMEOUT_SECONDS = 1.0


def _options(settings: Settings) -> dict[str, Any]:
    return {
        "protocol": PROTOCOL,
        "socket_timeout": settings.redis_timeout_seconds,
        "socket_connect_timeout": settings.redis_timeout_seconds,
    }


def _quick_backoff() -> ExponentialBackoff:
    # redis-py's default retries back off for seconds; a request waiting on an enqueue
    # should hear "503, retry later" quickly instead.
    return ExponentialBackoff(cap=0.2, base=0.02)


def connect_redis(settings: Settings) -> redis.Redis:
    options = {
        "health_check_interval": 30,
        "retry": Retry(_quick_backoff(), retries=2),
        **_options(settings),
    }
    if settings.redis_sentinels:
        # redis-py leaves its sync Sentinel untyped.
        manager = Sentinel(**_sentinel_options(settings))  # type: ignore[no-untyped-call]
        primary = manager.master_for(  # type: ignore[no-untyped-call]
            settings.redis_sentinel_master, redis_class=redis.Redis, **options
        )
        return cast("redis.Redis", primary)
    return redis.Redis.from_url(settings.redis_url, **options)


def connect_async(settings: Settings) -> aioredis.Redis:
    """The API's client on the event loop, with the same quick retries."""
    return _async_client(
        settings, {"retry": AsyncRetry(_quick_backoff(), retries=2), **_options(settings)}
    )


def connect_subscriber(settings: Settings) -> aioredis.Redis:
    """The pub/sub connection of `Prefer: wait`: no read timeout (it waits for messages by
    design; redis-py 8.0.0 dropped an idle subscription after its 5 s default, 8.1 does not),
    keepalive probes so that a peer whose machine is gone is noticed in seconds, not hours."""
    return _async_client(
        settings,
        {
            "protocol": PROTOCOL,
            "socket_timeout": None,
            "socket_connect_timeout": settings.redis_timeout_seconds,
            "socket_keepalive": True,
            "socket_keepalive_options": _keepalive_probes(),
        },
    )


def _async_client(settings: Settings, options: dict[str, Any]) -> aioredis.Redis:
    if settings.redis_sentinels:
        manager = AsyncSentinel(**_sentinel_options(settings))  # type: ignore[no-untyped-call]
        primary = manager.master_for(
            settings.redis_sentinel_master, redis_class=aioredis.Redis, **options
        )
        return cast("aioredis.Redis", primary)
    return aioredis.Redis.from_url(settings.redis_url, **options)


def _sentinel_options(settings: Settings) -> dict[str, Any]:
    """The Sentinels, how to talk to them, and what REDIS_URL still says of the primary with
    Sentinel on: its database number, user name, password and TLS (its host is not used)."""
    timeout = min(settings.redis_timeout_seconds, SENTINEL_TIMEOUT_SECONDS)
    sentinel_kwargs: dict[str, Any] = {
        "protocol": PROTOCOL,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }
    if settings.redis_sentinel_password:
        sentinel_kwargs["password"] = settings.redis_sentinel_password
    parsed = parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
    primary = {k: parsed[k] for k in ("db", "username", "password") if parsed.get(k) is not None}
    if settings.redis_url.startswith("rediss://"):
        primary["ssl"] = True
    return {
        "sentinels": sentinel_addresses(settings.redis_sentinels),
        "sentinel_kwargs": sentinel_kwargs,
        **primary,
    }


def _keepalive_probes() -> dict[int, int]:
    """First probe after 10 s idle, then every 5 s, 3 unanswered: ~25 s (Linux's default
    waits two hours). Where the constants are missing (macOS lacks some), the OS's own."""
    wanted = {"TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3}
    return {getattr(socket, k): v for k, v in wanted.items() if hasattr(socket, k)}


# Replies that say the server cannot take writes now, not that the command was wrong: a
# demoted primary (READONLY), a full one (OOM), a replica cut from its primary (MASTERDOWN).
_OUTAGE_REPLIES = (ReadOnlyError, OutOfMemoryError, MasterDownError, TryAgainError)


def redis_outage(exc: BaseException) -> bool:
    """Whether `exc` is Redis being away or unable to write for now (unreachable, timing out,
    loading, read-only, out of memory, no primary or not enough replicas): an outage to wait
    out, not a fault of the job or request at hand. Wrong credentials are not one: they do
    not pass by themselves."""
    if isinstance(exc, (AuthenticationError, AuthorizationError)):
        return False
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, *_OUTAGE_REPLIES)):
        return True
    # min-replicas-to-write not met; in a pipeline the reply is quoted after a prefix.
    return isinstance(exc, redis.ResponseError) and "NOREPLICAS " in str(exc)


class JobQueue:
    """eventpipe's RQ queue: the RQ object (for the worker runner and RQ's own tools), the
    connection and RQ's key names. Code outside this package passes it around opaquely."""

    def __init__(self, settings: Settings, connection: redis.Redis) -> None:
        self.settings = settings
        self.connection = connection
        self.rq = Queue(
            settings.queue_name,
            connection=connection,
            serializer=JSONSerializer,
            default_timeout=settings.job_timeout,
        )
        self.name = self.rq.name
        self.keys = RQKeys.of(self.rq)

    def close(self) -> None:
        self.connection.close()


def make_queue(settings: Settings, connection: redis.Redis) -> JobQueue:
    return JobQueue(settings, connection)


def bump_config_version(connection: redis.Redis) -> None:
    connection.incr(CONFIG_VERSION_KEY)


def check_redis_keeps(settings: Settings) -> list[str]:
    """Raises EventpipeError when the Redis at REDIS_URL may evict keys: any maxmemory-policy
    but noeviction (volatile-* evicts what eventpipe gives a TTL: failed jobs, idempotency
    answers), even with no maxmemory, which can be set at run time. Returns warnings (AOF
    off). A Redis that does not answer is not refused here: the processes wait for it."""
    client = connect_redis(settings)
    try:
        policy = _read_setting(client, "maxmemory-policy", "memory", "maxmemory_policy")
        aof = _read_setting(client, "appendonly", "persistence", "aof_enabled")
    except redis.ConnectionError:
        return [f"could not check the Redis at {_where(client)}: it does not answer"]
    finally:
        client.close()
    if policy is None and not settings.redis_assume_noeviction:
        raise EventpipeError(
            f"Redis {_where(client)} refuses both CONFIG GET and INFO, so its maxmemory-policy"
            " is unknown; grant +config|get or +info, or set REDIS_ASSUME_NOEVICTION=true"
        )
    if policy not in (None, "noeviction"):
        raise EventpipeError(
            f"Redis {_where(client)} runs with maxmemory-policy {policy}, which can evict "
            "queued events; set maxmemory-policy noeviction"
        )
    if aof in ("no", "0"):
        return [
            f"Redis {_where(client)} runs without AOF (appendonly no): a restart of it loses"
            " what it holds"
        ]
    return []


def _read_setting(client: redis.Redis, name: str, section: str, field: str) -> str | None:
    """A server setting by CONFIG GET, else from INFO (servers that rename or forbid CONFIG,
    as managed ones do); None when both are refused."""
    try:
        found = cast("dict[str, str]", client.config_get(name)).get(name)
        if found is not None:
            return str(found)
    except redis.ResponseError:
        pass
    try:
        info = client.info(section)
    except redis.ResponseError:
        return None
    value = info.get(field)
    return None if value is None else str(value)


def _where(client: redis.Redis | aioredis.Redis) -> str:
    pool = client.connection_pool
    service = getattr(pool, "service_name", None)  # a Sentinel-managed pool
    if service is not None:
        return f"{service} (the primary Sentinel names)"
    kwargs = pool.connection_kwargs
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
