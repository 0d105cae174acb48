"""uvicorn's HTTP protocol (httptools), with limits on the request line and the headers.

uvicorn sets none for httptools: a 64 MB header or URL was buffered whole (with quadratic
copying) before any check, on every route, before the key. Its h11 protocol has a limit
(`h11_max_incomplete_event_size`) but costs the send path a large share of its throughput.
So the fast parser stays, and what it is fed is bounded here, as early as it can be:

- the request target at most MAX_URL_BYTES: 414, as soon as the parser has seen more;
- the request line and headers at most MAX_HEAD_BYTES, and at most MAX_HEADERS headers:
  431, as soon as the bytes received while the head is incomplete pass the limit (the
  parser holds at most one read, 256 KB, past it).

Refusals answer in the contract's envelope and close the connection.

And each response whose length is known goes out in one write: uvicorn writes the status line
and headers, then the body, in two `transport.write` calls (two `send` system calls; a
quarter of the send path's samples sat in those two lines). `OneWrite` holds the head back
until the body's first bytes and writes them together.

The only module that knows uvicorn's protocol internals (uvicorn is capped in pyproject.toml
for it, and tests/unit/test_httpserver.py fails when they change).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from shared import jsonio

MAX_URL_BYTES = 8 * 1024
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
PROTOCOL = "cli.httpserver:BoundedHttpToolsProtocol"


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def url_too_long() -> Refused:
    return Refused(414, "URI_TOO_LONG", f"The request target is over {MAX_URL_BYTES} bytes")


def head_too_large() -> Refused:
    return Refused(
        431,
        "HEADERS_TOO_LARGE",
        f"The request's headers are over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} fields",
    )


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0  # received since the last message ended, while in a head
        self._in_head = True
        self._refusal: Refused | None = None

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)  # a callback's Refused comes back as send_400_response
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            self._answer(head_too_large())

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > MAX_URL_BYTES:
            self._refusal = url_too_long()
            raise self._refusal
        super().on_url(url)

    def on_headers_complete(self) -> None:
        self._in_head = False
        # Exact sizes only when the reads of this head were large: the common request pays
        # one comparison here.
        if len(self.headers) > MAX_HEADERS or (
            self._head_bytes > MAX_HEAD_BYTES
            and _head_size(self.url, self.headers) > MAX_HEAD_BYTES
        ):
            self._refusal = head_too_large()
            raise self._refusal
        super().on_headers_complete()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        cycle.transport = OneWrite(self.transport, cycle)  # type: ignore[assignment]
        super()._start_asgi_task(cycle, app)

    def on_message_complete(self) -> None:
        self._in_head, self._head_bytes = True, 0
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request httptools could not parse, in the contract's envelope;
        with our status when one of our limits stopped the parser."""
        refusal = self._refusal or Refused(400, "VALIDATION_FAILED", msg)
        self._answer(refusal)

    def _answer(self, refusal: Refused) -> None:
        body = jsonio.dumps(
            {"success": False, "error": {"message": refusal.message, "code": refusal.code}}
        )
        head = [STATUS_LINE[refusal.status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(head))
        self.transport.close()


def _head_size(url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    return len(url) + sum(len(name) + len(value) + 4 for name, value in headers)


class OneWrite:
    """The transport as one response's cycle sees it: the head of a response with a
    Content-Length and a body is held back and written with the body's first bytes.

    Every other write passes straight through: `100 Continue` (written before the response
    starts), chunked responses (a stream's head must not wait for its first event), HEAD
    responses and empty bodies (no body write follows)."""

    __slots__ = ("_cycle", "_head", "_transport")

    def __init__(self, transport: Any, cycle: RequestResponseCycle) -> None:
        self._transport = transport
        self._cycle: RequestResponseCycle | None = cycle  # until its head is written
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + data)
            return
        cycle = self._cycle
        if cycle is not None and cycle.response_started:
            # The first write once the response started: its head. The cycle is let go of
            # here: it holds this object as its transport, and the loop the two make would
            # leave every request's objects to the garbage collector (gen0 pauses of 30 ms).
            self._cycle = None
            if _body_follows(cycle):
                self._head = data
                return
        self._transport.write(data)

    def close(self) -> None:
        self._head = None  # a response cut short: nothing of it is worth sending now
        self._transport.close()

    def is_closing(self) -> bool:
        return bool(self._transport.is_closing())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _body_follows(cycle: RequestResponseCycle) -> bool:
    """Whether a body write is sure to follow the head: uvicorn sets these fields from the
    response's headers just before it writes the head."""
    return (
        cycle.chunked_encoding is False
        and cycle.expected_content_length > 0
        and cycle.scope["method"] != "HEAD"
    )
