"""The services a run uses: its own PostgreSQL database, a Redis database it may flush, the
seed project, and the counters the measurements read."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import redis
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url

from api.definitions import check_definition
from api.store import create_definition, create_project, upsert_contact
from bench.naive import BACKLOG_KEY
from cli.migrate import upgrade
from shared.db import transaction
from shared.models import events
from shared.queue import PENDING_KEY

ADMIN_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
SEED: dict[str, Any] = {
    "eventName": "order_completed",
    "email": "jane@example.com",
    "eventProperties": {"order_total": 129.99, "currency": "USD", "is_first_purchase": True},
}
DEFINITION: dict[str, Any] = {
    "eventName": "order_completed",
    "properties": [
        {"propertyName": "order_total", "type": "number"},
        {"propertyName": "currency", "type": "string"},
        {"propertyName": "is_first_purchase", "type": "boolean"},
    ],
}


# Set after every flush of ours: gone means another client flushed the database meanwhile.
SENTINEL_KEY = "eventpipe-bench:sentinel"


@dataclass
class World:
    database_url: str
    engine: Engine
    redis: redis.Redis
    project_id: str
    api_key: str
    # Signs that another client used the Redis database during the run: the figures they
    # touch are not to be trusted.
    interference: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """The environment of every child: eventpipe's settings and the naive peer's."""
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": REDIS_URL,
            "LOG_LEVEL": "WARNING",
            # The closed-loop accept runs queue with no worker draining: 10 s of batches
            # (~800k events, plus the warm-up) would meet the default backpressure limit
            # (1M) and measure 503s instead of the accept path.
            "MAX_QUEUED_EVENTS": "5000000",
            "NAIVE_API_KEY": self.api_key,
            "NAIVE_PROJECT_ID": self.project_id,
        }

    def stored(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(events)).scalar() or 0)

    def pending(self) -> int:
        """eventpipe's backlog: events accepted and not yet handled by a worker."""
        return self.redis.hlen(PENDING_KEY)

    def naive_backlog(self) -> int:
        return self.redis.llen(BACKLOG_KEY)

    def used_memory(self) -> int:
        return int(self.redis.info("memory")["used_memory"])

    def keys_memory(self) -> int:
        """The sum of MEMORY USAGE over this database's keys: unlike used_memory, blind to
        whatever else the server holds or frees meanwhile (other databases, buffers)."""
        keys = list(self.redis.scan_iter(count=1000))
        total = 0
        for start in range(0, len(keys), 1000):
            with self.redis.pipeline(transaction=False) as pipe:
                for key in keys[start : start + 1000]:
                    pipe.memory_usage(key, samples=0)
                total += sum(int(n or 0) for n in pipe.execute())
        return total

    def flush(self) -> None:
        self.redis.flushdb()
        self.redis.set(SENTINEL_KEY, "1")

    def reset(self) -> None:
        """An empty events table and an empty Redis database."""
        with transaction(self.engine) as conn:
            conn.execute(text("TRUNCATE events"))
        self.flush()

    def check_alone(
        self, what: str, queued: int | None = None, accepted: int | None = None
    ) -> None:
        """Record interference: our Redis database flushed by someone else, or more events
        queued than our API accepted."""
        if not self.redis.exists(SENTINEL_KEY):
            self._interfered(f"{what}: the Redis database was flushed by another client")
        if queued is not None and accepted is not None and queued > accepted * 1.01 + 100:
            self._interfered(
                f"{what}: {queued} events queued but the API accepted {accepted}: another"
                " client writes to this Redis database"
            )

    def _interfered(self, message: str) -> None:
        print(f"  WARNING {message}")
        self.interference.append(message)


@contextlib.contextmanager
def open_world() -> Iterator[World]:
    """A fresh, migrated and seeded database for the run, dropped on the way out."""
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"eventpipe_bench_{uuid4().hex[:12]}"
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    connection = redis.Redis.from_url(REDIS_URL)
    engine: Engine | None = None
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        upgrade(url)
        engine = create_engine(url)
        project_id, api_key = seed(engine)
        world = World(url, engine, connection, project_id, api_key)
        world.flush()
        yield world
    finally:
        with contextlib.suppress(redis.RedisError):
            connection.flushdb()
        if engine is not None:
            engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def seed(engine: Engine) -> tuple[str, str]:
    """The project, its key, the definition order_completed and the contact Jane."""
    with transaction(engine) as conn:
        project_id, key = create_project("bench", conn=conn)
        create_definition(project_id, check_definition(DEFINITION), conn=conn)
        upsert_contact(project_id, "jane@example.com", {}, conn=conn)
    return project_id, key.api_key


def machine(world: World) -> dict[str, Any]:
    with world.engine.connect() as conn:
        postgres = conn.execute(text("SHOW server_version")).scalar()
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "redis": world.redis.info("server")["redis_version"],
        "postgres": str(postgres),
        "wrk": wrk.split(" [")[0].strip(),
        "load_at_start": os.getloadavg()[0],
    }
