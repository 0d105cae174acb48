"""api.contacts: the email rule and the checks of a contact's changes."""

from __future__ import annotations

import math
from typing import Any

import pytest
from sqlalchemy import Engine

from api.contacts import (
    MAX_CUSTOM_FIELDS,
    MAX_CUSTOM_KEY,
    MAX_CUSTOM_VALUE,
    check_contact_changes,
    check_email,
)
from api.store import create_project, get_contact_row, upsert_contact
from shared.db import transaction
from shared.errors import EventpipeError
from shared.jsonio import OutOfRange

REQUIRED = "email is required and must be a string"
INVALID = "email must be a valid email address"
CUSTOM_VALUES = "custom field values must be strings, numbers or booleans"
CUSTOM_OBJECT = "customFields must be an object of at most 100 keys"


def failure(call: Any, arg: Any) -> EventpipeError:
    with pytest.raises(EventpipeError) as info:
        call(arg)
    exc = info.value
    assert (exc.status, exc.code) == (400, "VALIDATION_FAILED")
    return exc


# --- check_email ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("jane@example.com", "jane@example.com"),
        ("  Jane.Doe@Example.COM ", "jane.doe@example.com"),
        ("\tUSER+tag@Sub.Example.org\n", "user+tag@sub.example.org"),
    ],
)
def test_check_email_normalises(raw: str, expected: str) -> None:
    assert check_email(raw) == expected


@pytest.mark.parametrize("raw", [None, "", "   ", 5, True, ["a@b.io"], {"email": "a@b.io"}])
def test_check_email_required(raw: Any) -> None:
    exc = failure(check_email, raw)
    assert exc.message == REQUIRED
    assert exc.details == [{"field": "email", "message": REQUIRED}]


@pytest.mark.parametrize(
    "raw", ["jane", "jane@", "@example.com", "jane@example", "a b@example.com", "jané@example.com"]
)
def test_check_email_invalid(raw: str) -> None:
    exc = failure(check_email, raw)
    assert exc.message == INVALID
    assert exc.details == [{"field": "email", "message": INVALID}]


# --- check_contact_changes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "changes"),
    [
        ({}, {}),
        ({"email": "jane@example.com"}, {}),
        ({"firstName": "Jane"}, {"first_name": "Jane"}),
        ({"lastName": "Doe"}, {"last_name": "Doe"}),
        ({"userId": "u-1"}, {"user_id": "u-1"}),
        (
            {"firstName": "Jane", "lastName": "Doe", "userId": "u-1"},
            {"first_name": "Jane", "last_name": "Doe", "user_id": "u-1"},
        ),
        ({"firstName": ""}, {"first_name": None}),
        (
            {"firstName": "", "lastName": "", "userId": ""},
            {"first_name": None, "last_name": None, "user_id": None},
        ),
        ({"firstName": None}, {}),
        (
            {"firstName": None, "lastName": "Doe", "userId": ""},
            {"last_name": "Doe", "user_id": None},
        ),
        ({"firstName": "x" * 200}, {"first_name": "x" * 200}),
        ({"customFields": None}, {}),
        ({"customFields": {}}, {"custom_fields": {}}),
        (
            {"customFields": {"plan": "pro", "seats": 3, "ratio": 0.5, "vip": True, "x": False}},
            {"custom_fields": {"plan": "pro", "seats": 3, "ratio": 0.5, "vip": True, "x": False}},
        ),
        (
            {"customFields": {"signedUpAt": "2026-05-08T13:45:00.000Z"}},
            {"custom_fields": {"signedUpAt": "2026-05-08T13:45:00.000Z"}},
        ),
    ],
)
def test_changes(body: dict[str, Any], changes: dict[str, Any]) -> None:
    assert check_contact_changes(body) == changes


def test_absent_keys_left_out() -> None:
    changes = check_contact_changes({"lastName": "Doe"})
    assert set(changes) == {"last_name"}


