"""Unit fixtures: SQLite in a temp dir, fakeredis, the app under Starlette's TestClient."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from sqlalchemy import Engine
from starlette.testclient import TestClient

from api.app import EventpipeApp, create_app
from api.state import Resources
from api.store import create_project
from shared.db import make_engine, transaction
from shared.models import metadata
from shared.queue import bump_config_version, make_queue
from shared.settings import Settings
from tests.factories import DEFINITION
from worker import context as worker_context

# The seed's definition, plus a date property so every type is exercised.
SEED_DEFINITION = {
    **DEFINITION,
    "description": None,
    "properties": [*DEFINITION["properties"], {"propertyName": "placed_at", "type": "date"}],
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'unit.db'}",
        redis_url="redis://fake",
        config_poll_seconds=0.05,
        group_linger_ms=0.5,
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings)
    metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def fake_server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def fake_redis(fake_server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fake_server)


@pytest.fixture
def worker_ctx(
    settings: Settings, engine: Engine, fake_redis: fakeredis.FakeRedis, monkeypatch: Any
) -> worker_context.WorkerContext:
    """The worker's per-process context on SQLite and fakeredis."""
    ctx = worker_context.WorkerContext(
        settings, engine, fake_redis, make_queue(settings, fake_redis)
    )
    monkeypatch.setattr("worker.jobs.get_context", lambda: ctx)
    monkeypatch.setattr("worker.runner.get_context", lambda: ctx)
    return ctx


def make_project(engine: Engine, redis: Any, name: str = "test") -> tuple[str, str, str]:
    """(project id, api key, key id), announced to running apps as the CLI does."""
    with transaction(engine) as conn:
        project_id, key = create_project(name, conn=conn)
    bump_config_version(redis)
    return project_id, key.api_key, key.key_id


def make_client(
    settings: Settings, engine: Engine, fake_server: fakeredis.FakeServer, **overrides: Any
) -> TestClient:
    app = create_app(
        replace(settings, **overrides) if overrides else settings,
        redis_client=fakeredis.FakeRedis(server=fake_server),
        # RESP2, as shared/queue/connect.py pins every real client: the group write reads
        # its replies in RESP2 shapes and refuses another protocol.
        async_redis=fakeredis.FakeAsyncRedis(server=fake_server, protocol=2),
    )
    return TestClient(app)


@pytest.fixture
def project(engine: Engine, fake_redis: fakeredis.FakeRedis) -> tuple[str, str, str]:
    return make_project(engine, fake_redis)


@pytest.fixture
def client(
    settings: Settings,
    engine: Engine,
    fake_server: fakeredis.FakeServer,
    worker_ctx: worker_context.WorkerContext,
    project: tuple[str, str, str],
) -> Iterator[TestClient]:
    # Depends on `project` so the app starts with the project's key in its snapshot.
    with make_client(settings, engine, fake_server) as client:
        yield client


def auth(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


def resources_of(client: TestClient) -> Resources:
    """The running app's resources (its lifespan has opened them)."""
    app = client.app
    assert isinstance(app, EventpipeApp)
    found: Resources = app.state.resources
    return found
