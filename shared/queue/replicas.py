"""REDIS_DURABILITY checked at start; =replicated refused unless the primary has a replica.

A send in that mode waits for WAIT to count one replica holding its group; against a primary
with none, every send would wait its full REDIS_REPLICA_TIMEOUT_MS and answer 503. Saying so
once, at start, is kinder than a 503 per request.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis

from shared.errors import EventpipeError
from shared.queue.connect import _where
from shared.queue.enqueue import check_fsync_support
from shared.settings import Settings

# WAIT's timeout for the probe used where INFO is denied (ACL): short, it only counts.
PROBE_TIMEOUT_MS = 200


async def check_durability_support(settings: Settings, connection: aioredis.Redis) -> None:
    """Refuse, at start, a REDIS_DURABILITY the server cannot honour (EventpipeError)."""
    if settings.redis_durability == "fsync":
        await check_fsync_support(connection)
    elif settings.redis_durability == "replicated":
        await check_replicas(connection)


async def check_replicas(connection: aioredis.Redis) -> None:
    """Raises EventpipeError unless the server is a primary with at least one replica online
    (INFO replication; where INFO is denied, WAIT itself counts them)."""
    where = _where(connection)
    try:
        info: dict[str, Any] = await connection.info("replication")
    except redis.ResponseError:
        try:
            counted = int(await connection.wait(1, PROBE_TIMEOUT_MS))
        except redis.ResponseError as exc:  # a proxy or a server without WAIT
            raise _refused(f"{where} cannot run WAIT ({exc})") from exc
        if counted < 1:
            raise _refused(f"WAIT counted no replica of {where}") from None
        return
    if info.get("role") != "master":
        raise _refused(
            f"{where} is a replica (role {info.get('role')}): point REDIS_URL at the primary,"
            " or use REDIS_SENTINELS"
        )
    if online_replicas(info) < 1:
        raise _refused(
            f"the primary {where} has no replica online (connected_slaves:"
            f" {info.get('connected_slaves', 0)}): start one with `replicaof <primary> <port>`"
        )


def online_replicas(info: dict[str, Any]) -> int:
    """Replicas in INFO replication's `slaveN` lines whose state is online (one still taking
    its first full copy cannot acknowledge anything yet)."""
    return sum(
        1
        for name, value in info.items()
        if name.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
    )


def _refused(why: str) -> EventpipeError:
    return EventpipeError(
        f"REDIS_DURABILITY=replicated refused: {why}; or set REDIS_DURABILITY=aof",
        code="REDIS_DURABILITY_UNSUPPORTED",
        status=503,
    )
