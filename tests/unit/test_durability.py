"""REDIS_DURABILITY: the setting, the fsync group write and the start-up refusal.

The fsync write is checked against a scripted connection (fakeredis has no WAITAOF); the real
thing runs against Valkey in tests/integration/test_durability.py.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, cast

import fakeredis
import hiredis
import pytest
import redis
from redis.asyncio.client import Pipeline
from sqlalchemy import Engine

from shared.errors import EventpipeError, QueueUnavailable
from shared.queue import (
    JobWriter,
    check_fsync_support,
    enqueue_events_async,
    enqueue_events_fsync,
    enqueue_function,
    make_queue,
)
from shared.queue.enqueue import _RUN, script_command
from shared.settings import Settings, load_settings
from tests.unit.conftest import make_client

EVENT = {"id": "6b07ce1917312a624726013b", "eventName": "order_completed"}
OK_REPLY = [1, 0]


class ScriptedConnection:
    """A pooled connection that answers like Redis: the number of commands the group's
    script ran (or `ran`), then `waitaof` (or `fail_at`'s error in place of a reply).
    `sent` holds each write's commands: the script's, unpacked, then the confirmation."""

    def __init__(
        self,
        waitaof: Any = OK_REPLY,
        fail_at: int | None = None,
        protocol: int = 2,
        ran: int | None = None,
    ) -> None:
        self.waitaof, self.fail_at, self.protocol, self.ran = waitaof, fail_at, protocol, ran
        self.sent: list[list[tuple[str, ...]]] = []
        self.replies: list[Any] = []
        self.disconnected = False

    async def send_packed_command(self, data: bytes) -> None:
        script, *confirm = unpack(data)
        assert script[:3] == ("EVAL", _RUN, "0")
        commands = script_commands(script[3:])
        self.sent.append([*commands, *confirm])
        self.replies = [len(commands) if self.ran is None else self.ran]
        if confirm:
            self.replies.append(self.waitaof)
        if self.fail_at is not None:
            self.replies[self.fail_at] = redis.ResponseError("OOM command not allowed")

    async def read_response(self) -> Any:
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        if reply == "hang":
            await asyncio.sleep(3600)
        return reply

    async def disconnect(self) -> None:
        self.disconnected = True


def unpack(data: bytes) -> list[tuple[str, ...]]:
    """The commands packed in `data` (RESP arrays), as text (the job's compressed payload
    comes out garbled, which no test reads)."""
    reader = hiredis.Reader(encoding="utf-8", errors="replace")
    reader.feed(data)
    commands = []
    while (command := reader.gets()) is not False:
        commands.append(tuple(command))
    return commands


def script_commands(argv: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The commands in the group script's ARGV: each one's argument count, then them."""
    commands, i = [], 0
    while i < len(argv):
        argc = int(argv[i])
        commands.append(argv[i + 1 : i + 1 + argc])
        i += argc + 1
    return commands


class ScriptedPool:
    def __init__(self, conn: ScriptedConnection) -> None:
        self.conn = conn
        self.taken = self.released = 0

    async def get_connection(self) -> ScriptedConnection:
        self.taken += 1
        return self.conn

    async def release(self, conn: ScriptedConnection) -> None:
        self.released += 1


class ScriptedRedis:
    def __init__(self, conn: ScriptedConnection) -> None:
        self.connection_pool = ScriptedPool(conn)

    def pipeline(self, transaction: bool = True) -> Pipeline:
        return Pipeline(cast(Any, self.connection_pool), {}, transaction, None)


@pytest.fixture
def writer(settings: Settings) -> JobWriter:
    return JobWriter(make_queue(settings, fakeredis.FakeRedis()))


def _fsync(writer: JobWriter, conn: ScriptedConnection) -> Callable[[], Any]:
    client = cast(Any, ScriptedRedis(conn))
    return functools.partial(enqueue_events_fsync, writer, client, [EVENT], timeout_ms=250)


async def test_the_aof_write_is_multi_exec_in_one_write_on_one_connection(
    writer: JobWriter,
) -> None:
    conn = ScriptedConnection()
    client = ScriptedRedis(conn)
    job_id = await enqueue_events_async(writer, cast(Any, client), [EVENT])
    [packed] = conn.sent
    assert packed[0] == ("SADD", "rq:queues", "rq:queue:eventpipe")
    assert ("RPUSH", "rq:queue:eventpipe", job_id) in packed
    assert ("HSET", "eventpipe:pending", EVENT["id"], job_id) in packed
    assert conn.replies == [] and not conn.disconnected
    assert client.connection_pool.released == client.connection_pool.taken == 1


async def test_an_aof_write_refused_is_a_503_and_drops_the_connection(
    writer: JobWriter,
) -> None:
    conn = ScriptedConnection(fail_at=0)  # the script refused (OOM, READONLY)
    with pytest.raises(QueueUnavailable):
        await enqueue_events_async(writer, cast(Any, ScriptedRedis(conn)), [EVENT])
    assert conn.disconnected  # replies left unread must not reach the next user


def test_the_durability_settings() -> None:
    assert Settings().redis_durability == "aof"
    assert load_settings({"REDIS_DURABILITY": "fsync"}).redis_durability == "fsync"
    assert load_settings({"REDIS_FSYNC_TIMEOUT_MS": "500"}).redis_fsync_timeout_ms == 500
    with pytest.raises(ValueError, match="REDIS_DURABILITY"):
        load_settings({"REDIS_DURABILITY": "always"})
    with pytest.raises(ValueError, match="REDIS_FSYNC_TIMEOUT_MS"):
        load_settings({"REDIS_FSYNC_TIMEOUT_MS": "0"})  # WAITAOF would wait for ever


def test_the_default_mode_keeps_the_plain_group_write() -> None:
    assert enqueue_function(Settings()) is enqueue_events_async
    fsync = enqueue_function(Settings(redis_durability="fsync", redis_fsync_timeout_ms=300))
    assert isinstance(fsync, functools.partial)
    assert fsync.func is enqueue_events_fsync and fsync.keywords == {"timeout_ms": 300}


async def test_multi_exec_and_waitaof_go_in_one_write_on_one_connection(
    writer: JobWriter,
) -> None:
    conn = ScriptedConnection()
    client = ScriptedRedis(conn)
    job_id = await enqueue_events_fsync(writer, cast(Any, client), [EVENT], timeout_ms=250)
    [packed] = conn.sent
    assert packed[0] == ("SADD", "rq:queues", "rq:queue:eventpipe")
    assert packed[-1] == ("WAITAOF", "1", "0", "250")
    assert ("RPUSH", "rq:queue:eventpipe", job_id) in packed  # the job itself is inside
    # Every reply read, the connection back in the pool and still usable.
    assert conn.replies == [] and not conn.disconnected
    assert client.connection_pool.released == client.connection_pool.taken == 1


async def test_a_connection_not_pinned_to_resp2_is_refused_before_sending(
    writer: JobWriter,
) -> None:
    """The raw replies are parsed as RESP2 shapes; redis-py 8 speaks RESP3 unless pinned."""
    conn = ScriptedConnection(protocol=3)
    client = ScriptedRedis(conn)
    with pytest.raises(QueueUnavailable):
        await enqueue_events_fsync(writer, cast(Any, client), [EVENT], timeout_ms=250)
    assert conn.sent == []
    assert client.connection_pool.released == client.connection_pool.taken == 1


async def test_an_unconfirmed_fsync_is_a_503(writer: JobWriter) -> None:
    conn = ScriptedConnection(waitaof=[0, 0])  # WAITAOF's timeout passed
    with pytest.raises(QueueUnavailable, match="did not confirm the write on disk"):
        await _fsync(writer, conn)()
    assert not conn.disconnected  # every reply was read: the connection is in step


@pytest.mark.parametrize("fail_at", [0, -1])  # the script (OOM), WAITAOF itself
async def test_an_error_reply_is_a_503_and_drops_the_connection(
    writer: JobWriter, fail_at: int
) -> None:
    conn = ScriptedConnection(fail_at=fail_at)
    client = ScriptedRedis(conn)
    with pytest.raises(QueueUnavailable):
        await enqueue_events_fsync(writer, cast(Any, client), [EVENT], timeout_ms=250)
    assert conn.disconnected  # replies left unread must not reach the next user
    assert client.connection_pool.released == client.connection_pool.taken == 1


async def test_a_cancelled_write_drops_the_connection(writer: JobWriter) -> None:
    conn = ScriptedConnection(waitaof="hang")
    task = asyncio.create_task(_fsync(writer, conn)())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert conn.disconnected


@pytest.mark.parametrize("ran", [0, 3])
async def test_a_script_that_ran_short_is_a_503(writer: JobWriter, ran: int) -> None:
    with pytest.raises(QueueUnavailable):
        await enqueue_events_async(
            writer, cast(Any, ScriptedRedis(ScriptedConnection(ran=ran))), [EVENT]
        )


def test_the_group_script_runs_its_commands_in_order() -> None:
    client: Any = fakeredis.FakeRedis()  # execute_command is untyped
    commands = [("RPUSH", "l", "a"), ("HSET", "h", "k", 1, "v", b"\x00\xff"), ("RPUSH", "l", "b")]
    assert client.execute_command(*script_command(commands)) == 3
    assert client.lrange("l", 0, -1) == [b"a", b"b"]
    assert client.hgetall("h") == {b"k": b"1", b"v": b"\x00\xff"}
    with pytest.raises(redis.ResponseError):  # a refused command is an error reply
        client.execute_command(*script_command([("RPUSH", "h", "x")]))


async def test_a_server_without_waitaof_is_refused() -> None:
    client = fakeredis.FakeAsyncRedis()  # like Redis before 7.2: WAITAOF is unknown
    with pytest.raises(EventpipeError, match=r"REDIS_DURABILITY=fsync refused.*WAITAOF"):
        await check_fsync_support(client)
    await client.aclose()


class AofOff:
    """A Valkey with `appendonly no`: WAITAOF exists, numlocal 1 is refused."""

    async def info(self, section: str) -> dict[str, Any]:
        return {"redis_version": "7.2.4", "server_name": "valkey", "valkey_version": "8.1.8"}

    async def waitaof(self, numlocal: int, numreplicas: int, timeout: int) -> list[int]:
        if numlocal:
            raise redis.ResponseError("WAITAOF cannot be used when ... appendonly is disabled.")
        return [0, 0]


async def test_a_server_without_aof_is_refused() -> None:
    with pytest.raises(EventpipeError, match=r"valkey 8\.1\.8.*appendonly yes"):
        await check_fsync_support(cast(Any, AofOff()))


def test_the_api_refuses_to_start_in_fsync_mode_on_such_a_server(
    settings: Settings, engine: Engine, fake_server: fakeredis.FakeServer
) -> None:
    client = make_client(settings, engine, fake_server, redis_durability="fsync")
    with pytest.raises(EventpipeError, match="REDIS_DURABILITY=fsync refused"):
        with client:
            pass
