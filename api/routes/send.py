"""POST /v1/events/send and GET /v1/events/{eventId}: one event in, and where it is now.

The send path: the body (api.http), the key (api.auth), the checks and coercion
(api.schema), an idempotency claim (api.idempotency), then the group commit (api.committer)
puts the event in Redis through the queue adapter (shared.queue) before the 202."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import idempotency, store
from api.apidoc import (
    APPLIED,
    ID,
    IDEMPOTENCY_KEY,
    PREFER,
    RATE_LIMIT_HEADERS,
    RATE_LIMITED,
    REPLAYED,
    SEND_BODY,
    SEND_EXAMPLE,
    SENDING,
    STORED_EXAMPLE,
    STORED_RECORD,
    Schema,
    body,
    common,
    error_doc,
    ok_doc,
    op,
    path_param,
    ref,
)
from api.http import (
    authenticated,
    check_declared_size,
    error_response,
    in_db_thread,
    ok,
    parse_json,
    read_body,
)
from api.idempotency import Answer, Claim
from api.observe import EVENT_ID, SEND_PATH
from api.outcomes import Outcome, parse_prefer_wait
from api.schema import check_send
from api.shares import RATE_HEADERS, Bucket, Guard, rate_headers, rate_limited
from api.state import Resources, resources
from shared.db import delete_failed, transaction
from shared.errors import (
    EventpipeError,
    NotFound,
    QueueUnavailable,
    contact_not_found_for_event,
)
from shared.ids import is_id
from shared.models import failed_events
from shared.queue import (
    FAILED_KEY,
    PENDING_KEY,
    Event,
    Record,
    forget_failed_jobs,
    queued_payload,
)
from shared.settings import MAX_SEND_BODY_BYTES

log = logging.getLogger("eventpipe.api")


# --- POST /v1/events/send --------------------------------------------------------------


async def send_event(request: Request) -> Response:
    state = resources(request)
    check_declared_size(request, MAX_SEND_BODY_BYTES)
    project_id = authenticated(request)
    raw = await read_body(request, MAX_SEND_BODY_BYTES)
    guard = state.shares.guards.get(project_id)  # None: no limit near (the common case)
    if guard is None or guard.bucket is None:
        return await _send_event(request, state, project_id, raw, guard)
    await take_tokens(request, state, guard.bucket, 1)
    response = await _send_event(request, state, project_id, raw, guard)
    response.raw_headers.extend(request.scope[RATE_HEADERS])
    return response


async def take_tokens(
    request: Request, state: Resources, bucket: Bucket, n: int, partial: bool = False
) -> int:
    """Spend `n` of the project's tokens (`partial`: as many of them as are left, at least
    one), noting its X-RateLimit-* headers for the answer; 429 when none can be spent."""
    taken = bucket.spend(n, partial)
    if taken != n:  # short here: a lease round (no coroutine at all in the common case)
        taken = await state.shares.take_more(bucket, n, partial, taken)
    request.scope[RATE_HEADERS] = rate_headers(bucket)
    if not taken:
        raise rate_limited(bucket, 1 if partial else n)
    return taken


async def _send_event(
    request: Request, state: Resources, project_id: str, raw: bytes, guard: Guard | None
) -> Response:
    body = parse_json(raw)
    event = check_send(body, project_id, state.cache.definition_finder(project_id))
    request.scope[EVENT_ID] = event["id"]
    # Before the claim: nothing may refuse the request between the claim and the enqueue.
    wait = parse_prefer_wait(request.headers.get("prefer"), state.settings.max_wait_seconds)
    claim = None
    key = request.headers.get(idempotency.HEADER)
    if key is not None:
        held = await state.idempotency.claim(project_id, key, body, event)
        if isinstance(held, Answer):
            request.scope[EVENT_ID] = held.event_id
            return _replayed(held, event)
        claim = held
    claims = [claim] if claim else []
    if not wait:
        await enqueue(state, 1, claims, lambda r: state.committer.submit(event, len(raw), r), guard)
        return _accepted(event)
    event["wait"] = True  # the worker publishes this event's outcome
    with state.outcomes.expect(event["id"]) as outcome:
        await enqueue(state, 1, claims, lambda r: state.committer.submit(event, len(raw), r), guard)
        response = await _when_done(request, event, outcome, wait, claim)
    response.headers["Preference-Applied"] = f"wait={wait}"
    return response


async def enqueue(
    state: Resources,
    count: int,
    claims: list[Claim],
    write: Callable[[list[Record]], Awaitable[None]],
    guard: Guard | None = None,
) -> None:
    """Put `count` accepted events in Redis through `write`, with their keys' answers in the
    same atomic write; past the backlog limit or the project's share of it (`guard`), or if
    the write fails for any reason (a cancelled request included), free the keys and raise.
    A key the write did answer is not freed: the release frees only a key still holding
    this request's claim."""
    records = [claim.answered(202, state.idempotency.ttl_seconds) for claim in claims]
    try:
        state.backlog.check()
        if guard is not None:
            guard.check_backlog(count)
        state.backlog.added(count)
        await write(records)
    except BaseException:
        for claim in claims:
            await state.idempotency.release(claim)
        raise


