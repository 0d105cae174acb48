"""The pieces of the published OpenAPI 3.1 document: schemas, examples, responses and
parameters. Every endpoint module documents its own paths with these (its `OPENAPI_PATHS`),
and api.openapi gathers them."""

from __future__ import annotations

from typing import Any

from api.contacts import (
    MAX_CUSTOM_FIELDS,
    MAX_CUSTOM_KEY,
    MAX_CUSTOM_VALUE,
    MAX_EMAILS,
    MAX_TEXT,
)
from api.definitions import (
    MAX_DESCRIPTION_LENGTH,
    MAX_NAME_LENGTH,
    MAX_SUGGESTED_BYTES,
    MAX_SUGGESTED_VALUES,
)
from shared.settings import (
    MAX_BODY_BYTES,
    MAX_DEFINITIONS_PER_PROJECT,
    MAX_PROPERTIES_PER_DEFINITION,
)

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
    "RATE_LIMIT_EXCEEDED": "Rate limit exceeded for this project; retry after 1 s",
}
STATUS_TEXT = {
    400: "Bad request",
    401: "Missing, malformed, unknown or revoked API key",
    404: "Not found (NOT_FOUND: no such route, e.g. a path parameter holding a slash)",
    409: "Conflict",
    422: "The request conflicts with an earlier one",
    413: "Body over its size limit (checked while reading, after gzip inflation)",
    429: "Over the project's rate limit (set per project; none by default)",
    500: "Unexpected failure (a bug, never bad input)",
    503: "Redis or the store is unreachable, or the backlog (or the project's share of it) is "
    "over its limit",
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
    if status in (503, 429):
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before trying again",
                "schema": {"type": "integer"},
            }
        }
    if status == 429:
        response["headers"].update(RATE_LIMIT_HEADERS)
        example = {"message": MESSAGES["RATE_LIMIT_EXCEEDED"], "code": codes[0], "retryAfter": 1}
        examples[codes[0]] = {"value": {"success": False, "error": example}}
    return response


# On every answer to a send of a rate-limited project (README, "Rate limits and backlog
# shares"); absent for a project without a rate limit.
RATE_LIMIT_HEADERS: dict[str, Schema] = {
    "X-RateLimit-Limit": {
        "description": "Rate-limited projects: the burst, the requests the bucket holds full",
        "schema": {"type": "integer"},
    },
    "X-RateLimit-Remaining": {
        "description": "Rate-limited projects: the requests left now (as this API process "
        "sees the shared bucket)",
        "schema": {"type": "integer"},
    },
    "X-RateLimit-Reset": {
        "description": "Rate-limited projects: when the bucket is full again (epoch seconds)",
        "schema": {"type": "integer"},
    },
}
RATE_LIMITED = (429, error_doc(429, "RATE_LIMIT_EXCEEDED"))


def query_param(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


EXAMPLE_ID = "60d5ec49f1b2c72d9c8b9999"
CONTACT_ID = "60d5ec49f1b2c72d9c8b1234"
PROJECT_ID = "60d5ec49f1b2c72d9c8b0001"
WHEN = "2026-05-08T13:45:00.000Z"


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict[str, Schema], required: list[str] | None = None) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


ID: Schema = {"type": "string", "pattern": "^[0-9a-f]{24}$", "examples": [EXAMPLE_ID]}
TIMESTAMP: Schema = {"type": "string", "format": "date-time", "examples": [WHEN]}
EVENT_NAME: Schema = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_]+$",
    "maxLength": MAX_NAME_LENGTH,
}
SCALAR: Schema = {"type": ["string", "number", "boolean"]}
NULLABLE_TEXT: Schema = {"type": ["string", "null"]}
DESCRIPTION: Schema = {"type": ["string", "null"], "maxLength": MAX_DESCRIPTION_LENGTH}
CONTACT_TEXT: Schema = {"type": ["string", "null"], "maxLength": MAX_TEXT}
EMAIL: Schema = {
    "type": "string",
    "format": "email",
    "description": "Trimmed, checked, then lower-cased; the same rules everywhere",
}

