"""shared.queue: the versioned job payload."""

from __future__ import annotations

from typing import Any

import pytest

from shared.errors import EventpipeError
from shared.queue import make_payload, read_payload


def make_event(n: int = 1) -> dict[str, Any]:
    return {
        "id": f"60d5ec49f1b2c72d9c8b{n:04x}",
        "projectId": "60d5ec49f1b2c72d9c8b0001",
        "eventName": "order_completed",
        "email": "jane@example.com",
        "contactId": None,
        "properties": {"order_total": 129.99, "currency": "USD", "is_first_purchase": True},
        "createdAt": "2026-05-08T13:45:00.000Z",
    }


def test_version_2_round_trip() -> None:
    events = [make_event(1), make_event(2), make_event(3)]
    payload = make_payload(events)
    assert payload == {"v": 2, "events": events}
    assert "replay" not in payload
    assert read_payload(payload) == events


def test_version_2_replay_round_trip() -> None:
    events = [make_event(1)]
    payload = make_payload(events, replay=True)
    assert payload == {"v": 2, "events": events, "replay": True}
    assert read_payload(payload) == events


def test_make_payload_copies_the_sequence() -> None:
    events = (make_event(1), make_event(2))
    payload = make_payload(events)
    assert isinstance(payload["events"], list)
    assert payload["events"] == list(events)
    source = [make_event(1)]
    payload = make_payload(source)
    source.append(make_event(2))
    assert read_payload(payload) == [make_event(1)]


def test_read_payload_returns_a_new_list() -> None:
    payload = make_payload([make_event(1)])
    read = read_payload(payload)
    read.append(make_event(2))
    assert read_payload(payload) == [make_event(1)]


def test_empty_version_2() -> None:
    assert read_payload(make_payload([])) == []


def test_version_1_is_a_one_element_list() -> None:
    event = make_event(7)
    assert read_payload({"v": 1, "event": event}) == [event]


@pytest.mark.parametrize("version", [None, 0, 3, "2", "1", 99])
def test_unknown_version(version: Any) -> None:
    payload: dict[str, Any] = {"events": [make_event()], "event": make_event()}
    if version is not None:
        payload["v"] = version
    with pytest.raises(EventpipeError) as info:
        read_payload(payload)
    assert info.value.code == "BAD_PAYLOAD"
    assert repr(version) in info.value.message


@pytest.mark.parametrize(
    "payload",
    [
        {"v": 2},
        {"v": 1},
        {"v": 2, "events": "abc"},
        {"v": 2, "events": {"a": 1}},
        {"v": True, "event": {"id": "x"}},
    ],
    ids=["v2-no-events", "v1-no-event", "v2-events-string", "v2-events-object", "v-true"],
)
def test_malformed_payload_is_bad_payload(payload: dict[str, Any]) -> None:
    with pytest.raises(EventpipeError) as info:
        read_payload(payload)
    assert info.value.code == "BAD_PAYLOAD"
