"""The endpoints' helpers: reading requests, answering in the contract's envelope, rendering
errors (for Starlette's handlers and the send fast lane alike), and reaching the store."""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio.to_thread
from redis.exceptions import RedisError
from sqlalchemy import Connection
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Scope

from api.auth import authenticate
from api.observe import ERROR_CODE
from api.shares import RATE_HEADERS
from api.state import resources
from shared import jsonio
from shared.db import transaction
from shared.errors import (
    EventpipeError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ValidationFailed,
)
from shared.queue import CONFIG_VERSION_KEY

log = logging.getLogger("eventpipe.api")
T = TypeVar("T")
Endpoint = Callable[[Request], Awaitable[Response]]


class SendHeaders(Headers):
    """Starlette's Headers with a `get` that raises nothing: Mapping.get catches a KeyError for
    every absent name, and a send asks for three that are usually absent (content-encoding,
    prefer, idempotency-key): 6 us of a send's ~100."""

    def __init__(self, scope: Scope) -> None:
        pairs = scope["headers"] = list(scope["headers"])
        super().__init__(raw=pairs)
        self._pairs = pairs

    def get(self, key: str, default: Any = None) -> Any:
        name = key.lower().encode("latin-1")
        for found, value in self._pairs:
            if found == name:
                return value.decode("latin-1")  # the first, as Headers.__getitem__ gives
        return default


class SendRequest(Request):
    """The send fast lane's request (api.app): its headers are SendHeaders."""

    @property
    def headers(self) -> Headers:
        if not hasattr(self, "_headers"):
            self._headers = SendHeaders(self.scope)
        return self._headers


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return jsonio.dumps(content)


def ok(data: Any, status: int = 200) -> JsonResponse:
    return JsonResponse({"success": True, "data": data}, status_code=status)


def done(message: str | None = None) -> JsonResponse:
    """The contract's answer to a delete: `{"success": true, "message": ...}`, no `data`."""
    body: dict[str, Any] = {"success": True}
    if message is not None:
        body["message"] = message
    return JsonResponse(body)


def error_response(request: Request, exc: EventpipeError) -> JsonResponse:
    """The envelope of `exc`; its code is noted on the request for the metrics and the log
    line (api/observe.py), which then need not read the body back."""
    request.scope[ERROR_CODE] = exc.code
    headers = None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(exc.retry_after)}
    elif exc.status == 503:
        headers = {"Retry-After": str(resources(request).settings.retry_after_seconds)}
    response = JsonResponse(exc.to_body(), status_code=exc.status, headers=headers)
    # A rate-limited project's X-RateLimit-* headers go on every answer to its sends.
    response.raw_headers.extend(request.scope.get(RATE_HEADERS, ()))
    return response


_DIGITS = re.compile(r"[0-9]+")


def check_declared_size(request: Request, limit: int) -> None:
    """413 at once for a Content-Length over `limit`, whatever the encoding (compressed bytes
    count against the limit too): before the key is checked, and before the body is read."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not _DIGITS.fullmatch(declared):  # uvicorn refuses these first; kept for safety
        raise ValidationFailed("Content-Length must be a number of bytes")
    if len(declared) > 18 or int(declared) > limit:  # the length first: int() of a bound
        raise PayloadTooLarge(limit)


async def read_body(request: Request, limit: int) -> bytes:
    """The body (after check_declared_size), inflated when gzip-encoded: at most `limit`
    bytes sent and at most `limit` once inflated, 413 as soon as either count passes it (a
    zip bomb or an endless stream costs at most `limit` bytes)."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise ValidationFailed(f"Unsupported Content-Encoding {encoding[:40]!r}")
    if encoding == "gzip":
        return await _read_gzip(request, limit)
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:  # ASGI messages read directly: Request.stream() costs ~10 us more a request
        chunk, more = await _next_chunk(request)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _next_chunk(request: Request) -> tuple[bytes, bool]:
    message = await request.receive()
    if message["type"] == "http.disconnect":
        # Nobody will read the answer; a 400, not a 500 (it is the client's doing).
        raise ValidationFailed("The client disconnected before the body was complete")
    return message.get("body", b""), message.get("more_body", False)


