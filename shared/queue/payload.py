"""The job payload: the events a job carries and what kind of job it is.

Version 3 (this release) is `{"v": 3, "kind": kind, "events": [event, ...]}`. Version 2, the
previous release's, had no kind: `{"v": 2, "events": [...]}` plus `"replay": true` on replay
and split-out jobs, told apart by id prefix ("r" for a replay). It is still read, so jobs
queued before an upgrade run after it. An event is the dict api.schema.check_send builds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.errors import EventpipeError

Event = dict[str, Any]
PAYLOAD_VERSION = 3
# A group of accepted events written by the API: a running group job claims more of these.
GROUP = "group"
# Failed events requeued by `eventpipe replay`: each one that fails again is split out.
REPLAY = "replay"
# One failed event split out of its batch, its job keyed by the event id: run again (`rq
# requeue`), it fails again as itself.
EVENT = "event"
# A part of a job the store refused, handed off when the job's time ran short while it
# split the refused events apart: never claims and is never claimed (else the parts would
# regrow into groups); carries the statement timeouts its events have spent.
SPLIT = "split"
KINDS = (GROUP, REPLAY, EVENT, SPLIT)
_LEGACY_REPLAY_PREFIX = "r"


@dataclass(frozen=True)
class Payload:
    kind: str
    events: list[Event]
    timeouts: int = 0


def make_payload(events: Sequence[Event], kind: str = GROUP, timeouts: int = 0) -> dict[str, Any]:
    payload = {"v": PAYLOAD_VERSION, "kind": kind, "events": list(events)}
    if timeouts:
        payload["timeouts"] = timeouts
    return payload


def read_payload(payload: Any, job_id: str = "") -> Payload:
    """A job payload of this release or the previous one; anything else is BAD_PAYLOAD."""
    version = payload.get("v") if isinstance(payload, Mapping) else None
    events = payload.get("events") if isinstance(payload, Mapping) else None
    # `type(...) is int`: JSON true must not pass for a version number.
    if type(version) is not int or version not in (2, 3) or not isinstance(events, list):
        raise EventpipeError(f"Unreadable job payload (version {version!r})", code="BAD_PAYLOAD")
    kind = payload.get("kind") if version == 3 else _legacy_kind(payload, job_id)
    if kind not in KINDS:
        raise EventpipeError(f"Unknown job kind {kind!r}", code="BAD_PAYLOAD")
    if not all(isinstance(e, dict) for e in events):
        raise EventpipeError("Job payload events must be objects", code="BAD_PAYLOAD")
    timeouts = payload.get("timeouts", 0)
    if type(timeouts) is not int or timeouts < 0:
        raise EventpipeError("Job payload timeouts must be a count", code="BAD_PAYLOAD")
    return Payload(kind, list(events), timeouts)


def _legacy_kind(payload: Mapping[str, Any], job_id: str) -> str:
    if not payload.get("replay"):
        return GROUP
    return REPLAY if job_id.startswith(_LEGACY_REPLAY_PREFIX) else EVENT
