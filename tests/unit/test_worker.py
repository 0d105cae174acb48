"""The job function and the worker's failure handling, on fakeredis and SQLite."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer
from sqlalchemy import Engine, func, select

from api.store import upsert_contact
from shared.clock import iso_ms, utcnow
from shared.db import transaction
from shared.errors import StoreUnavailable
from shared.ids import new_id
from shared.models import events, failed_events
from shared.queue import (
    EVENT,
    PENDING_KEY,
    JobWriter,
    Payload,
    RunningJob,
    claim_jobs,
    enqueue_events,
    make_payload,
    read_payload,
    release_claims,
    renew_claims,
)
from worker.context import WorkerContext
from worker.jobs import EventFailed, store_events
from worker.runner import EventWorker


def an_event(project_id: str, **fields: Any) -> dict[str, Any]:
    event = {
        "id": new_id(),
        "projectId": project_id,
        "eventName": "order_completed",
        "email": "jane@example.com",
        "contactId": None,
        "properties": {"order_total": 1},
        "createdAt": iso_ms(utcnow()),
    }
    return {**event, **fields}


def add_contact(engine: Engine, project_id: str, email: str) -> str:
    with transaction(engine) as conn:
        return str(upsert_contact(project_id, email, {}, conn=conn).id)


def count(engine: Engine, table: Any) -> int:
    with transaction(engine) as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)


def test_batch_resolves_by_email_and_contact_id_and_splits_out_the_unknown(
    worker_ctx: WorkerContext, engine: Engine, project: tuple[str, str, str]
) -> None:
    pid = project[0]
    jane = add_contact(engine, pid, "jane@example.com")
    bob = add_contact(engine, pid, "bob@example.com")
    by_email = an_event(pid)
    by_id = an_event(pid, email=None, contactId=bob)
    # contactId wins over email: an unknown id is not rescued by a known email.
    unknown_id = an_event(pid, contactId="f" * 24)
    unknown_email = an_event(pid, email="nobody@example.com")
    batch = [by_email, by_id, unknown_id, unknown_email]
    assert store_events(make_payload(batch)) == {"stored": 2, "failed": 2, "jobs": 1}

    with transaction(engine) as conn:
        rows = {r.id: r for r in conn.execute(select(events))}
        failed = {r.id: r for r in conn.execute(select(failed_events))}
    assert rows[by_email["id"]].contact_id == jane and rows[by_id["id"]].contact_id == bob
    assert set(failed) == {unknown_id["id"], unknown_email["id"]}
    assert {r.code for r in failed.values()} == {"CONTACT_NOT_FOUND_FOR_EVENT"}
    registry = worker_ctx.queue.rq.failed_job_registry
    assert set(registry.get_job_ids()) == {unknown_id["id"], unknown_email["id"]}
    job = worker_ctx.queue.rq.fetch_job(unknown_id["id"])
    assert job is not None
    assert job.meta["code"] == "CONTACT_NOT_FOUND_FOR_EVENT"
    assert read_payload(job.args[0]) == Payload(EVENT, [unknown_id])
    assert worker_ctx.redis.hlen(PENDING_KEY) == 0


def test_contacts_are_resolved_within_their_project_only(
    worker_ctx: WorkerContext, engine: Engine, project: tuple[str, str, str]
) -> None:
    from tests.unit.conftest import make_project

    other_pid = make_project(engine, worker_ctx.redis, "other")[0]
    add_contact(engine, other_pid, "jane@example.com")
    assert store_events(make_payload([an_event(project[0])])) == {
        "stored": 0,
        "failed": 1,
        "jobs": 1,
    }


def test_running_the_same_job_twice_stores_once(
    worker_ctx: WorkerContext, engine: Engine, project: tuple[str, str, str]
) -> None:
    add_contact(engine, project[0], "jane@example.com")
    payload = make_payload([an_event(project[0]) for _ in range(5)])
    store_events(payload)
    store_events(payload)
    assert count(engine, events) == 5


def test_the_previous_release_payload_is_still_read(
    worker_ctx: WorkerContext, engine: Engine, project: tuple[str, str, str]
) -> None:
    add_contact(engine, project[0], "jane@example.com")
    event = an_event(project[0])
    assert store_events({"v": 2, "events": [event]}) == {"stored": 1, "failed": 0, "jobs": 1}


def test_replay_after_the_contact_exists_stores_and_clears_the_failure(
    worker_ctx: WorkerContext, engine: Engine, project: tuple[str, str, str]
) -> None:
    event = an_event(project[0])
    store_events(make_payload([event]))
    job = worker_ctx.queue.rq.fetch_job(event["id"])
    assert job is not None
    with pytest.raises(EventFailed):  # still no contact: the replay fails again
        store_events(*job.args)
    with transaction(engine) as conn:
        assert conn.execute(select(failed_events.c.attempts)).scalar() == 2
    add_contact(engine, project[0], "jane@example.com")
    assert store_events(*job.args) == {"stored": 1, "failed": 0, "jobs": 1}
    assert count(engine, events) == 1 and count(engine, failed_events) == 0


def test_worker_requeues_on_store_outage_instead_of_failing(
    worker_ctx: WorkerContext, engine: Engine, project: tuple[str, str, str], monkeypatch: Any
) -> None:
    add_contact(engine, project[0], "jane@example.com")
    event = an_event(project[0])
    enqueue_events(JobWriter(worker_ctx.queue), worker_ctx.queue.connection, [event])
    real_store = __import__("worker.events", fromlist=["store_batch"]).store_batch
    calls = {"store": 0, "ping": 0}

    def flaky_store(*args: Any, **kwargs: Any) -> Any:
        calls["store"] += 1
        if calls["store"] == 1:
            raise StoreUnavailable()
        return real_store(*args, **kwargs)

    def slow_ping(_engine: Any) -> bool:
        calls["ping"] += 1
        return calls["ping"] > 2

    monkeypatch.setattr("worker.events.store_batch", flaky_store)
    monkeypatch.setattr("worker.runner.ping", slow_ping)
    monkeypatch.setattr("worker.runner.time.sleep", lambda _s: None)
    worker = EventWorker(
        [worker_ctx.queue.rq], connection=worker_ctx.redis, serializer=JSONSerializer
    )
    worker.work(burst=True)
    assert calls == {"store": 2, "ping": 3}
    assert count(engine, events) == 1
    assert worker_ctx.queue.rq.failed_job_registry.count == 0
    # RQ 3 cleans up an execution only when it is handed over: none is left behind.
    assert worker_ctx.queue.rq.started_job_registry.get_job_ids(cleanup=False) == []
    assert worker.executions == {}


def _enqueue_groups(ctx: WorkerContext, project_id: str, groups: int, size: int) -> list[str]:
    writer = JobWriter(ctx.queue)
    return [
        enqueue_events(writer, ctx.redis, [an_event(project_id) for _ in range(size)])
        for _ in range(groups)
    ]


def _started(ctx: WorkerContext) -> list[str]:
    return list(ctx.queue.rq.started_job_registry.get_job_ids(cleanup=False))


def test_a_job_takes_the_queued_group_jobs_along_and_finishes_them_as_rq_would(
    worker_ctx: WorkerContext, engine: Engine, project: tuple[str, str, str], monkeypatch: Any
) -> None:
    add_contact(engine, project[0], "jane@example.com")
    first, *others = _enqueue_groups(worker_ctx, project[0], groups=4, size=3)
    job = worker_ctx.queue.rq.fetch_job(first)
    assert job is not None
    worker_ctx.queue.rq.remove(first)  # dequeued by the worker running it
    monkeypatch.setattr("worker.jobs.running_job", lambda: RunningJob(first, "w1"))
    assert store_events(*job.args) == {"stored": 12, "failed": 0, "jobs": 4}
    assert worker_ctx.queue.rq.count == 0 and count(engine, events) == 12
    finished = worker_ctx.queue.rq.finished_job_registry.get_job_ids()
    for other in others:
        claimed = worker_ctx.queue.rq.fetch_job(other)
        assert claimed is not None and claimed.get_status() == "finished"
        ttl: Any = worker_ctx.redis.ttl(worker_ctx.queue.keys.job(other))
        assert 0 < ttl <= worker_ctx.settings.result_ttl
        assert other in finished
    assert _started(worker_ctx) == []
    assert worker_ctx.redis.hlen(PENDING_KEY) == 0


def test_claimed_jobs_are_started_work_that_rqs_cleanup_recovers_once(
    worker_ctx: WorkerContext, project: tuple[str, str, str]
) -> None:
    """The worker dies after claiming: the entries expire and RQ's own started-registry
    cleanup requeues each claimed job, spending one retry; a second cleanup finds nothing."""
    first, *others = _enqueue_groups(worker_ctx, project[0], groups=3, size=2)
    worker_ctx.queue.rq.remove(first)
    assert claim_jobs(worker_ctx.queue, "w1", 10, ttl=15) == others
    assert worker_ctx.queue.rq.count == 0
    assert sorted(_started(worker_ctx)) == sorted(others)
    for other in others:
        claimed = worker_ctx.queue.rq.fetch_job(other)
        assert claimed is not None and claimed.get_status() == "started"
        assert claimed.worker_name == "w1"
    registry = worker_ctx.queue.rq.started_job_registry
    registry.cleanup(timestamp=time.time() + 10)  # not expired yet: left alone
    assert worker_ctx.queue.rq.count == 0
    registry.cleanup(timestamp=time.time() + 100)
    registry.cleanup(timestamp=time.time() + 100)
    assert sorted(worker_ctx.queue.rq.job_ids) == sorted(others) and _started(worker_ctx) == []
    for other in others:
        requeued = worker_ctx.queue.rq.fetch_job(other)
        assert requeued is not None and requeued.get_status() == "queued"
        assert requeued.retries_left == worker_ctx.settings.job_retries - 1


def test_the_heartbeat_renews_only_its_own_claims(
    worker_ctx: WorkerContext, project: tuple[str, str, str]
) -> None:
    first, mine, theirs = _enqueue_groups(worker_ctx, project[0], groups=3, size=1)
    worker_ctx.queue.rq.remove(first)
    assert claim_jobs(worker_ctx.queue, "w1", 1, ttl=5) == [mine]
    assert claim_jobs(worker_ctx.queue, "w2", 1, ttl=5) == [theirs]
    with worker_ctx.redis.pipeline() as pipe:
        renew_claims(worker_ctx.queue, pipe, "w1", 600)
        pipe.execute()
    key = worker_ctx.queue.keys.started
    assert float(worker_ctx.redis.zscore(key, f"{mine}:w1") or 0) > time.time() + 500
    assert float(worker_ctx.redis.zscore(key, f"{theirs}:w2") or 0) < time.time() + 10


def test_a_live_worker_gives_its_claims_back_in_order_without_spending_a_retry(
    worker_ctx: WorkerContext, project: tuple[str, str, str]
) -> None:
    first, *others = _enqueue_groups(worker_ctx, project[0], groups=4, size=1)
    worker_ctx.queue.rq.remove(first)
    assert claim_jobs(worker_ctx.queue, "w1", 2, ttl=15) == others[:2]
    assert release_claims(worker_ctx.queue, "w1") == 2
    assert worker_ctx.queue.rq.job_ids == others and _started(worker_ctx) == []
    for other in others:
        job = worker_ctx.queue.rq.fetch_job(other)
        assert job is not None and job.get_status() == "queued"
        assert job.retries_left == worker_ctx.settings.job_retries


def test_a_failing_job_gives_its_claims_back_through_the_worker(
    worker_ctx: WorkerContext, engine: Engine, project: tuple[str, str, str], monkeypatch: Any
) -> None:
    """An unexpected error in a group job: the job spends its retry, its claims do not."""
    first, *others = _enqueue_groups(worker_ctx, project[0], groups=3, size=1)

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr("worker.events.store_batch", broken)
    worker = EventWorker(
        [worker_ctx.queue.rq], connection=worker_ctx.redis, serializer=JSONSerializer
    )
    worker.work(burst=True, max_jobs=1)
    assert worker_ctx.queue.rq.job_ids == [*others, first]  # the claims at the head, unspent
    assert _started(worker_ctx) == []
    for other in others:
        job = worker_ctx.queue.rq.fetch_job(other)
        assert job is not None and job.retries_left == worker_ctx.settings.job_retries
    retried = worker_ctx.queue.rq.fetch_job(first)
    assert retried is not None and retried.retries_left == worker_ctx.settings.job_retries - 1


def test_only_group_jobs_are_claimed_and_the_claim_is_bounded(
    worker_ctx: WorkerContext, engine: Engine, project: tuple[str, str, str]
) -> None:
    first, second, third, fourth = _enqueue_groups(worker_ctx, project[0], groups=4, size=1)
    worker_ctx.queue.rq.remove(first)
    assert claim_jobs(worker_ctx.queue, "w1", 2, ttl=15) == [second, third]  # bounded
    assert worker_ctx.queue.rq.job_ids == [fourth]
    # A failed event's own job (its kind is "event") stops the claim: it keeps its outcome.
    failed = an_event(project[0])
    store_events(make_payload([failed]))
    worker_ctx.queue.rq.failed_job_registry.requeue(failed["id"], at_front=True)
    assert claim_jobs(worker_ctx.queue, "w2", 5, ttl=15) == []
    # So does a job of the previous release (its one description for every kind): it runs
    # as itself.
    worker_ctx.redis.hset(
        worker_ctx.queue.keys.job(fourth), "description", "eventpipe: store events"
    )
    worker_ctx.queue.rq.remove(failed["id"])
    assert claim_jobs(worker_ctx.queue, "w2", 5, ttl=15) == []


def test_with_result_ttl_0_finished_claimed_jobs_are_not_kept(
    worker_ctx: WorkerContext, engine: Engine, project: tuple[str, str, str], monkeypatch: Any
) -> None:
    """As RQ keeps no finished job when its result_ttl is 0."""
    from dataclasses import replace

    from shared.queue import make_queue
    from worker.context import WorkerContext as Context

    settings = replace(worker_ctx.settings, result_ttl=0)
    ctx = Context(settings, engine, worker_ctx.redis, make_queue(settings, worker_ctx.redis))
    monkeypatch.setattr("worker.jobs.get_context", lambda: ctx)
    add_contact(engine, project[0], "jane@example.com")
    first, *others = _enqueue_groups(ctx, project[0], groups=3, size=1)
    job = ctx.queue.rq.fetch_job(first)
    assert job is not None
    ctx.queue.rq.remove(first)
    monkeypatch.setattr("worker.jobs.running_job", lambda: RunningJob(first, "w1"))
    assert store_events(*job.args)["jobs"] == 3
    assert [ctx.queue.rq.fetch_job(o) for o in others] == [None, None]
    assert ctx.queue.rq.finished_job_registry.get_job_ids() == [] and _started(ctx) == []


def test_a_job_failing_for_good_ends_its_events_as_failed(
    worker_ctx: WorkerContext, engine: Engine, project: tuple[str, str, str], monkeypatch: Any
) -> None:
    """Retries spent on something unexpected: its events are listed failed (JOB_FAILED,
    replayable) and no longer read `queued`."""
    batch = [an_event(project[0]) for _ in range(3)]
    enqueue_events(JobWriter(worker_ctx.queue), worker_ctx.redis, batch)

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr("worker.events.store_batch", broken)
    worker = EventWorker(
        [worker_ctx.queue.rq], connection=worker_ctx.redis, serializer=JSONSerializer
    )
    worker.work(burst=True)
    assert worker_ctx.queue.rq.failed_job_registry.count == 1
    with transaction(engine) as conn:
        failed = {r.id: r for r in conn.execute(select(failed_events))}
    assert set(failed) == {e["id"] for e in batch}
    assert {(r.code, r.message) for r in failed.values()} == {
        ("JOB_FAILED", "The job failed: RuntimeError")
    }
    assert worker_ctx.redis.hlen(PENDING_KEY) == 0


@pytest.mark.parametrize(
    "outage",
    [
        redis.ConnectionError("Connection refused"),
        redis.TimeoutError("Timeout reading from socket"),
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
        redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
    ],
)
def test_a_redis_outage_in_a_job_requeues_it_unspent_and_the_worker_goes_on(
    worker_ctx: WorkerContext,
    engine: Engine,
    project: tuple[str, str, str],
    monkeypatch: Any,
    outage: redis.RedisError,
) -> None:
    """The job's outcome could not be written (its pipeline refused): the events are in the
    store already, the job comes back once, with its retries whole, and stores nothing twice."""
    add_contact(engine, project[0], "jane@example.com")
    job_id = enqueue_events(JobWriter(worker_ctx.queue), worker_ctx.redis, [an_event(project[0])])
    real_finish = __import__("worker.jobs", fromlist=["_finish"])._finish
    calls = {"finish": 0}

    def refused_once(*args: Any, **kwargs: Any) -> None:
        calls["finish"] += 1
        if calls["finish"] == 1:
            raise outage
        real_finish(*args, **kwargs)

    monkeypatch.setattr("worker.jobs._finish", refused_once)
    worker = EventWorker(
        [worker_ctx.queue.rq], connection=worker_ctx.redis, serializer=JSONSerializer
    )
    assert worker.work(burst=True)
    assert calls["finish"] == 2  # run again, not quit
    assert count(engine, events) == 1
    assert worker_ctx.queue.rq.failed_job_registry.count == 0
    job = worker_ctx.queue.rq.fetch_job(job_id)
    assert job is not None and job.get_status() == "finished"
    assert job.retries_left == worker_ctx.settings.job_retries  # none spent
    assert _started(worker_ctx) == [] and worker_ctx.redis.hlen(PENDING_KEY) == 0


def test_a_redis_outage_in_rqs_own_steps_is_waited_out_not_an_exit(
    worker_ctx: WorkerContext, engine: Engine, project: tuple[str, str, str], monkeypatch: Any
) -> None:
    """RQ's work loop quits on an error it does not expect (here a demoted primary answering
    READONLY as the worker takes its job, then an OOM to its heartbeat): the worker waits for
    Redis to take writes, puts the job back unspent and goes on."""
    add_contact(engine, project[0], "jane@example.com")
    enqueue_events(JobWriter(worker_ctx.queue), worker_ctx.redis, [an_event(project[0])])
    refusals = [
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
    ]
    real_refuse = __import__("worker.runner", fromlist=["refuse_dequeued"]).refuse_dequeued

    beats = {"after_refusal": 0}

    def demoted(*args: Any, **kwargs: Any) -> bool:
        if refusals:
            beats["after_refusal"] = 1
            raise refusals.pop()
        return bool(real_refuse(*args, **kwargs))

    real_beat = SimpleWorker.heartbeat

    def full_once(self: Any, *args: Any, **kwargs: Any) -> None:
        if beats["after_refusal"] == 1:  # the first look while waiting: still refused
            beats["after_refusal"] = 2
            raise redis.exceptions.OutOfMemoryError("command not allowed")
        real_beat(self, *args, **kwargs)

    monkeypatch.setattr("worker.runner.refuse_dequeued", demoted)
    monkeypatch.setattr("worker.runner.time.sleep", lambda _s: None)
    worker = EventWorker(
        [worker_ctx.queue.rq], connection=worker_ctx.redis, serializer=JSONSerializer
    )
    monkeypatch.setattr(SimpleWorker, "heartbeat", full_once)
    assert worker.work(burst=True)
    assert beats["after_refusal"] == 2  # the wait looked again after its first refusal
    assert count(engine, events) == 1
    assert worker_ctx.queue.rq.failed_job_registry.count == 0
    assert worker_ctx.redis.llen(worker_ctx.queue.rq.intermediate_queue_key) == 0
    assert _started(worker_ctx) == [] and worker_ctx.redis.hlen(PENDING_KEY) == 0


def test_an_error_that_is_no_outage_still_ends_the_loop(
    worker_ctx: WorkerContext, monkeypatch: Any
) -> None:
    """A lost connection at the suspension check is waited out; wrong credentials do not
    pass by themselves, and RQ's loop ends on them as before."""
    errors: list[redis.RedisError] = [
        redis.exceptions.AuthenticationError("invalid password"),
        redis.ConnectionError("Connection refused"),
    ]

    def suspended(*_args: Any) -> bool:
        if errors:
            raise errors.pop()
        return False

    monkeypatch.setattr("rq.worker.base.is_suspended", suspended)
    monkeypatch.setattr("worker.runner.time.sleep", lambda _s: None)
    worker = EventWorker(
        [worker_ctx.queue.rq], connection=worker_ctx.redis, serializer=JSONSerializer
    )
    assert worker.work(burst=True) is False
    assert errors == []  # the connection error was ridden out, the second error ended it
