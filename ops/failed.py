"""Failed events as operators see them: filters, listing, one event's history, purging.

PostgreSQL (`failed_events`, `failed_event_attempts`) is the record: it outlives RQ's failed
registry, whose entries expire after FAILURE_TTL. Pages and replays walk the table by event
id (ObjectId-style, so id order is acceptance order), which keeps a page stable while rows
fail again or go away under it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Select, func, select

from shared.clock import aware, iso_ms, parse_rfc3339, utcnow
from shared.db import delete_failed, transaction
from shared.errors import NotFound, ValidationFailed
from shared.ids import is_id
from shared.models import failed_event_attempts, failed_events
from shared.queue import JobQueue, forget_failed_jobs

MAX_PAGE = 1000
# ASCII digits, at most 10 of them (\d takes any script's digits; int() of a bound).
_RELATIVE = re.compile(r"([0-9]{1,10})([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
# The longest "time ago" taken: further back than any failure kept can be.
MAX_AGO = timedelta(days=3650)


@dataclass(frozen=True)
class FailedFilter:
    """Which failed events an operation applies to; every field narrows, none means all."""

    code: str | None = None
    event_name: str | None = None
    project_id: str | None = None
    since: datetime | None = None  # last failure at or after
    until: datetime | None = None  # last failure before
    ids: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (
            self.code or self.event_name or self.project_id or self.since or self.until or self.ids
        )

    def conditions(self) -> list[ColumnElement[bool]]:
        c = failed_events.c
        found: list[ColumnElement[bool]] = []
        if self.code:
            found.append(c.code == self.code)
        if self.event_name:
            found.append(c.event_name == self.event_name)
        if self.project_id:
            found.append(c.project_id == self.project_id)
        if self.since:
            found.append(c.failed_at >= self.since)
        if self.until:
            found.append(c.failed_at < self.until)
        if self.ids:
            found.append(c.id.in_(self.ids))
        return found


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """An RFC 3339 date or date-time (no offset means UTC), or a time ago: `90s`, `30m`,
    `2h`, `7d`."""
    text = text.strip()
    relative = _RELATIVE.fullmatch(text)
    if relative:
        amount, unit = int(relative.group(1)), _UNITS[relative.group(2)]
        if amount > MAX_AGO / timedelta(**{unit: 1}):
            raise ValidationFailed(f"A time ago must be at most {MAX_AGO.days} days")
        return (now or utcnow()) - timedelta(**{unit: amount})
    try:
        return parse_rfc3339(text)  # the `date` type's rules: RFC 3339 only
    except ValueError as exc:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise ValidationFailed(
            f"{shown!r} is not a time: use 2026-05-08, 2026-05-08T13:45:00Z or 2h (ago)"
        ) from exc


def check_ids(ids: Sequence[str]) -> tuple[str, ...]:
    bad = [i for i in ids if not is_id(i)]
    if bad:
        shown = bad[0] if len(bad[0]) <= 40 else bad[0][:37] + "..."
        raise ValidationFailed(f"Not an event id (24 hex characters): {shown!r}")
    return tuple(dict.fromkeys(ids))


def _select(flt: FailedFilter) -> Select[Any]:
    return select(failed_events).where(*flt.conditions())


def count_failed(flt: FailedFilter, *, conn: Connection) -> int:
    query = select(func.count()).select_from(failed_events).where(*flt.conditions())
    return int(conn.execute(query).scalar() or 0)


def failed_counts(flt: FailedFilter, *, conn: Connection, top: int = 50) -> dict[str, Any]:
    """How many match `flt`, by code and by event name (the `top` biggest of each)."""
    found: dict[str, Any] = {"total": count_failed(flt, conn=conn)}
    for label, column in (
        ("byCode", failed_events.c.code),
        ("byEventName", failed_events.c.event_name),
    ):
        query = (
            select(column, func.count().label("n"))
            .where(*flt.conditions())
            .group_by(column)
            .order_by(func.count().desc(), column)
            .limit(top)
        )
        found[label] = [{"name": name, "count": int(n)} for name, n in conn.execute(query)]
    return found


def list_failed(
    flt: FailedFilter, limit: int, *, before: str | None = None, conn: Connection
) -> list[dict[str, Any]]:
    """Newest accepted first, `limit` rows from below the id `before` (the page cursor)."""
    query = _select(flt).order_by(failed_events.c.id.desc()).limit(limit)
    if before:
        query = query.where(failed_events.c.id < before)
    return [failed_json(r) for r in conn.execute(query)]


def page_ascending(
    flt: FailedFilter, limit: int, *, after: str | None, conn: Connection
) -> list[Any]:
    """Rows in id order after `after`: how replay and purge walk the table."""
    query = _select(flt).order_by(failed_events.c.id).limit(limit)
    if after:
        query = query.where(failed_events.c.id > after)
    return list(conn.execute(query))


def failed_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "projectId": row.project_id,
        "eventName": row.event_name,
        "code": row.code,
        "message": row.message,
        "attempts": row.attempts,
        "createdAt": iso_ms(aware(row.created_at)),
        "failedAt": iso_ms(aware(row.failed_at)),
    }


def show_failed(event_id: str, *, conn: Connection) -> dict[str, Any]:
    """One failed event: its summary, the queued payload and every failure in order."""
    row = conn.execute(select(failed_events).where(failed_events.c.id == event_id)).first()
    if row is None:
        raise NotFound(f"No failed event {event_id}")
    attempts = conn.execute(
        select(failed_event_attempts)
        .where(failed_event_attempts.c.event_id == event_id)
        .order_by(failed_event_attempts.c.seq)
    )
    history = [
        {"code": a.code, "message": a.message, "failedAt": iso_ms(aware(a.failed_at))}
        for a in attempts
    ]
    return {**failed_json(row), "payload": row.payload, "history": history}


def purge_failed(flt: FailedFilter, queue: JobQueue, engine: Engine, chunk: int = 500) -> int:
    """Delete the matching failure records (PostgreSQL and RQ), a chunk per transaction."""
    purged = 0
    after: str | None = None
    while True:
        with transaction(engine) as conn:
            ids = [r.id for r in page_ascending(flt, chunk, after=after, conn=conn)]
            delete_failed(failed_events, ids, conn=conn)
        if not ids:
            return purged
        forget_failed_jobs(queue, ids)
        purged += len(ids)
        after = ids[-1]