PROPERTY = obj(
    {
        "propertyName": EVENT_NAME,
        "type": {"enum": ["string", "number", "date", "boolean"]},
        "description": NULLABLE_TEXT,
        "suggestedValues": {
            "type": "array",
            "maxItems": MAX_SUGGESTED_VALUES,
            "items": {"type": ["string", "number", "boolean"]},
        },
    },
    ["propertyName", "type", "description", "suggestedValues"],
)
PROPERTY_INPUT = obj(
    {
        "propertyName": EVENT_NAME | {"minLength": 1},
        "type": {"enum": ["string", "number", "date", "boolean"]},
        "description": DESCRIPTION,
        "suggestedValues": {
            "description": "An array, or a comma-separated string; each value is trimmed and "
            f"coerced to the declared type. At most {MAX_SUGGESTED_VALUES} values, and at most "
            f"{MAX_SUGGESTED_BYTES} bytes once coerced (as JSON).",
            "type": ["array", "string", "null"],
            "maxItems": MAX_SUGGESTED_VALUES,
        },
    },
    ["propertyName", "type"],
)
DEFINITION = obj(
    {
        "id": ID,
        "eventName": EVENT_NAME,
        "description": NULLABLE_TEXT,
        "properties": {"type": "array", "items": ref("Property")},
        "projectId": ID,
        "createdAt": TIMESTAMP,
        "updatedAt": TIMESTAMP,
    },
    ["id", "eventName", "description", "properties", "projectId", "createdAt", "updatedAt"],
)
DEFINITION_EXAMPLE = {
    "id": EXAMPLE_ID,
    "eventName": "order_completed",
    "description": "A customer completed an order",
    "properties": [
        {
            "propertyName": "order_total",
            "type": "number",
            "description": None,
            "suggestedValues": [],
        },
        {
            "propertyName": "currency",
            "type": "string",
            "description": None,
            "suggestedValues": ["USD", "EUR"],
        },
    ],
    "projectId": PROJECT_ID,
    "createdAt": WHEN,
    "updatedAt": WHEN,
}
DEFINITION_INPUT_EXAMPLE = {
    "eventName": "order_completed",
    "description": "A customer completed an order",
    "properties": [
        {"propertyName": "order_total", "type": "number"},
        {"propertyName": "currency", "type": "string", "suggestedValues": "USD, EUR"},
    ],
}
EVENT = obj(
    {
        "id": ID,
        "eventName": {"type": "string"},
        "contactId": {"type": ["string", "null"]},
        "properties": {
            "type": "object",
            "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
        },
        "createdAt": TIMESTAMP,
        "status": {"enum": ["queued", "stored", "failed"]},
        "error": obj({"code": {"type": "string"}, "message": {"type": "string"}}),
    },
    ["id", "eventName", "contactId", "properties", "createdAt", "status"],
)
STORED_EXAMPLE = {
    "id": EXAMPLE_ID,
    "eventName": "order_completed",
    "contactId": CONTACT_ID,
    "properties": {"order_total": 129.99, "currency": "USD", "is_first_purchase": True},
    "createdAt": WHEN,
    "status": "stored",
}
SEND_EXAMPLE = {
    "eventName": "order_completed",
    "email": "jane@example.com",
    "eventProperties": {"order_total": "129.99", "currency": "USD", "is_first_purchase": True},
}
CONTACT = obj(
    {
        "id": ID,
        "email": {"type": "string", "format": "email"},
        "firstName": NULLABLE_TEXT,
        "lastName": NULLABLE_TEXT,
        "userId": NULLABLE_TEXT,
        "customFields": {"type": "object", "additionalProperties": SCALAR},
        "projectId": ID,
        "createdAt": TIMESTAMP,
        "updatedAt": TIMESTAMP,
    },
    [
        "id",
        "email",
        "firstName",
        "lastName",
        "userId",
        "customFields",
        "projectId",
        "createdAt",
        "updatedAt",
    ],
)
CONTACT_EXAMPLE = {
    "id": CONTACT_ID,
    "email": "jane@example.com",
    "firstName": "Jane",
    "lastName": "Doe",
    "userId": "user_42",
    "customFields": {"plan": "pro", "seats": 3},
    "projectId": PROJECT_ID,
    "createdAt": WHEN,
    "updatedAt": WHEN,
}
CONTACT_INPUT = obj(
    {
        "email": EMAIL,
        "firstName": CONTACT_TEXT,
        "lastName": CONTACT_TEXT,
        "userId": CONTACT_TEXT,
        "customFields": {
            "type": ["object", "null"],
            "maxProperties": MAX_CUSTOM_FIELDS,
            "propertyNames": {"maxLength": MAX_CUSTOM_KEY},
            "additionalProperties": SCALAR | {"maxLength": MAX_CUSTOM_VALUE},
            "description": f"Merged into the stored ones by an upsert; at most "
            f"{MAX_CUSTOM_FIELDS} fields, also once merged (400 otherwise), names of at most "
            f"{MAX_CUSTOM_KEY} characters, string values of at most {MAX_CUSTOM_VALUE}",
        },
    },
    ["email"],
)
CONTACT_INPUT_EXAMPLE = {
    "email": "Jane@Example.com",
    "firstName": "Jane",
    "lastName": "Doe",
    "userId": "user_42",
    "customFields": {"plan": "pro", "seats": 3},
}
EMAILS = obj(
    {
        "emails": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_EMAILS,
            "items": EMAIL,
        }
    },
    ["emails"],
)
ERROR = obj(
    {
        "success": {"const": False},
        "error": obj(
            {
                "message": {"type": "string"},
                "code": {"type": "string", "pattern": "^[A-Z_]+$"},
                "retryAfter": {
                    "type": "integer",
                    "description": "RATE_LIMIT_EXCEEDED: seconds to wait (as Retry-After)",
                },
                "details": {
                    "type": "array",
                    "items": obj(
                        {"field": {"type": "string"}, "message": {"type": "string"}},
                        ["field", "message"],
                    ),
                },
            },
            ["message", "code"],
        ),
    },
    ["success", "error"],
)

