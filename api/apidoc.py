"""Pieces of the OpenAPI document for the modules that document their own routes (api.admin,
api.ops), which api.openapi gathers: here, so that they need not import it."""

from __future__ import annotations

from typing import Any

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
