"""Per-process resources of a worker: one engine (and pool), one Redis client, one queue.

Created lazily in the process that runs jobs, never at import, so a forked or spawned worker
never shares a parent's sockets.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import redis
from sqlalchemy import Engine

from shared.db import make_engine
from shared.queue import JobQueue, connect_redis, make_queue
from shared.settings import Settings, get_settings


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    engine: Engine
    redis: redis.Redis
    queue: JobQueue


@lru_cache(maxsize=1)
def get_context() -> WorkerContext:
    settings = get_settings()
    connection = connect_redis(settings)
    return WorkerContext(
        settings, make_engine(settings), connection, make_queue(settings, connection)
    )
