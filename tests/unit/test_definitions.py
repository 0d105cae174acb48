"""api.definitions: the rules of a definition body, and Definition.from_row."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from api.definitions import (
    MAX_DESCRIPTION_LENGTH,
    MAX_SUGGESTED_BYTES,
    MAX_SUGGESTED_VALUES,
    Definition,
    DefinitionSpec,
    check_definition,
)
from shared.errors import EventpipeError

NAME_MESSAGE = "eventName is required and must be a non-empty string"
BAD_CHARS_MESSAGE = "Event name may contain only letters, digits and underscores"
PROPERTY_NAME_MESSAGE = "propertyName must be 1..64 letters, digits or underscores"
TYPE_MESSAGE = "type must be one of string, number, date, boolean"


def prop(name: str = "order_total", type_: str = "number", **extra: Any) -> dict[str, Any]:
    return {"propertyName": name, "type": type_, **extra}


def definition_body(**fields: Any) -> dict[str, Any]:
    """A valid definition body; a field given as `...` is removed."""
    body: dict[str, Any] = {
        "eventName": "order_completed",
        "description": "A customer paid",
        "properties": [prop()],
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not ...}


def definition_error(body: dict[str, Any]) -> EventpipeError:
    with pytest.raises(EventpipeError) as info:
        check_definition(body)
    return info.value


def failed_details(body: dict[str, Any]) -> list[dict[str, str]] | None:
    exc = definition_error(body)
    assert (exc.status, exc.code) == (400, "VALIDATION_FAILED")
    return exc.details


# --- valid bodies ---------------------------------------------------------------------------


def test_valid_body() -> None:
    spec = check_definition(
        {
            "eventName": "order_completed",
            "description": "A customer paid",
            "properties": [
                {"propertyName": "order_total", "type": "number", "description": "in USD"},
                {"propertyName": "currency", "type": "string"},
                {"propertyName": "is_first_purchase", "type": "boolean"},
                {"propertyName": "paid_at", "type": "date"},
            ],
            "someFutureField": True,
        }
    )
    assert spec == DefinitionSpec(
        event_name="order_completed",
        description="A customer paid",
        properties=[
            {
                "propertyName": "order_total",
                "type": "number",
                "description": "in USD",
                "suggestedValues": [],
            },
            {
                "propertyName": "currency",
                "type": "string",
                "description": None,
                "suggestedValues": [],
            },
            {
                "propertyName": "is_first_purchase",
                "type": "boolean",
                "description": None,
                "suggestedValues": [],
            },
            {"propertyName": "paid_at", "type": "date", "description": None, "suggestedValues": []},
        ],
    )


@pytest.mark.parametrize("props", [..., None, []])
def test_no_properties(props: Any) -> None:
    spec = check_definition(definition_body(properties=props, description=...))
    assert spec == DefinitionSpec("order_completed", None, [])


@pytest.mark.parametrize(
    "name", ["a", "A", "_", "9", "order_completed", "OrderCompleted2", "x" * 64, "a_B_9"]
)
def test_valid_names(name: str) -> None:
    spec = check_definition(definition_body(eventName=name, properties=[prop(name)]))
    assert spec.event_name == name
    assert spec.properties[0]["propertyName"] == name


@pytest.mark.parametrize(
    ("type_", "suggested", "expected"),
    [
        ("string", ["USD", "EUR"], ["USD", "EUR"]),
        ("string", " USD , EUR,GBP ", ["USD", "EUR", "GBP"]),
        ("string", [" USD ", 42], ["USD", "42"]),
        ("number", ["1", 2.5, " 3 "], [1, 2.5, 3]),
        ("number", "1, 2.5 ,1e3", [1, 2.5, 1000]),
        ("boolean", "true, FALSE", [True, False]),
        ("boolean", [1, "0", True], [True, False, True]),
        (
            "date",
            "2026-05-08, 2026-05-08T15:45:00+02:00",
            [
                "2026-05-08T00:00:00.000Z",
                "2026-05-08T13:45:00.000Z",
            ],
        ),
        ("date", [1778247900], ["2026-05-08T13:45:00.000Z"]),
        ("string", [], []),
        ("string", "", []),
        ("string", "   ", []),
        ("number", None, []),
    ],
)
def test_suggested_values_coerced(type_: str, suggested: Any, expected: list[Any]) -> None:
    spec = check_definition(
        definition_body(properties=[prop("p", type_, suggestedValues=suggested)])
    )
    assert spec.properties[0]["suggestedValues"] == expected
    assert [type(v) for v in spec.properties[0]["suggestedValues"]] == [type(v) for v in expected]


def test_suggested_values_always_present() -> None:
    spec = check_definition(definition_body(properties=[prop("a"), prop("b", "string")]))
    assert [p["suggestedValues"] for p in spec.properties] == [[], []]


# --- eventName ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [..., None, "", 5, True, ["order"], {"a": 1}])
def test_event_name_required_string(name: Any) -> None:
    exc = definition_error(definition_body(eventName=name))
    assert (exc.status, exc.code, exc.message) == (400, "VALIDATION_FAILED", NAME_MESSAGE)
    assert exc.details == [{"field": "eventName", "message": NAME_MESSAGE}]


@pytest.mark.parametrize(
    "name",
    [
        "order-completed",
        "order completed",
        "order.completed",
        " order",
        "order\n",
        "ördér",
        "order١",
        "ｏｒｄｅｒ",
        "a/b",
        "x" * 70 + "-",
    ],
)
def test_invalid_event_name_characters(name: str) -> None:
    exc = definition_error(definition_body(eventName=name))
    assert (exc.status, exc.code, exc.message) == (
        400,
        "INVALID_EVENT_NAME_CHARACTERS",
        BAD_CHARS_MESSAGE,
    )


def test_event_name_over_64_chars() -> None:
    exc = definition_error(definition_body(eventName="x" * 65))
    message = "eventName must be at most 64 characters"
    assert (exc.status, exc.code, exc.message) == (400, "VALIDATION_FAILED", message)
    assert exc.details == [{"field": "eventName", "message": message}]


# --- properties -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [..., None, "", 5, "bad-name", "bad name", "é", "x" * 65])
def test_bad_property_name(name: Any) -> None:
    item = {"type": "string"} if name is ... else prop(name, "string")
    details = failed_details(definition_body(properties=[prop("ok"), item]))
    assert details == [{"field": "properties[1].propertyName", "message": PROPERTY_NAME_MESSAGE}]


def test_property_name_64_chars_ok() -> None:
    spec = check_definition(definition_body(properties=[prop("p" * 64)]))
    assert spec.properties[0]["propertyName"] == "p" * 64


def test_duplicate_property_name() -> None:
    body = definition_body(properties=[prop("a"), prop("b"), prop("a", "string")])
    assert failed_details(body) == [
        {"field": "properties[2].propertyName", "message": 'propertyName "a" is declared twice'}
    ]


def test_property_names_case_sensitive() -> None:
    spec = check_definition(definition_body(properties=[prop("a"), prop("A")]))
    assert [p["propertyName"] for p in spec.properties] == ["a", "A"]


@pytest.mark.parametrize(
    "type_", [..., None, "", "text", "String", "int", "datetime", 1, ["string"]]
)
def test_bad_type(type_: Any) -> None:
    item = {"propertyName": "p"} if type_ is ... else {"propertyName": "p", "type": type_}
    assert failed_details(definition_body(properties=[item])) == [
        {"field": "properties[0].type", "message": TYPE_MESSAGE}
    ]


def test_fifty_properties_ok() -> None:
    props = [prop(f"p{i}") for i in range(50)]
    assert len(check_definition(definition_body(properties=props)).properties) == 50


def test_more_than_fifty_properties() -> None:
    props = [prop(f"p{i}") for i in range(51)]
    assert failed_details(definition_body(properties=props)) == [
        {"field": "properties", "message": "at most 50 properties are allowed"}
    ]


@pytest.mark.parametrize("props", [{"propertyName": "a", "type": "string"}, "a,b", 5, True])
def test_properties_not_a_list(props: Any) -> None:
    assert failed_details(definition_body(properties=props)) == [
        {"field": "properties", "message": "properties must be an array"}
    ]


@pytest.mark.parametrize("item", ["a", 5, None, ["a", "string"]])
def test_property_not_an_object(item: Any) -> None:
    assert failed_details(definition_body(properties=[item])) == [
        {"field": "properties[0]", "message": "each property must be an object"}
    ]


@pytest.mark.parametrize(
    ("type_", "suggested", "expected"),
    [
        ("number", ["1", "abc"], "a number"),
        ("number", "1, two", "a number"),
        ("boolean", "yes", "a boolean"),
        ("date", ["tomorrow"], "a date"),
        ("string", [{"a": 1}], "a string"),
        ("number", "1,,2", "a number"),
    ],
)
def test_bad_suggested_value(type_: str, suggested: Any, expected: str) -> None:
    body = definition_body(properties=[prop("p", type_, suggestedValues=suggested)])
    assert failed_details(body) == [
        {
            "field": "properties[0].suggestedValues",
            "message": f"each suggested value must be {expected}",
        }
    ]


@pytest.mark.parametrize("suggested", [5, {"a": 1}, True])
def test_suggested_values_wrong_shape(suggested: Any) -> None:
    body = definition_body(properties=[prop("p", "string", suggestedValues=suggested)])
    assert failed_details(body) == [
        {
            "field": "properties[0].suggestedValues",
            "message": "suggestedValues must be an array or a comma-separated string",
        }
    ]


def test_details_collect_every_bad_property() -> None:
    body = definition_body(
        properties=[prop("ok"), prop("bad-name"), prop("t", "text"), "x", prop("ok", "string")]
    )
    exc = definition_error(body)
    assert exc.message == "Validation failed"
    assert exc.details == [
        {"field": "properties[1].propertyName", "message": PROPERTY_NAME_MESSAGE},
        {"field": "properties[2].type", "message": TYPE_MESSAGE},
        {"field": "properties[3]", "message": "each property must be an object"},
        {"field": "properties[4].propertyName", "message": 'propertyName "ok" is declared twice'},
    ]
    assert exc.to_body()["error"]["details"] == exc.details


def test_event_name_checked_before_properties() -> None:
    exc = definition_error(definition_body(eventName="bad-name", properties=5))
    assert exc.code == "INVALID_EVENT_NAME_CHARACTERS"


# --- Definition.from_row ----------------------------------------------------------------------


def test_from_row_builds_types() -> None:
    created = datetime(2026, 5, 8, 13, 45, tzinfo=UTC)
    updated = datetime(2026, 5, 9, 8, 0, tzinfo=UTC)
    properties = [
        {"propertyName": "order_total", "type": "number", "suggestedValues": []},
        {"propertyName": "currency", "type": "string", "suggestedValues": ["USD"]},
        {"propertyName": "paid_at", "type": "date", "suggestedValues": []},
    ]
    row = SimpleNamespace(
        id="60d5ec49f1b2c72d9c8b7777",
        project_id="60d5ec49f1b2c72d9c8b0001",
        event_name="order_completed",
        description=None,
        properties=properties,
        created_at=created,
        updated_at=updated,
    )
    definition = Definition.from_row(row)
    assert definition.types == {"order_total": "number", "currency": "string", "paid_at": "date"}
    assert definition.properties == properties
    assert definition.id == "60d5ec49f1b2c72d9c8b7777"
    assert definition.project_id == "60d5ec49f1b2c72d9c8b0001"
    assert definition.event_name == "order_completed"
    assert definition.description is None
    assert (definition.created_at, definition.updated_at) == (created, updated)


def test_from_row_without_properties() -> None:
    moment = datetime(2026, 5, 8, tzinfo=UTC)
    row = SimpleNamespace(
        id="1" * 24,
        project_id="2" * 24,
        event_name="ping",
        description="d",
        properties=(),
        created_at=moment,
        updated_at=moment,
    )
    definition = Definition.from_row(row)
    assert definition.types == {}
    assert definition.properties == []
    assert definition.description == "d"


@pytest.mark.parametrize("description", [5, ["d"], "d" * 1001])
def test_bad_description(description: Any) -> None:
    message = "description must be a string of at most 1000 chars"
    assert failed_details(definition_body(description=description)) == [
        {"field": "description", "message": message}
    ]


# --- caps on suggested values (issue 14) --------------------------------------------------

COUNT_MESSAGE = f"at most {MAX_SUGGESTED_VALUES} suggested values are allowed"


@pytest.mark.parametrize(
    ("type_", "suggested"),
    [
        ("string", [str(i) for i in range(MAX_SUGGESTED_VALUES + 1)]),
        ("string", [f"v{i}" for i in range(50_000)]),
        ("boolean", ",".join(["1"] * (MAX_SUGGESTED_VALUES + 1))),
        ("number", ",".join(["0"] * 300_000)),  # refused on its commas, before coercion
    ],
)
def test_too_many_suggested_values(type_: str, suggested: Any) -> None:
    body = definition_body(properties=[prop("p", type_, suggestedValues=suggested)])
    assert failed_details(body) == [
        {"field": "properties[0].suggestedValues", "message": COUNT_MESSAGE}
    ]


def test_suggested_values_at_the_caps_are_kept() -> None:
    many = [str(i) for i in range(MAX_SUGGESTED_VALUES)]
    spec = check_definition(definition_body(properties=[prop("p", "string", suggestedValues=many)]))
    assert spec.properties[0]["suggestedValues"] == many
    # 4 KB as JSON: 3 values of 1,350 characters fit, a fourth does not.
    fits = ["x" * 1350] * 3
    assert check_definition(definition_body(properties=[prop("p", "string", suggestedValues=fits)]))
    body = definition_body(properties=[prop("p", "string", suggestedValues=[*fits, "x" * 100])])
    assert failed_details(body) == [
        {
            "field": "properties[0].suggestedValues",
            "message": f"suggestedValues must be at most {MAX_SUGGESTED_BYTES} bytes",
        }
    ]


def test_property_description_is_capped() -> None:
    body = definition_body(properties=[prop("p", description="d" * (MAX_DESCRIPTION_LENGTH + 1))])
    assert failed_details(body) == [
        {
            "field": "properties[0].description",
            "message": f"description must be a string of at most {MAX_DESCRIPTION_LENGTH} chars",
        }
    ]
    body = definition_body(properties=[prop("p", description="d" * MAX_DESCRIPTION_LENGTH)])
    assert check_definition(body).properties[0]["description"]
