"""The job functions RQ runs, named by dotted path in the job payload. Thin on purpose."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from shared import jsonio
from shared.errors import EventpipeError
from shared.queue import (
    EVENT,
    FAILED_KEY,
    GROUP,
    OUTCOMES_CHANNEL,
    STORED_KEY,
    Event,
    JobWriter,
    RunningJob,
    add_failed_event,
    claim_jobs,
    claimed_events,
    drop_pending,
    fail_running_job,
    finish_claimed,
    read_payload,
    record_job_activity,
    running_job,
    tail_has_room,
)
from worker import metrics
from worker.context import WorkerContext, get_context
from worker.events import BatchOutcome, record_failed, store_apart

log = logging.getLogger("eventpipe.worker.jobs")


class EventFailed(EventpipeError):
    """A replayed event failed again: the job itself fails, so RQ lists it as failed."""


def store_events(payload: dict[str, Any]) -> dict[str, int]:
    started = time.perf_counter()
    ctx = get_context()
    job = running_job() or RunningJob("", "")
    found = read_payload(payload, job.id)
    batch = found.events
    claimed = _claim(ctx, job) if found.kind == GROUP else []
    more, claimed = claimed_events(ctx.queue, job.worker_name, claimed)
    batch += more
    outcome = store_apart(
        ctx.engine,
        batch,
        replay=found.kind != GROUP,
        timeouts=(found.timeouts, ctx.settings.store_timeout_retries),
        time_left=_time_left(ctx, started),
        settings=ctx.settings,
    )
    # An event's own failed job, requeued (`rq requeue`), fails again as itself; a replay
    # job of `eventpipe replay` (or a group job) splits its failures out.
    fails_itself = found.kind == EVENT and bool(outcome.failed)
    _finish(ctx, job, batch, outcome, claimed, split_failures=not fails_itself)
    _observe(job.id, batch, outcome, claimed, time.perf_counter() - started)
    if fails_itself:
        error = outcome.failed[0][1]
        fail_running_job(error)
        raise EventFailed(error.message, code=error.code, status=error.status)
    return {"stored": len(outcome.stored), "failed": len(outcome.failed), "jobs": 1 + len(claimed)}


def end_failed_job(payload: Any, job_id: str, reason: str) -> None:
    """A job that failed for good (its retries spent on something unexpected): its events
    reach a final state too, failed as JOB_FAILED (listed, replayable), their pending marks
    dropped, instead of reading `queued` for as long as RQ keeps the failed job. An event's
    own job has recorded its failure already; an unreadable payload names no events."""
    try:
        found = read_payload(payload, job_id)
    except EventpipeError:
        return
    if found.kind == EVENT or not found.events:
        return
    ctx = get_context()
    error = EventpipeError(f"The job failed: {reason}", code="JOB_FAILED", status=500)
    outcome = BatchOutcome(failed=[(event, error) for event in found.events])
    record_failed(ctx.engine, outcome.failed)
    _finish(ctx, RunningJob(job_id, ""), found.events, outcome, [], split_failures=False)


def _time_left(ctx: WorkerContext, started: float) -> Callable[[], bool]:
    """Whether one more statement (which may last the statement timeout) fits in the job's
    timeout, with a margin for the outcome's round trips: a job splitting refused events
    apart hands the rest off rather than overrun its timeout."""
    settings = ctx.settings
    budget = settings.job_timeout * 0.8 - settings.db_statement_timeout_ms / 1000
    return lambda: time.perf_counter() - started < budget


def _claim(ctx: WorkerContext, job: RunningJob) -> list[str]:
    """More queued group jobs for this one to store, claimed in the worker's name (outside a
    worker, as in a test calling the function, nothing is claimed)."""
    if not job.worker_name:
        return []
    settings = ctx.settings
    room, ttl = settings.worker_claim_jobs, settings.worker_heartbeat_seconds
    return claim_jobs(ctx.queue, job.worker_name, room, ttl)


def _finish(
    ctx: WorkerContext,
    job: RunningJob,
    batch: list[Event],
    outcome: BatchOutcome,
    claimed: list[str],
    *,
    split_failures: bool,
) -> None:
    """In one round trip: drop the pending marks, hand the parts left untried off as split
    jobs (their marks re-pointed), split each failed event out as a failed job of its own
    keyed by the event id (an operator can replay exactly that event), finish the claimed
    jobs and count the outcome for `eventpipe stats` and the console (its charts and tail)."""
    tail = tail_has_room(ctx.redis)  # (an INFO every few seconds at most)
    with ctx.redis.pipeline(transaction=True) as pipe:
        drop_pending(pipe, batch)  # and the projects' queued counts (fair shares)
        if outcome.left:
            JobWriter(ctx.queue).add_split(pipe, outcome.left, outcome.timeouts)
        finish_claimed(ctx.queue, pipe, job.worker_name, claimed)
        _count_outcome(pipe, outcome)
        failures = [(e, error.code) for e, error in outcome.failed]
        record_job_activity(pipe, job.id, outcome.stored, failures, tail=tail)
        if split_failures:
            for event, error in outcome.failed:
                add_failed_event(ctx.queue, pipe, event, error)
        _announce(pipe, outcome)
        pipe.execute()


def _announce(pipe: Any, outcome: BatchOutcome) -> None:
    """Publish the outcome of the events sent with `Prefer: wait` (api/outcomes.py): after
    the commit, in the transaction that records their failures, so that an API answering
    404 finds the failure to remove."""
    items = [
        [e["id"], "stored", outcome.contacts[e["id"]]] for e in outcome.stored if e.get("wait")
    ]
    items += [[e["id"], "failed", error.code] for e, error in outcome.failed if e.get("wait")]
    if items:
        pipe.publish(OUTCOMES_CHANNEL, jsonio.dumps(items))


def _observe(
    job_id: str, batch: list[Event], outcome: BatchOutcome, claimed: list[str], seconds: float
) -> None:
    """Metrics and the job's log line: ids and counts, never property values."""
    metrics.JOB_SECONDS.observe(seconds)
    metrics.JOB_EVENTS.inc(len(batch))
    metrics.STORED.inc(outcome.inserted)
    for code, n in Counter(error.code for _, error in outcome.failed).items():
        metrics.FAILED.labels(code).inc(n)
    for event, error in outcome.failed:
        failure = {"kind": "event_failed", "eventId": event["id"], "projectId": event["projectId"]}
        log.warning(
            "event %s failed: %s",
            event["id"],
            error.code,
            extra={"fields": {**failure, "code": error.code}},
        )
    if not log.isEnabledFor(logging.INFO):
        return
    fields = {
        "kind": "job",
        "jobId": job_id,
        "claimedJobs": len(claimed),
        "events": len(batch),
        "stored": outcome.inserted,
        "failed": len(outcome.failed),
        "attempts": outcome.attempts,
        "handedOff": sum(len(part) for part in outcome.left),
        "ms": round(seconds * 1000, 3),
        "projectIds": sorted({e["projectId"] for e in batch}),
        "eventIds": [e["id"] for e in batch],
    }
    log.info("job %s: %d events", job_id, len(batch), extra={"fields": fields})


def _count_outcome(pipe: Any, outcome: BatchOutcome) -> None:
    if outcome.inserted:
        pipe.incrby(STORED_KEY, outcome.inserted)
    for code, n in Counter(error.code for _, error in outcome.failed).items():
        pipe.hincrby(FAILED_KEY, code, n)
