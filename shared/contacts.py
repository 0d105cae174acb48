"""Checks of a contact body (pure): the same email rules as the send path."""

from __future__ import annotations

from typing import Any

from shared.emails import InvalidEmail, normalize_email
from shared.errors import ValidationFailed

TEXT_FIELDS = {"firstName": "first_name", "lastName": "last_name", "userId": "user_id"}
MAX_TEXT = 200
MAX_CUSTOM_FIELDS = 100


def _fail(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, details=[{"field": field, "message": message}])


def check_email(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail("email", "email is required and must be a string")
    try:
        return normalize_email(value)
    except InvalidEmail as exc:
        raise _fail("email", "email must be a valid email address") from exc


def check_contact_changes(body: dict[str, Any]) -> dict[str, Any]:
    """Columns to set: `""` clears a text field, null or absent leaves it; customFields are
    merged by the store."""
    changes: dict[str, Any] = {}
    for field, column in TEXT_FIELDS.items():
        value = body.get(field)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise _fail(field, f"{field} must be a string of at most {MAX_TEXT} characters")
        changes[column] = value or None
    custom = body.get("customFields")
    if custom is not None:
        changes["custom_fields"] = _check_custom_fields(custom)
    return changes


def _check_custom_fields(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or len(value) > MAX_CUSTOM_FIELDS:
        raise _fail(
            "customFields", f"customFields must be an object of at most {MAX_CUSTOM_FIELDS} keys"
        )
    for key, item in value.items():
        if not isinstance(item, str | int | float | bool) or (
            isinstance(item, float) and item != item
        ):
            raise _fail(
                f"customFields.{key}", "custom field values must be strings, numbers or booleans"
            )
    return dict(value)
