"""Integration fixtures: the machine's Redis and PostgreSQL, a fresh database per test.

Without the services these tests skip, except when EVENTPIPE_REQUIRE_SERVICES=1 (CI), where
a missing service fails the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from cli.migrate import upgrade
from shared.ids import new_id
from tests.integration.services import PostgresCluster, RedisServer

pytestmark = pytest.mark.integration

DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
REQUIRED = os.environ.get("EVENTPIPE_REQUIRE_SERVICES") == "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable: {exc}"
    if REQUIRED:
        pytest.fail(f"{message} (required: EVENTPIPE_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def admin_engine() -> Iterator[Engine]:
    engine = create_engine(DATABASE_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to connect means "no PostgreSQL here"
        _unavailable(f"PostgreSQL at {DATABASE_URL}", exc)
    yield engine
    engine.dispose()


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        _unavailable(f"Redis at {REDIS_URL}", exc)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def database_url(admin_engine: Engine) -> Iterator[str]:
    """A fresh database, migrated to head, dropped afterwards."""
    name = f"eventpipe_test_{new_id()}"
    with admin_engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(DATABASE_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    with admin_engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def empty_database(admin_engine: Engine) -> Iterator[str]:
    """A fresh database with no schema at all."""
    name = f"eventpipe_test_{new_id()}"
    with admin_engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(DATABASE_URL).set(database=name).render_as_string(hide_password=False)
    with admin_engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


def service_env(database_url: str, redis_url: str, **extra: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        CONFIG_POLL_SECONDS="0.2",
        LOG_LEVEL=os.environ.get("TEST_LOG_LEVEL", "WARNING"),
        WORKER_MAINTENANCE_SECONDS="5",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture
def procs_cleanup() -> Iterator[list[Any]]:
    """Processes a test started, stopped at its end in reverse order."""
    started: list[Any] = []
    yield started
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def env(database_url: str, redis_client: redis.Redis) -> dict[str, str]:
    return service_env(database_url, REDIS_URL)


@pytest.fixture
def pg_cluster(admin_engine: Engine) -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster, for a test that stops it (the machine's one stays up)."""
    cluster = PostgresCluster()
    yield cluster
    cluster.close()


@pytest.fixture
def pg_and_redis(admin_engine: Engine) -> Iterator[tuple[PostgresCluster, RedisServer]]:
    """A private PostgreSQL cluster (migrated) and Redis, free to be stopped."""
    cluster = PostgresCluster()
    server = RedisServer()
    try:
        upgrade(cluster.url)
        yield cluster, server
    finally:
        server.close()
        cluster.close()