SCHEMAS: dict[str, Schema] = {
    "Error": ERROR,
    "Property": PROPERTY,
    "PropertyInput": PROPERTY_INPUT,
    "Definition": DEFINITION,
    "Event": EVENT,
    "Contact": CONTACT,
    "ContactInput": CONTACT_INPUT,
    "Emails": EMAILS,
}

# --- responses ---------------------------------------------------------------------------


def deleted(message: str | None) -> Schema:
    props: dict[str, Schema] = {"success": {"const": True}}
    example: dict[str, Any] = {"success": True}
    if message is not None:
        props["message"] = {"type": "string"}
        example["message"] = message
    return {
        "description": "Done",
        "content": {"application/json": {"schema": obj(props, list(props)), "example": example}},
    }


def body(schema: Schema, example: Any, limit: int = MAX_BODY_BYTES) -> Schema:
    return {
        "required": True,
        "description": f"JSON, at most {limit} bytes (gzip accepted: the limit applies after "
        "inflating). Unknown top-level fields are ignored.",
        "content": {"application/json": {"schema": schema, "example": example}},
    }


def common(*extra: tuple[int, Schema]) -> dict[str, Schema]:
    """Every authenticated endpoint may answer these, besides its own."""
    responses = {
        "401": error_doc(401, "UNAUTHORIZED"),
        "503": error_doc(503, "SERVICE_UNAVAILABLE"),
    }
    responses.update({str(status): response for status, response in extra})
    return responses


def with_body(*extra: tuple[int, Schema]) -> dict[str, Schema]:
    return common((413, error_doc(413, "PAYLOAD_TOO_LARGE")), *extra)


def op(summary: str, tag: str, responses: dict[str, Schema], **more: Any) -> Schema:
    return {"summary": summary, "tags": [tag], "responses": responses, **more}


def path_param(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "1..255 printable ASCII characters, per project, kept "
    "IDEMPOTENCY_TTL_SECONDS (24 h): a repeat with the same body answers the first answer "
    "and makes no second event",
    "schema": {"type": "string", "pattern": "^[\\x20-\\x7e]{1,255}$"},
}
PREFER = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "description": "`wait=N` (RFC 7240): answer when the worker is done, up to N seconds "
    "(capped by MAX_WAIT_SECONDS): 201 with the stored record, or 404 "
    "CONTACT_NOT_FOUND_FOR_EVENT with nothing recorded; after N seconds, the usual 202",
    "schema": {"type": "string", "examples": ["wait=10"]},
}
APPLIED = {
    "description": "`wait=N` when the wait was honoured (N as capped)",
    "schema": {"type": "string", "pattern": "^wait=[0-9]+$"},
}
REPLAYED = {
    "description": "`true` when this is the first request's answer, replayed",
    "schema": {"type": "string", "enum": ["true"]},
}
EVENT_NAME_PARAM = path_param(
    "eventName", EVENT_NAME | {"minLength": 1}, "The definition's eventName"
)
CONTACT_ID_PARAM = path_param("contactId", ID, "The contact's id")
INVALID = (400, error_doc(400, "VALIDATION_FAILED"))
NO_EVENT = (404, error_doc(404, "EVENT_NOT_FOUND", "NOT_FOUND"))
NO_CONTACT = (404, error_doc(404, "CONTACT_NOT_FOUND", "NOT_FOUND"))
DEFINITION_OK = ok_doc("The definition", ref("Definition"), DEFINITION_EXAMPLE)
CONTACT_OK = ok_doc("The contact", ref("Contact"), CONTACT_EXAMPLE)