async def _read_gzip(request: Request, limit: int) -> bytes:
    """One gzip member, whole: data after its end (a second member, trailing bytes) and a
    stream cut before its trailer are refused (400). Compressed bytes count against `limit`
    too, so an endless run of empty deflate blocks ends at `limit` bytes (413)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    chunks: list[bytes] = []
    sent = size = 0
    more = True
    while more:
        chunk, more = await _next_chunk(request)
        sent += len(chunk)
        if sent > limit:
            raise PayloadTooLarge(limit)
        if inflater.eof and chunk:
            raise _after_gzip_end()
        out = _inflate(inflater, chunk, limit - size)
        size += len(out)
        if size > limit:
            raise PayloadTooLarge(limit)
        if inflater.unused_data:
            raise _after_gzip_end()
        chunks.append(out)
    if not inflater.eof:
        raise ValidationFailed("Request body is not valid gzip: the stream is cut short")
    return b"".join(chunks)


def _after_gzip_end() -> ValidationFailed:
    return ValidationFailed("Request body is not valid gzip: data after the end of the stream")


def _inflate(inflater: Any, chunk: bytes, room: int) -> bytes:
    try:
        # At most room + 1 bytes out: one more than fits is enough to answer 413.
        out: bytes = inflater.decompress(chunk, room + 1)
    except zlib.error as exc:
        raise ValidationFailed("Request body is not valid gzip") from exc
    return out


def parse_json(body: bytes) -> Any:
    """The parsed body, nested at most jsonio.MAX_DEPTH deep and holding no U+0000."""
    try:
        value = jsonio.loads(body)
    except ValueError as exc:
        raise ValidationFailed("Request body must be valid JSON") from exc
    # PostgreSQL cannot store U+0000 in text or jsonb: refused here, so that no accepted event
    # fails in the worker for it. The byte checks keep a typical send from walking the value.
    try:
        if b"\\u0000" in body:
            if jsonio.holds_nul(value):  # bounds the depth too
                raise ValidationFailed("Strings must not contain the NUL character (\\u0000)")
        elif jsonio.may_nest_deeper(body):
            jsonio.check_depth(value)
    except jsonio.TooDeep as exc:
        raise ValidationFailed(str(exc)) from exc
    return value


# --- errors: the one rendering of every route's failures ------------------------------------


async def render_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EventpipeError)
    return error_response(request, exc)


async def render_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        err = EventpipeError("Method not allowed", code="METHOD_NOT_ALLOWED", status=405)
    elif exc.status_code == 404:
        err = NotFound("Not found")
    else:
        err = EventpipeError(str(exc.detail), code="HTTP_ERROR", status=exc.status_code)
    response = error_response(request, err)
    response.headers.update(exc.headers or {})  # 405's Allow, as RFC 9110 requires
    return response


async def render_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    err = EventpipeError("Internal server error", code="INTERNAL_SERVER_ERROR", status=500)
    return error_response(request, err)


# --- routes, bodies and the store -----------------------------------------------------------


def route(path: str, **handlers: Endpoint) -> Route:
    """One route for all the methods of a path, so that a 405 lists them all in `Allow`
    (separate Routes would each answer for their own method only)."""

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return Route(path, dispatch, methods=list(handlers))


def authenticated(request: Request) -> str:
    """The project id of the request's key (401 otherwise)."""
    return authenticate(request, resources(request).cache)


async def read_authenticated(request: Request, limit: int) -> tuple[str, Any]:
    """The contract's order for every body: a declared size over the limit (413), the key
    (401, before the body is read), the body's size (413), then JSON (400)."""
    check_declared_size(request, limit)
    project_id = authenticated(request)
    return project_id, parse_json(await read_body(request, limit))


def json_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationFailed("Request body must be a JSON object")
    return body


async def in_db_thread(request: Request, fn: Callable[[], T]) -> T:
    """Run blocking store (or sync Redis) work in the bounded pool, off the event loop."""
    return await anyio.to_thread.run_sync(fn, limiter=resources(request).db_limiter)


async def in_transaction(request: Request, fn: Callable[[Connection], T]) -> T:
    """`fn` in one store transaction, on the bounded pool: the management endpoints' only way
    to the store, so the send path (which never touches it) cannot queue behind them."""
    engine = resources(request).engine

    def run() -> T:
        with transaction(engine) as conn:
            return fn(conn)

    return await in_db_thread(request, run)


async def announce_config_change(request: Request) -> None:
    """Tell every API process (through Redis) and this one (now) that the config changed."""
    found = resources(request)
    try:
        await found.redis.incr(CONFIG_VERSION_KEY)
    except RedisError:
        log.warning(
            "could not bump the config version; other processes reload within CONFIG_RELOAD_SECONDS"
        )
    await found.cache.reload()