def _accepted(event: Event) -> Response:
    return ok({**store.queued_view(event), "status": "queued"}, 202)


def _replayed(answer: Answer, event: Event) -> Response:
    """The first request's answer, rebuilt from this one's event (same body, same fingerprint)
    with the first one's id and acceptance time."""
    first = {**event, "id": answer.event_id, "createdAt": answer.created_at}
    response: Response
    if answer.status == 201 and answer.contact_id is not None:
        response = ok(store.stored_view(first, answer.contact_id), 201)
    else:
        response = _accepted(first)
    response.headers["Idempotent-Replayed"] = "true"
    return response


async def _when_done(
    request: Request, event: Event, outcome: asyncio.Future[Outcome], wait: int, claim: Claim | None
) -> Response:
    """AutoSend's synchronous answer once the worker is done, or the 202 after `wait` s."""
    state = resources(request)
    try:
        done: Outcome = await asyncio.wait_for(asyncio.shield(outcome), wait)
    except TimeoutError:
        return _accepted(event)
    if done.status == "stored" and done.contact_id is not None:
        if claim is not None:
            await state.idempotency.settle(claim, 201, done.contact_id)
        return ok(store.stored_view(event, done.contact_id), 201)
    not_found = contact_not_found_for_event()
    if done.code == not_found.code and await _forget_failed(request, event):
        if claim is not None:
            await state.idempotency.forget(claim)
        return error_response(request, not_found)
    # Any other failure is kept for an operator to replay: the event was accepted.
    return _accepted(event)


async def _forget_failed(request: Request, event: Event) -> bool:
    """As AutoSend answers 404 having recorded nothing, remove what the worker recorded of
    the failure (store row, RQ failed job, failure count). False if that cannot be done now:
    the answer is then the 202, and the failure stays listed for replay."""
    state = resources(request)

    def forget() -> None:
        with transaction(state.engine) as conn:
            delete_failed(failed_events, [event["id"]], conn=conn)
        queue = state.queue
        forget_failed_jobs(queue, [event["id"]])
        queue.connection.hincrby(FAILED_KEY, contact_not_found_for_event().code, -1)

    try:
        await in_db_thread(request, forget)
    except (EventpipeError, RedisError):
        log.warning("could not remove the failed event %s after a wait", event["id"])
        return False
    return True


# --- GET /v1/events/{event_id} ---------------------------------------------------------


async def get_event(request: Request) -> Response:
    project_id = authenticated(request)
    event_id = request.path_params["event_id"]
    if not is_id(event_id):
        raise _event_log_not_found()
    view = await in_db_thread(request, lambda: _event_status(request, project_id, event_id))
    return ok(view)


def _event_log_not_found() -> NotFound:
    return NotFound("Event not found")


