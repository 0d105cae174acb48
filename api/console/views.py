"""The operator console at /console: server-rendered pages (Jinja2) with a little vendored
JavaScript (uPlot for the charts, console.js for refreshing, the tail and replay progress).

Every page goes through `console_route`: off (404) without OPERATOR_TOKEN, the session
checked (a page redirects to the sign-in, a POST without a valid session or CSRF token is
refused), outages and bad input rendered as a page with their status, never a 500. The
operator functions are ops.failed, ops.replay and ops.stats, as for the CLI and the admin API.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import anyio
import anyio.to_thread
from redis.exceptions import RedisError
from sqlalchemy import exc as sa_exc
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from api import store
from api.console import session as sess
from api.http import (
    JsonResponse,
    announce_config_change,
    check_declared_size,
    in_db_thread,
    in_transaction,
    read_body,
)
from api.routes.admin import MAX_FILTER_CHARS, ROOM_WAIT_SECONDS
from api.state import resources
from ops import failed as failed_mod
from ops import stats as stats_mod
from shared import jsonio
from shared.errors import (
    EventpipeError,
    Forbidden,
    NotFound,
    QueueUnavailable,
    ServiceUnavailable,
    StoreUnavailable,
    TooManyRequests,
    Unauthorized,
    ValidationFailed,
)
from shared.ids import is_id
from shared.queue import (
    count_attempt,
    get_replay_progress,
    put_replay_progress,
    tail_after,
    tail_last_id,
    tail_latest,
)
from shared.settings import Settings

log = logging.getLogger("eventpipe.console")
HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".txt": "text/plain"}
STATIC = {
    p.name: (p.read_bytes(), STATIC_TYPES[p.suffix])
    for p in sorted((HERE / "static").iterdir())
    if p.suffix in STATIC_TYPES
}
# In the files' URLs: a new release's files are new URLs, so they can be cached for ever.
STATIC_VERSION = hashlib.sha256(b"".join(body for body, _ in STATIC.values())).hexdigest()[:12]
# Nothing from outside, no inline script or style: only the package's own files.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it, browsers send `Origin: null` on the sign-in form.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
MAX_FORM_BYTES = 64 * 1024
MAX_SELECTED = 1000
PAGE_ROWS = 50
# Sign-in attempts allowed a minute, from one address and from everywhere together.
SIGN_INS_PER_ADDRESS = 10
SIGN_INS_IN_ALL = 100
SIGN_IN_WINDOW = 60
# The live tail: entries shown on opening, the longest wait of one read (below the Redis
# client's read timeout), and how long one stream lasts before the browser reconnects (so
# a server going down is not held up by open streams).
TAIL_BACKLOG = 50
TAIL_BLOCK_MS = 2000
TAIL_STREAM_SECONDS = 300
REPLAY_WAIT_SECONDS = 30.0
FILTER_FIELDS = ("code", "eventName", "projectId", "since", "until")

Form = dict[str, list[str]]


@dataclass
class Ctx:
    settings: Settings
    session: sess.Session | None
    form: Form = field(default_factory=dict)

    def csrf(self) -> str:
        assert self.session is not None
        return self.session.csrf_token(sess.signing_key(self.settings))


Handler = Callable[[Request, Ctx], Awaitable[Response]]


def render(request: Request, ctx: Ctx, name: str, status: int = 200, **context: Any) -> Response:
    full = {
        "csrf": ctx.csrf() if ctx.session else "",
        "signed_in": ctx.session is not None,
        "static_version": STATIC_VERSION,
        "path": request.url.path,
        **context,
    }
    return TEMPLATES.TemplateResponse(request, name, full, status_code=status)


def _secured(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def console_route(
    path: str, handler: Handler, method: str = "GET", *, auth: bool = True, as_json: bool = False
) -> Route:
    async def endpoint(request: Request) -> Response:
        settings = resources(request).settings
        if not settings.operator_token:  # the console is off, as the admin API is
            raise NotFound("Not found")
        ctx = Ctx(settings, sess.read_cookie(settings, request.cookies.get(sess.COOKIE)))
        try:
            if auth and ctx.session is None:
                if method == "GET" and not as_json:
                    return _secured(RedirectResponse("/console/sign-in", 303))
                raise Unauthorized("Sign in first (no session, or it expired)")
            if method == "POST":
                ctx.form = await read_form(request)
                if auth:
                    _check_csrf(ctx)
            response = await handler(request, ctx)
        except StoreUnavailable:
            response = _failure(request, ctx, _store_down(), as_json)
        except QueueUnavailable:
            response = _failure(request, ctx, _redis_down(), as_json)
        except EventpipeError as exc:
            response = _failure(request, ctx, exc, as_json)
        except RedisError as exc:
            log.warning("console: Redis unreachable on %s: %s", request.url.path, exc)
            response = _failure(request, ctx, _redis_down(), as_json)
        except sa_exc.SQLAlchemyError as exc:
            log.warning("console: the store failed on %s: %s", request.url.path, exc)
            response = _failure(request, ctx, _store_down(), as_json)
        return _secured(response)

    # Pages for people, not the API: left out of the OpenAPI document.
    return Route(path, endpoint, methods=[method], include_in_schema=False)


def _redis_down() -> ServiceUnavailable:
    return ServiceUnavailable("Redis is unreachable: the queue and its figures cannot be read")


def _store_down() -> ServiceUnavailable:
    return ServiceUnavailable(
        "PostgreSQL is unreachable: failed events and projects cannot be read"
    )


def _failure(request: Request, ctx: Ctx, exc: EventpipeError, as_json: bool) -> Response:
    headers = {}
    if isinstance(exc, TooManyRequests):
        headers["Retry-After"] = str(exc.retry_after)
    elif exc.status == 503:
        headers["Retry-After"] = str(ctx.settings.retry_after_seconds)
    if as_json:
        return JsonResponse(exc.to_body(), status_code=exc.status, headers=headers)
    if exc.status == 401 or isinstance(exc, TooManyRequests):
        response = render(
            request, ctx, "sign_in.html", exc.status, error=exc.message, signed_in=False
        )
    else:
        response = render(request, ctx, "error.html", exc.status, error=exc)
    response.headers.update(headers)
    return response


async def read_form(request: Request) -> Form:
    """An urlencoded form, read with the API's bounded body reader."""
    check_declared_size(request, MAX_FORM_BYTES)
    body = await read_body(request, MAX_FORM_BYTES)
    if not body:  # no field at all (then no CSRF token: refused as such)
        return {}
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise ValidationFailed("A form must be sent as application/x-www-form-urlencoded")
    try:
        text = body.decode("utf-8")
        return parse_qs(text, keep_blank_values=True, strict_parsing=False, max_num_fields=2000)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValidationFailed("The form is not valid UTF-8 urlencoded text") from exc


