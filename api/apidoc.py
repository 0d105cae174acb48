"""Pieces of the OpenAPI document for the modules that document their own routes (api.admin,
api.ops), which api.openapi gathers: here, so that they need not import it."""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA = {"$ref": "#/components/schemas/Error"}


def error_doc(description: str, code: str) -> dict[str, Any]:
    """A response in the error envelope, with `code` as its example."""
    return {
        "description": description,
        "content": {
            "application/json": {
                "schema": ERROR_SCHEMA,
                "example": {"success": False, "error": {"message": description, "code": code}},
            }
        },
    }
