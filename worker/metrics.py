"""The worker's Prometheus metrics, written by every worker process and served by the
supervisor's --metrics-port (shared.metrics explains the multiprocess files)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

STORED = Counter("eventpipe_events_stored", "Events written to the store (duplicates excluded)")
FAILED = Counter("eventpipe_events_failed", "Event failures recorded, by code", ["code"])
JOB_SECONDS = Histogram(
    "eventpipe_job_seconds",
    "Time a job took, its claimed jobs included",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
JOB_EVENTS = Counter("eventpipe_job_events", "Events carried by the jobs run (claimed included)")
STORE_WAITS = Counter("eventpipe_store_waits", "Times a worker paused for an unreachable store")
STORE_WAIT_SECONDS = Counter(
    "eventpipe_store_wait_seconds", "Time workers spent waiting for the store to come back"
)
REDIS_WAITS = Counter(
    "eventpipe_redis_waits",
    "Times a worker paused for Redis (unreachable, read-only, out of memory, no primary)",
)
REDIS_WAIT_SECONDS = Counter(
    "eventpipe_redis_wait_seconds", "Time workers spent waiting for Redis to take writes again"
)
