"""Reading requests and writing responses in the contract's envelope."""

from __future__ import annotations

import zlib
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from shared import jsonio
from shared.errors import EventpipeError, PayloadTooLarge, ValidationFailed

# What a request's handling notes in its ASGI scope for api/ops.py.
ERROR_CODE = "eventpipe.code"
EVENT_ID = "eventpipe.event_id"


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
    line (api/ops.py), which then need not read the body back."""
    request.scope[ERROR_CODE] = exc.code
    retry_after = request.app.state.settings.retry_after_seconds
    headers = {"Retry-After": str(retry_after)} if exc.status == 503 else None
    return JsonResponse(exc.to_body(), status_code=exc.status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, inflated when gzip-encoded; over `limit` bytes (after inflating) is a 413
    raised while reading, so an oversized or zip-bomb body costs at most `limit` bytes."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise ValidationFailed(f"Unsupported Content-Encoding {encoding!r}")
    declared = request.headers.get("content-length", "")
    if encoding == "identity" and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(limit)
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip" else None
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:  # ASGI messages read directly: Request.stream() costs ~10 us more a request
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk, more = message.get("body", b""), message.get("more_body", False)
        if inflater is not None:
            chunk = _inflate(inflater, chunk, limit - size)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _inflate(inflater: Any, chunk: bytes, room: int) -> bytes:
    try:
        out: bytes = inflater.decompress(chunk, room + 1)
    except zlib.error as exc:
        raise ValidationFailed("Request body is not valid gzip") from exc
    return out


def parse_json(body: bytes) -> Any:
    try:
        value = jsonio.loads(body)
    except ValueError as exc:
        raise ValidationFailed("Request body must be valid JSON") from exc
    # PostgreSQL cannot store U+0000 in text or jsonb: refused here, so that no accepted event
    # fails in the worker for it. The byte search keeps the common case free.
    if b"\\u0000" in body and _holds_nul(value):
        raise ValidationFailed("Strings must not contain the NUL character (\\u0000)")
    return value


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False
