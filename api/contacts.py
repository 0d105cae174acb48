"""Checks of a contact body (pure): the same email rules as the send path."""

from __future__ import annotations

from typing import Any

from api.emails import InvalidEmail, normalize_email
from shared.errors import ValidationFailed

TEXT_FIELDS = {"firstName": "first_name", "lastName": "last_name", "userId": "user_id"}
MAX_TEXT = 200
MAX_CUSTOM_FIELDS = 100  # per request, and on a contact after merging (api/store.py)
MAX_CUSTOM_KEY = 100  # characters of a custom field's name
MAX_CUSTOM_VALUE = 1000  # characters of a custom field's string value
MAX_EMAILS = 1000  # POST /v1/contacts/search/emails and /remove
MAX_BULK_CONTACTS = 100  # POST /v1/contacts/bulk-update


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
        if len(key) > MAX_CUSTOM_KEY:
            raise _fail(
                "customFields", f"custom field names must be at most {MAX_CUSTOM_KEY} characters"
            )
        if not isinstance(item, str | int | float | bool) or (
            isinstance(item, float) and item != item
        ):
            raise _fail(
                f"customFields.{key}", "custom field values must be strings, numbers or booleans"
            )
        if isinstance(item, str) and len(item) > MAX_CUSTOM_VALUE:
            raise _fail(
                f"customFields.{key}",
                f"custom field values must be at most {MAX_CUSTOM_VALUE} characters",
            )
    return dict(value)


def check_email_list(body: dict[str, Any]) -> list[str]:
    """`emails`: 1..1000 addresses, each checked and normalised as on the send path."""
    value = body.get("emails")
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_EMAILS:
        raise _fail("emails", f"emails must be an array of 1..{MAX_EMAILS} email addresses")
    details: list[dict[str, str]] = []
    emails: list[str] = []
    for index, item in enumerate(value):
        try:
            emails.append(check_email(item))
        except ValidationFailed:
            details.append({"field": f"emails[{index}]", "message": "must be a valid email"})
    if details:
        raise ValidationFailed("Validation failed", details=details)
    return list(dict.fromkeys(emails))


def check_bulk_contacts(body: dict[str, Any]) -> list[Any]:
    """`contacts`: 1..100 items; each item is checked on its own by the caller, so one bad
    item does not refuse the others."""
    value = body.get("contacts")
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_BULK_CONTACTS:
        raise _fail("contacts", f"contacts must be an array of 1..{MAX_BULK_CONTACTS} contacts")
    return value


def check_contact(item: Any) -> tuple[str, dict[str, Any]]:
    """(normalised email, column changes) of one contact body."""
    if not isinstance(item, dict):
        raise ValidationFailed("Each contact must be a JSON object")
    return check_email(item.get("email")), check_contact_changes(item)
