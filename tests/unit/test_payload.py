"""shared.queue: the versioned job payload, its kind, and the previous release's version."""

from __future__ import annotations

from typing import Any

import pytest

from shared.errors import EventpipeError
from shared.queue import EVENT, GROUP, REPLAY, Payload, make_payload, read_payload


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


def test_version_3_round_trip_with_the_kind() -> None:
    events = [make_event(1), make_event(2), make_event(3)]
    payload = make_payload(events)
    assert payload == {"v": 3, "kind": GROUP, "events": events}
    assert read_payload(payload) == Payload(GROUP, events)
    for kind in (REPLAY, EVENT):
        assert read_payload(make_payload(events, kind)) == Payload(kind, events)


@pytest.mark.parametrize(
    ("payload", "job_id", "kind"),
    [
        ({"v": 2, "events": []}, "g6b0f0b382c4e8b717e919e41", GROUP),
        ({"v": 2, "events": [], "replay": True}, "r000000000000000000000006", REPLAY),
        ({"v": 2, "events": [], "replay": True}, "000000000000000000000007", EVENT),
    ],
    ids=["group", "replay", "split-out event"],
)
def test_the_previous_release_kinds_come_from_replay_and_the_id(
    payload: dict[str, Any], job_id: str, kind: str
) -> None:
    assert read_payload(payload, job_id).kind == kind


def test_make_payload_copies_the_sequence() -> None:
    events = (make_event(1), make_event(2))
    payload = make_payload(events)
    assert isinstance(payload["events"], list)
    assert payload["events"] == list(events)
    source = [make_event(1)]
    payload = make_payload(source)
    source.append(make_event(2))
    assert read_payload(payload).events == [make_event(1)]


def test_read_payload_returns_a_new_list() -> None:
    payload = make_payload([make_event(1)])
    read = read_payload(payload).events
    read.append(make_event(2))
    assert read_payload(payload).events == [make_event(1)]


def test_empty_version_3() -> None:
    assert read_payload(make_payload([])).events == []


@pytest.mark.parametrize("version", [None, 0, 1, 4, "3", "2", 99])
def test_unknown_version(version: Any) -> None:
    payload: dict[str, Any] = {"kind": GROUP, "events": [make_event()], "event": make_event()}
    if version is not None:
        payload["v"] = version
    with pytest.raises(EventpipeError) as info:
        read_payload(payload)
    assert info.value.code == "BAD_PAYLOAD"
    assert repr(version) in info.value.message


@pytest.mark.parametrize(
    "payload",
    [
        {"v": 3, "kind": GROUP},
        {"v": 3, "kind": GROUP, "events": "abc"},
        {"v": 3, "kind": GROUP, "events": {"a": 1}},
        {"v": 3, "kind": GROUP, "events": [1]},
        {"v": 3, "events": []},
        {"v": 3, "kind": "other", "events": []},
        {"v": 2},
        {"v": True, "kind": GROUP, "events": []},
    ],
    ids=[
        "no-events",
        "events-string",
        "events-object",
        "event-not-object",
        "no-kind",
        "unknown-kind",
        "v2-no-events",
        "v-true",
    ],
)
def test_malformed_payload_is_bad_payload(payload: dict[str, Any]) -> None:
    with pytest.raises(EventpipeError) as info:
        read_payload(payload)
    assert info.value.code == "BAD_PAYLOAD"
