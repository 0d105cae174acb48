"""RQ's own tools against eventpipe's jobs: `rq info`, `rq requeue` with the JSON serializer
(as the README documents it) and the FailedJobRegistry API. The next RQ release that breaks
the contract fails here instead of in production."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import redis
from sqlalchemy import Engine, func, select

from api.store import upsert_contact
from shared.db import transaction
from shared.models import events, failed_event_attempts
from shared.queue import PENDING_KEY, JobWriter, enqueue_events, make_queue
from tests.integration.services import Proc, start_worker, wait_until
from tests.integration.test_guarantees import _waiting_on_lock
from tests.integration.test_pipeline import _event, _seed_store, _settings, count

RQ = str(Path(sys.executable).parent / "rq")
JSON = "rq.serializers.JSONSerializer"


def rq(*args: str) -> str:
    done = subprocess.run([RQ, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def rq_info(url: str, queue: str) -> tuple[int, int, int, int]:
    """`rq info`'s queued, executing, finished and failed counts for the queue."""
    out = rq("info", "--raw", "--only-queues", "-u", url, "--serializer", JSON, queue)
    found = re.search(rf"queue {queue} (\d+), (\d+) executing, (\d+) finished, (\d+) failed", out)
    assert found, out
    queued, executing, finished, failed = (int(n) for n in found.groups())
    return queued, executing, finished, failed


def _attempts(engine: Engine) -> int:
    with transaction(engine) as conn:
        return int(
            conn.execute(select(func.count()).select_from(failed_event_attempts)).scalar() or 0
        )


def test_rqs_own_tools_tell_the_truth_about_eventpipes_jobs(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis, procs_cleanup: list[Proc]
) -> None:
    url = env["REDIS_URL"]
    project_id = _seed_store(engine)
    queue = make_queue(_settings(env), redis_client)
    groups = [[_event(project_id, "jane@example.com") for _ in range(2)] for _ in range(5)]
    bad = _event(project_id, "ghost@example.com")
    groups[2].append(bad)
    writer = JobWriter(queue)
    ids = [enqueue_events(writer, redis_client, group) for group in groups]
    assert rq_info(url, queue.name) == (5, 0, 0, 0)

    # A worker caught inside its insert: the job it runs and the four it claimed are all
    # started work in RQ's eyes, none of them queued.
    with engine.connect() as blocker:
        blocker.exec_driver_sql("BEGIN")
        blocker.exec_driver_sql("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        procs_cleanup.append(start_worker(env))
        wait_until(lambda: _waiting_on_lock(engine), 30, "the worker to be inside its insert")
        assert rq_info(url, queue.name) == (0, 5, 0, 0)
        assert sorted(queue.rq.started_job_registry.get_job_ids()) == sorted(ids)
        blocker.exec_driver_sql("ROLLBACK")
    wait_until(lambda: redis_client.hlen(PENDING_KEY) == 0, 30, "the jobs to be stored")

    # Finished where RQ counts them; the unknown contact's event failed as a job of its own.
    assert count(engine, events) == 10
    assert rq_info(url, queue.name) == (0, 0, 5, 1)
    assert sorted(queue.rq.finished_job_registry.get_job_ids()) == sorted(ids)
    registry = queue.rq.failed_job_registry
    assert registry.get_job_ids() == [bad["id"]]
    failed = queue.rq.fetch_job(bad["id"])
    assert failed is not None and failed.meta["code"] == "CONTACT_NOT_FOUND_FOR_EVENT"

    # `rq requeue` as the README gives it: the event runs again and, its contact still
    # missing, fails again as itself with its meta intact.
    out = rq("requeue", "--queue", queue.name, "-u", url, "--serializer", JSON, bad["id"])
    assert "Requeueing 1 jobs" in out
    wait_until(lambda: _attempts(engine) == 2, 30, "the requeued event to fail again")
    wait_until(lambda: registry.get_job_ids() == [bad["id"]], 10, "it to be listed again")
    failed = queue.rq.fetch_job(bad["id"])
    assert failed is not None and failed.get_status() == "failed"
    assert failed.meta["code"] == "CONTACT_NOT_FOUND_FOR_EVENT"

    # The contact fixed, the FailedJobRegistry API requeues it and it is stored.
    with transaction(engine) as conn:
        upsert_contact(project_id, "ghost@example.com", {}, conn=conn)
    registry.requeue(bad["id"])
    wait_until(lambda: count(engine, events) == 11, 30, "the fixed event to be stored")
    registry.cleanup()
    assert registry.get_job_ids() == []
    wait_until(lambda: rq_info(url, queue.name) == (0, 0, 6, 0), 10, "rq info to agree")
