"""Health, readiness and Prometheus metrics of the API, and its request log lines.

/readyz says whether this process can accept events: Redis answers and keys and definitions
are loaded. The store is left out on purpose: the send path does not touch it, so a store
outage must not take the API out of a load balancer (stats and metrics report the store).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from redis.exceptions import RedisError, ResponseError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from api.apidoc import error_doc, ok_doc
from api.http import ERROR_CODE, EVENT_ID, error_response, ok
from shared.errors import ServiceUnavailable
from shared.metrics import registry
from shared.queue import PENDING_KEY, Event, Record, queued_seconds

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


def count_request(route: str, status: int) -> None:
    # Label lookups cost more than the increment: keep the children.
    child = _children.get((route, status))
    if child is None:
        child = _children[(route, status)] = REQUESTS.labels(route, str(status))
    child.inc()


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


def observe_send(request: Request, response: Response, route: str, started: float) -> None:
    count_request(route, response.status_code)
    code = request.scope.get(ERROR_CODE)
    if code:
        REJECTED.labels(code).inc()
    if request.app.state.settings.log_format == "json":
        log_request(request.scope, route, response.status_code, started)


async def observed(
    app: Callable[[Scope, Receive, Send], Awaitable[None]],
    scope: Scope,
    receive: Receive,
    send: Send,
    json_logs: bool,
) -> None:
    """Run a request through Starlette, counting it by route template and status."""
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
        count_request(route, status)
        if json_logs:
            log_request(scope, route, status, started)


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


# --- the endpoints ------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    return ok({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = request.app.state
    checks = {"redis": True, "config": state.cache.loaded}
    try:
        await state.redis.ping()
    except RedisError:
        checks["redis"] = False
    if all(checks.values()):
        return ok({"status": "ready", "checks": checks})
    failing = ", ".join(name for name, passed in checks.items() if not passed)
    return error_response(request, ServiceUnavailable(f"Not ready: {failing}"))


async def metrics(request: Request) -> Response:
    combined = registry()
    text = generate_latest(combined)
    try:
        figures = {"redis_up": 1.0, **await _queue_figures(request)}
    except RedisError:
        figures = {"redis_up": 0.0}  # the process metrics are still worth a scrape
    text += generate_latest(_QueueCollector(figures))
    return Response(text, media_type=CONTENT_TYPE_LATEST)


async def _queue_figures(request: Request) -> dict[str, float]:
    """Read per scrape, from Redis: the same for every API process, so not a per-process
    metric (adding them up across processes would be wrong)."""
    state = request.app.state
    queue = state.queue
    async with state.redis.pipeline(transaction=False) as pipe:
        pipe.hlen(PENDING_KEY)
        pipe.llen(queue.key)
        pipe.lindex(queue.key, 0)
        pipe.zcard(queue.failed_job_registry.key)
        pipe.dbsize()
        events, jobs, head, failed_jobs, keys = await pipe.execute()
    try:
        memory = await state.redis.info("memory")
    except ResponseError:  # a server or proxy that refuses INFO: no memory figures
        memory = {}
    age = 0.0
    if head is not None:
        prefix = queue.job_class.redis_job_namespace_prefix
        age = queued_seconds(await state.redis.hget(prefix + head.decode(), "enqueued_at")) or 0
    return {
        "queue_events": float(events),
        "queue_jobs": float(jobs),
        "queue_oldest_age_seconds": max(age, 0.0),
        "failed_jobs": float(failed_jobs),
        "redis_keys": float(keys),
        "redis_used_memory_bytes": float(memory.get("used_memory", 0)),
        "redis_max_memory_bytes": float(memory.get("maxmemory", 0)),
    }


_HELP = {
    "redis_up": "1 when this API process reached Redis for this scrape",
    "queue_events": "Events accepted and not yet stored or failed",
    "queue_jobs": "Jobs waiting in the queue",
    "queue_oldest_age_seconds": "Seconds the oldest waiting job has been queued (0: none)",
    "failed_jobs": "Jobs in RQ's failed registry",
    "redis_keys": "Keys in eventpipe's Redis database (DBSIZE): with Idempotency-Key in use, "
    "the keys held are most of them (counting them exactly would need a SCAN per scrape)",
    "redis_used_memory_bytes": "Redis used_memory",
    "redis_max_memory_bytes": "Redis maxmemory (0: no limit)",
}


class _QueueCollector:
    def __init__(self, figures: dict[str, float]) -> None:
        self._figures = figures

    def collect(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(f"eventpipe_{name}", _HELP[name], value=value)
            for name, value in self._figures.items()
        ]


ROUTES = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]


def _status(description: str, example: dict[str, Any]) -> dict[str, Any]:
    data = {
        "type": "object",
        "properties": {
            "status": {"type": "string"},
            "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
        },
        "required": ["status"],
    }
    return ok_doc(description, data, example)


OPENAPI_PATHS: dict[str, Any] = {
    "/healthz": {
        "get": {
            "summary": "The process is alive",
            "tags": ["Operations"],
            "security": [],
            "responses": {"200": _status("Alive", {"status": "ok"})},
        }
    },
    "/readyz": {
        "get": {
            "summary": "The process can accept events (Redis reachable, keys and definitions "
            "loaded); the store is not checked",
            "tags": ["Operations"],
            "security": [],
            "responses": {
                "200": _status(
                    "Ready", {"status": "ready", "checks": {"redis": True, "config": True}}
                ),
                "503": error_doc(503, "SERVICE_UNAVAILABLE", description="Not ready: redis"),
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (text format), every API process of this server",
            "tags": ["Operations"],
            "security": [],
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
}