def _one(form: Mapping[str, Any], name: str) -> str:
    """One field of a form or query string (a form's first value), at most MAX_FILTER_CHARS."""
    value = form.get(name, "")
    text = (value[0] if value else "") if isinstance(value, list) else value
    if not isinstance(text, str):
        raise ValidationFailed(f"{name} must be text")
    if len(text) > MAX_FILTER_CHARS or "\x00" in text:
        raise ValidationFailed(f"{name} must be at most {MAX_FILTER_CHARS} characters")
    return text.strip()


def _check_csrf(ctx: Ctx) -> None:
    assert ctx.session is not None
    given = _one(ctx.form, "csrf")
    if not given or not sess.csrf_matches(ctx.settings, ctx.session, given):
        raise Forbidden("Missing or wrong CSRF token: reload the page and try again")


# --- sign-in ---------------------------------------------------------------------------------


async def index(request: Request, ctx: Ctx) -> Response:
    return RedirectResponse("/console/overview", 303)


async def sign_in_page(request: Request, ctx: Ctx) -> Response:
    return render(request, ctx, "sign_in.html", signed_in=False)


async def sign_in(request: Request, ctx: Ctx) -> Response:
    _check_origin(request)
    await _throttle(request)
    if not sess.token_matches(ctx.settings, _one(ctx.form, "token")):
        raise Unauthorized("Wrong operator token")
    value, session = sess.new_cookie(ctx.settings)
    response = RedirectResponse("/console/overview", 303)
    sess.set_cookie(request, response, value, ctx.settings.console_session_seconds)
    log.info("console: operator signed in from %s", _address(request))
    return response


