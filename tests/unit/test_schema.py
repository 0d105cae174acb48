"""api.schema: the send path's checks, their codes/messages, their order, the accepted event."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from api.definitions import Definition
from api.schema import FindDefinition, check_send, coerce_properties
from shared.errors import EventpipeError
from shared.ids import is_id

PROJECT_ID = "60d5ec49f1b2c72d9c8b0001"
CONTACT_ID = "60d5ec49f1b2c72d9c8b8888"
EMAIL = "jane.doe@example.com"
ISO_MS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")

ORDER_PROPERTIES: list[dict[str, Any]] = [
    {"propertyName": "order_total", "type": "number", "description": None, "suggestedValues": []},
    {"propertyName": "currency", "type": "string", "description": None, "suggestedValues": []},
    {
        "propertyName": "is_first_purchase",
        "type": "boolean",
        "description": None,
        "suggestedValues": [],
    },
    {"propertyName": "delivered_at", "type": "date", "description": None, "suggestedValues": []},
]


def make_definition(
    event_name: str = "order_completed", properties: list[dict[str, Any]] | None = None
) -> Definition:
    moment = datetime(2026, 5, 8, 13, 45, tzinfo=UTC)
    row = SimpleNamespace(
        id="60d5ec49f1b2c72d9c8b7777",
        project_id=PROJECT_ID,
        event_name=event_name,
        description=None,
        properties=ORDER_PROPERTIES if properties is None else properties,
        created_at=moment,
        updated_at=moment,
    )
    return Definition.from_row(row)


def finder(*definitions: Definition) -> FindDefinition:
    by_name = {d.event_name: d for d in definitions}
    return by_name.get


ORDERS = finder(make_definition())


def make_body(**fields: Any) -> dict[str, Any]:
    """A valid send body; a field given as `...` is removed."""
    body: dict[str, Any] = {
        "eventName": "order_completed",
        "email": EMAIL,
        "eventProperties": {"order_total": 129.99, "currency": "USD", "is_first_purchase": True},
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not ...}


def send_error(body: Any, find: FindDefinition = ORDERS) -> EventpipeError:
    with pytest.raises(EventpipeError) as info:
        check_send(body, PROJECT_ID, find)
    return info.value


def assert_error(exc: EventpipeError, status: int, code: str, message: str) -> None:
    assert (exc.status, exc.code, exc.message) == (status, code, message)


# --- each error of the contract, exactly ------------------------------------------------


@pytest.mark.parametrize("body", [None, [], [make_body()], "x", 1, True, 1.5])
def test_body_must_be_an_object(body: Any) -> None:
    exc = send_error(body)
    assert_error(exc, 400, "VALIDATION_FAILED", "Request body must be a JSON object")


@pytest.mark.parametrize("name", [..., None, 5, True, ["order_completed"], {"a": 1}])
def test_event_name_must_be_a_string(name: Any) -> None:
    exc = send_error(make_body(eventName=name))
    message = "eventName is required and must be a string"
    assert_error(exc, 400, "VALIDATION_FAILED", message)
    assert exc.details == [{"field": "eventName", "message": message}]


@pytest.mark.parametrize(
    "contact",
    [
        {"email": ..., "contactId": ...},
        {"email": None, "contactId": None},
        {"email": "", "contactId": ""},
        {"email": "", "contactId": ...},
        {"email": ..., "contactId": None},
        {"email": "   ", "contactId": ...},
        {"email": " \t", "contactId": " "},
    ],
)
def test_contact_identifier_required(contact: dict[str, Any]) -> None:
    exc = send_error(make_body(**contact))
    assert_error(exc, 400, "EMAIL_OR_CONTACT_ID_REQUIRED", "Either email or contactId is required")
    assert exc.to_body() == {
        "success": False,
        "error": {
            "message": "Either email or contactId is required",
            "code": "EMAIL_OR_CONTACT_ID_REQUIRED",
        },
    }


@pytest.mark.parametrize(
    ("email", "message"),
    [
        ("not-an-email", "email must be a valid email address"),
        ("jane@", "email must be a valid email address"),
        ("@example.com", "email must be a valid email address"),
        ("jane doe@example.com", "email must be a valid email address"),
        ("jane@@example.com", "email must be a valid email address"),
        (5, "email must be a string"),
        (True, "email must be a string"),
        (["jane@example.com"], "email must be a string"),
    ],
)
def test_email_must_be_valid(email: Any, message: str) -> None:
    exc = send_error(make_body(email=email))
    assert_error(exc, 400, "VALIDATION_FAILED", message)
    assert exc.details == [{"field": "email", "message": message}]


@pytest.mark.parametrize(
    "contact_id",
    [
        CONTACT_ID[:-1],
        CONTACT_ID + "0",
        "g" + CONTACT_ID[1:],
        " " + CONTACT_ID[1:],
        CONTACT_ID[:-1] + "-",
        f" {CONTACT_ID} ",
        12345,
        True,
        [CONTACT_ID],
    ],
)
def test_contact_id_must_be_24_hex(contact_id: Any) -> None:
    exc = send_error(make_body(email=..., contactId=contact_id))
    message = "contactId must be 24 hexadecimal characters"
    assert_error(exc, 400, "VALIDATION_FAILED", message)
    assert exc.details == [{"field": "contactId", "message": message}]


def test_bad_contact_id_rejected_even_with_a_good_email() -> None:
    exc = send_error(make_body(contactId="nope"))
    assert exc.code == "VALIDATION_FAILED"
    assert exc.details == [
        {"field": "contactId", "message": "contactId must be 24 hexadecimal characters"}
    ]


def test_bad_email_rejected_even_with_a_good_contact_id() -> None:
    exc = send_error(make_body(email="nope", contactId=CONTACT_ID))
    assert exc.code == "VALIDATION_FAILED"
    assert exc.details == [{"field": "email", "message": "email must be a valid email address"}]


@pytest.mark.parametrize("name", ["signup", "", "Order_Completed", "order_completed "])
def test_event_not_found(name: str) -> None:
    exc = send_error(make_body(eventName=name, eventProperties=...))
    assert_error(exc, 404, "EVENT_NOT_FOUND", "Event not found")


def test_event_not_found_asks_the_finder_with_the_name() -> None:
    asked: list[str] = []

    def find(name: str) -> Definition | None:
        asked.append(name)
        return None

    exc = send_error(make_body(eventName="signup"), find)
    assert exc.code == "EVENT_NOT_FOUND"
    assert asked == ["signup"]


def test_unknown_property() -> None:
    exc = send_error(make_body(eventProperties={"foo": 1}))
    message = 'Property "foo" is not declared on event "order_completed"'
    assert_error(exc, 400, "UNKNOWN_PROPERTY", message)


def test_unknown_property_names_the_event() -> None:
    find = finder(make_definition("signup", [ORDER_PROPERTIES[1]]))
    exc = send_error(make_body(eventName="signup", eventProperties={"plan": "pro"}), find)
    assert_error(exc, 400, "UNKNOWN_PROPERTY", 'Property "plan" is not declared on event "signup"')


def test_property_names_are_case_sensitive() -> None:
    exc = send_error(make_body(eventProperties={"Order_Total": 1}))
    assert exc.code == "UNKNOWN_PROPERTY"
    assert exc.message == 'Property "Order_Total" is not declared on event "order_completed"'


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("order_total", "abc", "a number"),
        ("order_total", True, "a number"),
        ("order_total", {"amount": 1}, "a number"),
        ("currency", ["USD"], "a string"),
        ("currency", {"code": "USD"}, "a string"),
        ("is_first_purchase", "yes", "a boolean"),
        ("is_first_purchase", 2, "a boolean"),
        ("delivered_at", "yesterday", "a date"),
        ("delivered_at", True, "a date"),
    ],
)
def test_invalid_property_value(name: str, value: Any, expected: str) -> None:
    exc = send_error(make_body(eventProperties={name: value}))
    assert_error(exc, 400, "INVALID_PROPERTY_VALUE", f'Property "{name}" must be {expected}')


def test_invalid_property_value_seed_message() -> None:
    exc = send_error(make_body(eventProperties={"order_total": "a lot", "currency": "USD"}))
    assert exc.to_body() == {
        "success": False,
        "error": {
            "message": 'Property "order_total" must be a number',
            "code": "INVALID_PROPERTY_VALUE",
        },
    }


@pytest.mark.parametrize("props", [[], ["order_total"], "order_total=1", 5, True])
def test_event_properties_must_be_an_object(props: Any) -> None:
    exc = send_error(make_body(eventProperties=props))
    message = "eventProperties must be an object"
    assert_error(exc, 400, "VALIDATION_FAILED", message)
    assert exc.details == [{"field": "eventProperties", "message": message}]


# --- check order: the earlier check wins --------------------------------------------------


ORDER_CASES: list[tuple[str, Any, str, str]] = [
    # (case, body, code, message)
    (
        "object before eventName",
        [{"eventName": 5}],
        "VALIDATION_FAILED",
        "Request body must be a JSON object",
    ),
    (
        "eventName before contact identifier",
        {"eventName": 5, "eventProperties": {"foo": 1}},
        "VALIDATION_FAILED",
        "eventName is required and must be a string",
    ),
    (
        "eventName missing before contact identifier",
        {"eventProperties": {"order_total": "x"}},
        "VALIDATION_FAILED",
        "eventName is required and must be a string",
    ),
    (
        "contact identifier before definition",
        {"eventName": "signup"},
        "EMAIL_OR_CONTACT_ID_REQUIRED",
        "Either email or contactId is required",
    ),
    (
        "contact identifier before properties",
        {"eventName": "order_completed", "eventProperties": {"foo": 1, "order_total": "x"}},
        "EMAIL_OR_CONTACT_ID_REQUIRED",
        "Either email or contactId is required",
    ),
    (
        "email valid before definition",
        {"eventName": "signup", "email": "not-an-email"},
        "VALIDATION_FAILED",
        "email must be a valid email address",
    ),
    (
        "contactId 24-hex before definition",
        {"eventName": "signup", "contactId": "abc"},
        "VALIDATION_FAILED",
        "contactId must be 24 hexadecimal characters",
    ),
    (
        "email valid before unknown property",
        {"eventName": "order_completed", "email": "x@", "eventProperties": {"foo": 1}},
        "VALIDATION_FAILED",
        "email must be a valid email address",
    ),
    (
        "definition before unknown property",
        {"eventName": "signup", "email": EMAIL, "eventProperties": {"foo": 1}},
        "EVENT_NOT_FOUND",
        "Event not found",
    ),
    (
        "definition before property value",
        {"eventName": "signup", "email": EMAIL, "eventProperties": {"order_total": "x"}},
        "EVENT_NOT_FOUND",
        "Event not found",
    ),
    (
        "unknown property before an earlier bad value",
        {
            "eventName": "order_completed",
            "email": EMAIL,
            "eventProperties": {"order_total": "x", "currency": [], "foo": 1},
        },
        "UNKNOWN_PROPERTY",
        'Property "foo" is not declared on event "order_completed"',
    ),
    (
        "first unknown property in body order",
        {
            "eventName": "order_completed",
            "email": EMAIL,
            "eventProperties": {"zeta": 1, "order_total": 1, "alpha": 2},
        },
        "UNKNOWN_PROPERTY",
        'Property "zeta" is not declared on event "order_completed"',
    ),
    (
        "first bad value in body order",
        {
            "eventName": "order_completed",
            "email": EMAIL,
            "eventProperties": {
                "currency": "USD",
                "is_first_purchase": "maybe",
                "order_total": "x",
            },
        },
        "INVALID_PROPERTY_VALUE",
        'Property "is_first_purchase" must be a boolean',
    ),
    (
        "first bad value in body order (reversed)",
        {
            "eventName": "order_completed",
            "email": EMAIL,
            "eventProperties": {"order_total": "x", "is_first_purchase": "maybe"},
        },
        "INVALID_PROPERTY_VALUE",
        'Property "order_total" must be a number',
    ),
]


@pytest.mark.parametrize(
    ("body", "code", "message"), [c[1:] for c in ORDER_CASES], ids=[c[0] for c in ORDER_CASES]
)
def test_check_order(body: Any, code: str, message: str) -> None:
    exc = send_error(body)
    assert (exc.code, exc.message) == (code, message)


def test_check_order_ladder() -> None:
    """One body with a fault at every step; fixing them one by one reveals the next check."""
    body: Any = {
        "eventName": 7,
        "email": "bad",
        "eventProperties": {"order_total": "x", "foo": 1, "bar": 2},
    }
    steps: list[tuple[str, str]] = []

    def step(sent: Any) -> None:
        exc = send_error(sent)
        steps.append((exc.code, exc.message))

    step([body])
    step(body)
    body["eventName"] = "signup"
    del body["email"]
    step(body)
    body["email"] = "bad"
    step(body)
    body["email"] = EMAIL
    step(body)
    body["eventName"] = "order_completed"
    step(body)
    del body["eventProperties"]["foo"]
    step(body)
    del body["eventProperties"]["bar"]
    step(body)
    body["eventProperties"]["order_total"] = "12"
    event = check_send(body, PROJECT_ID, ORDERS)
    assert event["properties"] == {"order_total": 12}
    assert steps == [
        ("VALIDATION_FAILED", "Request body must be a JSON object"),
        ("VALIDATION_FAILED", "eventName is required and must be a string"),
        ("EMAIL_OR_CONTACT_ID_REQUIRED", "Either email or contactId is required"),
        ("VALIDATION_FAILED", "email must be a valid email address"),
        ("EVENT_NOT_FOUND", "Event not found"),
        ("UNKNOWN_PROPERTY", 'Property "foo" is not declared on event "order_completed"'),
        ("UNKNOWN_PROPERTY", 'Property "bar" is not declared on event "order_completed"'),
        ("INVALID_PROPERTY_VALUE", 'Property "order_total" must be a number'),
    ]


def test_definition_not_looked_up_before_the_contact_checks() -> None:
    asked: list[str] = []

    def find(name: str) -> Definition | None:
        asked.append(name)
        return make_definition()

    for body in (make_body(email=...), make_body(email="bad"), make_body(eventName=1)):
        send_error(body, find)
    assert asked == []


# --- the accepted event -------------------------------------------------------------------


def test_seed_request_comes_out_unchanged() -> None:
    body = {
        "eventName": "order_completed",
        "email": EMAIL,
        "eventProperties": {"order_total": 129.99, "currency": "USD", "is_first_purchase": True},
    }
    event = check_send(body, PROJECT_ID, ORDERS)
    assert event["eventName"] == "order_completed"
    assert event["properties"] == {
        "order_total": 129.99,
        "currency": "USD",
        "is_first_purchase": True,
    }
    assert list(event["properties"]) == ["order_total", "currency", "is_first_purchase"]
    assert type(event["properties"]["order_total"]) is float
    assert event["properties"]["is_first_purchase"] is True


def test_returned_event_fields() -> None:
    before = datetime.now(UTC) - timedelta(milliseconds=1)
    event = check_send(make_body(), PROJECT_ID, ORDERS)
    after = datetime.now(UTC)
    assert set(event) == {
        "id",
        "projectId",
        "eventName",
        "email",
        "contactId",
        "properties",
        "createdAt",
    }
    assert is_id(event["id"])
    assert event["projectId"] == PROJECT_ID
    assert event["eventName"] == "order_completed"
    assert event["email"] == EMAIL
    assert event["contactId"] is None
    assert ISO_MS.fullmatch(event["createdAt"])
    created = datetime.fromisoformat(event["createdAt"].replace("Z", "+00:00"))
    assert before <= created <= after


def test_each_event_gets_a_fresh_id() -> None:
    ids = {check_send(make_body(), PROJECT_ID, ORDERS)["id"] for _ in range(50)}
    assert len(ids) == 50
    assert all(is_id(i) for i in ids)


def test_project_id_is_the_one_given() -> None:
    other = "aaaaaaaaaaaaaaaaaaaaaaaa"
    assert check_send(make_body(), other, ORDERS)["projectId"] == other


def test_input_body_not_mutated() -> None:
    body = make_body(eventProperties={"order_total": "129.99"})
    check_send(body, PROJECT_ID, ORDERS)
    assert body["eventProperties"] == {"order_total": "129.99"}


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("  Jane.Doe@Example.COM  ", "jane.doe@example.com"),
        ("JANE@EXAMPLE.COM", "jane@example.com"),
        ("\tjane@example.com\n", "jane@example.com"),
    ],
)
def test_email_normalised(raw: str, normalized: str) -> None:
    event = check_send(make_body(email=raw), PROJECT_ID, ORDERS)
    assert event["email"] == normalized
    assert event["contactId"] is None


def test_contact_id_only() -> None:
    event = check_send(make_body(email=..., contactId=CONTACT_ID), PROJECT_ID, ORDERS)
    assert event["contactId"] == CONTACT_ID
    assert event["email"] is None


@pytest.mark.parametrize("email", [..., None, ""])
def test_contact_id_with_absent_email(email: Any) -> None:
    event = check_send(make_body(email=email, contactId=CONTACT_ID), PROJECT_ID, ORDERS)
    assert (event["email"], event["contactId"]) == (None, CONTACT_ID)


@pytest.mark.parametrize("contact_id", [..., None, ""])
def test_email_with_absent_contact_id(contact_id: Any) -> None:
    event = check_send(make_body(contactId=contact_id), PROJECT_ID, ORDERS)
    assert (event["email"], event["contactId"]) == (EMAIL, None)


def test_both_identifiers_accepted_contact_id_kept() -> None:
    body = make_body(email=" Jane.Doe@Example.com", contactId=CONTACT_ID)
    event = check_send(body, PROJECT_ID, ORDERS)
    assert event["contactId"] == CONTACT_ID
    assert event["email"] == EMAIL


def test_contact_id_upper_case_accepted_and_lower_cased() -> None:
    event = check_send(make_body(email=..., contactId=CONTACT_ID.upper()), PROJECT_ID, ORDERS)
    assert event["contactId"] == CONTACT_ID
    mixed = "60D5eC49F1b2c72D9C8B8888"
    event = check_send(make_body(email=..., contactId=mixed), PROJECT_ID, ORDERS)
    assert event["contactId"] == CONTACT_ID


@pytest.mark.parametrize("props", [..., None, {}])
def test_no_event_properties_gives_empty_object(props: Any) -> None:
    event = check_send(make_body(eventProperties=props), PROJECT_ID, ORDERS)
    assert event["properties"] == {}


def test_unknown_top_level_fields_are_ignored() -> None:
    event = check_send(make_body(source="web", idempotencyKey="k1"), PROJECT_ID, ORDERS)
    assert "source" not in event
    assert event["properties"]["order_total"] == 129.99


def test_definition_without_properties_accepts_only_empty() -> None:
    find = finder(make_definition("ping", []))
    event = check_send(make_body(eventName="ping", eventProperties={}), PROJECT_ID, find)
    assert event["properties"] == {}
    exc = send_error(make_body(eventName="ping", eventProperties={"a": None}), find)
    assert exc.message == 'Property "a" is not declared on event "ping"'


@pytest.mark.parametrize(
    ("name", "raw", "stored"),
    [
        ("order_total", "129.99", 129.99),
        ("order_total", " 42 ", 42),
        ("currency", 42.0, "42"),
        ("currency", False, "false"),
        ("is_first_purchase", "TRUE", True),
        ("is_first_purchase", 0, False),
        ("delivered_at", "2026-05-08", "2026-05-08T00:00:00.000Z"),
        ("delivered_at", "2026-05-08T15:45:00+02:00", "2026-05-08T13:45:00.000Z"),
        ("delivered_at", 1778247900, "2026-05-08T13:45:00.000Z"),
        ("delivered_at", None, None),
    ],
)
def test_coercion_flows_through(name: str, raw: Any, stored: Any) -> None:
    event = check_send(make_body(eventProperties={name: raw}), PROJECT_ID, ORDERS)
    assert event["properties"] == {name: stored}
    assert type(event["properties"][name]) is type(stored)


def test_all_types_together_keep_body_order() -> None:
    props = {
        "delivered_at": "2026-05-08T13:45:00Z",
        "is_first_purchase": "false",
        "currency": "EUR",
        "order_total": "1e3",
    }
    event = check_send(make_body(eventProperties=props), PROJECT_ID, ORDERS)
    assert event["properties"] == {
        "delivered_at": "2026-05-08T13:45:00.000Z",
        "is_first_purchase": False,
        "currency": "EUR",
        "order_total": 1000,
    }
    assert list(event["properties"]) == list(props)


# --- coerce_properties directly -------------------------------------------------------------


def test_coerce_properties_returns_new_dict() -> None:
    raw = {"order_total": "5"}
    out = coerce_properties(make_definition(), raw)
    assert out == {"order_total": 5}
    assert raw == {"order_total": "5"}


def test_coerce_properties_unknown_checked_before_any_value() -> None:
    with pytest.raises(EventpipeError) as info:
        coerce_properties(make_definition(), {"order_total": [], "nope": 1})
    assert (info.value.code, info.value.message) == (
        "UNKNOWN_PROPERTY",
        'Property "nope" is not declared on event "order_completed"',
    )
