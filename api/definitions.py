"""Event definitions: the declared schema of an event, and the checks of a definition body."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from api.coercion import PROPERTY_TYPES, CoercionError, coerce_suggested
from shared import jsonio
from shared.errors import EventpipeError, ValidationFailed
from shared.settings import MAX_PROPERTIES_PER_DEFINITION

NAME_CHARS = re.compile(r"[A-Za-z0-9_]+")
MAX_NAME_LENGTH = 64
MAX_DESCRIPTION_LENGTH = 1000
# Every API process holds every definition in memory, and GET /v1/events answers them all:
# a property's suggestions are a short list for a UI, not a data set. With 50 properties a
# definition holds at most 200 KB of them.
MAX_SUGGESTED_VALUES = 100
MAX_SUGGESTED_BYTES = 4096  # the coerced list, as JSON


@dataclass(frozen=True)
class Definition:
    id: str
    project_id: str
    event_name: str
    description: str | None
    properties: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime
    # propertyName -> declared type, the send path's lookup.
    types: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Any) -> Definition:
        props = list(row.properties)
        return cls(
            id=row.id,
            project_id=row.project_id,
            event_name=row.event_name,
            description=row.description,
            properties=props,
            created_at=row.created_at,
            updated_at=row.updated_at,
            types={p["propertyName"]: p["type"] for p in props},
        )


@dataclass(frozen=True)
class DefinitionSpec:
    """A checked definition body, ready to store."""

    event_name: str
    description: str | None
    properties: list[dict[str, Any]]


def invalid_event_name() -> EventpipeError:
    return ValidationFailed(
        "Event name may contain only letters, digits and underscores",
        code="INVALID_EVENT_NAME_CHARACTERS",
    )


def check_definition(body: dict[str, Any]) -> DefinitionSpec:
    name = body.get("eventName")
    if not isinstance(name, str) or not name:
        raise _failed("eventName", "eventName is required and must be a non-empty string")
    if not NAME_CHARS.fullmatch(name):
        raise invalid_event_name()
    if len(name) > MAX_NAME_LENGTH:
        raise _failed("eventName", f"eventName must be at most {MAX_NAME_LENGTH} characters")
    description = _check_description(body.get("description"), "description")
    details: list[dict[str, str]] = []
    properties = _check_properties(body.get("properties"), details)
    if details:
        raise ValidationFailed("Validation failed", details=details)
    return DefinitionSpec(name, description, properties)


def check_definition_patch(event_name: str, body: dict[str, Any]) -> dict[str, Any]:
    """The columns a PATCH sets: `description` (null clears it) and `properties` (a given
    list replaces the whole schema). A definition is never renamed."""
    renamed = body.get("eventName")
    if renamed is not None and renamed != event_name:
        raise _failed("eventName", "eventName cannot be changed")
    changes: dict[str, Any] = {}
    if "description" in body:
        changes["description"] = _check_description(body["description"], "description")
    if body.get("properties") is not None:
        details: list[dict[str, str]] = []
        changes["properties"] = _check_properties(body["properties"], details)
        if details:
            raise ValidationFailed("Validation failed", details=details)
    if not changes:
        raise ValidationFailed(
            "Provide description or properties to update", code="NO_DATA_TO_UPDATE"
        )
    return changes


def _failed(field_name: str, message: str) -> EventpipeError:
    return ValidationFailed(message, details=[{"field": field_name, "message": message}])


def _check_description(value: Any, field_name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION_LENGTH:
        raise _failed(
            field_name, f"{field_name} must be a string of at most {MAX_DESCRIPTION_LENGTH} chars"
        )
    return value


def _check_properties(value: Any, details: list[dict[str, str]]) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        details.append({"field": "properties", "message": "properties must be an array"})
        return []
    if len(value) > MAX_PROPERTIES_PER_DEFINITION:
        details.append(
            {
                "field": "properties",
                "message": f"at most {MAX_PROPERTIES_PER_DEFINITION} properties are allowed",
            }
        )
        return []
    seen: set[str] = set()
    checked = [_check_property(i, item, seen, details) for i, item in enumerate(value)]
    return [p for p in checked if p is not None]


def _check_property(
    index: int, item: Any, seen: set[str], details: list[dict[str, str]]
) -> dict[str, Any] | None:
    where = f"properties[{index}]"

    def fail(suffix: str, message: str) -> None:
        details.append({"field": f"{where}{suffix}", "message": message})

    if not isinstance(item, dict):
        fail("", "each property must be an object")
        return None
    name, prop_type = item.get("propertyName"), item.get("type")
    if not isinstance(name, str) or not NAME_CHARS.fullmatch(name) or len(name) > 64:
        fail(".propertyName", "propertyName must be 1..64 letters, digits or underscores")
        return None
    if name in seen:
        fail(".propertyName", f'propertyName "{name}" is declared twice')
        return None
    seen.add(name)
    if prop_type not in PROPERTY_TYPES:
        fail(".type", f"type must be one of {', '.join(PROPERTY_TYPES)}")
        return None
    desc = item.get("description")
    if desc is not None and (not isinstance(desc, str) or len(desc) > MAX_DESCRIPTION_LENGTH):
        fail(
            ".description",
            f"description must be a string of at most {MAX_DESCRIPTION_LENGTH} chars",
        )
        return None
    raw = item.get("suggestedValues")
    if _suggested_count(raw) > MAX_SUGGESTED_VALUES:  # before coercing: counting is cheap
        fail(".suggestedValues", f"at most {MAX_SUGGESTED_VALUES} suggested values are allowed")
        return None
    try:
        suggested = coerce_suggested(prop_type, raw)
    except CoercionError as exc:
        fail(".suggestedValues", f"each suggested value must be {exc.expected}")
        return None
    except ValueError:
        fail(".suggestedValues", "suggestedValues must be an array or a comma-separated string")
        return None
    if len(jsonio.dumps(suggested)) > MAX_SUGGESTED_BYTES:
        fail(".suggestedValues", f"suggestedValues must be at most {MAX_SUGGESTED_BYTES} bytes")
        return None
    return {
        "propertyName": name,
        "type": prop_type,
        "description": desc,
        "suggestedValues": suggested,
    }


def _suggested_count(raw: Any) -> int:
    if isinstance(raw, str):
        return raw.count(",") + 1
    return len(raw) if isinstance(raw, list) else 0
