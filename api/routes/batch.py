"""POST /v1/events/batch: up to 500 events in one request, and a receipt for each.

Every item is checked on its own with the send path's rules and messages; the accepted ones
go to Redis as one job, in one atomic write with their keys' answers, before the answer.
Item keys (`idempotencyKey`) and `Idempotency-Key` headers share one namespace per project:
a repeat with the same body is a `duplicate` receipt carrying the first event's id; with
another body the item is `rejected` (IDEMPOTENCY_KEY_MISMATCH). Within one batch the first
item of a key wins and a later one is its duplicate. All keys of a batch are claimed in one
Redis round trip.

A request-level `Idempotency-Key` header names the whole batch (its own namespace): a retry
with the same body answers the first batch's receipts again, its accepted items now
`duplicate` with the same ids, and queues nothing. It is claimed before the items and its
receipts are written in the atomic write of the batch's job, so one key costs one Redis string
per batch, not one per event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import idempotency
from api.apidoc import (
    BATCH_EXAMPLE,
    BATCH_RESULT,
    IDEMPOTENCY_KEY,
    RATE_LIMIT_HEADERS,
    RATE_LIMITED,
    REPLAYED,
    SEND_EXAMPLE,
    SENDING,
    Schema,
    body,
    common,
    error_doc,
    obj,
    ok_doc,
    op,
    ref,
)
from api.http import (
    JsonResponse,
    authenticated,
    check_declared_size,
    ok,
    parse_json,
    read_body,
)
from api.idempotency import Answer, BatchClaim, Claim, Receipt, check_key, fingerprint
from api.routes.send import enqueue, take_tokens
from api.schema import FindDefinition, check_send
from api.shares import RATE_HEADERS, Bucket, Guard, rate_headers, rate_limited, refuses_now
from api.state import Resources, resources
from shared.errors import EventpipeError, ValidationFailed, idempotency_key_mismatch
from shared.queue import Event
from shared.settings import MAX_BATCH_BODY_BYTES

MAX_ITEMS = 500
ITEM_KEY = "idempotencyKey"
BATCH_IDEMPOTENCY_KEY = IDEMPOTENCY_KEY | {
    "description": "1..255 printable ASCII characters naming the whole batch, per project, "
    "kept IDEMPOTENCY_TTL_SECONDS (24 h): a retry with the same body answers the first "
    "batch's receipts (accepted items as duplicates, same ids) and queues nothing; another "
    "body is 422 IDEMPOTENCY_KEY_MISMATCH, a retry while the first is in flight 409 "
    "IDEMPOTENCY_KEY_IN_USE. Its own namespace, apart from item and send keys"
}


@dataclass
class Receipts:
    """The receipts of one batch, filled in as each item's fate is known."""

    size: int
    items: list[dict[str, Any] | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.items = [None] * self.size

    def accepted(self, index: int, event_id: str) -> None:
        self.items[index] = {"index": index, "status": "accepted", "id": event_id}

    def duplicate(self, index: int, event_id: str) -> None:
        self.items[index] = {"index": index, "status": "duplicate", "id": event_id}

    def rejected(self, index: int, exc: EventpipeError) -> None:
        error = {"code": exc.code, "message": exc.message}
        self.items[index] = {"index": index, "status": "rejected", "id": None, "error": error}

    def copy(self, index: int, first: int) -> None:
        """A later item of a key: the first's fate, as a duplicate where it made an event."""
        receipt = self.items[first]
        assert receipt is not None
        if receipt["status"] == "rejected":
            self.items[index] = {**receipt, "index": index}
        else:
            self.duplicate(index, receipt["id"])

    def answer(self, replayed: bool = False) -> Response:
        counts = {"accepted": 0, "duplicate": 0, "rejected": 0}
        for receipt in self.items:
            assert receipt is not None
            counts[receipt["status"]] += 1
        data = {
            "receipts": self.items,
            "accepted": counts["accepted"],
            "duplicates": counts["duplicate"],
            "rejected": counts["rejected"],
        }
        response: Response
        if counts["accepted"] or counts["duplicate"]:
            response = ok(data, 202)
        else:
            error = {"message": "No event of the batch was accepted", "code": "VALIDATION_FAILED"}
            response = JsonResponse({"success": False, "error": error, "data": data}, 400)
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return response

    def filled(self) -> list[Receipt]:
        return cast(list[Receipt], self.items)

    @classmethod
    def replayed(cls, first: list[Receipt]) -> Response:
        """A retry of an answered batch: its receipts, the accepted items now duplicates."""
        receipts = cls(len(first))
        for receipt in first:
            index = receipt["index"]
            receipts.items[index] = receipt
            if receipt["status"] == "accepted":
                receipts.duplicate(index, receipt["id"])
        return receipts.answer(replayed=True)


@dataclass
class Plan:
    """What to do with the items that passed their checks."""

    plain: list[tuple[int, Event]] = field(default_factory=list)
    keyed: list[tuple[int, str, str, Event]] = field(default_factory=list)  # index, key, print
    repeats: list[tuple[int, int]] = field(default_factory=list)  # (item, first of its key)


async def send_batch(request: Request) -> Response:
    state = resources(request)
    check_declared_size(request, MAX_BATCH_BODY_BYTES)
    project_id = authenticated(request)
    raw = await read_body(request, MAX_BATCH_BODY_BYTES)
    guard = state.shares.guards.get(project_id)
    bucket = guard.bucket if guard is not None else None
    if bucket is not None and refuses_now(bucket):  # the contract's order: 429 before JSON
        request.scope[RATE_HEADERS] = rate_headers(bucket)
        raise rate_limited(bucket, 1)
    response = await _send_batch(request, project_id, parse_json(raw), guard)
    if bucket is not None:
        response.raw_headers.extend(request.scope.get(RATE_HEADERS) or rate_headers(bucket))
    return response


async def _send_batch(
    request: Request, project_id: str, body: Any, guard: Guard | None
) -> Response:
    state = resources(request)
    items = _items(body)
    key = request.headers.get(idempotency.HEADER)
    if key is None:
        return await _send_items(request, project_id, items, None, guard)
    held = await state.idempotency.claim_batch(project_id, key, body)
    if not isinstance(held, BatchClaim):
        return Receipts.replayed(held)
    try:
        return await _send_items(request, project_id, items, held, guard)
    except BaseException:
        await state.idempotency.release_batch(held)
        raise


async def _send_items(
    request: Request,
    project_id: str,
    items: list[Any],
    batch: BatchClaim | None,
    guard: Guard | None,
) -> Response:
    state = resources(request)
    receipts = Receipts(len(items))
    plan = _check_items(items, project_id, state.cache.definition_finder(project_id), receipts)
    if guard is not None and guard.bucket is not None:
        await _take_tokens(request, state, guard.bucket, plan, receipts)
    accepted = list(plan.plain)
    claims: list[Claim] = []
    if plan.keyed:
        outcomes = await state.idempotency.claim_many(
            project_id, [(key, print_, event) for _, key, print_, event in plan.keyed]
        )
        for (index, _, _, event), outcome in zip(plan.keyed, outcomes, strict=True):
            if isinstance(outcome, Claim):
                accepted.append((index, event))
                claims.append(outcome)
            elif isinstance(outcome, Answer):
                receipts.duplicate(index, outcome.event_id)
            else:
                receipts.rejected(index, outcome)
    accepted.sort(key=lambda pair: pair[0])  # stored in request order
    for index, event in accepted:
        receipts.accepted(index, event["id"])
    for index, first in plan.repeats:
        receipts.copy(index, first)
    ttl = state.idempotency.ttl_seconds
    extra = [batch.answered(receipts.filled(), ttl)] if batch else []
    if accepted:
        events = [event for _, event in accepted]
        await enqueue(
            state,
            len(events),
            claims,
            lambda r: state.committer.submit_batch(events, r + extra),
            guard,
        )
    elif batch is not None:
        await _answer_without_job(state, batch, receipts)
    return receipts.answer()


async def _take_tokens(
    request: Request, state: Resources, bucket: Bucket, plan: Plan, receipts: Receipts
) -> None:
    """A token for each item that passed its checks, in request order: the items beyond the
    tokens left are rejected RATE_LIMIT_EXCEEDED (and a later item of their key with them);
    none left at all is a 429 for the whole batch."""
    wanted = sorted([index for index, _ in plan.plain] + [k[0] for k in plan.keyed])
    if not wanted:
        return
    taken = await take_tokens(request, state, bucket, len(wanted), partial=True)
    refused = set(wanted[taken:])
    if not refused:
        return
    error = rate_limited(bucket, 1)
    for index in sorted(refused):
        receipts.rejected(index, error)
    plan.plain = [item for item in plan.plain if item[0] not in refused]
    plan.keyed = [item for item in plan.keyed if item[0] not in refused]


async def _answer_without_job(state: Resources, batch: BatchClaim, receipts: Receipts) -> None:
    """A batch that queued nothing: its duplicates' receipts are kept under its key; a batch
    refused whole (400) saves nothing, as a refused send does."""
    if any(r is not None and r["status"] == "duplicate" for r in receipts.items):
        await state.idempotency.answer_batch(batch, receipts.filled())
    else:
        await state.idempotency.release_batch(batch)


def _items(body: Any) -> list[Any]:
    events = body.get("events") if isinstance(body, dict) else None
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_ITEMS:
        message = f"events must be an array of 1 to {MAX_ITEMS} events"
        raise ValidationFailed(message, details=[{"field": "events", "message": message}])
    return events


def _check_items(
    items: list[Any], project_id: str, finder: FindDefinition, receipts: Receipts
) -> Plan:
    plan = Plan()
    first_of: dict[str, tuple[int, str]] = {}  # key -> (first item, its fingerprint)
    for index, item in enumerate(items):
        try:
            event = check_send(item, project_id, finder)
            key = item.get(ITEM_KEY)
            if key is None:
                plan.plain.append((index, event))
                continue
            check_key(key, ITEM_KEY)
            # The send body the key stands for: the item without its key, as a single send
            # with the same body and an Idempotency-Key header would be fingerprinted.
            print_ = fingerprint({k: v for k, v in item.items() if k != ITEM_KEY})
        except EventpipeError as exc:
            receipts.rejected(index, exc)
            continue
        if key not in first_of:
            first_of[key] = (index, print_)
            plan.keyed.append((index, key, print_, event))
        elif first_of[key][1] == print_:
            plan.repeats.append((index, first_of[key][0]))
        else:
            receipts.rejected(index, idempotency_key_mismatch())
    return plan


ROUTES = [Route("/v1/events/batch", send_batch, methods=["POST"])]


OPENAPI_PATHS: dict[str, Schema] = {
    "/v1/events/batch": {
        "post": op(
            f"Send 1..{MAX_ITEMS} events: a receipt for each, in request order",
            SENDING,
            common(
                (413, error_doc(413, "PAYLOAD_TOO_LARGE")),
                (
                    202,
                    ok_doc(
                        "At least one item accepted or a duplicate (with Idempotent-Replayed: "
                        "true, a retry of a batch's Idempotency-Key: the first receipts, the "
                        "accepted items as duplicates)",
                        BATCH_RESULT,
                        BATCH_EXAMPLE,
                    )
                    | {"headers": {"Idempotent-Replayed": REPLAYED, **RATE_LIMIT_HEADERS}},
                ),
                RATE_LIMITED,
                (409, error_doc(409, "IDEMPOTENCY_KEY_IN_USE")),
                (422, error_doc(422, "IDEMPOTENCY_KEY_MISMATCH")),
                (
                    400,
                    {
                        "description": "No item accepted (the receipts say why), or no "
                        f"`events` array of 1..{MAX_ITEMS} items: VALIDATION_FAILED",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "allOf": [
                                        ref("Error"),
                                        {
                                            "properties": {
                                                "error": {
                                                    "properties": {
                                                        "code": {"enum": ["VALIDATION_FAILED"]}
                                                    }
                                                },
                                                "data": BATCH_RESULT,
                                            }
                                        },
                                    ]
                                },
                                "example": {
                                    "success": False,
                                    "error": {
                                        "message": "No event of the batch was accepted",
                                        "code": "VALIDATION_FAILED",
                                    },
                                    "data": {
                                        "receipts": [BATCH_EXAMPLE["receipts"][2]],
                                        "accepted": 0,
                                        "duplicates": 0,
                                        "rejected": 1,
                                    },
                                },
                            }
                        },
                    },
                ),
            ),
            parameters=[BATCH_IDEMPOTENCY_KEY],
            requestBody=body(
                obj(
                    {
                        "events": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_ITEMS,
                            "items": {
                                "description": "The body of /v1/events/send, plus an optional "
                                "`idempotencyKey` (the same namespace as the Idempotency-Key "
                                "header); each item is checked on its own",
                            },
                        }
                    },
                    ["events"],
                ),
                {
                    "events": [
                        {**SEND_EXAMPLE, "idempotencyKey": "order-1001-completed"},
                        {"eventName": "order_completed", "email": "bob@example.com"},
                    ]
                },
                MAX_BATCH_BODY_BYTES,
            ),
        )
    },
}
