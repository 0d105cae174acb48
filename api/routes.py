"""The endpoints. Each one: read and check the request, authenticate, do one thing, answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio.to_thread
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job
from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import idempotency
from api.auth import authenticate
from api.http import EVENT_ID, error_response, ok, parse_json, read_body
from api.idempotency import Answer, Claim
from api.outcomes import Outcome, parse_prefer_wait
from shared import failed, store
from shared.db import transaction
from shared.errors import (
    EventpipeError,
    NotFound,
    QueueUnavailable,
    ValidationFailed,
    contact_not_found_for_event,
)
from shared.ids import is_id
from shared.queue import CONFIG_VERSION_KEY, FAILED_KEY, PENDING_KEY, Event, Record, read_payload
from shared.schema import check_send
from shared.settings import MAX_SEND_BODY_BYTES

log = logging.getLogger("eventpipe.api")
T = TypeVar("T")
Endpoint = Callable[[Request], Awaitable[Response]]


async def in_db_thread(request: Request, fn: Callable[[], T]) -> T:
    """Run blocking store (or sync Redis) work in the bounded pool, off the event loop."""
    return await anyio.to_thread.run_sync(fn, limiter=request.app.state.db_limiter)


async def in_transaction(request: Request, fn: Callable[[Connection], T]) -> T:
    """`fn` in one store transaction, on the bounded pool: the management endpoints' only way
    to the store, so the send path (which never touches it) cannot queue behind them."""
    engine = request.app.state.engine

    def run() -> T:
        with transaction(engine) as conn:
            return fn(conn)

    return await in_db_thread(request, run)


def route(path: str, **handlers: Endpoint) -> Route:
    """One route for all the methods of a path, so that a 405 lists them all in `Allow`
    (separate Routes would each answer for their own method only)."""

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return Route(path, dispatch, methods=list(handlers))


async def read_authenticated(request: Request, limit: int) -> tuple[str, Any]:
    """The contract's order for every body: size (413), then the key (401), then JSON (400)."""
    raw = await read_body(request, limit)
    project_id = authenticate(request, request.app.state.cache)
    return project_id, parse_json(raw)


def json_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationFailed("Request body must be a JSON object")
    return body


# --- POST /v1/events/send --------------------------------------------------------------


async def send_event(request: Request) -> Response:
    state = request.app.state
    raw = await read_body(request, MAX_SEND_BODY_BYTES)
    project_id = authenticate(request, state.cache)
    body = parse_json(raw)
    event = check_send(body, project_id, state.cache.definition_finder(project_id))
    request.scope[EVENT_ID] = event["id"]
    claim = None
    key = request.headers.get(idempotency.HEADER)
    if key is not None:
        held = await state.idempotency.claim(project_id, key, body, event)
        if isinstance(held, Answer):
            request.scope[EVENT_ID] = held.event_id
            return _replayed(held, event)
        claim = held
    claims = [claim] if claim else []
    wait = parse_prefer_wait(request.headers.get("prefer"), state.settings.max_wait_seconds)
    if not wait:
        await enqueue(state, 1, claims, lambda r: state.committer.submit(event, len(raw), r))
        return _accepted(event)
    event["wait"] = True  # the worker publishes this event's outcome
    with state.outcomes.expect(event["id"]) as outcome:
        await enqueue(state, 1, claims, lambda r: state.committer.submit(event, len(raw), r))
        response = await _when_done(request, event, outcome, wait, claim)
    response.headers["Preference-Applied"] = f"wait={wait}"
    return response


async def enqueue(
    state: Any,
    count: int,
    claims: list[Claim],
    write: Callable[[list[Record]], Awaitable[None]],
) -> None:
    """Put `count` accepted events in Redis through `write`, with their keys' answers in the
    same MULTI/EXEC; past the backlog limit, or if the write fails, free the keys and raise."""
    records = [claim.answered(202, state.idempotency.ttl_seconds) for claim in claims]
    try:
        state.backlog.check()
        state.backlog.added(count)
        await write(records)
    except EventpipeError:
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
    request: Request, event: Event, outcome: Any, wait: int, claim: Claim | None
) -> Response:
    """AutoSend's synchronous answer once the worker is done, or the 202 after `wait` s."""
    state = request.app.state
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
    state = request.app.state

    def forget() -> None:
        with transaction(state.engine) as conn:
            failed.delete_failed([event["id"]], conn=conn)
        queue = state.queue
        failed.forget_failed_jobs(queue.connection, queue, [event["id"]])
        queue.connection.hincrby(FAILED_KEY, contact_not_found_for_event().code, -1)

    try:
        await in_db_thread(request, forget)
    except (EventpipeError, RedisError):
        log.warning("could not remove the failed event %s after a wait", event["id"])
        return False
    return True


# --- GET /v1/events/{event_id} ---------------------------------------------------------


async def get_event(request: Request) -> Response:
    project_id = authenticate(request, request.app.state.cache)
    event_id = request.path_params["event_id"]
    if not is_id(event_id):
        raise _event_log_not_found()
    view = await in_db_thread(request, lambda: _event_status(request, project_id, event_id))
    return ok(view)


def _event_log_not_found() -> NotFound:
    return NotFound("Event not found")


def _event_status(request: Request, project_id: str, event_id: str) -> dict[str, Any]:
    engine = request.app.state.engine
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
    queue = request.app.state.queue
    try:
        job_id = queue.connection.hget(PENDING_KEY, event_id)
        if job_id is None:
            return None
        job = Job.fetch(job_id.decode(), connection=queue.connection, serializer=queue.serializer)
    except NoSuchJobError:
        return None
    except RedisError as exc:
        raise QueueUnavailable() from exc
    for event in read_payload(job.args[0]):
        if event["id"] == event_id and event["projectId"] == project_id:
            return {**store.queued_view(event), "status": "queued"}
    return None


# --- shared by the management endpoints ------------------------------------------------


async def announce_config_change(request: Request) -> None:
    """Tell every API process (through Redis) and this one (now) that the config changed."""
    state = request.app.state
    try:
        await state.redis.incr(CONFIG_VERSION_KEY)
    except RedisError:
        log.warning(
            "could not bump the config version; other processes reload within CONFIG_RELOAD_SECONDS"
        )
    await state.cache.reload()
