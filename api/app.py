"""The Starlette application: routes, error rendering, and the resources of one API process."""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import redis
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from api import admin, batch, contacts, definitions, openapi, ops, routes
from api.backlog import Backlog
from api.committer import GroupCommitter, Linger
from api.config_cache import ConfigCache
from api.http import error_response
from api.idempotency import Idempotency
from api.outcomes import Outcomes
from shared import store
from shared.db import make_engine, transaction
from shared.errors import EventpipeError, NotFound
from shared.logs import configure_logging
from shared.queue import (
    JobWriter,
    check_fsync_support,
    connect_redis,
    enqueue_function,
    make_queue,
    quick_async_retry,
)
from shared.settings import Settings, get_settings

log = logging.getLogger("eventpipe.api")

SEND_PATH = "/v1/events/send"
ROUTES = [
    Route(SEND_PATH, routes.send_event, methods=["POST"]),
    *batch.ROUTES,
    *definitions.ROUTES,
    Route("/v1/events/{event_id}", routes.get_event, methods=["GET"]),
    *contacts.ROUTES,
    *openapi.ROUTES,
    *admin.ROUTES,
    *ops.ROUTES,
]


class EventpipeApp(Starlette):
    """Starlette, with the hot endpoint taken straight off the ASGI call.

    POST /v1/events/send skips the router and the two exception middlewares (a third of the
    send path's CPU, measured in-process) but runs the same endpoint and renders its errors
    with the same functions. Everything else goes through Starlette as usual."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == SEND_PATH and scope["method"] == "POST":
            started = time.perf_counter()
            scope["app"] = self
            request = Request(scope, receive)
            response = await _answer(request)
            await response(scope, receive, send)
            ops.observe_send(request, response, SEND_PATH, started)
            return
        if scope["type"] == "http":  # counted by route template and status
            json_logs = self.state.settings.log_format == "json"
            await ops.observed(super().__call__, scope, receive, send, json_logs)
            return
        await super().__call__(scope, receive, send)


async def _answer(request: Request) -> Response:
    try:
        return await routes.send_event(request)
    except EventpipeError as exc:
        return await _render_error(request, exc)
    except Exception as exc:
        return await _render_unexpected(request, exc)


def create_app(
    settings: Settings | None = None,
    *,
    redis_client: redis.Redis | None = None,
    async_redis: aioredis.Redis | None = None,
) -> Starlette:
    """The API. Tests may hand in Redis clients (fakeredis); otherwise REDIS_URL is used."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    app = EventpipeApp(
        routes=ROUTES,
        lifespan=_lifespan,
        exception_handlers={
            EventpipeError: _render_error,
            HTTPException: _render_http_error,
            Exception: _render_unexpected,
        },
    )
    app.state.settings = settings
    app.state.redis_client = redis_client
    app.state.async_redis = async_redis
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    state = app.state
    settings: Settings = state.settings
    state.engine = make_engine(settings)
    state.queue = make_queue(settings, state.redis_client or connect_redis(settings))
    state.redis = state.async_redis or aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=quick_async_retry(),
    )
    state.writer = JobWriter(state.queue, settings)
    state.db_limiter = anyio.CapacityLimiter(settings.db_threads)
    state.replay_limiter = anyio.CapacityLimiter(1)  # POST /v1/admin/replay, one at a time
    state.cache = ConfigCache(
        lambda: anyio.to_thread.run_sync(_load_snapshot, state.engine, limiter=state.db_limiter),
        state.redis,
        settings.config_poll_seconds,
        settings.config_reload_seconds,
    )
    if settings.redis_durability == "fsync":  # refuse to start rather than promise in vain
        await check_fsync_support(state.redis)
    enqueue = enqueue_function(settings)
    state.committer = GroupCommitter(
        ops.instrument_enqueue(
            lambda events, records: enqueue(state.writer, state.redis, events, records)
        ),
        Linger(
            settings.group_target_events,
            settings.group_linger_ms / 1000,
            settings.group_max_linger_ms / 1000,
        ),
        settings.group_max_events,
        settings.group_max_bytes,
    )
    state.idempotency = Idempotency(
        state.redis, settings.idempotency_claim_seconds, settings.idempotency_ttl_seconds
    )
    state.backlog = Backlog(state.redis, settings.max_queued_events, settings.backlog_poll_seconds)
    state.outcomes = Outcomes(state.async_redis or _subscriber(settings))
    await state.cache.start()
    await state.outcomes.start()
    await state.backlog.start()
    _tune_gc()
    try:
        yield
    finally:
        # Requests still waiting on a group get their answer before the process exits.
        await state.committer.close()
        await state.backlog.stop()
        await state.cache.stop()
        await state.outcomes.stop()
        await state.redis.aclose()
        state.queue.connection.close()
        state.engine.dispose()


def _subscriber(settings: Settings) -> aioredis.Redis:
    """The pub/sub connection of `Prefer: wait`: no read timeout (it waits for messages by
    design), keepalive so that a dead peer is noticed."""
    return aioredis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_timeout_seconds,
        socket_keepalive=True,
    )


def _tune_gc() -> None:
    """Move what start-up allocated out of the collector's sight, and collect less often.

    Every request allocates many short-lived objects; with the default gen0 threshold (700)
    the collector ran so often, over the long-lived start-up heap too, that it cost 15-25%
    of the send path's throughput (measured with wrk and py-spy)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _load_snapshot(engine: Any) -> store.ConfigSnapshot:
    with transaction(engine) as conn:
        return store.load_snapshot(conn=conn)


async def _render_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EventpipeError)
    return error_response(request, exc)


async def _render_http_error(request: Request, exc: Exception) -> Response:
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


async def _render_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    err = EventpipeError("Internal server error", code="INTERNAL_SERVER_ERROR", status=500)
    return error_response(request, err)
