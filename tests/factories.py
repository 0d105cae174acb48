"""Test data: plain functions and constants, owned by the tests (the dev runner's seed in
cli/devseed.py is the newcomer's data, not the tests')."""

from __future__ import annotations

from typing import Any

CONTACT = "jane@example.com"
DEFINITION: dict[str, Any] = {
    "eventName": "order_completed",
    "description": "A customer completed an order",
    "properties": [
        {"propertyName": "order_total", "type": "number"},
        {"propertyName": "currency", "type": "string"},
        {"propertyName": "is_first_purchase", "type": "boolean"},
    ],
}
SEND: dict[str, Any] = {
    "eventName": "order_completed",
    "email": CONTACT,
    "eventProperties": {"order_total": 129.99, "currency": "USD", "is_first_purchase": True},
}
