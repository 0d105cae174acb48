"""Store functions shared by the API and the CLI. Each takes `conn` and never commits:
the caller owns the transaction (shared.db.transaction)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from api.contacts import MAX_CUSTOM_FIELDS
from api.definitions import Definition, DefinitionSpec
from api.eventlog import stored_json
from api.keys import NewKey, generate_key
from api.limits import ProjectLimits, load_limits
from shared import errors
from shared.clock import aware, iso_ms, utcnow
from shared.errors import Conflict, EventpipeError, NotFound, ValidationFailed
from shared.ids import id_time, new_id
from shared.models import (
    JsonType,
    api_keys,
    contacts,
    event_definitions,
    events,
    failed_events,
    projects,
)
from shared.settings import MAX_DEFINITIONS_PER_PROJECT

# --- projects and keys -------------------------------------------------------------------


def create_project(name: str, *, conn: Connection) -> tuple[str, NewKey]:
    project_id = new_id()
    conn.execute(insert(projects).values(id=project_id, name=name, created_at=utcnow()))
    return project_id, create_key(project_id, conn=conn)


def list_projects(*, conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(select(projects).order_by(projects.c.created_at)).all()
    return [{"id": r.id, "name": r.name, "createdAt": aware(r.created_at)} for r in rows]


def create_key(project_id: str, *, conn: Connection) -> NewKey:
    if conn.execute(select(projects.c.id).where(projects.c.id == project_id)).first() is None:
        raise NotFound(f"Project {project_id} not found")
    key = generate_key()
    conn.execute(
        insert(api_keys).values(
            id=key.key_id, project_id=project_id, secret_hash=key.secret_hash, created_at=utcnow()
        )
    )
    return key


def list_keys(project_id: str, *, conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(api_keys).where(api_keys.c.project_id == project_id).order_by(api_keys.c.created_at)
    ).all()
    return [
        {
            "id": r.id,
            "projectId": r.project_id,
            "createdAt": aware(r.created_at),
            "revokedAt": aware(r.revoked_at) if r.revoked_at else None,
        }
        for r in rows
    ]


def revoke_key(key_id: str, *, conn: Connection) -> None:
    result = conn.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    if result.rowcount == 0:
        raise NotFound(f"No active key {key_id}")


@dataclass(frozen=True)
class ConfigSnapshot:
    """What the send path needs from the store, loaded whole so a request never runs SQL."""

    keys: dict[str, tuple[str, str]]  # key id -> (project id, secret hash), active keys only
    definitions: dict[tuple[str, str], Definition]  # (project id, event name) -> definition
    # project id -> its fair-share limits, for the projects that have any set
    limits: dict[str, ProjectLimits] = field(default_factory=dict)


def load_snapshot(*, conn: Connection) -> ConfigSnapshot:
    keys = {
        r.id: (r.project_id, r.secret_hash)
        for r in conn.execute(
            select(api_keys.c.id, api_keys.c.project_id, api_keys.c.secret_hash).where(
                api_keys.c.revoked_at.is_(None)
            )
        )
    }
    rows = conn.execute(select(event_definitions).where(event_definitions.c.deleted_at.is_(None)))
    definitions = {(r.project_id, r.event_name): Definition.from_row(r) for r in rows}
    return ConfigSnapshot(keys, definitions, load_limits(conn=conn))


# --- event definitions -------------------------------------------------------------------


def create_definition(project_id: str, spec: DefinitionSpec, *, conn: Connection) -> Definition:
    active = event_definitions.c.deleted_at.is_(None)
    base = select(func.count()).where(event_definitions.c.project_id == project_id, active)
    if conn.execute(base.where(event_definitions.c.event_name == spec.event_name)).scalar():
        raise event_already_exists()
    if (conn.execute(base).scalar() or 0) >= MAX_DEFINITIONS_PER_PROJECT:
        raise errors.ValidationFailed(
            f"Maximum number of events ({MAX_DEFINITIONS_PER_PROJECT}) reached for this project.",
            code="MAX_EVENTS_REACHED",
        )
    now = utcnow()
    row = {
        "id": new_id(),
        "project_id": project_id,
        "event_name": spec.event_name,
        "description": spec.description,
        "properties": spec.properties,
        "created_at": now,
        "updated_at": now,
    }
    try:
        with conn.begin_nested():
            conn.execute(insert(event_definitions).values(**row))
    except IntegrityError as exc:  # a concurrent create of the same name won the race
        raise event_already_exists() from exc
    return Definition.from_row(SimpleNamespace(**row))


def event_already_exists() -> EventpipeError:
    return Conflict("Event already exists", code="EVENT_ALREADY_EXISTS")


def _active_definition(project_id: str, event_name: str) -> Any:
    return (
        event_definitions.c.project_id == project_id,
        event_definitions.c.event_name == event_name,
        event_definitions.c.deleted_at.is_(None),
    )


def list_definitions(project_id: str, *, conn: Connection) -> list[Definition]:
    rows = conn.execute(
        select(event_definitions)
        .where(
            event_definitions.c.project_id == project_id, event_definitions.c.deleted_at.is_(None)
        )
        .order_by(event_definitions.c.created_at.desc(), event_definitions.c.id.desc())
    )
    return [Definition.from_row(r) for r in rows]


def get_definition(project_id: str, event_name: str, *, conn: Connection) -> Definition:
    row = conn.execute(
        select(event_definitions).where(*_active_definition(project_id, event_name))
    ).first()
    if row is None:
        raise errors.event_not_found()
    return Definition.from_row(row)


def update_definition(
    project_id: str, event_name: str, changes: dict[str, Any], *, conn: Connection
) -> Definition:
    result = conn.execute(
        update(event_definitions)
        .where(*_active_definition(project_id, event_name))
        .values(**changes, updated_at=utcnow())
    )
    if result.rowcount == 0:
        raise errors.event_not_found()
    return get_definition(project_id, event_name, conn=conn)


def delete_definition(project_id: str, event_name: str, *, conn: Connection) -> None:
    """Soft delete: stored events keep their name; the name is free to be created again."""
    now = utcnow()
    result = conn.execute(
        update(event_definitions)
        .where(*_active_definition(project_id, event_name))
        .values(deleted_at=now, updated_at=now)
    )
    if result.rowcount == 0:
        raise errors.event_not_found()


def definition_json(d: Definition) -> dict[str, Any]:
    return {
        "id": d.id,
        "eventName": d.event_name,
        "description": d.description,
        "properties": d.properties,
        "projectId": d.project_id,
        "createdAt": iso_ms(aware(d.created_at)),
        "updatedAt": iso_ms(aware(d.updated_at)),
    }


# --- contacts ----------------------------------------------------------------------------


def get_contact_row(project_id: str, email: str, *, conn: Connection) -> Any:
    return conn.execute(
        select(contacts).where(contacts.c.project_id == project_id, contacts.c.email == email)
    ).first()


def upsert_contact(
    project_id: str, email: str, changes: dict[str, Any], *, conn: Connection
) -> Any:
    """Create or update the contact with this (normalised) email; returns the row.

    `changes` holds the columns to set (first_name, last_name, user_id) and `custom_fields`,
    merged into the stored ones. One INSERT ... ON CONFLICT DO UPDATE: atomic against a
    concurrent create or delete of the same email (a read-then-write lost such races).
    """
    now = utcnow()
    columns = {k: v for k, v in changes.items() if k != "custom_fields"}
    stmt = _dialect_insert(conn)(contacts).values(
        id=new_id(),
        project_id=project_id,
        email=email,
        custom_fields=changes.get("custom_fields", {}),
        created_at=now,
        updated_at=now,
        **columns,
    )
    incoming = stmt.excluded
    merged = _json_merge(conn, contacts.c.custom_fields, incoming.custom_fields)
    stmt = stmt.on_conflict_do_update(
        index_elements=["project_id", "email"],
        set_={
            **{k: incoming[k] for k in columns},
            "custom_fields": merged,
            "updated_at": incoming.updated_at,
        },
        # In the statement, so that two racing upserts cannot both pass the cap.
        where=_json_key_count(conn, merged) <= MAX_CUSTOM_FIELDS,
    )
    row = conn.execute(stmt.returning(*contacts.c)).first()
    if row is None:  # the cap refused the update (psycopg's rowcount does not show it)
        message = f"customFields would hold more than {MAX_CUSTOM_FIELDS} keys once merged"
        raise ValidationFailed(message, details=[{"field": "customFields", "message": message}])
    return row


def _dialect_insert(conn: Connection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def _json_key_count(conn: Connection, document: Any) -> Any:
    keys = func.jsonb_object_keys if conn.dialect.name == "postgresql" else func.json_each
    return select(func.count()).select_from(keys(document).table_valued("key")).scalar_subquery()


def _json_merge(conn: Connection, stored: Any, incoming: Any) -> Any:
    """The stored custom fields with the incoming ones over them (flat objects of scalars)."""
    if conn.dialect.name == "postgresql":
        return stored.op("||", return_type=JsonType)(incoming)
    return func.json_patch(stored, incoming)


def create_contact(
    project_id: str, email: str, changes: dict[str, Any], *, conn: Connection
) -> Any:
    now = utcnow()
    row = {
        "id": new_id(),
        "project_id": project_id,
        "email": email,
        "custom_fields": {},
        **changes,
        "created_at": now,
        "updated_at": now,
    }
    try:
        with conn.begin_nested():
            conn.execute(insert(contacts).values(**row))
    except IntegrityError as exc:  # the unique (project, email) index, also under a race
        raise Conflict("Contact already exists", code="CONTACT_ALREADY_EXISTS") from exc
    return get_contact_row(project_id, email, conn=conn)


def get_contact(project_id: str, contact_id: str, *, conn: Connection) -> Any:
    row = conn.execute(
        select(contacts).where(contacts.c.project_id == project_id, contacts.c.id == contact_id)
    ).first()
    if row is None:
        raise errors.contact_not_found()
    return row


def find_contacts_by_email(project_id: str, emails: list[str], *, conn: Connection) -> list[Any]:
    """The contacts of these (normalised) emails, in the order asked; unknown ones left out."""
    rows = conn.execute(
        select(contacts).where(contacts.c.project_id == project_id, contacts.c.email.in_(emails))
    ).all()
    by_email = {r.email: r for r in rows}
    return [by_email[e] for e in emails if e in by_email]


def delete_contacts(project_id: str, condition: Any, *, conn: Connection) -> int:
    """Delete the project's contacts matching `condition`, with their stored events and the
    failed events that name them: a deleted contact is forgotten, not orphaned."""
    doomed = conn.execute(
        select(contacts.c.id, contacts.c.email).where(
            contacts.c.project_id == project_id, condition
        )
    ).all()
    if not doomed:
        return 0
    ids = [r.id for r in doomed]
    emails = [r.email for r in doomed]
    conn.execute(
        delete(events).where(events.c.project_id == project_id, events.c.contact_id.in_(ids))
    )
    conn.execute(
        delete(failed_events).where(
            failed_events.c.project_id == project_id,
            or_(
                failed_events.c.payload["contactId"].as_string().in_(ids),
                failed_events.c.payload["email"].as_string().in_(emails),
            ),
        )
    )
    conn.execute(delete(contacts).where(contacts.c.id.in_(ids)))
    return len(ids)


def contact_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "email": row.email,
        "firstName": row.first_name,
        "lastName": row.last_name,
        "userId": row.user_id,
        "customFields": row.custom_fields,
        "projectId": row.project_id,
        "createdAt": iso_ms(aware(row.created_at)),
        "updatedAt": iso_ms(aware(row.updated_at)),
    }


# --- the event log -----------------------------------------------------------------------


# An event's createdAt is read from the clock just after its id is made (api/schema.py), so it
# lies within a day of the id's own time even across a clock step: bounding created_at by it
# lets PostgreSQL look in one partition of `events` (two near a boundary), not in all.
ID_TIME_MARGIN = timedelta(days=1)


def stored_event_query(project_id: str, event_id: str) -> Any:
    """The stored event: the primary key (id, created_at) with created_at bounded."""
    moment = id_time(event_id)
    c = events.c
    return select(events).where(
        c.id == event_id,
        c.project_id == project_id,
        c.created_at >= moment - ID_TIME_MARGIN,
        c.created_at < moment + ID_TIME_MARGIN,
    )


def find_outcome(project_id: str, event_id: str, *, conn: Connection) -> dict[str, Any] | None:
    """The stored or failed record of an event of this project, or None."""
    row = conn.execute(stored_event_query(project_id, event_id)).first()
    if row is not None:
        return stored_json(row)
    failed = conn.execute(
        select(failed_events).where(
            failed_events.c.id == event_id, failed_events.c.project_id == project_id
        )
    ).first()
    if failed is None:
        return None
    return {
        **queued_view(failed.payload),
        "status": "failed",
        # A store refusal's message is the database's, which may quote values: operators
        # read it (`eventpipe failed show`, the admin API); clients get a generic one.
        "error": {
            "code": failed.code,
            "message": errors.CLIENT_MESSAGES.get(failed.code, failed.message),
        },
    }


def stored_view(event: dict[str, Any], contact_id: str) -> dict[str, Any]:
    """AutoSend's synchronous answer: the stored record (`Prefer: wait`'s 201)."""
    return {**queued_view(event), "contactId": contact_id}


def queued_view(event: dict[str, Any]) -> dict[str, Any]:
    """The public view of an accepted event (the 202 body's `data`, without status)."""
    return {
        "id": event["id"],
        "eventName": event["eventName"],
        "contactId": event.get("contactId"),
        "properties": event["properties"],
        "createdAt": event["createdAt"],
    }