DEFINITION_PATCH = obj(
    {
        "description": DESCRIPTION,
        "properties": {
            "type": ["array", "null"],
            "maxItems": MAX_PROPERTIES_PER_DEFINITION,
            "items": ref("PropertyInput"),
            "description": "Replaces the whole schema",
        },
    }
)
DEFINITION_INPUT = obj(
    {
        "eventName": {"type": "string"},
        "description": DESCRIPTION,
        "properties": {
            "type": ["array", "null"],
            "maxItems": MAX_PROPERTIES_PER_DEFINITION,
            "items": ref("PropertyInput"),
        },
    },
    ["eventName"],
)
STORED_RECORD = obj(
    {
        "id": ID,
        "eventName": {"type": "string"},
        "contactId": ID,
        "properties": {
            "type": "object",
            "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
        },
        "createdAt": TIMESTAMP,
    },
    ["id", "eventName", "contactId", "properties", "createdAt"],
)
RECEIPT = obj(
    {
        "index": {"type": "integer", "minimum": 0},
        "status": {"enum": ["accepted", "duplicate", "rejected"]},
        "id": {"type": ["string", "null"], "description": "null when rejected"},
        "error": obj(
            {"code": {"type": "string"}, "message": {"type": "string"}}, ["code", "message"]
        ),
    },
    ["index", "status", "id"],
)
BATCH_RESULT = obj(
    {
        "receipts": {"type": "array", "items": RECEIPT},
        "accepted": {"type": "integer"},
        "duplicates": {"type": "integer"},
        "rejected": {"type": "integer"},
    },
    ["receipts", "accepted", "duplicates", "rejected"],
)
BATCH_EXAMPLE: dict[str, Any] = {
    "receipts": [
        {"index": 0, "status": "accepted", "id": EXAMPLE_ID},
        {"index": 1, "status": "duplicate", "id": "60d5ec49f1b2c72d9c8b9998"},
        {
            "index": 2,
            "status": "rejected",
            "id": None,
            "error": {
                "code": "INVALID_PROPERTY_VALUE",
                "message": 'Property "order_total" must be a number',
            },
        },
    ],
    "accepted": 1,
    "duplicates": 1,
    "rejected": 1,
}
SEND_BODY = obj(
    {
        "eventName": {"type": "string"},
        "email": EMAIL | {"type": ["string", "null"]},
        "contactId": {
            "type": ["string", "null"],
            "pattern": "^([0-9a-f]{24}|\\s*)$",
            "description": "Wins over email; blank counts as absent",
        },
        "eventProperties": {
            "type": ["object", "null"],
            "description": "Every key declared on the definition; values coerced to its type",
        },
    },
    ["eventName"],
)
LOG_PAGE = obj(
    {
        "events": {"type": "array", "items": ref("Event")},
        "nextCursor": {"type": ["string", "null"]},
    },
    ["events", "nextCursor"],
)
BULK_RESULT = obj(
    {
        "successCount": {"type": "integer"},
        "failedCount": {"type": "integer"},
        "totalCount": {"type": "integer"},
        "errors": {
            "type": "array",
            "description": "eventpipe: which items failed, and why",
            "items": obj(
                {
                    "index": {"type": "integer"},
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                }
            ),
        },
    },
    ["successCount", "failedCount", "totalCount"],
)

DEFINITIONS = "Event definitions"
SENDING = "Sending events"
CONTACTS = "Contacts"
OPERATIONS = "Operations"
