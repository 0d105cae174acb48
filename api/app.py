"""The Starlette application: the route table, the send fast lane, and the process lifespan."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import AsyncIterator

import redis
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.console.views import ROUTES as CONSOLE_ROUTES
from api.http import SendRequest, render_error, render_http_error, render_unexpected
from api.observe import SEND_PATH, observed, record_request
from api.routes import admin, batch, contacts, definitions, docs, health, send
from api.state import RESOURCES, Clients, Resources, close_resources, open_resources
from shared.errors import EventpipeError
from shared.logs import configure_logging
from shared.settings import Settings, get_settings

# Each endpoint module registers its own routes. Literal paths go before templates: for a
# method a path does not allow, the router answers with the first route whose path matches,
# and OPTIONS /v1/events/batch must list POST, not GET /v1/events/{event_id}'s methods.
ROUTES = sorted(
    [
        *send.ROUTES,
        *batch.ROUTES,
        *definitions.ROUTES,
        *contacts.ROUTES,
        *docs.ROUTES,
        *admin.ROUTES,
        *health.ROUTES,
        *CONSOLE_ROUTES,
    ],
    key=lambda route: "{" in getattr(route, "path", ""),
)


class EventpipeApp(Starlette):
    """Starlette, with the hot endpoint taken straight off the ASGI call.

    POST /v1/events/send skips the router and the two exception middlewares (a third of the
    send path's CPU, measured in-process) but runs the same endpoint, renders its errors with
    the same functions and records itself with the same observation as every other route."""

    def __init__(self, settings: Settings, clients: Clients) -> None:
        super().__init__(
            routes=ROUTES,
            lifespan=_lifespan,
            exception_handlers={
                EventpipeError: render_error,
                HTTPException: render_http_error,
                Exception: render_unexpected,
            },
        )
        self.settings = settings
        self.clients = clients
        self.json_logs = settings.log_format == "json"
        self.resources: Resources | None = None  # set by the lifespan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == SEND_PATH and scope["method"] == "POST":
            started = time.perf_counter()
            scope["app"] = self
            scope[RESOURCES] = self.resources
            request = SendRequest(scope, receive)
            response = await _answer(request)
            await response(scope, receive, send)
            record_request(scope, SEND_PATH, response.status_code, started, self.json_logs)
            return
        if scope["type"] == "http":  # counted by route template and status
            await observed(super().__call__, scope, receive, send, self.json_logs)
            return
        await super().__call__(scope, receive, send)


async def _answer(request: Request) -> Response:
    try:
        return await send.send_event(request)
    except EventpipeError as exc:
        return await render_error(request, exc)
    except Exception as exc:
        return await render_unexpected(request, exc)


def create_app(
    settings: Settings | None = None,
    *,
    redis_client: redis.Redis | None = None,
    async_redis: aioredis.Redis | None = None,
) -> EventpipeApp:
    """The API. Tests may hand in Redis clients (fakeredis); otherwise REDIS_URL is used."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    return EventpipeApp(settings, Clients(redis_client, async_redis))


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    assert isinstance(app, EventpipeApp)
    found = await open_resources(app.settings, app.clients)
    app.state.resources = app.resources = found
    _tune_gc()
    try:
        yield
    finally:
        await close_resources(found)


def _tune_gc() -> None:
    """Move what start-up allocated out of the collector's sight, and collect less often.

    Every request allocates many short-lived objects; with the default gen0 threshold (700)
    the collector ran so often, over the long-lived start-up heap too, that it cost 15-25%
    of the send path's throughput (measured with wrk and py-spy)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
