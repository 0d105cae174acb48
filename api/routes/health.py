"""Health, readiness and Prometheus metrics of the API.

/readyz says whether this process can accept events: Redis answers and keys and definitions
are loaded. The store is left out on purpose: the send path does not touch it, so a store
outage must not take the API out of a load balancer (stats and metrics report the store).
"""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from redis.exceptions import RedisError, ResponseError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.apidoc import OPERATIONS, error_doc, ok_doc, op
from api.http import error_response, ok
from api.shares import MAX_WATCHED
from api.state import resources
from shared.errors import ServiceUnavailable
from shared.metrics import registry
from shared.queue import queue_figures_async, rate_bucket_levels_async, read_backlog


async def healthz(request: Request) -> Response:
    return ok({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = resources(request)
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
    families = [GaugeMetricFamily(f"eventpipe_{n}", _HELP[n], value=v) for n, v in figures.items()]
    if figures["redis_up"]:
        with contextlib.suppress(RedisError):
            families += await _project_families(request)
    text += generate_latest(_Collector(families))
    return Response(text, media_type=CONTENT_TYPE_LATEST)


async def _project_families(request: Request) -> list[GaugeMetricFamily]:
    """Fair shares, from Redis: a `project` label only for the projects over a limit now
    (their shared rate bucket under one token, or their queued events at their share), so
    the label set stays as small as the trouble."""
    shares = resources(request).shares
    connection = resources(request).redis
    rates = {p: (limit.rate, limit.burst) for p, limit in shares.rate_limits().items()}
    levels = await rate_bucket_levels_async(connection, rates)
    _, heavy = await read_backlog(connection, shares.watch_from(), MAX_WATCHED)
    over_rate = sorted(p for p, level in levels.items() if level < 1)
    over_share = {p: n for p, n in sorted(heavy.items()) if n >= shares.backlog_limit(p)}
    over = GaugeMetricFamily(
        "eventpipe_project_over_limit",
        "1 for each project over a limit now: rate (its shared token bucket is empty: 429) "
        "or backlog (its queued events reach its share: 503)",
        labels=["project", "limit"],
    )
    for project_id in over_rate:
        over.add_metric([project_id, "rate"], 1.0)
    queued = GaugeMetricFamily(
        "eventpipe_project_queued_events",
        "Queued events of each project at its backlog share",
        labels=["project"],
    )
    for project_id, n in over_share.items():
        over.add_metric([project_id, "backlog"], 1.0)
        queued.add_metric([project_id], float(n))
    counts = GaugeMetricFamily(
        "eventpipe_projects_over_limit", "Projects over a limit now", labels=["limit"]
    )
    counts.add_metric(["rate"], float(len(over_rate)))
    counts.add_metric(["backlog"], float(len(over_share)))
    limited = GaugeMetricFamily(
        "eventpipe_projects_rate_limited", "Projects with a rate limit", value=float(len(rates))
    )
    return [over, queued, counts, limited]


async def _queue_figures(request: Request) -> dict[str, float]:
    """Read per scrape, from Redis: the same for every API process, so not a per-process
    metric (adding them up across processes would be wrong)."""
    state = resources(request)
    figures = await queue_figures_async(state.queue, state.redis)
    keys = await state.redis.dbsize()
    try:
        memory = await state.redis.info("memory")
    except ResponseError:  # a server or proxy that refuses INFO: no memory figures
        memory = {}
    return {
        "queue_events": float(figures.events),
        "queue_jobs": float(figures.jobs),
        "queue_started_jobs": float(figures.started),
        "queue_oldest_age_seconds": max(figures.oldest_age or 0.0, 0.0),
        "failed_jobs": float(figures.failed_jobs),
        "redis_keys": float(keys),
        "redis_used_memory_bytes": float(memory.get("used_memory", 0)),
        "redis_max_memory_bytes": float(memory.get("maxmemory", 0)),
    }


_HELP = {
    "redis_up": "1 when this API process reached Redis for this scrape",
    "queue_events": "Events accepted and not yet stored or failed",
    "queue_jobs": "Jobs waiting in the queue",
    "queue_started_jobs": "Jobs running or claimed by a running job (RQ's started registry)",
    "queue_oldest_age_seconds": "Seconds the oldest waiting job has been queued (0: none)",
    "failed_jobs": "Jobs in RQ's failed registry",
    "redis_keys": "Keys in eventpipe's Redis database (DBSIZE): with Idempotency-Key in use, "
    "the keys held are most of them (counting them exactly would need a SCAN per scrape)",
    "redis_used_memory_bytes": "Redis used_memory",
    "redis_max_memory_bytes": "Redis maxmemory (0: no limit)",
}


class _Collector:
    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self._families = families

    def collect(self) -> list[GaugeMetricFamily]:
        return self._families


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
        "get": op(
            "The process is alive",
            OPERATIONS,
            {"200": _status("Alive", {"status": "ok"})},
            security=[],
        )
    },
    "/readyz": {
        "get": op(
            "The process can accept events (Redis reachable, keys and definitions loaded); "
            "the store is not checked",
            OPERATIONS,
            {
                "200": _status(
                    "Ready", {"status": "ready", "checks": {"redis": True, "config": True}}
                ),
                "503": error_doc(503, "SERVICE_UNAVAILABLE", description="Not ready: redis"),
            },
            security=[],
        )
    },
    "/metrics": {
        "get": op(
            "Prometheus metrics (text format), every API process of this server",
            OPERATIONS,
            {
                "200": {
                    "description": "Prometheus text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
            security=[],
        )
    },
}
