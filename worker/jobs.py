"""The job functions RQ runs, named by dotted path in the job payload. Thin on purpose."""

from __future__ import annotations

from typing import Any

from rq import get_current_job
from rq.job import JobStatus

from shared.errors import EventpipeError
from shared.queue import JOB_FUNC, PENDING_KEY, Event, job_options, make_payload, read_payload
from worker.claim import claim_jobs, claimed_events, finish_claimed
from worker.context import WorkerContext, get_context
from worker.events import store_batch


class EventFailed(EventpipeError):
    """A replayed event failed again: the job itself fails, so RQ lists it as failed."""


def store_events(payload: dict[str, Any]) -> dict[str, int]:
    ctx = get_context()
    batch = read_payload(payload)
    replay = bool(payload.get("replay"))
    job = get_current_job()
    job_id = job.id if job is not None else ""
    claimed = [] if replay or not job_id else claim_jobs(ctx, job_id)
    batch += claimed_events(ctx, claimed)
    outcome = store_batch(ctx.engine, batch, replay=replay)
    if replay and outcome.failed:
        _finish(ctx, job_id, batch, [], claimed)
        _fail_current_job(outcome.failed[0][1])
    _finish(ctx, job_id, batch, outcome.failed, claimed)
    return {"stored": len(outcome.stored), "failed": len(outcome.failed), "jobs": 1 + len(claimed)}


def _finish(
    ctx: WorkerContext,
    job_id: str,
    batch: list[Event],
    failed: list[tuple[Event, EventpipeError]],
    claimed: list[str],
) -> None:
    """In one round trip: drop the pending marks, split each failed event out as a failed
    job of its own keyed by the event id (an operator can replay exactly that event), and
    finish the claimed jobs."""
    with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.hdel(PENDING_KEY, *[e["id"] for e in batch])
        finish_claimed(ctx, pipe, job_id, claimed)
        for event, error in failed:
            _add_failed_job(ctx, event, error, pipe)
        pipe.execute()


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
