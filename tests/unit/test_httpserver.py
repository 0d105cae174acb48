"""cli.httpserver: the limits on what uvicorn's httptools protocol is fed, byte by byte."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from cli.httpserver import (
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    MAX_URL_BYTES,
    PROTOCOL,
    BoundedHttpToolsProtocol,
)


class Transport(asyncio.Transport):
    """What the protocol writes, and whether it closed the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.writes: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8000) if name in ("sockname", "peername") else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
async def connection() -> tuple[BoundedHttpToolsProtocol, Transport]:
    return connect(app)


def connect(app: Any) -> tuple[BoundedHttpToolsProtocol, Transport]:
    config = Config(app=app, http=PROTOCOL, log_level="warning")
    config.load()
    assert config.http_protocol_class is BoundedHttpToolsProtocol
    protocol = BoundedHttpToolsProtocol(config=config, server_state=ServerState(), app_state={})
    transport = Transport()
    protocol.connection_made(transport)
    return protocol, transport


def feed(protocol: BoundedHttpToolsProtocol, transport: Transport, data: bytes) -> int:
    """Feed `data` in 16 KB reads until the protocol closes; the bytes fed."""
    fed = 0
    while fed < len(data) and not transport.closed:
        protocol.data_received(data[fed : fed + 16384])
        fed += 16384
    return min(fed, len(data))


async def test_a_normal_request_is_served(
    connection: tuple[BoundedHttpToolsProtocol, Transport],
) -> None:
    protocol, transport = connection
    feed(protocol, transport, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(10):
        await asyncio.sleep(0)
    assert transport.written.startswith(b"HTTP/1.1 200")
    assert not transport.closed


@pytest.mark.parametrize(
    ("request_start", "status", "code", "limit"),
    [
        (b"GET /?", 414, "URI_TOO_LONG", MAX_URL_BYTES),
        (b"GET / HTTP/1.1\r\nX-Junk: ", 431, "HEADERS_TOO_LARGE", MAX_HEAD_BYTES),
    ],
)
async def test_8_mb_of_url_or_header_is_refused_once_past_its_limit(
    connection: tuple[BoundedHttpToolsProtocol, Transport],
    request_start: bytes,
    status: int,
    code: str,
    limit: int,
) -> None:
    protocol, transport = connection
    fed = feed(protocol, transport, request_start + b"a" * (8 << 20))
    assert transport.written.startswith(b"HTTP/1.1 %d" % status)
    assert b'"code":"%s"' % code.encode() in transport.written and transport.closed
    assert fed <= limit + 16384


async def test_a_head_read_in_one_large_piece_is_measured_exactly(
    connection: tuple[BoundedHttpToolsProtocol, Transport],
) -> None:
    """A head that arrives complete in one read larger than the limit (with its body) is
    measured: over the limit, 431."""
    protocol, transport = connection
    head = b"POST / HTTP/1.1\r\nContent-Length: 2\r\nX-Junk: " + b"a" * MAX_HEAD_BYTES
    protocol.data_received(head + b"\r\n\r\n{}")
    assert transport.written.startswith(b"HTTP/1.1 431")


async def test_a_body_read_with_its_head_does_not_count_as_head(
    connection: tuple[BoundedHttpToolsProtocol, Transport],
) -> None:
    protocol, transport = connection
    body = b"x" * (2 * MAX_HEAD_BYTES)
    head = b"POST / HTTP/1.1\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    protocol.data_received(head + body)
    for _ in range(10):
        await asyncio.sleep(0)
    assert transport.written.startswith(b"HTTP/1.1 200"), transport.written[:100]


async def test_too_many_headers_is_431(
    connection: tuple[BoundedHttpToolsProtocol, Transport],
) -> None:
    protocol, transport = connection
    headers = b"".join(b"X-H%d: 1\r\n" % i for i in range(MAX_HEADERS + 1))
    protocol.data_received(b"GET / HTTP/1.1\r\n" + headers + b"\r\n")
    assert transport.written.startswith(b"HTTP/1.1 431")


async def test_a_request_httptools_cannot_parse_is_400_in_the_envelope(
    connection: tuple[BoundedHttpToolsProtocol, Transport],
) -> None:
    protocol, transport = connection
    protocol.data_received(b"GET / HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n")
    assert transport.written.startswith(b"HTTP/1.1 400")
    assert b'"success":false' in transport.written


# --- one write per response ----------------------------------------------------------------


async def settle(transport: Transport, check: Any) -> None:
    """Run the event loop until `check()` holds (a few iterations at most)."""
    for _ in range(100):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never held; written: {transport.written[:200]!r}")


def sized(body: bytes, *parts: bytes) -> Any:
    """An app answering `body` with its Content-Length, in `parts` if given."""

    async def answer(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 202, "headers": headers})
        for part in parts[:-1]:
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": parts[-1] if parts else body})

    return answer


