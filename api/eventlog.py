"""A contact's event log: newest first, paged by the database-assigned sequence.

Pages are cut by `seq`, not by `createdAt`: `createdAt` is the acceptance time at the edge and
rows arrive out of that order, so a page boundary by time would skip or repeat events that
land meanwhile. A cursor is the last `seq` a page showed; the next page is everything older.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from api.coercion import CoercionError, parse_date
from api.definitions import MAX_NAME_LENGTH, NAME_CHARS
from shared.clock import aware, iso_ms
from shared.errors import ValidationFailed
from shared.models import events

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_CURSOR_PREFIX = "s:"
_LIMIT = re.compile(r"[0-9]{1,4}")
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,40}")
_CURSOR_TEXT = re.compile(r"s:([0-9]{1,19})")
_MAX_SEQ = 2**63 - 1  # the column is a bigint


@dataclass(frozen=True)
class LogQuery:
    limit: int = DEFAULT_LIMIT
    before_seq: int | None = None
    event_name: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive


def _fail(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, details=[{"field": field, "message": message}])


def parse_query(params: Mapping[str, str]) -> LogQuery:
    """The query string of GET /v1/contacts/{id}/events, checked."""
    raw_limit = params.get("limit", str(DEFAULT_LIMIT))
    # ASCII digits, few of them, before int(): str.isdigit() takes "²" and "٣".
    if not _LIMIT.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise _fail("limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
    cursor = params.get("cursor")
    return LogQuery(
        limit=int(raw_limit),
        before_seq=decode_cursor(cursor) if cursor else None,
        event_name=_event_name(params.get("eventName")),
        since=_moment(params, "since"),
        until=_moment(params, "until"),
    )


def _event_name(value: str | None) -> str | None:
    if not value:
        return None
    if len(value) > MAX_NAME_LENGTH or not NAME_CHARS.fullmatch(value):
        raise _fail("eventName", "eventName must be 1..64 letters, digits or underscores")
    return value


def _moment(params: Mapping[str, str], name: str) -> datetime | None:
    text = params.get(name)
    if not text:
        return None
    try:
        return parse_date(text)
    except CoercionError as exc:
        raise _fail(name, f"{name} must be an RFC 3339 date or date-time") from exc


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The `seq` of a cursor encode_cursor made; 400 for anything else (checked in full:
    base64url characters only, then `s:` and 1 to 19 ASCII digits within a bigint)."""
    text = ""
    if _CURSOR.fullmatch(cursor):
        padded = cursor + "=" * (-len(cursor) % 4)
        try:
            text = base64.b64decode(padded, altchars=b"-_", validate=True).decode("ascii")
        except (binascii.Error, UnicodeDecodeError):
            pass
    found = _CURSOR_TEXT.fullmatch(text)
    if found is None or int(found.group(1)) > _MAX_SEQ:
        raise _fail("cursor", "cursor is not one this API gave out")
    return int(found.group(1))


def statement(project_id: str, contact_id: str, query: LogQuery) -> Any:
    """Served by ix_events_project_contact_seq (or ..._name_seq with eventName), read
    backwards: the first `limit + 1` index entries, whatever the contact's log size."""
    c = events.c
    stmt = select(events).where(c.project_id == project_id, c.contact_id == contact_id)
    if query.event_name is not None:
        stmt = stmt.where(c.event_name == query.event_name)
    if query.before_seq is not None:
        stmt = stmt.where(c.seq < query.before_seq)
    if query.since is not None:
        stmt = stmt.where(c.created_at >= query.since)
    if query.until is not None:
        stmt = stmt.where(c.created_at < query.until)
    # One row more than asked tells whether there is a next page.
    return stmt.order_by(c.seq.desc()).limit(query.limit + 1)


def read_page(
    project_id: str, contact_id: str, query: LogQuery, *, conn: Connection
) -> dict[str, Any]:
    rows = conn.execute(statement(project_id, contact_id, query)).all()
    page = rows[: query.limit]
    more = len(rows) > query.limit
    return {
        "events": [stored_json(r) for r in page],
        "nextCursor": encode_cursor(page[-1].seq) if more else None,
    }


def stored_json(row: Any) -> dict[str, Any]:
    """A stored event as GET /v1/events/{id} shows it."""
    return {
        "id": row.id,
        "eventName": row.event_name,
        "contactId": row.contact_id,
        "properties": row.properties,
        "createdAt": iso_ms(aware(row.created_at)),
        "status": "stored",
    }