def _event_status(request: Request, project_id: str, event_id: str) -> dict[str, Any]:
    engine = resources(request).engine
    with transaction(engine) as conn:
        outcome = store.find_outcome(project_id, event_id, conn=conn)
    if outcome is not None:
        return outcome
    queued = _queued_event(request, project_id, event_id)
    if queued is not None:
        return queued
    # The worker may have stored it between our two looks (it drops the mark after commit).
    with transaction(engine) as conn:
        outcome = store.find_outcome(project_id, event_id, conn=conn)
    if outcome is None:
        raise _event_log_not_found()
    return outcome


def _queued_event(request: Request, project_id: str, event_id: str) -> dict[str, Any] | None:
    queue = resources(request).queue
    try:
        # redis-py types each command for its sync and async clients at once.
        job_id = cast("bytes | None", queue.connection.hget(PENDING_KEY, event_id))
        if job_id is None:
            return None
        payload = queued_payload(queue, job_id.decode())
    except RedisError as exc:
        raise QueueUnavailable() from exc
    if payload is None:
        return None
    for event in payload.events:
        if event["id"] == event_id and event["projectId"] == project_id:
            return {**store.queued_view(event), "status": "queued"}
    return None


ROUTES = [
    Route(SEND_PATH, send_event, methods=["POST"]),  # reached through the app's fast lane
    Route("/v1/events/{event_id}", get_event, methods=["GET"]),
]


OPENAPI_PATHS: dict[str, Schema] = {
    "/v1/events/send": {
        "post": op(
            "Send an event (asynchronous: 202 once it is durably queued)",
            SENDING,
            common(
                (413, error_doc(413, "PAYLOAD_TOO_LARGE")),
                (
                    202,
                    ok_doc(
                        "Accepted and queued (or, with `Idempotent-Replayed: true`, the answer "
                        "given to the first request with this Idempotency-Key)",
                        ref("Event"),
                        {**STORED_EXAMPLE, "contactId": None, "status": "queued"},
                    )
                    | {
                        "headers": {
                            "Idempotent-Replayed": REPLAYED,
                            "Preference-Applied": APPLIED,
                            **RATE_LIMIT_HEADERS,
                        }
                    },
                ),
                (
                    400,
                    error_doc(
                        400,
                        "VALIDATION_FAILED",
                        "EMAIL_OR_CONTACT_ID_REQUIRED",
                        "UNKNOWN_PROPERTY",
                        "INVALID_PROPERTY_VALUE",
                    ),
                ),
                (
                    201,
                    ok_doc(
                        "With `Prefer: wait=N`: stored within N seconds (AutoSend's answer)",
                        STORED_RECORD,
                        {k: v for k, v in STORED_EXAMPLE.items() if k != "status"},
                    )
                    | {
                        "headers": {
                            "Preference-Applied": APPLIED,
                            "Idempotent-Replayed": REPLAYED,
                            **RATE_LIMIT_HEADERS,
                        }
                    },
                ),
                (
                    404,
                    error_doc(404, "EVENT_NOT_FOUND", "CONTACT_NOT_FOUND_FOR_EVENT")
                    | {
                        "description": "EVENT_NOT_FOUND; with `Prefer: wait=N`, "
                        "CONTACT_NOT_FOUND_FOR_EVENT: no such contact, nothing recorded",
                    },
                ),
                RATE_LIMITED,
                (409, error_doc(409, "IDEMPOTENCY_KEY_IN_USE")),
                (422, error_doc(422, "IDEMPOTENCY_KEY_MISMATCH")),
            ),
            requestBody=body(SEND_BODY, SEND_EXAMPLE, MAX_SEND_BODY_BYTES),
            parameters=[IDEMPOTENCY_KEY, PREFER],
        )
    },
    "/v1/events/{eventId}": {
        "parameters": [path_param("eventId", ID, "The id the send answered")],
        "get": op(
            "An event's status: queued, stored (the stored record) or failed (with its error)",
            SENDING,
            common(
                (200, ok_doc("The event", ref("Event"), STORED_EXAMPLE)),
                (404, error_doc(404, "NOT_FOUND")),
            ),
        ),
    },
}
