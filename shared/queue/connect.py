"""How eventpipe reaches Redis and its RQ queue: one factory per kind of client.

Every client speaks RESP2, pinned here: redis-py 8 defaults to RESP3 (reshaping its replies
back to the RESP2 shapes), but the raw replies of the fsync path (enqueue.py), the Lua
replies and RQ itself are what this adapter was verified against on RESP2, and some proxies
and managed servers refuse `HELLO 3`. Every timeout is given, since redis-py 8 otherwise
applies 5 s defaults.
"""

from __future__ import annotations

from typing import Any, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from rq import Queue
from rq.serializers import JSONSerializer

from shared.errors import EventpipeError
from shared.queue.keys import CONFIG_VERSION_KEY, RQKeys
from shared.settings import Settings

PROTOCOL = 2


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
    return redis.Redis.from_url(
        settings.redis_url,
        health_check_interval=30,
        retry=Retry(_quick_backoff(), retries=2),
        **_options(settings),
    )


def connect_async(settings: Settings) -> aioredis.Redis:
    """The API's client on the event loop, with the same quick retries."""
    return aioredis.Redis.from_url(
        settings.redis_url, retry=AsyncRetry(_quick_backoff(), retries=2), **_options(settings)
    )


def connect_subscriber(settings: Settings) -> aioredis.Redis:
    """The pub/sub connection of `Prefer: wait`: no read timeout (it waits for messages by
    design; redis-py 8.0.0 dropped an idle subscription after its 5 s default, 8.1 does not),
    keepalive so that a dead peer is noticed."""
    return aioredis.Redis.from_url(
        settings.redis_url,
        protocol=PROTOCOL,
        socket_timeout=None,
        socket_connect_timeout=settings.redis_timeout_seconds,
        socket_keepalive=True,
    )


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


def _where(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
