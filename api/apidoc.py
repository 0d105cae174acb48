"""Pieces of the OpenAPI document for the modules that document their own routes (api.admin,
api.ops), which api.openapi gathers: here, so that they need not import it."""

from __future__ import annotations

from typing import Any

from shared.settings import MAX_BODY_BYTES, MAX_DEFINITIONS_PER_PROJECT

Schema = dict[str, Any]

ERROR_SCHEMA = {"$ref": "#/components/schemas/Error"}


def ok_doc(description: str, data: dict[str, Any], example: Any = None) -> dict[str, Any]:
    """A success response, `{"success": true, "data": <data>}`, with `example` as its data."""
    media: dict[str, Any] = {
        "schema": {
            "type": "object",
            "properties": {"success": {"const": True}, "data": data},
            "required": ["success", "data"],
        }
    }
    if example is not None:
        media["example"] = {"success": True, "data": example}
    return {"description": description, "content": {"application/json": media}}


# The message each error code is documented with (the example of its response).
MESSAGES = {
    "VALIDATION_FAILED": "Request body must be valid JSON",
    "UNAUTHORIZED": "Missing, invalid or revoked API key",
    "PAYLOAD_TOO_LARGE": f"Request body is larger than {MAX_BODY_BYTES} bytes",
    "SERVICE_UNAVAILABLE": "The database is unavailable, retry later",
    "INTERNAL_SERVER_ERROR": "Internal server error",
    "EVENT_NOT_FOUND": "Event not found",
    "NOT_FOUND": "Not found",
    "EVENT_ALREADY_EXISTS": "Event already exists",
    "INVALID_EVENT_NAME_CHARACTERS": "Event name may contain only letters, digits and underscores",
    "MAX_EVENTS_REACHED": (
        f"Maximum number of events ({MAX_DEFINITIONS_PER_PROJECT}) reached for this project."
    ),
    "NO_DATA_TO_UPDATE": "Provide description or properties to update",
    "EMAIL_OR_CONTACT_ID_REQUIRED": "Either email or contactId is required",
    "UNKNOWN_PROPERTY": 'Property "foo" is not declared on event "order_completed"',
    "INVALID_PROPERTY_VALUE": 'Property "order_total" must be a number',
    "CONTACT_NOT_FOUND": "Contact not found",
    "CONTACT_ALREADY_EXISTS": "Contact already exists",
    "CONTACT_NOT_FOUND_FOR_EVENT": "Contact not found for the provided email or contactId",
    "IDEMPOTENCY_KEY_IN_USE": (
        "A request with this Idempotency-Key is still in progress; retry later"
    ),
    "IDEMPOTENCY_KEY_MISMATCH": "This Idempotency-Key was used with a different request body",
}
STATUS_TEXT = {
    400: "Bad request",
    401: "Missing, malformed, unknown or revoked API key",
    404: "Not found (NOT_FOUND: no such route, e.g. a path parameter holding a slash)",
    409: "Conflict",
    422: "The request conflicts with an earlier one",
    413: "Body over its size limit (checked while reading, after gzip inflation)",
    500: "Unexpected failure (a bug, never bad input)",
    503: "Redis or the store is unreachable, or the backlog is over its limit",
}


def error_doc(status: int, *codes: str, description: str | None = None) -> Schema:
    """A response in the error envelope, listing the codes it may carry (with an example
    each, and Retry-After for a 503)."""
    schema = {
        "allOf": [
            ERROR_SCHEMA,
            {"properties": {"error": {"properties": {"code": {"enum": list(codes)}}}}},
        ]
    }
    examples = {
        code: {"value": {"success": False, "error": {"message": MESSAGES[code], "code": code}}}
        for code in codes
    }
    response: Schema = {
        "description": description or f"{STATUS_TEXT[status]}: {', '.join(codes)}",
        "content": {"application/json": {"schema": schema, "examples": examples}},
    }
    if status == 503:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before trying again",
                "schema": {"type": "integer"},
            }
        }
    return response


def query_param(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }
