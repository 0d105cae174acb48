"""The queue adapter: the one place that knows RQ's and redis-py's internals.

Everything else calls the names below and never touches a job hash, an RQ key name or a
redis-py internal (tests/unit/test_queue_boundary.py checks it). What it owns:

- connect.py: the Redis clients (RESP2 pinned, every timeout given; through Sentinel when
  REDIS_SENTINELS is set), what counts as a Redis outage, and `JobQueue`, the RQ queue with
  its key names;
- keys.py: eventpipe's own keys and RQ's, as RQ derives them;
- payload.py: the job payload, `{"v": 3, "kind": ..., "events": [...]}` (version 2 read);
- enqueue.py: the job hash written directly, the group write (one script), and the fsync and
  replicated writes with their raw reply parsing;
- replicas.py: the start-up checks of REDIS_DURABILITY (a replica online for replicated);
- guard.py: only eventpipe's jobs run (anything else in the queue failed unrun);
- claims.py: group jobs claimed by a running job as RQ started work, renewed, finished,
  given back;
- shares.py: fair shares: the queued events of each project, moved with the pending marks,
  and the rate-limited projects' shared token buckets;
- registries.py: failed events, replay's requeue, the queue's figures, one job's payload,
  the running job;
- activity.py: the console's events-a-second counters, live tail stream, replay progress
  and sign-in throttle.

The worker runner (worker/runner.py) subclasses RQ's worker and the command line runs RQ's
tools; nothing else imports `rq`.
"""

from shared.queue.activity import (
    count_attempt,
    get_replay_progress,
    put_replay_progress,
    read_rates,
    record_job_activity,
    tail_after,
    tail_has_room,
    tail_last_id,
    tail_latest,
)
from shared.queue.claims import (
    claim_jobs,
    claimed_events,
    finish_claimed,
    release_claims,
    release_legacy_claims,
    renew_claims,
)
from shared.queue.connect import (
    PROTOCOL,
    JobQueue,
    bump_config_version,
    check_redis_keeps,
    connect_async,
    connect_redis,
    connect_subscriber,
    make_queue,
    redis_outage,
)
from shared.queue.enqueue import (
    JOB_FUNC,
    GroupWrite,
    JobWriter,
    Record,
    check_fsync_replies,
    check_fsync_support,
    check_replica_replies,
    enqueue_events,
    enqueue_events_async,
    enqueue_events_fsync,
    enqueue_events_replicated,
    enqueue_function,
)
from shared.queue.guard import refuse_dequeued
from shared.queue.keys import (
    ACCEPTED_KEY,
    CONFIG_VERSION_KEY,
    FAILED_KEY,
    OUTCOMES_CHANNEL,
    PENDING_KEY,
    PROJECT_QUEUED_KEY,
    STORED_KEY,
)
from shared.queue.payload import (
    EVENT,
    GROUP,
    REPLAY,
    SPLIT,
    Event,
    Payload,
    make_payload,
    read_payload,
)
from shared.queue.registries import (
    QueueFigures,
    ReplayQueue,
    RunningJob,
    add_failed_event,
    fail_running_job,
    forget_failed_jobs,
    queue_figures,
    queue_figures_async,
    queued_payload,
    queued_seconds,
    running_job,
    workers,
)
from shared.queue.replicas import check_durability_support, check_replicas
from shared.queue.shares import (
    Lease,
    RateLeaser,
    drop_pending,
    rate_bucket_levels,
    rate_bucket_levels_async,
    read_backlog,
    top_queued,
)

__all__ = [
    "ACCEPTED_KEY",
    "CONFIG_VERSION_KEY",
    "EVENT",
    "FAILED_KEY",
    "GROUP",
    "JOB_FUNC",
    "OUTCOMES_CHANNEL",
    "PENDING_KEY",
    "PROJECT_QUEUED_KEY",
    "PROTOCOL",
    "REPLAY",
    "SPLIT",
    "STORED_KEY",
    "Event",
    "GroupWrite",
    "JobQueue",
    "JobWriter",
    "Lease",
    "Payload",
    "QueueFigures",
    "RateLeaser",
    "Record",
    "ReplayQueue",
    "RunningJob",
    "add_failed_event",
    "bump_config_version",
    "check_fsync_replies",
    "check_durability_support",
    "check_fsync_support",
    "check_replica_replies",
    "check_replicas",
    "check_redis_keeps",
    "claim_jobs",
    "claimed_events",
    "connect_async",
    "connect_redis",
    "connect_subscriber",
    "count_attempt",
    "drop_pending",
    "enqueue_events",
    "enqueue_events_async",
    "enqueue_events_fsync",
    "enqueue_events_replicated",
    "enqueue_function",
    "fail_running_job",
    "finish_claimed",
    "forget_failed_jobs",
    "get_replay_progress",
    "make_payload",
    "make_queue",
    "put_replay_progress",
    "queue_figures",
    "queue_figures_async",
    "queued_payload",
    "queued_seconds",
    "rate_bucket_levels",
    "rate_bucket_levels_async",
    "read_backlog",
    "read_payload",
    "redis_outage",
    "read_rates",
    "record_job_activity",
    "refuse_dequeued",
    "release_claims",
    "release_legacy_claims",
    "renew_claims",
    "running_job",
    "tail_after",
    "tail_has_room",
    "tail_last_id",
    "tail_latest",
    "top_queued",
    "workers",
]
