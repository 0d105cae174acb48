"""Redis key names: eventpipe's own, and RQ's as RQ itself derives them for the queue."""

from __future__ import annotations

from dataclasses import dataclass

from rq import Queue

# event id -> job id for every event between its enqueue and its outcome, so GET
# /v1/events/{id} can answer `queued` (and the API can count the backlog) without a row per
# event in the store.
PENDING_KEY = "eventpipe:pending"
# Fair shares: project id -> its events with a pending mark (a sorted set, so the API's
# backlog poll reads only the projects near their share), written in the atomic write of the
# job and dropped by the script that drops the marks (shares.py).
PROJECT_QUEUED_KEY = "eventpipe:queued-by-project"
# + project id: a rate-limited project's shared token bucket (a hash: tokens, at).
RATE_BUCKET_PREFIX = "eventpipe:rate:"
# Bumped on every change of keys or definitions; API processes poll it to drop their caches.
CONFIG_VERSION_KEY = "eventpipe:config-version"
# Running totals for `eventpipe stats`, kept in Redis beside the queue (they start again with
# an empty Redis): events accepted by the API, stored by the workers, failures by code.
ACCEPTED_KEY = "eventpipe:stats:accepted"
STORED_KEY = "eventpipe:stats:stored"
FAILED_KEY = "eventpipe:stats:failed"
# Workers publish here the outcome of events sent with `Prefer: wait` (api/outcomes.py).
OUTCOMES_CHANNEL = "eventpipe:outcomes"
# The previous release kept a running job's claimed group jobs in a list under this prefix
# (keyed by the running job's id); workers now give such lists back (claims.py).
LEGACY_CLAIMED_PREFIX = "eventpipe:claimed:"


@dataclass(frozen=True)
class RQKeys:
    """RQ's keys for one queue, read from RQ's own objects (RQ_KEY_PREFIX moves them all)."""

    queue: str  # the list of queued job ids
    queues: str  # the set of every queue's key
    job_prefix: str  # + job id: the job hash
    started: str  # StartedJobRegistry: "<job id>:<execution>" scored by expiry time
    finished: str  # FinishedJobRegistry: job id scored by expiry time
    failed: str  # FailedJobRegistry: job id scored by expiry time

    @classmethod
    def of(cls, queue: Queue) -> RQKeys:
        return cls(
            queue=queue.key,
            queues=queue.redis_queues_keys,
            job_prefix=queue.job_class.redis_job_namespace_prefix,
            started=queue.started_job_registry.key,
            finished=queue.finished_job_registry.key,
            failed=queue.failed_job_registry.key,
        )

    def job(self, job_id: str) -> str:
        return self.job_prefix + job_id
