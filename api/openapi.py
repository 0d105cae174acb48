"""The published OpenAPI 3.1 document (/openapi.json) and the page that renders it (/docs).

Written by hand, next to the code it describes, and held to it by tests: every route of the
app is documented, every example is valid against its schema, and generated requests from
this document (schemathesis) get answers that conform to it. Swagger UI's files come from the
`swagger-ui-py` package and are served from here: /docs needs no outside network.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from api import admin, ops
from api.apidoc import error_doc, ok_doc, query_param
from api.batch import MAX_ITEMS as MAX_BATCH_ITEMS
from api.http import JsonResponse
from shared.contacts import MAX_BULK_CONTACTS, MAX_EMAILS
from shared.definitions import MAX_NAME_LENGTH
from shared.eventlog import DEFAULT_LIMIT, MAX_LIMIT
from shared.settings import (
    MAX_BATCH_BODY_BYTES,
    MAX_BODY_BYTES,
    MAX_PROPERTIES_PER_DEFINITION,
    MAX_SEND_BODY_BYTES,
)

Schema = dict[str, Any]

EXAMPLE_ID = "60d5ec49f1b2c72d9c8b9999"
CONTACT_ID = "60d5ec49f1b2c72d9c8b1234"
PROJECT_ID = "60d5ec49f1b2c72d9c8b0001"
WHEN = "2026-05-08T13:45:00.000Z"


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Schema], required: list[str] | None = None) -> Schema:
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
EMAIL: Schema = {
    "type": "string",
    "format": "email",
    "description": "Trimmed, checked, then lower-cased; the same rules everywhere",
}

PROPERTY = _obj(
    {
        "propertyName": EVENT_NAME,
        "type": {"enum": ["string", "number", "date", "boolean"]},
        "description": NULLABLE_TEXT,
        "suggestedValues": {"type": "array", "items": {"type": ["string", "number", "boolean"]}},
    },
    ["propertyName", "type", "description", "suggestedValues"],
)
PROPERTY_INPUT = _obj(
    {
        "propertyName": EVENT_NAME | {"minLength": 1},
        "type": {"enum": ["string", "number", "date", "boolean"]},
        "description": NULLABLE_TEXT,
        "suggestedValues": {
            "description": "An array, or a comma-separated string; each value is trimmed and "
            "coerced to the declared type.",
            "type": ["array", "string", "null"],
        },
    },
    ["propertyName", "type"],
)
DEFINITION = _obj(
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
EVENT = _obj(
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
        "error": _obj({"code": {"type": "string"}, "message": {"type": "string"}}),
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
CONTACT = _obj(
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
CONTACT_INPUT = _obj(
    {
        "email": EMAIL,
        "firstName": NULLABLE_TEXT,
        "lastName": NULLABLE_TEXT,
        "userId": NULLABLE_TEXT,
        "customFields": {"type": ["object", "null"], "additionalProperties": SCALAR},
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
EMAILS = _obj(
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
ERROR = _obj(
    {
        "success": {"const": False},
        "error": _obj(
            {
                "message": {"type": "string"},
                "code": {"type": "string", "pattern": "^[A-Z_]+$"},
                "details": {
                    "type": "array",
                    "items": _obj(
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
        "content": {"application/json": {"schema": _obj(props, list(props)), "example": example}},
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

DEFINITION_PATCH = _obj(
    {
        "description": NULLABLE_TEXT,
        "properties": {
            "type": ["array", "null"],
            "maxItems": MAX_PROPERTIES_PER_DEFINITION,
            "items": ref("PropertyInput"),
            "description": "Replaces the whole schema",
        },
    }
)
DEFINITION_INPUT = _obj(
    {
        "eventName": {"type": "string"},
        "description": NULLABLE_TEXT,
        "properties": {
            "type": ["array", "null"],
            "maxItems": MAX_PROPERTIES_PER_DEFINITION,
            "items": ref("PropertyInput"),
        },
    },
    ["eventName"],
)
STORED_RECORD = _obj(
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
RECEIPT = _obj(
    {
        "index": {"type": "integer", "minimum": 0},
        "status": {"enum": ["accepted", "duplicate", "rejected"]},
        "id": {"type": ["string", "null"], "description": "null when rejected"},
        "error": _obj(
            {"code": {"type": "string"}, "message": {"type": "string"}}, ["code", "message"]
        ),
    },
    ["index", "status", "id"],
)
BATCH_RESULT = _obj(
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
SEND_BODY = _obj(
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
LOG_PAGE = _obj(
    {
        "events": {"type": "array", "items": ref("Event")},
        "nextCursor": {"type": ["string", "null"]},
    },
    ["events", "nextCursor"],
)
BULK_RESULT = _obj(
    {
        "successCount": {"type": "integer"},
        "failedCount": {"type": "integer"},
        "totalCount": {"type": "integer"},
        "errors": {
            "type": "array",
            "description": "eventpipe: which items failed, and why",
            "items": _obj(
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

PATHS: dict[str, Schema] = {
    "/v1/events": {
        "get": op(
            "List the active definitions, newest first",
            DEFINITIONS,
            common(
                (
                    200,
                    ok_doc(
                        "The definitions",
                        _obj({"events": {"type": "array", "items": ref("Definition")}}, ["events"]),
                        {"events": [DEFINITION_EXAMPLE]},
                    ),
                )
            ),
        ),
        "post": op(
            "Create a definition",
            DEFINITIONS,
            with_body(
                (201, ok_doc("Created", ref("Definition"), DEFINITION_EXAMPLE)),
                (
                    400,
                    error_doc(
                        400,
                        "VALIDATION_FAILED",
                        "INVALID_EVENT_NAME_CHARACTERS",
                        "MAX_EVENTS_REACHED",
                    ),
                ),
                (409, error_doc(409, "EVENT_ALREADY_EXISTS")),
            ),
            requestBody=body(DEFINITION_INPUT, DEFINITION_INPUT_EXAMPLE),
        ),
    },
    "/v1/events/eventName/{eventName}": {
        "parameters": [EVENT_NAME_PARAM],
        "get": op("Get a definition", DEFINITIONS, common((200, DEFINITION_OK), NO_EVENT)),
        "patch": op(
            "Update a definition: `properties`, when given, replaces the whole schema",
            DEFINITIONS,
            with_body(
                (200, DEFINITION_OK),
                (400, error_doc(400, "VALIDATION_FAILED", "NO_DATA_TO_UPDATE")),
                NO_EVENT,
            ),
            requestBody=body(DEFINITION_PATCH, {"description": "Any completed order"}),
        ),
        "delete": op(
            "Delete a definition (soft: stored events stay; the name may be created again)",
            DEFINITIONS,
            common((200, deleted("Event deleted successfully")), NO_EVENT),
        ),
    },
    "/v1/events/send": {
        "post": op(
            "Send an event (asynchronous: 202 once it is durably queued)",
            SENDING,
            common(
                (413, error_doc(413, "PAYLOAD_TOO_LARGE")),
                (
                    202,
                    ok_doc(
                        "Accepted and queued (or, with `Idempotent-Replayed: true`, the answer "
                        "given to the first request with this Idempotency-Key)",
                        ref("Event"),
                        {**STORED_EXAMPLE, "contactId": None, "status": "queued"},
                    )
                    | {"headers": {"Idempotent-Replayed": REPLAYED, "Preference-Applied": APPLIED}},
                ),
                (
                    400,
                    error_doc(
                        400,
                        "VALIDATION_FAILED",
                        "EMAIL_OR_CONTACT_ID_REQUIRED",
                        "UNKNOWN_PROPERTY",
                        "INVALID_PROPERTY_VALUE",
                    ),
                ),
                (
                    201,
                    ok_doc(
                        "With `Prefer: wait=N`: stored within N seconds (AutoSend's answer)",
                        STORED_RECORD,
                        {k: v for k, v in STORED_EXAMPLE.items() if k != "status"},
                    )
                    | {"headers": {"Preference-Applied": APPLIED, "Idempotent-Replayed": REPLAYED}},
                ),
                (
                    404,
                    error_doc(404, "EVENT_NOT_FOUND", "CONTACT_NOT_FOUND_FOR_EVENT")
                    | {
                        "description": "EVENT_NOT_FOUND; with `Prefer: wait=N`, "
                        "CONTACT_NOT_FOUND_FOR_EVENT: no such contact, nothing recorded",
                    },
                ),
                (409, error_doc(409, "IDEMPOTENCY_KEY_IN_USE")),
                (422, error_doc(422, "IDEMPOTENCY_KEY_MISMATCH")),
            ),
            requestBody=body(SEND_BODY, SEND_EXAMPLE, MAX_SEND_BODY_BYTES),
            parameters=[IDEMPOTENCY_KEY, PREFER],
        )
    },
    "/v1/events/batch": {
        "post": op(
            f"Send 1..{MAX_BATCH_ITEMS} events: a receipt for each, in request order",
            SENDING,
            common(
                (413, error_doc(413, "PAYLOAD_TOO_LARGE")),
                (
                    202,
                    ok_doc(
                        "At least one item accepted or a duplicate",
                        BATCH_RESULT,
                        BATCH_EXAMPLE,
                    ),
                ),
                (
                    400,
                    {
                        "description": "No item accepted (the receipts say why), or no "
                        f"`events` array of 1..{MAX_BATCH_ITEMS} items: VALIDATION_FAILED",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "allOf": [
                                        ref("Error"),
                                        {
                                            "properties": {
                                                "error": {
                                                    "properties": {
                                                        "code": {"enum": ["VALIDATION_FAILED"]}
                                                    }
                                                },
                                                "data": BATCH_RESULT,
                                            }
                                        },
                                    ]
                                },
                                "example": {
                                    "success": False,
                                    "error": {
                                        "message": "No event of the batch was accepted",
                                        "code": "VALIDATION_FAILED",
                                    },
                                    "data": {
                                        "receipts": [BATCH_EXAMPLE["receipts"][2]],
                                        "accepted": 0,
                                        "duplicates": 0,
                                        "rejected": 1,
                                    },
                                },
                            }
                        },
                    },
                ),
            ),
            requestBody=body(
                _obj(
                    {
                        "events": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_BATCH_ITEMS,
                            "items": {
                                "description": "The body of /v1/events/send, plus an optional "
                                "`idempotencyKey` (the same namespace as the Idempotency-Key "
                                "header); each item is checked on its own",
                            },
                        }
                    },
                    ["events"],
                ),
                {
                    "events": [
                        {**SEND_EXAMPLE, "idempotencyKey": "order-1001-completed"},
                        {"eventName": "order_completed", "email": "bob@example.com"},
                    ]
                },
                MAX_BATCH_BODY_BYTES,
            ),
        )
    },
    "/v1/events/{eventId}": {
        "parameters": [path_param("eventId", ID, "The id the send answered")],
        "get": op(
            "An event's status: queued, stored (the stored record) or failed (with its error)",
            SENDING,
            common(
                (200, ok_doc("The event", ref("Event"), STORED_EXAMPLE)),
                (404, error_doc(404, "NOT_FOUND")),
            ),
        ),
    },
    "/v1/contacts": {
        "post": op(
            "Create a contact",
            CONTACTS,
            with_body(
                (201, ok_doc("Created", ref("Contact"), CONTACT_EXAMPLE)),
                INVALID,
                (409, error_doc(409, "CONTACT_ALREADY_EXISTS")),
            ),
            requestBody=body(ref("ContactInput"), CONTACT_INPUT_EXAMPLE),
        )
    },
    "/v1/contacts/email": {
        "post": op(
            'Upsert a contact by email ("" clears a text field; customFields are merged)',
            CONTACTS,
            with_body((200, CONTACT_OK), INVALID),
            requestBody=body(ref("ContactInput"), CONTACT_INPUT_EXAMPLE),
        )
    },
    "/v1/contacts/bulk-update": {
        "post": op(
            f"Upsert 1..{MAX_BULK_CONTACTS} contacts by email; bad items are counted, not fatal",
            CONTACTS,
            with_body(
                (
                    200,
                    ok_doc(
                        "Counts",
                        BULK_RESULT,
                        {"successCount": 1, "failedCount": 0, "totalCount": 1, "errors": []},
                    ),
                ),
                INVALID,
            ),
            requestBody=body(
                _obj(
                    {
                        "contacts": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_BULK_CONTACTS,
                            "items": {
                                "description": "A ContactInput; an item that is not valid is "
                                "counted in failedCount and listed in errors, not refused",
                            },
                        }
                    },
                    ["contacts"],
                ),
                {"contacts": [CONTACT_INPUT_EXAMPLE]},
            ),
        )
    },
    "/v1/contacts/search/emails": {
        "post": op(
            "The contacts of these emails (unknown ones left out)",
            CONTACTS,
            with_body(
                (
                    200,
                    ok_doc(
                        "The contacts found",
                        _obj(
                            {"contacts": {"type": "array", "items": ref("Contact")}}, ["contacts"]
                        ),
                        {"contacts": [CONTACT_EXAMPLE]},
                    ),
                ),
                INVALID,
            ),
            requestBody=body(ref("Emails"), {"emails": ["jane@example.com"]}),
        )
    },
    "/v1/contacts/remove": {
        "post": op(
            "Delete the contacts of these emails, with their event logs",
            CONTACTS,
            with_body((200, deleted(None)), INVALID),
            requestBody=body(ref("Emails"), {"emails": ["jane@example.com"]}),
        )
    },
    "/v1/contacts/{contactId}": {
        "parameters": [CONTACT_ID_PARAM],
        "get": op("Get a contact", CONTACTS, common((200, CONTACT_OK), NO_CONTACT)),
        "delete": op(
            "Delete a contact, with its event log",
            CONTACTS,
            common((200, deleted("Contact deleted successfully")), NO_CONTACT),
        ),
    },
    "/v1/contacts/email/userId/{userId}": {
        "parameters": [
            path_param("userId", {"type": "string", "minLength": 1}, "The contacts' userId")
        ],
        "delete": op(
            "Delete every contact with this userId, with their event logs",
            CONTACTS,
            common((200, deleted("Contact deleted successfully")), NO_CONTACT),
        ),
    },
    "/v1/contacts/{contactId}/events": {
        "parameters": [CONTACT_ID_PARAM],
        "get": op(
            "A contact's event log, newest first, cursor paginated",
            CONTACTS,
            common(
                (
                    200,
                    ok_doc(
                        "One page",
                        LOG_PAGE,
                        {"events": [STORED_EXAMPLE], "nextCursor": "czoxMjM0"},
                    ),
                ),
                INVALID,
                NO_CONTACT,
            ),
            parameters=[
                query_param(
                    "limit",
                    {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_LIMIT,
                        "default": DEFAULT_LIMIT,
                    },
                    "Events per page",
                ),
                query_param(
                    "cursor",
                    {"type": "string", "pattern": "^[A-Za-z0-9_-]*$"},
                    "The previous page's nextCursor (empty: the first page; anything else is 400)",
                ),
                query_param(
                    "eventName",
                    {"type": "string", "pattern": "^[A-Za-z0-9_]{0,64}$"},
                    "Only events of this name (empty: every name)",
                ),
                query_param("since", {"type": "string"}, "RFC 3339; createdAt at or after"),
                query_param("until", {"type": "string"}, "RFC 3339; createdAt before"),
            ],
        ),
    },
}


def build_document() -> dict[str, Any]:
    """This module's paths and the operations endpoints' (api.admin, api.ops: each module
    documents its own routes)."""
    paths: dict[str, Schema] = {**PATHS, **admin.OPENAPI_PATHS, **ops.OPENAPI_PATHS}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "eventpipe",
            "version": "0.1.0",
            "description": "Event ingestion speaking AutoSend's REST contract. Every answer "
            'is an envelope: `{"success": true, "data": ...}` or `{"success": false, '
            '"error": {"message", "code", "details"?}}`.',
        },
        "servers": [{"url": "/"}],
        "security": [{"apiKey": []}],
        "tags": [{"name": t} for t in (DEFINITIONS, SENDING, CONTACTS, "Operations")],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A project API key, `AS_...`",
                },
                **admin.SECURITY_SCHEMES,
            },
        },
    }


DOCUMENT = build_document()


def _swagger_ui_static() -> Path:
    # Located, not imported: the package's Python side (jinja2, yaml) is not needed.
    spec = importlib.util.find_spec("swagger_ui")
    assert spec is not None and spec.submodule_search_locations, "swagger-ui-py is missing"
    return Path(next(iter(spec.submodule_search_locations))) / "static"


STATIC = _swagger_ui_static()
DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>eventpipe API</title>
  <link rel="stylesheet" href="/docs/static/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png">
</head>
<body>
  <div id="docs"></div>
  <script src="/docs/static/swagger-ui-bundle.js"></script>
  <script>
    // validatorUrl null: Swagger UI would otherwise send the document to swagger.io.
    SwaggerUIBundle({url: "/openapi.json", dom_id: "#docs", validatorUrl: null});
  </script>
</body>
</html>
"""


async def openapi_json(request: Request) -> Response:
    return JsonResponse(DOCUMENT)


async def docs(request: Request) -> Response:
    return HTMLResponse(DOCS_PAGE)


ROUTES = [
    Route("/openapi.json", openapi_json, methods=["GET"], include_in_schema=False),
    Route("/docs", docs, methods=["GET"], include_in_schema=False),
    Mount("/docs/static", StaticFiles(directory=STATIC), name="docs-static"),
]