def _check_origin(request: Request) -> None:
    """A sign-in posted from another site's page is refused (login CSRF): browsers send
    Origin with every POST; a client that sends none (curl) is no browser being misled."""
    origin = request.headers.get("origin")
    # The host only: behind a TLS-terminating proxy the scheme seen here may differ.
    if origin is not None and origin.partition("://")[2] != request.headers.get("host"):
        raise Forbidden("Sign-in from another site refused")


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _throttle(request: Request) -> None:
    redis_ = resources(request).redis
    try:
        mine, left = await count_attempt(redis_, f"address:{_address(request)}", SIGN_IN_WINDOW)
        everyone, left = await count_attempt(redis_, "all", SIGN_IN_WINDOW)
    except RedisError:
        # Fail open: the token is at least 16 characters, and refusing every sign-in would
        # lock operators out exactly while Redis is down.
        log.warning("console: sign-in throttle unavailable (Redis unreachable)")
        return
    if mine > SIGN_INS_PER_ADDRESS or everyone > SIGN_INS_IN_ALL:
        raise TooManyRequests(f"Too many sign-in attempts: try again in {left} s", left)


async def sign_out(request: Request, ctx: Ctx) -> Response:
    response = RedirectResponse("/console/sign-in", 303)
    sess.clear_cookie(request, response)
    return response


# --- overview --------------------------------------------------------------------------------


def _overview_data(request: Request) -> dict[str, Any]:
    state = resources(request)
    data = stats_mod.collect(state.engine, state.queue)
    data["rates"] = stats_mod.rates(state.queue) if data["redis"].get("reachable") else None
    return data


async def overview(request: Request, ctx: Ctx) -> Response:
    data = await in_db_thread(request, lambda: _overview_data(request))
    return render(request, ctx, "overview.html", stats=data, rates=data["rates"])


async def overview_figures(request: Request, ctx: Ctx) -> Response:
    """The figures' HTML and the charts' series, for the page's refresh."""
    data = await in_db_thread(request, lambda: _overview_data(request))
    html = TEMPLATES.get_template("overview_figures.html").render(stats=data)
    return JsonResponse({"html": html, "rates": data["rates"]})


# --- failed events ---------------------------------------------------------------------------


def _filter(source: Mapping[str, Any], ids: list[str] | None = None) -> failed_mod.FailedFilter:
    def text(name: str) -> str | None:
        return _one(source, name) or None

    since, until = text("since"), text("until")
    return failed_mod.FailedFilter(
        code=text("code"),
        event_name=text("eventName"),
        project_id=text("projectId"),
        since=failed_mod.parse_time(since) if since else None,
        until=failed_mod.parse_time(until) if until else None,
        ids=failed_mod.check_ids(ids or []),
    )


def _filter_values(source: Mapping[str, Any]) -> dict[str, str]:
    return {name: _one(source, name) for name in FILTER_FIELDS}


