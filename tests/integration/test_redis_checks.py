"""The API and the worker refuse to start against a Redis that may evict queued events, and
warn when it runs without AOF (private redis-servers: nothing here touches the shared one)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.integration.conftest import service_env
from tests.integration.services import ROOT, RedisServer, eventpipe, free_port

EVICTS = {"maxmemory": "50mb", "maxmemory-policy": "allkeys-lru"}


def _start(database_url: str, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = service_env(database_url, redis_url)
    return subprocess.run(
        eventpipe(*args), env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def evicting() -> Iterator[RedisServer]:
    server = RedisServer(config=EVICTS)
    yield server
    server.close()


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_redis_that_evicts_is_refused_at_start(
    database_url: str, evicting: RedisServer, command: str
) -> None:
    args = ["worker", "--burst"] if command == "worker" else ["serve", "--port", str(free_port())]
    done = _start(database_url, evicting.url, *args)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"error: Redis 127.0.0.1:{evicting.port} runs with maxmemory-policy allkeys-lru, "
        "which can evict queued events; set maxmemory-policy noeviction"
    )


def test_the_policy_is_read_from_info_when_config_is_renamed_away(database_url: str) -> None:
    server = RedisServer(config=EVICTS, extra_args=["--rename-command", "CONFIG", ""])
    try:
        done = _start(database_url, server.url, "worker", "--burst")
    finally:
        server.close()
    assert done.returncode == 1 and "maxmemory-policy allkeys-lru" in done.stderr


def test_noeviction_without_aof_starts_with_a_warning(database_url: str) -> None:
    server = RedisServer(config={"maxmemory-policy": "noeviction", "appendonly": "no"})
    try:
        done = _start(database_url, server.url, "worker", "--burst")
    finally:
        server.close()
    assert "error:" not in done.stderr
    assert f"warning: Redis 127.0.0.1:{server.port} runs without AOF" in done.stderr
