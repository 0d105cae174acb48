"""Storing a job's events: contacts resolved in one query, rows inserted in one transaction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, insert, or_, select

from shared import errors
from shared.clock import parse_iso_ms, utcnow
from shared.db import delete_failed, insert_ignoring_duplicates, record_failures, transaction
from shared.models import contacts, events, failed_event_attempts, failed_events
from shared.partitions import make_room
from shared.queue import Event
from shared.settings import Settings


@dataclass
class BatchOutcome:
    stored: list[Event] = field(default_factory=list)
    contacts: dict[str, str] = field(default_factory=dict)  # stored event id -> contact id
    # Rows actually added: fewer than `stored` when a redelivered job met its own rows.
    inserted: int = 0
    failed: list[tuple[Event, errors.EventpipeError]] = field(default_factory=list)
    # Set by store_apart: insert attempts made, statement timeouts spent, and the parts left
    # untried when the job's time ran short (to be handed off as jobs of their own).
    attempts: int = 0
    timeouts: int = 0
    left: list[list[Event]] = field(default_factory=list)

    def add(self, other: BatchOutcome) -> None:
        self.stored += other.stored
        self.contacts.update(other.contacts)
        self.inserted += other.inserted
        self.failed += other.failed


def store_apart(
    engine: Engine,
    batch: Sequence[Event],
    *,
    replay: bool = False,
    timeouts: tuple[int, int] = (0, 0),
    time_left: Callable[[], bool] = lambda: True,
    settings: Settings | None = None,
) -> BatchOutcome:
    """store_batch; and when the store refuses the batch (not an outage), its halves apart,
    until each refused event is alone: every storable event is stored and each refused one
    is recorded failed with the database's words. One refused event of n costs at most
    1 + 2*ceil(log2 n) attempts. A statement timeout is tried again while `timeouts` (spent,
    allowed) has some left, then counts as a refusal. Parts not tried once `time_left()`
    says no are left in `outcome.left`."""
    outcome = BatchOutcome(timeouts=timeouts[0])
    parts = [list({e["id"]: e for e in batch}.values())]
    refused: list[tuple[Event, errors.StoreRefused]] = []
    room_made = False
    while parts and (outcome.attempts == 0 or time_left()):
        part = parts.pop()
        outcome.attempts += 1
        try:
            outcome.add(store_batch(engine, part, replay=replay))
        except errors.PartitionMissing:
            if room_made or settings is None:
                raise
            room_made = True
            rest = _make_room(engine, part, settings, outcome)
            if rest:
                parts.append(rest)
        except errors.StoreRefused as exc:
            if isinstance(exc, errors.StoreTimeout) and outcome.timeouts < timeouts[1]:
                outcome.timeouts += 1
                parts.append(part)
            elif len(part) == 1:
                refused.append((part[0], exc))
            else:
                parts += [part[len(part) // 2 :], part[: len(part) // 2]]
    outcome.left = parts
    record_refusals(engine, refused, outcome)
    return outcome


def _make_room(
    engine: Engine, part: list[Event], settings: Settings, outcome: BatchOutcome
) -> list[Event]:
    """The partitions the part needs, made; its events past retention failed as such.
    Returns the events to try again. A store that cannot make them now (a lock, a right
    missing) is an outage: the job goes back to the queue and the worker waits."""
    moments = {e["id"]: parse_iso_ms(e["createdAt"]) for e in part}
    try:
        expired = make_room(engine, moments.values(), settings)
    except errors.EventpipeError as exc:
        raise errors.PartitionMissing(f"Could not create a partition: {exc.message}") from exc
    error = errors.past_retention(settings.events_retention)
    failed = [(e, error) for e in part if moments[e["id"]] in expired]
    record_failed(engine, failed)
    outcome.failed += failed
    return [e for e in part if moments[e["id"]] not in expired]


def record_refusals(
    engine: Engine, refused: Sequence[tuple[Event, errors.StoreRefused]], outcome: BatchOutcome
) -> None:
    """The refused events, each failed on its own, in a transaction of their own. Should the
    store refuse even that, the error rises and RQ keeps the job (its events in Redis)."""
    failed = [(event, exc.failure()) for event, exc in refused]
    record_failed(engine, failed)
    outcome.failed += failed


def record_failed(engine: Engine, failed: Sequence[tuple[Event, errors.EventpipeError]]) -> None:
    """Failed events recorded (each failure counted in its attempts) in one transaction."""
    if not failed:
        return
    now = utcnow()
    with transaction(engine) as conn:
        record_failures(conn, failed_events, [_failure_row(e, err, now) for e, err in failed])
        conn.execute(
            insert(failed_event_attempts), [_attempt_row(e, err, now) for e, err in failed]
        )


def store_batch(engine: Engine, batch: Sequence[Event], *, replay: bool = False) -> BatchOutcome:
    """Insert the events whose contact exists; record the others as failed.

    Idempotent: the event id is the primary key and the insert ignores duplicates, so a job
    that runs twice stores each event once.
    """
    outcome = BatchOutcome()
    # An event can come twice in one batch (a job and a copy of it claimed together); one
    # statement must not touch a row twice.
    batch = list({e["id"]: e for e in batch}.values())
    with transaction(engine) as conn:
        resolved = resolve_contacts(batch, conn=conn)
        now = utcnow()
        rows = []
        for event in batch:
            contact_id = resolved.get(event["id"])
            if contact_id is None:
                outcome.failed.append((event, errors.contact_not_found_for_event()))
            else:
                outcome.stored.append(event)
                outcome.contacts[event["id"]] = contact_id
                rows.append(event_row(event, contact_id, now))
        outcome.inserted = insert_ignoring_duplicates(conn, events, rows)
        record_failures(
            conn, failed_events, [_failure_row(e, err, now) for e, err in outcome.failed]
        )
        if outcome.failed:
            conn.execute(
                insert(failed_event_attempts),
                [_attempt_row(e, err, now) for e, err in outcome.failed],
            )
        if replay:
            delete_failed(
                failed_events, [r["id"] for r in rows], conn=conn
            )  # stored now: failed no more
    return outcome


def resolve_contacts(batch: Sequence[Event], *, conn: Connection) -> dict[str, str]:
    """event id -> contact id, for the events whose contact exists in their project.

    `contactId` wins over `email` when both are given: an event with an unknown contactId is
    not resolved by its email.
    """
    ids = {e["contactId"] for e in batch if e.get("contactId")}
    emails = {_email(e) for e in batch if not e.get("contactId") and e.get("email")}
    conditions = []
    if ids:
        conditions.append(contacts.c.id.in_(ids))
    if emails:
        conditions.append(contacts.c.email.in_(emails))
    if not conditions:
        return {}
    project_ids = {e["projectId"] for e in batch}
    query = select(contacts.c.id, contacts.c.project_id, contacts.c.email).where(
        contacts.c.project_id.in_(project_ids), or_(*conditions)
    )
    by_id: dict[tuple[str, str], str] = {}
    by_email: dict[tuple[str, str], str] = {}
    for row in conn.execute(query):
        by_id[(row.project_id, row.id)] = row.id
        by_email[(row.project_id, row.email)] = row.id
    resolved: dict[str, str] = {}
    for e in batch:
        if e.get("contactId"):
            found = by_id.get((e["projectId"], e["contactId"]))
        else:
            found = by_email.get((e["projectId"], _email(e)))
        if found is not None:
            resolved[e["id"]] = found
    return resolved


def _email(event: Event) -> str:
    # Events from the API are normalised already; a version-1 producer's may not be.
    return str(event["email"]).strip().lower()


def event_row(event: Event, contact_id: str, now: Any) -> dict[str, Any]:
    return {
        "id": event["id"],
        "project_id": event["projectId"],
        "contact_id": contact_id,
        "event_name": event["eventName"],
        "properties": event["properties"],
        "created_at": parse_iso_ms(event["createdAt"]),
        "stored_at": now,
    }


def _failure_row(event: Event, error: errors.EventpipeError, now: Any) -> dict[str, Any]:
    return {
        "id": event["id"],
        "project_id": event["projectId"],
        "event_name": event["eventName"],
        "payload": event,
        "code": error.code,
        "message": error.message,
        "attempts": 1,
        "created_at": parse_iso_ms(event["createdAt"]),
        "failed_at": now,
    }


def _attempt_row(event: Event, error: errors.EventpipeError, now: Any) -> dict[str, Any]:
    return {"event_id": event["id"], "code": error.code, "message": error.message, "failed_at": now}
