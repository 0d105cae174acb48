"""The send path's checks, in the contract's order, and the accepted event they produce.

Pure: no I/O. The API runs this on the event loop with definitions from its in-process cache;
anything that needs the store (the contact) is the worker's job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from api.coercion import CoercionError, coerce_value
from api.definitions import Definition
from api.emails import InvalidEmail, normalize_email
from shared import errors
from shared.clock import now_iso_ms
from shared.errors import ValidationFailed
from shared.ids import new_id
from shared.queue import Event

FindDefinition = Callable[[str], Definition | None]


def check_send(body: Any, project_id: str, find_definition: FindDefinition) -> Event:
    """Validate one send body; return the event to enqueue or raise the first failure."""
    if not isinstance(body, dict):
        raise ValidationFailed("Request body must be a JSON object")
    event_name = body.get("eventName")
    if not isinstance(event_name, str):
        raise _field_error("eventName", "eventName is required and must be a string")
    email, contact_id = _check_contact(body.get("email"), body.get("contactId"))
    raw_props = body.get("eventProperties")
    if raw_props is not None and not isinstance(raw_props, dict):
        raise _field_error("eventProperties", "eventProperties must be an object")
    definition = find_definition(event_name)
    if definition is None:
        raise errors.event_not_found()
    properties = coerce_properties(definition, raw_props or {})
    return {
        "id": new_id(),
        "projectId": project_id,
        "eventName": event_name,
        "email": email,
        "contactId": contact_id,
        "properties": properties,
        "createdAt": now_iso_ms(),
    }


def _field_error(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, details=[{"field": field, "message": message}])


def _present(value: Any) -> bool:
    # Emails are trimmed before anything else, so a blank one is no identifier at all.
    return value is not None and not (isinstance(value, str) and not value.strip())


def _check_contact(email: Any, contact_id: Any) -> tuple[str | None, str | None]:
    if not _present(email) and not _present(contact_id):
        raise errors.email_or_contact_id_required()
    normalized: str | None = None
    if _present(email):
        if not isinstance(email, str):
            raise _field_error("email", "email must be a string")
        try:
            normalized = normalize_email(email)
        except InvalidEmail as exc:
            raise _field_error("email", "email must be a valid email address") from exc
    checked_id: str | None = None
    if _present(contact_id):
        checked_id = contact_id.lower() if isinstance(contact_id, str) else None
        if checked_id is None or len(checked_id) != 24 or not _is_hex(checked_id):
            raise _field_error("contactId", "contactId must be 24 hexadecimal characters")
    return normalized, checked_id


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def coerce_properties(definition: Definition, raw: dict[str, Any]) -> dict[str, Any]:
    # Unknown names are all checked before any value: the contract orders the two checks.
    for name in raw:
        if name not in definition.types:
            raise errors.unknown_property(name, definition.event_name)
    coerced: dict[str, Any] = {}
    for name, value in raw.items():
        try:
            coerced[name] = coerce_value(definition.types[name], value)
        except CoercionError as exc:
            raise errors.invalid_property_value(name, exc.expected) from exc
    return coerced