async def test_a_response_of_known_length_goes_out_in_one_write() -> None:
    """The send path's answer: head and body in one transport write, keep-alive kept.
    Fails when uvicorn's cycle changes the fields OneWrite reads (then update it, and the
    cap on uvicorn in pyproject.toml)."""
    protocol, transport = connect(sized(b'{"success":true}'))
    for n in (1, 2):  # two requests on the connection: each answer in one write
        protocol.data_received(b"POST /v1/events/send HTTP/1.1\r\nHost: x\r\n\r\n")
        await settle(transport, lambda n=n: len(transport.writes) == n)
        assert transport.writes[-1].startswith(b"HTTP/1.1 202 Accepted\r\n")
        assert transport.writes[-1].endswith(b'\r\n\r\n{"success":true}')
    assert not transport.closed


async def test_a_body_in_parts_follows_its_head_in_order() -> None:
    protocol, transport = connect(sized(b"abcdef", b"ab", b"cd", b"ef"))
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle(transport, lambda: transport.written.endswith(b"abcdef"))
    assert transport.writes[0].endswith(b"\r\n\r\nab")
    assert transport.writes[1:] == [b"cd", b"ef"]


async def test_a_streamed_head_is_not_held_for_its_first_event() -> None:
    """A chunked response (the console's live tail) sends its head at once."""
    release = asyncio.Event()

    async def stream(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await release.wait()
        await send({"type": "http.response.body", "body": b"event"})

    protocol, transport = connect(stream)
    protocol.data_received(b"GET /tail HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle(transport, lambda: transport.written.startswith(b"HTTP/1.1 200"))
    assert b"transfer-encoding: chunked" in transport.written
    release.set()
    await settle(transport, lambda: b"event" in transport.written)


async def test_a_head_request_and_an_empty_body_are_answered() -> None:
    """No body write follows these heads: holding them would hang the request."""
    protocol, transport = connect(sized(b"abc"))
    protocol.data_received(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle(transport, lambda: transport.written.endswith(b"\r\n\r\n"))
    assert b"content-length: 3" in transport.written
    protocol, transport = connect(sized(b""))
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle(transport, lambda: b"content-length: 0" in transport.written)


async def test_100_continue_is_not_held_back() -> None:
    async def echo(scope: Any, receive: Any, send: Any) -> None:
        body = (await receive())["body"]
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    protocol, transport = connect(echo)
    protocol.data_received(
        b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    )
    await settle(transport, lambda: transport.written == b"HTTP/1.1 100 Continue\r\n\r\n")
    protocol.data_received(b"{}")
    await settle(transport, lambda: transport.written.endswith(b"\r\n\r\n{}"))
    assert len(transport.writes) == 2


async def test_a_served_request_is_freed_without_the_garbage_collector() -> None:
    """The held-head transport must not form a loop with its cycle: every request's objects
    would then wait for the collector, whose pauses (30 ms at the send path's rate) set p99."""
    protocol, transport = connect(sized(b'{"success":true}'))
    gc.disable()
    try:
        protocol.data_received(b"POST /v1/events/send HTTP/1.1\r\nHost: x\r\n\r\n")
        await settle(transport, lambda: len(transport.writes) == 1)
        first = weakref.ref(protocol.cycle)
        protocol.data_received(b"POST /v1/events/send HTTP/1.1\r\nHost: x\r\n\r\n")
        await settle(transport, lambda: len(transport.writes) == 2)
        await asyncio.sleep(0)  # the first request's task lets go of its cycle
        assert first() is None
    finally:
        gc.enable()
