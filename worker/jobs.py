"""The job functions RQ runs, named by dotted path in the job payload. Thin on purpose."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from rq import get_current_job
from rq.job import JobStatus

from shared import jsonio
from shared.errors import EventpipeError
from shared.queue import (
    FAILED_KEY,
    JOB_FUNC,
    OUTCOMES_CHANNEL,
    PENDING_KEY,
    REPLAY_JOB_PREFIX,
    STORED_KEY,
    Event,
    job_options,
    make_payload,
    read_payload,
)
from worker import metrics
from worker.claim import claim_jobs, claimed_events, finish_claimed
from worker.context import WorkerContext, get_context
from worker.events import BatchOutcome, store_batch

log = logging.getLogger("eventpipe.worker.jobs")


class EventFailed(EventpipeError):
    """A replayed event failed again: the job itself fails, so RQ lists it as failed."""


def store_events(payload: dict[str, Any]) -> dict[str, int]:
    started = time.perf_counter()
    ctx = get_context()
    batch = read_payload(payload)
    replay = bool(payload.get("replay"))
    job = get_current_job()
    job_id = job.id if job is not None else ""
    claimed = [] if replay or not job_id else claim_jobs(ctx, job_id)
    batch += claimed_events(ctx, claimed)
    outcome = store_batch(ctx.engine, batch, replay=replay)
    # The event's own failed job, requeued (`rq requeue`), fails again as itself; a replay
    # job of `eventpipe replay` (or a group job) splits its failures out.
    fails_itself = replay and bool(outcome.failed) and not job_id.startswith(REPLAY_JOB_PREFIX)
    _finish(ctx, job_id, batch, outcome, claimed, split_failures=not fails_itself)
    _observe(job_id, batch, outcome, claimed, time.perf_counter() - started)
    if fails_itself:
        _fail_current_job(outcome.failed[0][1])
    return {"stored": len(outcome.stored), "failed": len(outcome.failed), "jobs": 1 + len(claimed)}


def _finish(
    ctx: WorkerContext,
    job_id: str,
    batch: list[Event],
    outcome: BatchOutcome,
    claimed: list[str],
    *,
    split_failures: bool,
) -> None:
    """In one round trip: drop the pending marks, split each failed event out as a failed
    job of its own keyed by the event id (an operator can replay exactly that event), finish
    the claimed jobs and count the outcome for `eventpipe stats`."""
    with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.hdel(PENDING_KEY, *[e["id"] for e in batch])
        finish_claimed(ctx, pipe, job_id, claimed)
        _count_outcome(pipe, outcome)
        if split_failures:
            for event, error in outcome.failed:
                _add_failed_job(ctx, event, error, pipe)
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


def _add_failed_job(ctx: WorkerContext, event: Event, error: EventpipeError, pipe: Any) -> None:
    # No retries: a replay that fails again is listed again, it does not loop.
    options = {**job_options(ctx.settings), "retry": None}
    job = ctx.queue.create_job(
        JOB_FUNC,
        args=(make_payload([event], replay=True),),
        job_id=event["id"],
        meta={"code": error.code, "message": error.message, "projectId": event["projectId"]},
        status=JobStatus.FAILED,
        **options,
    )
    job.origin = ctx.queue.name
    job.save(pipeline=pipe)
    ctx.queue.failed_job_registry.add(
        job,
        ttl=ctx.settings.failure_ttl,
        exc_string=f"{error.code}: {error.message}",
        pipeline=pipe,
    )


def _fail_current_job(error: EventpipeError) -> None:
    job = get_current_job()
    if job is not None:
        job.meta.update(code=error.code, message=error.message)
        job.save_meta()  # type: ignore[no-untyped-call]
    raise EventFailed(error.message, code=error.code, status=error.status)
