"""Sentinel and REDIS_DURABILITY=replicated: the settings, the clients made through Sentinel,
what counts as a Redis outage, the WAIT group write and the start-up refusal.

The real thing (a primary, two replicas, three Sentinels, a SIGKILL) runs in
tests/integration/test_failover.py.
"""

from __future__ import annotations

import functools
from typing import Any, cast

import fakeredis
import pytest
import redis
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.sentinel import MasterNotFoundError, SentinelConnectionPool
from sqlalchemy import Engine

from shared.errors import EventpipeError, QueueUnavailable
from shared.queue import (
    JobWriter,
    check_replica_replies,
    check_replicas,
    connect_async,
    connect_redis,
    connect_subscriber,
    enqueue_events_replicated,
    enqueue_function,
    make_queue,
    redis_outage,
)
from shared.settings import Settings, load_settings, sentinel_addresses
from tests.unit.conftest import make_client
from tests.unit.test_durability import EVENT, ScriptedConnection, ScriptedRedis

SENTINELS = "10.0.0.1:26379, 10.0.0.2:26379,[::1]:26380"


def test_the_settings() -> None:
    settings = load_settings(
        {
            "REDIS_SENTINELS": SENTINELS,
            "REDIS_SENTINEL_MASTER": "events",
            "REDIS_DURABILITY": "replicated",
            "REDIS_REPLICA_TIMEOUT_MS": "250",
        }
    )
    assert sentinel_addresses(settings.redis_sentinels) == [
        ("10.0.0.1", 26379),
        ("10.0.0.2", 26379),
        ("::1", 26380),
    ]
    assert settings.redis_sentinel_master == "events"
    assert (settings.redis_durability, settings.redis_replica_timeout_ms) == ("replicated", 250)
    # `eventpipe run` embeds no Redis of its own when Sentinels are given.
    assert settings.redis_url_configured
    assert Settings().redis_sentinels == "" and sentinel_addresses("") == []


@pytest.mark.parametrize("bad", ["sentinel", "host:", ":26379", "host:port", "host:70000"])
def test_a_malformed_sentinel_list_is_refused_naming_the_entry(bad: str) -> None:
    with pytest.raises(ValueError, match=f"REDIS_SENTINELS: {bad!r} is not host:port"):
        load_settings({"REDIS_SENTINELS": f"ok:1,{bad}"})


def test_wait_for_ever_is_refused() -> None:
    with pytest.raises(ValueError, match="REDIS_REPLICA_TIMEOUT_MS"):
        load_settings({"REDIS_REPLICA_TIMEOUT_MS": "0"})  # WAIT 1 0 would block for ever


def _through_sentinel(**fields: Any) -> Settings:
    return Settings(
        redis_url="redis://:secret@ignored.example:6390/3",
        redis_sentinels=SENTINELS,
        redis_sentinel_master="events",
        redis_sentinel_password="sentinel-secret",
        **fields,
    )


def test_with_sentinels_every_client_asks_them_for_the_primary() -> None:
    """No connection is made here: the pools are inspected. REDIS_URL gives the database
    and the password, never the address."""
    settings = _through_sentinel()
    client = connect_redis(settings)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "events" and pool.is_master
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["password"], kwargs["protocol"]) == (3, "secret", 2)
    assert "host" not in kwargs
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [
        26379,
        26379,
        26380,
    ]
    assert sentinels[0].connection_pool.connection_kwargs["password"] == "sentinel-secret"
    client.close()
    for make in (connect_async, connect_subscriber):
        async_pool = make(settings).connection_pool
        assert isinstance(async_pool, AsyncSentinelPool)
        assert async_pool.service_name == "events"
        assert async_pool.connection_kwargs["db"] == 3
    assert connect_subscriber(settings).connection_pool.connection_kwargs["socket_timeout"] is None


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (redis.ConnectionError("Connection refused"), True),
        (redis.TimeoutError("Timeout reading from socket"), True),
        (redis.exceptions.BusyLoadingError("Redis is loading the dataset"), True),
        (redis.exceptions.ReadOnlyError("You can't write against a read only replica."), True),
        (redis.exceptions.OutOfMemoryError("command not allowed when used memory"), True),
        (redis.exceptions.MasterDownError("Link with MASTER is down"), True),
        (redis.ResponseError("Command # 2 (SREM x) of pipeline caused error: NOREPLICAS x"), True),
        (MasterNotFoundError("No master found for 'events'"), True),
        (redis.exceptions.AuthenticationError("invalid password"), False),
        (redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind"), False),
        (ValueError("not Redis"), False),
    ],
)
def test_what_counts_as_an_outage(error: Exception, outage: bool) -> None:
    assert redis_outage(error) is outage


