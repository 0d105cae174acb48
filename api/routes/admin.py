"""The operators' API: failed events and their replay, for automation.

Behind OPERATOR_TOKEN (a setting), never a project key: a project key sees one project, while
these endpoints see and requeue every project's failed events. Unset, the admin API is off
and answers 401 to everything.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

import anyio.to_thread
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import limits as limits_mod
from api.apidoc import OPERATIONS, error_doc, obj, ok_doc, op, path_param, query_param
from api.http import (
    announce_config_change,
    check_declared_size,
    in_transaction,
    json_object,
    ok,
    parse_json,
    read_body,
    route,
)
from api.state import resources
from ops import failed as failed_mod
from shared.errors import NotFound, QueueUnavailable, Unauthorized, ValidationFailed
from shared.ids import is_id
from shared.settings import MAX_BODY_BYTES, Settings

# A replay request waits at most this long for the workers' outcome before answering.
MAX_WAIT_SECONDS = 30.0
# How long a replay through the API waits for the backlog to make room before it stops
# (answering what it did, `interrupted`); the CLI waits as long as it takes.
ROOM_WAIT_SECONDS = 30.0
# The filters are names, codes and ids: anything longer is no filter of ours.
MAX_FILTER_CHARS = 200
_DIGITS = re.compile(r"[0-9]{1,10}")


def check_operator(request: Request) -> None:
    settings: Settings = resources(request).settings
    if not settings.operator_token:
        raise Unauthorized("The admin API is off: set OPERATOR_TOKEN to turn it on")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # Digests of both sides: compare_digest is constant-time for equal lengths only.
    given = hashlib.sha256(token.strip().encode()).digest()
    wanted = hashlib.sha256(settings.operator_token.encode()).digest()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given, wanted):
        raise Unauthorized("Missing or wrong operator token")


def _text(source: dict[str, Any], name: str) -> str | None:
    value = source.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_FILTER_CHARS or "\x00" in value:
        raise ValidationFailed(
            f"{name} must be a string of at most {MAX_FILTER_CHARS} characters, without NUL"
        )
    return value


def _time(source: dict[str, Any], name: str) -> Any:
    value = _text(source, name)
    return failed_mod.parse_time(value) if value else None


def _int(
    source: dict[str, Any], name: str, default: int | None, top: int | None, *, text: bool = False
) -> int | None:
    """A whole number from 1 (to `top`): a JSON integer, or with `text` (a query string)
    ASCII digits."""
    value = source.get(name)
    if value is None or value == "":
        return default
    if text and isinstance(value, str) and _DIGITS.fullmatch(value):  # bounded: int() is safe
        value = int(value)
    if type(value) is not int or value < 1 or (top is not None and value > top):
        raise ValidationFailed(f"{name} must be an integer from 1" + (f" to {top}" if top else ""))
    return value


def filter_from(source: dict[str, Any], ids: list[str] | None = None) -> failed_mod.FailedFilter:
    return failed_mod.FailedFilter(
        code=_text(source, "code"),
        event_name=_text(source, "eventName"),
        project_id=_text(source, "projectId"),
        since=_time(source, "since"),
        until=_time(source, "until"),
        ids=failed_mod.check_ids(ids or []),
    )


# --- GET /v1/admin/failed ----------------------------------------------------------------


async def list_failed(request: Request) -> Response:
    check_operator(request)
    query = dict(request.query_params)
    flt = filter_from(query)
    limit = _int(query, "limit", 100, failed_mod.MAX_PAGE, text=True) or 100  # (never None)
    cursor = _text(query, "cursor")
    if cursor is not None:
        failed_mod.check_ids([cursor])
    rows = await in_transaction(
        request, lambda conn: failed_mod.list_failed(flt, limit + 1, before=cursor, conn=conn)
    )
    page = rows[:limit]
    next_cursor = page[-1]["id"] if len(rows) > limit else None
    return ok({"failed": page, "nextCursor": next_cursor})


# --- POST /v1/admin/replay ---------------------------------------------------------------


async def replay(request: Request) -> Response:
    check_declared_size(request, MAX_BODY_BYTES)
    check_operator(request)
    body = json_object(parse_json(await read_body(request, MAX_BODY_BYTES)))
    ids = body.get("ids")
    ids = [] if ids is None else ids
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValidationFailed("ids must be an array of event ids")
    for flag in ("all", "dryRun"):
        if body.get(flag) is not None and not isinstance(body[flag], bool):  # 0 == False
            raise ValidationFailed(f"{flag} must be true or false")
    flt = filter_from(body, ids)
    if flt.is_empty() and body.get("all") is not True:
        raise ValidationFailed('No filter given: send "all": true to replay every failed event')
    limit = _int(body, "limit", None, None)
    wait = body.get("wait", 0)
    if type(wait) not in (int, float) or not 0 <= wait <= MAX_WAIT_SECONDS:
        raise ValidationFailed(f"wait must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}")
    dry_run = body.get("dryRun") is True
    # A limiter of its own: a replay can take a while (backlog hold-off, the wait), and must
    # not hold the slots the management endpoints and the config reloads use.
    summary = await anyio.to_thread.run_sync(
        lambda: _run_replay(request, flt, limit, dry_run, float(wait)),
        limiter=resources(request).replay_limiter,
    )
    return ok(summary)


def _run_replay(
    request: Request,
    flt: failed_mod.FailedFilter,
    limit: int | None,
    dry_run: bool,
    wait: float,
) -> dict[str, Any]:
    from ops.replay import Replayer

    state = resources(request)
    queue = state.queue
    replayer = Replayer(state.settings, state.engine, queue.connection, queue)
    try:
        summary = replayer.run(flt, limit=limit, dry_run=dry_run, room_wait=ROOM_WAIT_SECONDS)
        if wait > 0 and not dry_run:
            replayer.wait_for_outcomes(summary, wait)
    except RedisError as exc:
        raise QueueUnavailable() from exc
    return summary.to_json()


# --- /v1/admin/projects/{projectId}/limits --------------------------------------------------


def _limited_project(request: Request) -> str:
    check_operator(request)
    project_id: str = request.path_params["project_id"]
    if not is_id(project_id):
        raise NotFound(f"Project {project_id[:40]} not found")
    return project_id


def _limits_answer(request: Request, project_id: str, limits: limits_mod.ProjectLimits) -> Response:
    settings = resources(request).settings
    view = limits_mod.limits_view(
        project_id, limits, settings.max_queued_events, settings.project_backlog_share
    )
    return ok(view)


async def get_limits(request: Request) -> Response:
    project_id = _limited_project(request)
    found = await in_transaction(request, lambda conn: limits_mod.get_limits(project_id, conn=conn))
    return _limits_answer(request, project_id, found)


async def put_limits(request: Request) -> Response:
    check_declared_size(request, MAX_BODY_BYTES)
    project_id = _limited_project(request)
    body = json_object(parse_json(await read_body(request, MAX_BODY_BYTES)))
    wanted = limits_from(body)
    await _save_limits(request, project_id, wanted)
    return _limits_answer(request, project_id, wanted)


async def delete_limits(request: Request) -> Response:
    project_id = _limited_project(request)
    await _save_limits(request, project_id, limits_mod.NO_LIMITS)
    return _limits_answer(request, project_id, limits_mod.NO_LIMITS)


async def _save_limits(request: Request, project_id: str, limits: limits_mod.ProjectLimits) -> None:
    await in_transaction(request, lambda conn: limits_mod.set_limits(project_id, limits, conn=conn))
    await announce_config_change(request)  # every API process within a second


def limits_from(body: dict[str, Any]) -> limits_mod.ProjectLimits:
    """A PUT body: `rate` ("100/s", or a number per second), `burst`, `backlogShare`; null
    or absent: the default (no rate limit; PROJECT_BACKLOG_SHARE)."""
    rate, burst, share = body.get("rate"), body.get("burst"), body.get("backlogShare")
    if isinstance(rate, str):
        rate = limits_mod.parse_rate(rate)
    elif rate is not None:
        rate = limits_mod.check_rate(rate)
    if burst is not None:
        if rate is None:
            raise ValidationFailed("burst needs a rate")
        burst = limits_mod.check_burst(burst)
    if share is not None:
        share = limits_mod.check_share(share)
    return limits_mod.ProjectLimits(rate, burst, share)


ROUTES = [
    Route("/v1/admin/failed", list_failed, methods=["GET"]),
    Route("/v1/admin/replay", replay, methods=["POST"]),
    route(
        "/v1/admin/projects/{project_id}/limits",
        GET=get_limits,
        PUT=put_limits,
        DELETE=delete_limits,
    ),
]


# --- OpenAPI -----------------------------------------------------------------------------


_FILTER_TEXT = {"type": "string", "maxLength": MAX_FILTER_CHARS}
_FILTER_FIELDS: dict[str, tuple[dict[str, Any], str]] = {
    "code": (_FILTER_TEXT, "Error code, e.g. CONTACT_NOT_FOUND_FOR_EVENT"),
    "eventName": (_FILTER_TEXT, "Event name"),
    "projectId": (_FILTER_TEXT, "Project id"),
    "since": (_FILTER_TEXT, "Last failed at or after: RFC 3339 time, or `2h` (ago, at most 3650d)"),
    "until": (_FILTER_TEXT, "Last failed before: RFC 3339 time, or `30m` (ago, at most 3650d)"),
}
_FAILED_EVENT = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "projectId": {"type": "string"},
        "eventName": {"type": "string"},
        "code": {"type": "string"},
        "message": {"type": "string"},
        "attempts": {"type": "integer"},
        "createdAt": {"type": "string", "format": "date-time"},
        "failedAt": {"type": "string", "format": "date-time"},
    },
}
_SUMMARY = {
    "type": "object",
    "properties": {
        "matched": {"type": "integer"},
        "requeued": {"type": "integer"},
        "skipped": {
            "type": "object",
            "additionalProperties": {"type": "integer"},
            "description": "Count by reason: already queued, already stored, "
            "no matching failure record",
        },
        "dryRun": {"type": "boolean"},
        "interrupted": {"type": "boolean"},
        "stored": {"type": "integer", "description": "Only when `wait` was given"},
        "stillFailing": {"type": "object", "additionalProperties": {"type": "integer"}},
        "stillQueued": {"type": "integer"},
    },
}
_ADMIN_ERRORS = {
    "400": error_doc(400, "VALIDATION_FAILED", description="Bad filter or body"),
    "401": error_doc(
        401,
        "UNAUTHORIZED",
        description="Missing or wrong operator token (or OPERATOR_TOKEN unset)",
    ),
    "503": error_doc(503, "SERVICE_UNAVAILABLE"),
}
_SECURITY: list[dict[str, list[str]]] = [{"operatorToken": []}]

OPENAPI_PATHS: dict[str, Any] = {
    "/v1/admin/failed": {
        "get": op(
            "List failed events (every project), newest accepted first",
            OPERATIONS,
            {
                "200": ok_doc(
                    "A page of failed events",
                    obj(
                        {
                            "failed": {"type": "array", "items": _FAILED_EVENT},
                            "nextCursor": {"type": ["string", "null"]},
                        }
                    ),
                ),
                **_ADMIN_ERRORS,
            },
            security=_SECURITY,
            parameters=[
                *[query_param(n, s, d) for n, (s, d) in _FILTER_FIELDS.items()],
                query_param(
                    "limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "Page size"
                ),
                query_param("cursor", {"type": "string"}, "nextCursor of the previous page"),
            ],
        )
    },
    "/v1/admin/replay": {
        "post": op(
            "Requeue the matching failed events",
            OPERATIONS,
            {"200": ok_doc("What the replay did", _SUMMARY), **_ADMIN_ERRORS},
            security=_SECURITY,
            requestBody={
                "required": True,
                "content": {
                    "application/json": {
                        "schema": obj(
                            {
                                **{
                                    n: {
                                        **_FILTER_TEXT,
                                        "type": ["string", "null"],
                                        "description": d,
                                    }
                                    for n, (_, d) in _FILTER_FIELDS.items()
                                },
                                "ids": {"type": ["array", "null"], "items": {"type": "string"}},
                                "all": {
                                    "type": ["boolean", "null"],
                                    "description": "Required with no filter",
                                },
                                "dryRun": {"type": ["boolean", "null"]},
                                "limit": {"type": ["integer", "null"], "minimum": 1},
                                "wait": {
                                    "type": "number",
                                    "minimum": 0,
                                    "maximum": MAX_WAIT_SECONDS,
                                    "description": "Seconds to wait for the workers' outcome",
                                },
                            }
                        ),
                        "example": {"code": "CONTACT_NOT_FOUND_FOR_EVENT", "wait": 10},
                    }
                },
            },
        )
    },
}
_LIMITS = {
    "type": "object",
    "properties": {
        "projectId": {"type": "string"},
        "rate": {"type": ["string", "null"], "description": "e.g. `100/s`; null: no limit"},
        "ratePerSecond": {"type": ["number", "null"]},
        "burst": {"type": ["integer", "null"], "description": "null without a rate"},
        "backlogShare": {"type": "number"},
        "backlogShareIsDefault": {"type": "boolean"},
        "backlogLimit": {
            "type": "integer",
            "description": "Events the project may have queued: backlogShare x MAX_QUEUED_EVENTS",
        },
    },
}
_LIMITS_EXAMPLE = {
    "projectId": "60d5ec49f1b2c72d9c8b0001",
    "rate": "100/s",
    "ratePerSecond": 100.0,
    "burst": 200,
    "backlogShare": 0.2,
    "backlogShareIsDefault": False,
    "backlogLimit": 200000,
}
_LIMITS_ERRORS = {
    **_ADMIN_ERRORS,
    "404": error_doc(404, "NOT_FOUND", description="No such project"),
}
OPENAPI_PATHS["/v1/admin/projects/{projectId}/limits"] = {
    "parameters": [path_param("projectId", {"type": "string"}, "The project's id")],
    "get": op(
        "A project's rate limit and backlog share",
        OPERATIONS,
        {"200": ok_doc("The limits", _LIMITS, _LIMITS_EXAMPLE), **_LIMITS_ERRORS},
        security=_SECURITY,
    ),
    "put": op(
        "Set a project's rate limit and backlog share (every API process within a second)",
        OPERATIONS,
        {"200": ok_doc("The limits now", _LIMITS, _LIMITS_EXAMPLE), **_LIMITS_ERRORS},
        security=_SECURITY,
        requestBody={
            "required": True,
            "content": {
                "application/json": {
                    "schema": obj(
                        {
                            "rate": {
                                "type": ["string", "number", "null"],
                                "description": "`N/s`, `N/min`, `N/h`, or a number per "
                                "second; null or absent: no rate limit",
                            },
                            "burst": {
                                "type": ["integer", "null"],
                                "minimum": 1,
                                "description": "Requests at once (default: one second of the "
                                "rate); needs a rate",
                            },
                            "backlogShare": {
                                "type": ["number", "null"],
                                "exclusiveMinimum": 0,
                                "maximum": 1,
                                "description": "Fraction of MAX_QUEUED_EVENTS; null or "
                                "absent: PROJECT_BACKLOG_SHARE",
                            },
                        }
                    ),
                    "example": {"rate": "100/s", "burst": 200, "backlogShare": 0.2},
                }
            },
        },
    ),
    "delete": op(
        "Back to the defaults: no rate limit, PROJECT_BACKLOG_SHARE",
        OPERATIONS,
        {"200": ok_doc("The limits now", _LIMITS), **_LIMITS_ERRORS},
        security=_SECURITY,
    ),
}
# The security scheme these paths name, for the published document's components.
SECURITY_SCHEMES: dict[str, Any] = {
    "operatorToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "OPERATOR_TOKEN (never a project key)",
    }
}
