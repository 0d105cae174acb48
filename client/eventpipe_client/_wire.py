"""What goes over the wire and what an answer means, with no I/O (sans-IO).

A delivery is a generator that yields `Post` (send this) and `Sleep` (wait this long) and is
sent back a `Reply` for each `Post`; the threaded `Client` and the asyncio `AsyncClient` drive
the same generator, so both retry, back off and read receipts the same way.
"""

from __future__ import annotations

import gzip
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

BATCH_PATH = "/v1/events/batch"
SEND_PATH = "/v1/events/send"
MAX_EVENTS = 500
# The server's limit: 1 MiB after inflation.
MAX_BODY_BYTES = 1024 * 1024
IN_USE = "IDEMPOTENCY_KEY_IN_USE"
# Longer than the server's IDEMPOTENCY_CLAIM_SECONDS (60 s): a claim whose request died
# expires within it, and a retry after that makes the one event.
IN_USE_RETRY_SECONDS = 75.0

Event = dict[str, Any]
OnRejected = Callable[[Event, str, str], None]
OnError = Callable[[list[Event], str], None]


class EventpipeError(Exception):
    """A refusal by the server (a 4xx, or a 5xx after the retries), with its envelope."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def event_body(
    event_name: str,
    email: str | None,
    contact_id: str | None,
    properties: dict[str, Any] | None,
    idempotency_key: str | None,
) -> Event:
    if email is None and contact_id is None:
        raise ValueError("send() needs email= or contact_id=")
    body: Event = {"eventName": event_name}
    if email is not None:
        body["email"] = email
    if contact_id is not None:
        body["contactId"] = contact_id
    if properties:
        body["eventProperties"] = properties
    if idempotency_key is not None:
        body["idempotencyKey"] = idempotency_key
    return body


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class Counters:
    """Every event the client took ends in exactly one of sent, duplicate, rejected, failed
    (handed to on_error) or dropped; retried counts re-sends (an event sent three times adds
    two). Read them with `snapshot()`."""

    sent: int = 0
    duplicate: int = 0
    rejected: int = 0
    failed: int = 0
    dropped: int = 0
    retried: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            names = ("sent", "duplicate", "rejected", "failed", "dropped", "retried")
            return {name: getattr(self, name) for name in names}


@dataclass(frozen=True)
class Policy:
    retry_seconds: float = 120.0  # the whole budget of one batch's retries, then on_error
    base_delay: float = 0.1
    max_delay: float = 10.0
    in_use_seconds: float = IN_USE_RETRY_SECONDS

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with full jitter; a server's Retry-After is a floor."""
        backoff = random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))
        return max(backoff, retry_after or 0.0)


@dataclass
class Post:
    path: str
    content: bytes
    headers: dict[str, str]


@dataclass
class Sleep:
    seconds: float


@dataclass
class Reply:
    """What came back: a status and the parsed body, or `error` for a failed exchange."""

    status: int = 0
    body: Any = None
    retry_after: float | None = None
    error: str | None = None

    @property
    def retryable(self) -> bool:
        return self.error is not None or self.status == 429 or self.status >= 500

    @property
    def reason(self) -> str:
        if self.error is not None:
            return self.error
        err = self.body.get("error") if isinstance(self.body, dict) else None
        if isinstance(err, dict):
            return f"{self.status} {err.get('code')}: {err.get('message')}"
        return f"HTTP {self.status}"

    @property
    def code(self) -> str | None:
        err = self.body.get("error") if isinstance(self.body, dict) else None
        return err.get("code") if isinstance(err, dict) else None

    @property
    def receipts(self) -> list[dict[str, Any]] | None:
        data = self.body.get("data") if isinstance(self.body, dict) else None
        receipts = data.get("receipts") if isinstance(data, dict) else None
        return receipts if isinstance(receipts, list) else None


def parse_retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: the backoff decides


@dataclass
class Batch:
    """Events on their way, encoded once (one json.dumps for the batch: a third of the cost of
    one per event), with the request-level key every retry of them repeats."""

    events: list[Event]
    body: bytes
    key: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def of(cls, events: list[Event], key: str | None = None) -> Batch:
        body = encode({"events": events})
        return cls(events, body, key) if key else cls(events, body)


def batches_of(events: list[Event]) -> list[Batch]:
    """`events` as batches of at most 1 MB each (halved until each fits)."""
    batch = Batch.of(events)
    if len(events) > 1 and len(batch.body) > MAX_BODY_BYTES:
        half = len(events) // 2
        return batches_of(events[:half]) + batches_of(events[half:])
    return [batch]


@dataclass
class Outcome:
    """The fate of one batch: per-item receipts where the server gave them."""

    sent: int = 0
    duplicate: int = 0
    rejected: list[tuple[Event, str, str]] = field(default_factory=list)  # event, code, message
    failed: str | None = None  # why events went to on_error (then none of them is sent)


