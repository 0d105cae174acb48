"""Replaying failed events: from PostgreSQL's record back onto the queue, safely repeatable.

The record in `failed_events` holds each event as it was queued, so a replay works whether or
not RQ's failed-registry entry still exists. Matching events go back in replay jobs of up to
`CHUNK` events (of the replay kind): the worker stores those whose contact now exists,
deletes their failure records, and splits each one that fails again out as a failed job of
its own with its new error, so it is listed again.

An event is requeued by one Lua script that first checks, atomically, that it is not queued
already (a pending mark, or its own job queued or running after `rq requeue`): two replays
running at once, or a replay run again after an interrupt, skip what is already on its way
instead of queueing it twice. Whatever happens, an event is stored at most once: its id is
the primary key of `events` and the insert ignores a duplicate.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from sqlalchemy import Connection, Engine, select

from ops.failed import FailedFilter, page_ascending
from shared.db import delete_failed, transaction
from shared.models import events, failed_events
from shared.queue import PENDING_KEY, JobQueue, ReplayQueue, forget_failed_jobs
from shared.settings import Settings

CHUNK = 100
WAIT_POLL_SECONDS = 0.2
# A replay holds off while the backlog is over this share of MAX_QUEUED_EVENTS: a big replay
# must not fill the queue to the point where producers' sends answer 503.
BACKLOG_SHARE = 0.5

# Skip reasons, as the summary names them.
ALREADY_QUEUED = "already queued"
ALREADY_STORED = "already stored"
NOT_FAILED = "no matching failure record"


@dataclass
class ReplaySummary:
    matched: int = 0
    requeued: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    requeued_ids: list[str] = field(default_factory=list)
    # Filled by wait_for_outcomes: what became of the requeued events.
    stored: int = 0
    still_failing: Counter[str] = field(default_factory=Counter)
    still_queued: int = 0
    waited: bool = False
    dry_run: bool = False
    interrupted: bool = False

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "matched": self.matched,
            "requeued": self.requeued,
            "skipped": {reason: n for reason, n in self.skipped.items() if n},
            "dryRun": self.dry_run,
            "interrupted": self.interrupted,
        }
        if self.waited:
            data.update(
                stored=self.stored,
                stillFailing=dict(self.still_failing),
                stillQueued=self.still_queued,
            )
        return data


def _stored_among(ids: Sequence[str], *, conn: Connection) -> set[str]:
    return set(conn.execute(select(events.c.id).where(events.c.id.in_(ids))).scalars())


class _NoRoom(Exception):
    """The backlog stayed over its share for longer than the caller would wait."""


class Pacer:
    """At most `rate` events a second (None: as fast as it goes)."""

    def __init__(self, rate: float | None) -> None:
        self._rate = rate
        self._start = time.monotonic()

    def chunk(self) -> int:
        return CHUNK if self._rate is None else max(1, min(CHUNK, int(self._rate)))

    def wait(self, done: int) -> None:
        if self._rate:
            ahead = self._start + done / self._rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)


class Replayer:
    def __init__(
        self, settings: Settings, engine: Engine, connection: redis.Redis, queue: JobQueue
    ) -> None:
        self.engine = engine
        self.backlog_limit = max(1, int(settings.max_queued_events * BACKLOG_SHARE))
        self.connection = connection
        self.queue = queue
        self.replays = ReplayQueue(queue)

    def run(
        self,
        flt: FailedFilter,
        *,
        limit: int | None = None,
        dry_run: bool = False,
        rate: float | None = None,
        progress: Callable[[ReplaySummary], None] | None = None,
        room_wait: float | None = None,
    ) -> ReplaySummary:
        """Requeue the matching failed events, in id order, a chunk at a time. Interrupted
        (KeyboardInterrupt), or held off by the backlog for more than `room_wait` seconds
        (None: as long as it takes), it returns what it did so far with `interrupted` set:
        running it again goes on without queueing anything twice."""
        summary = ReplaySummary(dry_run=dry_run)
        pacer = Pacer(rate)
        after: str | None = None
        matched_ids: set[str] = set()
        try:
            while limit is None or summary.matched < limit:
                room = (
                    pacer.chunk() if limit is None else min(pacer.chunk(), limit - summary.matched)
                )
                with transaction(self.engine) as conn:
                    rows = page_ascending(flt, room, after=after, conn=conn)
                if not rows:
                    break
                if not dry_run:
                    self._wait_for_room(room_wait)
                after = rows[-1].id
                summary.matched += len(rows)
                matched_ids.update(r.id for r in rows)
                self._replay_chunk(rows, summary, dry_run)
                if progress is not None:
                    progress(summary)
                pacer.wait(summary.requeued)
        except (KeyboardInterrupt, _NoRoom):
            summary.interrupted = True
        if flt.ids and not summary.interrupted:
            self._count_unmatched([i for i in flt.ids if i not in matched_ids], summary)
        return summary

    def _wait_for_room(self, seconds: float | None) -> None:
        deadline = None if seconds is None else time.monotonic() + seconds
        while self.connection.hlen(PENDING_KEY) >= self.backlog_limit:
            if deadline is not None and time.monotonic() > deadline:
                raise _NoRoom()
            time.sleep(WAIT_POLL_SECONDS)

    def _replay_chunk(self, rows: Sequence[Any], summary: ReplaySummary, dry_run: bool) -> None:
        stored = self._already_stored([r.id for r in rows], dry_run)
        summary.skipped[ALREADY_STORED] += len(stored)
        candidates = [r for r in rows if r.id not in stored]
        if dry_run:
            busy = self.replays.busy([r.id for r in candidates])
            summary.skipped[ALREADY_QUEUED] += len(busy)
            summary.requeued += len(candidates) - len(busy)
            return
        requeued = self._requeue(candidates, summary)
        summary.requeued += len(requeued)
        summary.requeued_ids.extend(requeued)

    def _already_stored(self, ids: list[str], dry_run: bool) -> set[str]:
        """Events stored meanwhile (their failure record is stale: it goes, unless dry run)."""
        with transaction(self.engine) as conn:
            found = _stored_among(ids, conn=conn)
            if found and not dry_run:
                delete_failed(failed_events, sorted(found), conn=conn)
        if found and not dry_run:
            forget_failed_jobs(self.queue, sorted(found))
        return found

    def _requeue(self, rows: list[Any], summary: ReplaySummary) -> list[str]:
        """One replay job for `rows`; events found on their way already are left out."""
        while rows:
            busy = self.replays.requeue([r.payload for r in rows])
            if not busy:
                return [r.id for r in rows]
            summary.skipped[ALREADY_QUEUED] += len(busy)
            rows = [r for r in rows if r.id not in busy]
        return []

    def _count_unmatched(self, ids: Sequence[str], summary: ReplaySummary) -> None:
        """Ids asked for by name that matched no failure record: stored or never failed."""
        if not ids:
            return
        with transaction(self.engine) as conn:
            stored = _stored_among(ids, conn=conn)
        for event_id in ids:
            summary.skipped[ALREADY_STORED if event_id in stored else NOT_FAILED] += 1

    def wait_for_outcomes(self, summary: ReplaySummary, timeout: float) -> None:
        """Wait (up to `timeout` s) for the workers to finish the requeued events, then say
        what became of each: stored, failed again (by code) or still queued."""
        pending = list(summary.requeued_ids)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            pending = self._still_pending(pending)
            if pending:
                time.sleep(WAIT_POLL_SECONDS)
        summary.waited = True
        summary.still_queued = len(pending)
        done = set(summary.requeued_ids) - set(pending)
        summary.stored = 0
        summary.still_failing = Counter()
        with transaction(self.engine) as conn:
            for start in range(0, len(summary.requeued_ids), 1000):
                chunk = [i for i in summary.requeued_ids[start : start + 1000] if i in done]
                query = select(failed_events.c.code).where(failed_events.c.id.in_(chunk))
                codes = list(conn.execute(query).scalars())
                summary.still_failing.update(codes)
                summary.stored += len(chunk) - len(codes)

    def _still_pending(self, ids: list[str]) -> list[str]:
        left: list[str] = []
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            marks = cast(list[bytes | None], self.connection.hmget(PENDING_KEY, chunk))
            left += [i for i, m in zip(chunk, marks, strict=True) if m is not None]
        return left


def describe(summary: ReplaySummary) -> str:
    """The summary an operator reads at the end of `eventpipe replay`."""
    verb = "would requeue" if summary.dry_run else "requeued"
    lines = [f"matched {summary.matched}, {verb} {summary.requeued}"]
    skipped = sum(summary.skipped.values())
    if skipped:
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(summary.skipped.items()) if n)
        lines.append(f"skipped {skipped}: {reasons}")
    else:
        lines.append("skipped 0")
    if summary.waited:
        failing = sum(summary.still_failing.values())
        codes = ", ".join(f"{c} {n}" for c, n in sorted(summary.still_failing.items()))
        lines.append(
            f"stored {summary.stored}, still failing {failing}"
            + (f" ({codes})" if codes else "")
            + (f", still queued {summary.still_queued}" if summary.still_queued else "")
        )
    if summary.interrupted:
        lines.append("interrupted: run the same command again to go on (nothing is queued twice)")
    return "\n".join(lines)


class ProgressBar:
    """A one-line bar on stderr, redrawn in place; only on a terminal."""

    def __init__(self, total: int, width: int = 30) -> None:
        self.total = max(total, 1)
        self.width = width
        self.enabled = sys.stderr.isatty()

    def __call__(self, summary: ReplaySummary) -> None:
        if not self.enabled:
            return
        done = min(summary.matched, self.total)
        filled = self.width * done // self.total
        bar = "#" * filled + "-" * (self.width - filled)
        sys.stderr.write(
            f"\r[{bar}] {done}/{self.total}  requeued {summary.requeued}"
            f"  skipped {sum(summary.skipped.values())}"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