@pytest.fixture
def writer(settings: Settings) -> JobWriter:
    return JobWriter(make_queue(settings, fakeredis.FakeRedis()))


def test_replicated_mode_writes_with_wait() -> None:
    write = enqueue_function(Settings(redis_durability="replicated", redis_replica_timeout_ms=300))
    assert isinstance(write, functools.partial)
    assert write.func is enqueue_events_replicated and write.keywords == {"timeout_ms": 300}


async def test_multi_exec_and_wait_go_in_one_write_on_one_connection(writer: JobWriter) -> None:
    conn = ScriptedConnection(waitaof=1)  # WAIT's reply: one replica acknowledged
    client = ScriptedRedis(conn)
    job_id = await enqueue_events_replicated(writer, cast(Any, client), [EVENT], timeout_ms=250)
    [packed] = conn.sent
    assert packed[-1] == ("WAIT", "1", "250")
    assert ("RPUSH", "rq:queue:eventpipe", job_id) in packed
    assert conn.replies == [] and not conn.disconnected


async def test_no_replica_acknowledging_in_time_is_a_503(writer: JobWriter) -> None:
    """The group is in the primary, not on a replica: not reported accepted (a retry with
    the same Idempotency-Key gets this event's answer, as after an fsync shortfall)."""
    conn = ScriptedConnection(waitaof=0)
    with pytest.raises(QueueUnavailable, match="did not confirm the write on a replica"):
        await enqueue_events_replicated(
            writer, cast(Any, ScriptedRedis(conn)), [EVENT], timeout_ms=1
        )
    assert not conn.disconnected  # every reply read


async def test_an_error_reply_is_a_503(writer: JobWriter) -> None:
    conn = ScriptedConnection(waitaof=1, fail_at=0)  # the script refused (READONLY)
    with pytest.raises(QueueUnavailable):
        await enqueue_events_replicated(
            writer, cast(Any, ScriptedRedis(conn)), [EVENT], timeout_ms=1
        )
    assert conn.disconnected


def test_the_replica_count_decides() -> None:
    check_replica_replies([3, 2])
    with pytest.raises(QueueUnavailable):
        check_replica_replies([3, 0])


class Server:
    """INFO replication as a primary with `replicas` (their states) answers it, or refused."""

    def __init__(self, role: str = "master", *states: str, info_denied: bool = False) -> None:
        self.role, self.states, self.info_denied = role, states, info_denied
        self.connection_pool = fakeredis.FakeRedis().connection_pool

    async def info(self, section: str) -> dict[str, Any]:
        if self.info_denied:
            raise redis.exceptions.NoPermissionError("this user has no permissions to run 'info'")
        found: dict[str, Any] = {"role": self.role, "connected_slaves": len(self.states)}
        for i, state in enumerate(self.states):
            found[f"slave{i}"] = {"ip": "10.0.0.9", "port": 6379, "state": state, "lag": 0}
        return found

    async def wait(self, replicas: int, timeout: int) -> int:
        return sum(state == "online" for state in self.states)


async def test_a_primary_with_a_replica_online_is_accepted() -> None:
    await check_replicas(cast(Any, Server("master", "online", "wait_bgsave")))
    await check_replicas(cast(Any, Server("master", "online", info_denied=True)))


@pytest.mark.parametrize(
    ("server", "why"),
    [
        (Server("master"), r"has no replica online \(connected_slaves: 0\)"),
        (Server("master", "wait_bgsave"), r"has no replica online \(connected_slaves: 1\)"),
        (Server("slave"), "is a replica"),
        (Server("master", info_denied=True), "WAIT counted no replica"),
    ],
)
async def test_replicated_mode_is_refused_without_a_replica(server: Server, why: str) -> None:
    with pytest.raises(EventpipeError, match=f"REDIS_DURABILITY=replicated refused: .*{why}"):
        await check_replicas(cast(Any, server))


def test_the_api_refuses_to_start_in_replicated_mode_without_a_replica(
    settings: Settings, engine: Engine, fake_server: fakeredis.FakeServer
) -> None:
    client = make_client(settings, engine, fake_server, redis_durability="replicated")
    with pytest.raises(EventpipeError, match="REDIS_DURABILITY=replicated refused"):
        with client:
            pass