@dataclass
class Report:
    """Where outcomes go: the counters and the user's callbacks."""

    counters: Counters
    on_rejected: OnRejected | None
    on_error: OnError | None

    def rejected(self, event: Event, code: str, message: str) -> None:
        self.counters.add("rejected")
        if self.on_rejected is not None:
            self.on_rejected(event, code, message)

    def failed(self, events: list[Event], reason: str) -> None:
        self.counters.add("failed", len(events))
        if self.on_error is not None:
            self.on_error(events, reason)


Exchange = Generator[Post | Sleep, Reply, Outcome]


def deliver(batch: Batch, policy: Policy, report: Report) -> Exchange:
    """Deliver `batch` until every item has a receipt or the retry budget is spent; items
    answered IDEMPOTENCY_KEY_IN_USE go again, in a batch of their own, until the server's
    claim time has passed."""
    outcome = Outcome()
    started = time.monotonic()
    while True:
        reply = yield from _exchange(batch, policy, report, started)
        if reply.receipts is None:
            outcome.failed = reply.reason
            report.failed(batch.events, reply.reason)
            return outcome
        again = _read_receipts(batch, reply.receipts, outcome, report)
        if not again:
            return outcome
        if time.monotonic() - started > policy.in_use_seconds:
            outcome.failed = f"409 {IN_USE}: still in use after retries"
            report.failed(again, outcome.failed)
            return outcome
        report.counters.add("retried", len(again))
        yield Sleep(policy.delay(0, 1.0))
        batch = Batch.of(again)


def _exchange(
    batch: Batch, policy: Policy, report: Report, started: float
) -> Generator[Post | Sleep, Reply, Reply]:
    """POST the batch, retrying what may succeed later (with the same key and body, so a
    batch that did succeed is answered with its receipts, never queued twice)."""
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    # gzip level 1: a 500-event body shrinks about tenfold for a few hundred microseconds.
    body = gzip.compress(batch.body, 1)
    post = Post(BATCH_PATH, body, headers | {"Idempotency-Key": batch.key})
    attempt = 0
    while True:
        reply = yield post
        in_use = reply.status == 409 and reply.code == IN_USE
        if not (reply.retryable or in_use):
            return reply
        budget = max(policy.retry_seconds, policy.in_use_seconds if in_use else 0.0)
        delay = policy.delay(attempt, reply.retry_after)
        if time.monotonic() + delay - started > budget:
            return reply
        attempt += 1
        report.counters.add("retried", len(batch.events))
        yield Sleep(delay)


def _read_receipts(
    batch: Batch, receipts: list[dict[str, Any]], outcome: Outcome, report: Report
) -> list[Event]:
    again: list[Event] = []
    sent = duplicate = 0
    for receipt in receipts:
        index = receipt.get("index")
        if not isinstance(index, int) or not 0 <= index < len(batch.events):
            continue
        status = receipt.get("status")
        if status == "accepted":
            sent += 1
        elif status == "duplicate":
            duplicate += 1
        else:
            error = receipt.get("error") or {}
            code, message = str(error.get("code")), str(error.get("message"))
            if code == IN_USE:
                again.append(batch.events[index])
            else:
                outcome.rejected.append((batch.events[index], code, message))
                report.rejected(batch.events[index], code, message)
    outcome.sent += sent
    outcome.duplicate += duplicate
    report.counters.add("sent", sent)
    report.counters.add("duplicate", duplicate)
    return again


def single(
    body: Event, wait: int | None, key: str | None, policy: Policy
) -> Generator[Post | Sleep, Reply, Event]:
    """POST /v1/events/send (retrying as a batch does); the answer's `data`, or raises."""
    headers = {"Content-Type": "application/json"}
    if wait:
        headers["Prefer"] = f"wait={wait}"
    # A key of its own when none is given: a retry after a lost answer is then no second event.
    headers["Idempotency-Key"] = key or uuid.uuid4().hex
    post = Post(SEND_PATH, encode(body), headers)
    started, attempt = time.monotonic(), 0
    while True:
        reply = yield post
        in_use = reply.status == 409 and reply.code == IN_USE
        if reply.status in (200, 201, 202) and isinstance(reply.body, dict):
            data: Event = reply.body.get("data") or {}
            return data
        budget = max(policy.retry_seconds, policy.in_use_seconds if in_use else 0.0)
        delay = policy.delay(attempt, reply.retry_after)
        if not (reply.retryable or in_use) or time.monotonic() + delay - started > budget:
            raise EventpipeError(reply.status, reply.code or "UNAVAILABLE", reply.reason)
        attempt += 1
        yield Sleep(delay)