async def failed_page(request: Request, ctx: Ctx) -> Response:
    query = dict(request.query_params)
    values = _filter_values(query)
    try:
        flt = _filter(query)
    except ValidationFailed as exc:
        return render(request, ctx, "failed.html", 400, values=values, error=exc.message)
    cursor = _one(query, "cursor") or None
    if cursor is not None:
        failed_mod.check_ids([cursor])

    def read(conn: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        counts = failed_mod.failed_counts(flt, conn=conn)
        return counts, failed_mod.list_failed(flt, PAGE_ROWS + 1, before=cursor, conn=conn)

    counts, rows = await in_transaction(request, read)
    more = len(rows) > PAGE_ROWS
    rows = rows[:PAGE_ROWS]
    next_url = None
    if more:
        next_url = "/console/failed?" + urlencode(
            {**{k: v for k, v in values.items() if v}, "cursor": rows[-1]["id"]}
        )
    return render(
        request,
        ctx,
        "failed.html",
        values=values,
        counts=counts,
        rows=rows,
        next_url=next_url,
        filtered=not flt.is_empty(),
        filter_query=urlencode({k: v for k, v in values.items() if v}),
    )


async def failed_event(request: Request, ctx: Ctx) -> Response:
    event_id = request.path_params["event_id"]
    if not is_id(event_id):
        raise NotFound(f"No failed event {event_id[:40]}")
    event = await in_transaction(request, lambda conn: failed_mod.show_failed(event_id, conn=conn))
    payload = json.dumps(event["payload"], indent=2, ensure_ascii=False, default=str)
    return render(request, ctx, "failed_event.html", event=event, payload=payload)


# --- replay ----------------------------------------------------------------------------------


def _replay_request(form: Form) -> tuple[failed_mod.FailedFilter, bool, str]:
    """The filter of a replay form: the ticked ids (scope "selected") or the list's filter
    (scope "filter"; with no filter at all only when the form says `all`)."""
    scope = _one(form, "scope")
    if scope == "selected":
        ids = form.get("ids", [])
        if not ids:
            raise ValidationFailed("No event selected: tick the events to replay")
        if len(ids) > MAX_SELECTED:
            raise ValidationFailed(f"At most {MAX_SELECTED} events can be selected")
        return _filter({}, ids), False, scope
    if scope != "filter":
        raise ValidationFailed("scope must be selected or filter")
    flt = _filter(form)
    every = _one(form, "all") == "1"
    if flt.is_empty() and not every:
        raise ValidationFailed("No filter given: confirm replaying every failed event")
    return flt, every, scope


async def replay(request: Request, ctx: Ctx) -> Response:
    flt, every, scope = _replay_request(ctx.form)
    state = resources(request)
    if _one(ctx.form, "step") != "run":
        summary = await anyio.to_thread.run_sync(
            lambda: _replayer(request).run(flt, dry_run=True), limiter=state.replay_limiter
        )
        return render(
            request,
            ctx,
            "replay_confirm.html",
            summary=summary.to_json(),
            scope=scope,
            ids=list(flt.ids),
            values=_filter_values(ctx.form),
            every=every or flt.is_empty(),
        )
    replay_id = secrets.token_hex(8)
    shown = _one(ctx.form, "expected")  # the dry run's count, for the progress bar
    expected = int(shown) if shown.isascii() and shown.isdigit() and len(shown) < 10 else 0
    start = {"state": "queued", "matched": 0, "requeued": 0, "expected": expected}
    await in_db_thread(
        request, lambda: put_replay_progress(state.queue.connection, replay_id, start)
    )

    async def work() -> None:
        await anyio.to_thread.run_sync(
            lambda: _run_replay(request, flt, replay_id, expected), limiter=state.replay_limiter
        )

    # Run after the answer: the browser follows the redirect and watches the progress.
    return RedirectResponse(f"/console/replays/{replay_id}", 303, background=BackgroundTask(work))


def _replayer(request: Request) -> Any:
    from ops.replay import Replayer

    state = resources(request)
    return Replayer(state.settings, state.engine, state.queue.connection, state.queue)


def _run_replay(
    request: Request, flt: failed_mod.FailedFilter, replay_id: str, expected: int
) -> None:
    """The replay itself, after the answer (a background task): its progress in Redis, for
    whichever API process the progress page asks."""
    connection = resources(request).queue.connection

    def put(stage: str, data: dict[str, Any]) -> None:
        put_replay_progress(connection, replay_id, {**data, "state": stage, "expected": expected})

    try:
        replayer = _replayer(request)
        summary = replayer.run(
            flt,
            room_wait=ROOM_WAIT_SECONDS,
            progress=lambda s: put("requeueing", s.to_json()),
        )
        put("waiting", summary.to_json())
        replayer.wait_for_outcomes(summary, REPLAY_WAIT_SECONDS)
        put("done", summary.to_json())
    except (EventpipeError, RedisError, sa_exc.SQLAlchemyError) as exc:
        log.warning("console: replay %s failed: %s", replay_id, exc)
        try:
            put("error", {"error": str(exc).splitlines()[0][:300]})
        except RedisError:
            pass


async def replay_page(request: Request, ctx: Ctx) -> Response:
    replay_id = request.path_params["replay_id"]
    progress = await _progress(request, replay_id)
    return render(request, ctx, "replay_progress.html", replay_id=replay_id, progress=progress)


async def replay_progress(request: Request, ctx: Ctx) -> Response:
    return JsonResponse(await _progress(request, request.path_params["replay_id"]))


async def _progress(request: Request, replay_id: str) -> Any:
    if len(replay_id) != 16 or not all(c in "0123456789abcdef" for c in replay_id):
        raise NotFound("No such replay")
    found = await get_replay_progress(resources(request).redis, replay_id)
    if found is None:
        raise NotFound("No such replay (or it ended over an hour ago)")
    return found


# --- live tail -------------------------------------------------------------------------------


async def tail_page(request: Request, ctx: Ctx) -> Response:
    values = {name: _one(request.query_params, name) for name in ("projectId", "eventName")}
    return render(request, ctx, "tail.html", values=values)


def _matching(entry: dict[str, Any], project: str, name: str) -> list[list[str]]:
    return [
        e
        for e in entry["events"]
        if (not project or e[1] == project) and (not name or e[2] == name)
    ]


async def tail_stream(request: Request, ctx: Ctx) -> Response:
    """Server-sent events: one per matching event, `id:` the stream entry's id, so that the
    browser's reconnect (Last-Event-ID) or a resume after a pause (?after=) misses nothing
    the stream still holds."""
    query = request.query_params
    project, name = _one(query, "projectId"), _one(query, "eventName")
    after = request.headers.get("last-event-id") or _one(query, "after")
    if after and not _stream_id(after):
        raise ValidationFailed("after must be a stream id such as 1700000000000-0")
    state = resources(request)
    # Each read waits less than the client's read timeout, which would cut it short.
    block_ms = int(min(TAIL_BLOCK_MS, state.settings.redis_timeout_seconds * 500))
    return StreamingResponse(
        _tail_events(state.redis, after, project, name, block_ms),
        media_type="text/event-stream",
        headers={"X-Accel-Buffering": "no"},
    )


async def _tail_events(
    redis_: Any, after: str, project: str, name: str, block_ms: int
) -> AsyncIterator[str]:
    """The stream's messages: the latest entries first (unless resuming `after` an id),
    then each new one; an `outage` event while Redis is away. Ends after
    TAIL_STREAM_SECONDS (the browser reconnects where it was)."""
    yield "retry: 2000\n\n"
    last = after
    deadline = time.monotonic() + TAIL_STREAM_SECONDS
    while time.monotonic() < deadline:
        try:
            if last:
                entries = await tail_after(redis_, last, block_ms)
            else:
                entries = await tail_latest(redis_, TAIL_BACKLOG)
                last = entries[-1]["id"] if entries else await tail_last_id(redis_)
        except RedisError:
            yield "event: outage\ndata: Redis is unreachable\n\n"
            await anyio.sleep(2)
            continue
        if not entries:
            yield ": keep-alive\n\n"
        for entry in entries:
            last = entry["id"]
            yield _sse(entry, project, name)


def _stream_id(text: str) -> bool:
    ms, _, seq = text.partition("-")
    return ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit() and len(text) < 40


def _sse(entry: dict[str, Any], project: str, name: str) -> str:
    """One message per entry (its matching events as a list), or only the id (so that a
    resume starts after it) when nothing matched."""
    found = _matching(entry, project, name)
    data = jsonio.dumps({"job": entry["job"], "events": found, "more": entry["more"]}).decode()
    return f"id: {entry['id']}\ndata: {data}\n\n" if found else f"id: {entry['id']}\n\n"


# --- projects --------------------------------------------------------------------------------


async def projects_page(request: Request, ctx: Ctx) -> Response:
    rows = await in_transaction(request, lambda conn: store.list_projects(conn=conn))
    return render(request, ctx, "projects.html", projects=rows)


def _project(project_id: str, conn: Any) -> dict[str, Any]:
    found = [p for p in store.list_projects(conn=conn) if p["id"] == project_id]
    if not found:
        raise NotFound(f"No project {project_id[:40]}")
    definitions = [store.definition_json(d) for d in store.list_definitions(project_id, conn=conn)]
    return {**found[0], "keys": store.list_keys(project_id, conn=conn), "definitions": definitions}


async def project_page(request: Request, ctx: Ctx) -> Response:
    project_id = request.path_params["project_id"]
    project = await in_transaction(request, lambda conn: _project(project_id, conn))
    return render(request, ctx, "project.html", project=project)


async def revoke_page(request: Request, ctx: Ctx) -> Response:
    project_id, key_id = request.path_params["project_id"], request.path_params["key_id"]
    project = await in_transaction(request, lambda conn: _project(project_id, conn))
    key = next((k for k in project["keys"] if k["id"] == key_id and not k["revokedAt"]), None)
    if key is None:
        raise NotFound(f"No active key {key_id[:40]} in this project")
    return render(request, ctx, "revoke.html", project=project, key=key)


async def revoke(request: Request, ctx: Ctx) -> Response:
    project_id, key_id = request.path_params["project_id"], request.path_params["key_id"]

    def run(conn: Any) -> None:
        keys = store.list_keys(project_id, conn=conn)
        if not any(k["id"] == key_id for k in keys):
            raise NotFound(f"No key {key_id[:40]} in project {project_id[:40]}")
        store.revoke_key(key_id, conn=conn)

    await in_transaction(request, run)
    await announce_config_change(request)
    log.info("console: key %s of project %s revoked", key_id, project_id)
    return RedirectResponse(f"/console/projects/{project_id}?revoked={key_id}", 303)


# --- static files ----------------------------------------------------------------------------


async def static(request: Request) -> Response:
    if not resources(request).settings.operator_token:
        raise NotFound("Not found")
    found = STATIC.get(request.path_params["name"])
    if found is None:
        raise NotFound("Not found")
    body, media_type = found
    headers = {"Cache-Control": "public, max-age=31536000, immutable", **SECURITY_HEADERS}
    return Response(body, media_type=media_type, headers=headers)


ROUTES = [
    console_route("/console", index),
    console_route("/console/sign-in", sign_in_page, auth=False),
    console_route("/console/sign-in", sign_in, "POST", auth=False),
    console_route("/console/sign-out", sign_out, "POST"),
    console_route("/console/overview", overview),
    console_route("/console/overview/figures", overview_figures, as_json=True),
    console_route("/console/failed", failed_page),
    console_route("/console/failed/{event_id}", failed_event),
    console_route("/console/replay", replay, "POST"),
    console_route("/console/replays/{replay_id}", replay_page),
    console_route("/console/replays/{replay_id}/progress", replay_progress, as_json=True),
    console_route("/console/tail", tail_page),
    console_route("/console/tail/stream", tail_stream, as_json=True),
    console_route("/console/projects", projects_page),
    console_route("/console/projects/{project_id}", project_page),
    console_route("/console/projects/{project_id}/keys/{key_id}/revoke", revoke_page),
    console_route("/console/projects/{project_id}/keys/{key_id}/revoke", revoke, "POST"),
    Route("/console/static/{name}", static, methods=["GET"], include_in_schema=False),
]
