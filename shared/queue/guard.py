"""Only eventpipe's jobs run. A job in the queue naming any other function, or carrying
callbacks, webhooks or dependencies (which RQ would import, call or send), is failed unrun,
whether a worker dequeued it or a running group job claimed it. The check reads the job
hash's raw fields: nothing the job names is ever imported."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping
from typing import Any, cast

from rq.job import JobStatus
from rq.utils import utcformat

from shared import jsonio
from shared.clock import utcnow
from shared.queue.connect import JobQueue
from shared.queue.enqueue import JOB_FUNC

log = logging.getLogger("eventpipe.queue")

# RQ's hash fields that make it import a name, call it, send a request or wait on other jobs.
_FOREIGN_FIELDS = (
    b"success_callback_name",
    b"failure_callback_name",
    b"stopped_callback_name",
    b"webhooks",
    b"dependency_ids",
    b"dependency_id",
)
# What a job hash's fields are read for (the check and the failure's own fields).
CHECKED_FIELDS = (b"data", *_FOREIGN_FIELDS)


def foreign_reason(fields: Mapping[bytes, bytes | None]) -> str | None:
    """Why the job with these hash fields is not one of eventpipe's, or None."""
    for name in _FOREIGN_FIELDS:
        if fields.get(name):
            return f"it carries {name.decode()}"
    try:
        func, instance, args, kwargs = jsonio.loads(zlib.decompress(fields.get(b"data") or b""))
    except (zlib.error, ValueError, TypeError):
        return "its data is unreadable"
    if func != JOB_FUNC:
        return f"function {str(func)[:100]!r} is not an eventpipe job function"
    if instance is not None or kwargs or not isinstance(args, list) or len(args) != 1:
        return "its arguments are not an eventpipe payload"
    return None


def job_reason(queue: JobQueue, job_id: str) -> str | None:
    """foreign_reason for a job in Redis (a job gone meanwhile is nobody's)."""
    values = cast(
        "list[bytes | None]", queue.connection.hmget(queue.keys.job(job_id), list(CHECKED_FIELDS))
    )
    fields = dict(zip(CHECKED_FIELDS, values, strict=True))
    return None if fields[b"data"] is None else foreign_reason(fields)


def fail_unrun(queue: JobQueue, pipe: Any, job_id: str, reason: str) -> None:
    """On `pipe`: the job failed with `refused: <reason>` in RQ's failed registry (where `rq
    info` and operators see it), its callbacks, webhooks and dependencies dropped so that
    nothing in RQ acts on them later; the caller takes it out of where it was."""
    keys, ttl = queue.keys, queue.settings.failure_ttl
    key = keys.job(job_id)
    log.warning("job %s refused unrun: %s", job_id, reason)
    pipe.hdel(key, *_FOREIGN_FIELDS)
    pipe.hset(
        key,
        mapping={
            "status": JobStatus.FAILED.value,
            "ended_at": utcformat(utcnow()),
            "exc_info": zlib.compress(f"refused: {reason}".encode()),
        },
    )
    pipe.expire(key, ttl)
    pipe.zadd(keys.failed, {job_id: utcnow().timestamp() + ttl})


def refuse_dequeued(queue: JobQueue, job_id: str, reason: str | None = None) -> bool:
    """Fail a job a worker just dequeued (it sits in RQ's intermediate queue) when it is not
    one of eventpipe's, or when `reason` says RQ could not even read it; True if refused."""
    reason = reason or job_reason(queue, job_id)
    if reason is None:
        return False
    with queue.connection.pipeline(transaction=True) as pipe:
        pipe.lrem(queue.rq.intermediate_queue_key, 1, job_id)
        fail_unrun(queue, pipe, job_id, reason)
        pipe.execute()
    return True
