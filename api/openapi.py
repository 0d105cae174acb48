"""The published OpenAPI 3.1 document, gathered from the endpoint modules.

Written by hand, next to the code it describes (each endpoint module's `OPENAPI_PATHS`), and
held to it by tests: every route of the app is documented, every example is valid against its
schema, and generated requests from this document (schemathesis) get answers that conform to
it.
"""

from __future__ import annotations

from typing import Any

from api.apidoc import CONTACTS, DEFINITIONS, OPERATIONS, SCHEMAS, SENDING, Schema
from api.routes import admin, batch, contacts, definitions, health, send

ENDPOINT_MODULES = (definitions, send, batch, contacts, admin, health)


def build_document() -> dict[str, Any]:
    """Every endpoint module's paths, in the order of the published tags."""
    paths: dict[str, Schema] = {}
    for module in ENDPOINT_MODULES:
        paths.update(module.OPENAPI_PATHS)
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
        "tags": [{"name": t} for t in (DEFINITIONS, SENDING, CONTACTS, OPERATIONS)],
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