def test_custom_fields_copied() -> None:
    custom = {"plan": "pro"}
    changes = check_contact_changes({"customFields": custom})
    custom["plan"] = "free"
    assert changes["custom_fields"] == {"plan": "pro"}


@pytest.mark.parametrize("field", ["firstName", "lastName", "userId"])
@pytest.mark.parametrize("value", [5, True, ["Jane"], {"a": 1}, "x" * 201])
def test_bad_text_field(field: str, value: Any) -> None:
    exc = failure(check_contact_changes, {field: value})
    message = f"{field} must be a string of at most 200 characters"
    assert exc.message == message
    assert exc.details == [{"field": field, "message": message}]


@pytest.mark.parametrize("value", [None, [1], {"a": 1}, math.nan, OutOfRange("1e400"), b"x"])
def test_custom_field_value_rejected(value: Any) -> None:
    exc = failure(check_contact_changes, {"customFields": {"ok": 1, "bad": value}})
    assert exc.message == CUSTOM_VALUES
    assert exc.details == [{"field": "customFields.bad", "message": CUSTOM_VALUES}]


@pytest.mark.parametrize("value", [[], ["a"], "plan=pro", "", 5, True])
def test_custom_fields_not_an_object(value: Any) -> None:
    exc = failure(check_contact_changes, {"customFields": value})
    assert exc.message == CUSTOM_OBJECT
    assert exc.details == [{"field": "customFields", "message": CUSTOM_OBJECT}]


def test_custom_fields_key_limit() -> None:
    hundred = {f"k{i}": i for i in range(100)}
    assert check_contact_changes({"customFields": hundred}) == {"custom_fields": hundred}
    exc = failure(check_contact_changes, {"customFields": {**hundred, "k100": 1}})
    assert exc.message == CUSTOM_OBJECT


# --- caps on custom fields (issue 14) -----------------------------------------------------


@pytest.mark.parametrize(
    ("custom", "field"),
    [
        ({"k" * (MAX_CUSTOM_KEY + 1): 1}, "customFields"),
        ({"plan": "v" * (MAX_CUSTOM_VALUE + 1)}, "customFields.plan"),
        ({f"k{i}": i for i in range(MAX_CUSTOM_FIELDS + 1)}, "customFields"),
    ],
)
def test_custom_fields_are_capped(custom: dict[str, Any], field: str) -> None:
    exc = failure(check_contact_changes, {"customFields": custom})
    assert exc.details is not None and exc.details[0]["field"] == field


def test_custom_fields_at_the_caps_are_kept() -> None:
    custom: dict[str, Any] = {f"k{i}": i for i in range(MAX_CUSTOM_FIELDS - 1)}
    custom["k" * MAX_CUSTOM_KEY] = "v" * MAX_CUSTOM_VALUE
    assert check_contact_changes({"customFields": custom}) == {"custom_fields": custom}


def test_the_cap_holds_after_merging(engine: Engine) -> None:
    """Upserts merge custom fields: the store refuses a merge past MAX_CUSTOM_FIELDS (in the
    statement), and the contact keeps what it had."""
    with transaction(engine) as conn:
        project_id, _ = create_project("caps", conn=conn)

    def upsert(prefix: str, n: int) -> Any:
        fields = {f"{prefix}{i}": i for i in range(n)}
        with transaction(engine) as conn:
            return upsert_contact(project_id, "a@example.com", {"custom_fields": fields}, conn=conn)

    assert len(upsert("a", 60).custom_fields) == 60
    assert len(upsert("a", 60).custom_fields) == 60  # the same keys: no growth
    assert len(upsert("b", 40).custom_fields) == MAX_CUSTOM_FIELDS
    with pytest.raises(EventpipeError) as caught:
        upsert("c", 1)
    assert caught.value.code == "VALIDATION_FAILED"
    with transaction(engine) as conn:
        row = get_contact_row(project_id, "a@example.com", conn=conn)
    assert len(row.custom_fields) == MAX_CUSTOM_FIELDS
