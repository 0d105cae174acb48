"""What the API observes of every request: Prometheus metrics by route and status, and the
JSON request log line. The send fast lane and Starlette's routes share `record_request`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.types import Message, Receive, Scope, Send

from shared.queue import Event, Record

# What a request's handling notes in its ASGI scope, for the metrics and the log line.
ERROR_CODE = "eventpipe.code"
EVENT_ID = "eventpipe.event_id"
SEND_PATH = "/v1/events/send"

log = logging.getLogger("eventpipe.api.requests")

REQUESTS = Counter(
    "eventpipe_http_requests", "HTTP requests answered, by route and status", ["route", "status"]
)
ACCEPTED = Counter("eventpipe_events_accepted", "Events accepted (in Redis, answered 202)")
REJECTED = Counter("eventpipe_events_rejected", "Sends answered with an error, by code", ["code"])
ENQUEUE_SECONDS = Histogram(
    "eventpipe_enqueue_seconds",
    "Time of one group's enqueue (one Redis round trip)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
_children: dict[tuple[str, int], Any] = {}
# Requests answered in this event-loop tick, by (route, status), not yet in REQUESTS: an
# increment in multiprocess mode takes a lock and writes a memory-mapped file (2% of a
# send's CPU), so the tick's requests are added at once, at its end.
_tick: dict[tuple[str, int], int] = {}


def count_request(route: str, status: int) -> None:
    key = (route, status)
    if key in _tick:
        _tick[key] += 1
        return
    _tick[key] = 1
    if len(_tick) == 1:  # the tick's first: fold the tick's counts in once it is over
        try:
            asyncio.get_running_loop().call_soon(_fold_tick)
        except RuntimeError:  # no event loop (a command, a test): count now
            _fold_tick()


def _fold_tick() -> None:
    for (route, status), n in _tick.items():
        # Label lookups cost more than the increment: keep the children.
        child = _children.get((route, status))
        if child is None:
            child = _children[(route, status)] = REQUESTS.labels(route, str(status))
        child.inc(n)
    _tick.clear()


def instrument_enqueue(
    write: Callable[[list[Event], list[Record]], Awaitable[Any]],
) -> Callable[[list[Event], list[Record]], Awaitable[Any]]:
    """Wrap the group commit's write: its latency, and the events it put in Redis."""

    async def timed(events: list[Event], records: list[Record]) -> Any:
        start = time.perf_counter()
        result = await write(events, records)
        ENQUEUE_SECONDS.observe(time.perf_counter() - start)
        ACCEPTED.inc(len(events))
        return result

    return timed


# --- per request: metrics and the log line ------------------------------------------------


def record_request(scope: Scope, route: str, status: int, started: float, json_logs: bool) -> None:
    """Count one answered request by route template and status (and an error by its code),
    and write its log line when the logs are JSON."""
    count_request(route, status)
    code = scope.get(ERROR_CODE)
    if code and route == SEND_PATH:
        REJECTED.labels(code).inc()
    if json_logs:
        log_request(scope, route, status, started)


async def observed(
    app: Callable[[Scope, Receive, Send], Awaitable[None]],
    scope: Scope,
    receive: Receive,
    send: Send,
    json_logs: bool,
) -> None:
    """Run a request through Starlette, then record it under its route template."""
    started = time.perf_counter()
    status = 500

    async def capture(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    try:
        await app(scope, receive, capture)
    finally:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        record_request(scope, route, status, started, json_logs)


def log_request(scope: Scope, route: str, status: int, started: float) -> None:
    """One line per request: never a key, a body or a query string (they may hold values)."""
    fields: dict[str, Any] = {
        "kind": "request",
        "method": scope["method"],
        "route": route,
        "status": status,
        "ms": round((time.perf_counter() - started) * 1000, 3),
        "projectId": scope.get("eventpipe.project_id"),
    }
    if EVENT_ID in scope and status < 400:  # an event refused after its checks has no id
        fields["eventId"] = scope[EVENT_ID]
    if ERROR_CODE in scope:
        fields["code"] = scope[ERROR_CODE]
    log.info("request", extra={"fields": fields})
