"""Rolling upgrade: what the previous release (rq 2.12, redis-py 7.4, payload version 2, claimed
lists) left in Redis runs on this release's worker.

tests/fixtures/previous_release.json holds those keys as that release's own code wrote them
(the script that captured them is in the commit that added the file): a queued group job, a
running group job whose worker died (its started-registry entry expired) with another group
job in its claimed list, a replay job, and an event split out of its batch as a failed job.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import Engine, insert

from api.store import upsert_contact
from shared.clock import utcnow
from shared.db import transaction
from shared.models import events, projects
from shared.queue import PENDING_KEY, make_queue
from tests.integration.services import start_worker
from tests.integration.test_pipeline import _settings, count
from tests.integration.test_rq_tools import JSON, rq

FIXTURE = json.loads((Path(__file__).parents[1] / "fixtures" / "previous_release.json").read_text())


def load_previous_release(client: redis.Redis) -> None:
    """The fixture's keys, written as they were. Registry scores are not in the fixture: the
    dead worker's entry gets one long past (it expired), the failed registry's a future one."""
    for key, entry in FIXTURE["keys"].items():
        value: Any = entry["value"]
        if entry["type"] == "hash":
            fields = {
                f: base64.b64decode(v) if f == "data" else v.encode() for f, v in value.items()
            }
            client.hset(key, mapping=fields)
        elif entry["type"] == "list":
            client.rpush(key, *value)
        elif entry["type"] == "set":
            client.sadd(key, *value)
        elif entry["type"] == "zset":
            score = 1 if ":wip:" in key else time.time() + 3600
            client.zadd(key, dict.fromkeys(value, score))
        else:
            client.set(key, value)
        if entry["ttl"] > 0:
            client.expire(key, entry["ttl"])


def test_jobs_queued_by_the_previous_release_run_on_this_one(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis
) -> None:
    with transaction(engine) as conn:
        conn.execute(
            insert(projects).values(id=FIXTURE["project"], name="old", created_at=utcnow())
        )
        upsert_contact(FIXTURE["project"], FIXTURE["contact_email"], {}, conn=conn)
    load_previous_release(redis_client)
    queue = make_queue(_settings(env), redis_client)
    jobs = FIXTURE["jobs"]

    # One worker run: RQ's cleanup requeues the dead worker's job, the claimed list is given
    # back, and every queued job runs: the group jobs, the claimed one, the replay.
    worker = start_worker(env, "--burst")
    assert worker.proc.wait(60) == 0, worker.output()
    assert count(engine, events) == 6
    assert redis_client.hlen(PENDING_KEY) == 0
    assert redis_client.keys("eventpipe:claimed:*") == []
    assert queue.rq.started_job_registry.get_job_ids() == []
    for name in ("runner", "claimed", "queued", "replay"):
        job = queue.rq.fetch_job(jobs[name])
        assert job is not None and job.get_status() == "finished", name
    runner = queue.rq.fetch_job(jobs["runner"])
    assert runner is not None and runner.retries_left == 2  # recovered once, by RQ

    # The split-out failed event, its contact there now, requeued with RQ's own tool.
    assert queue.rq.failed_job_registry.get_job_ids() == [jobs["failed"]]
    rq("requeue", "--queue", queue.name, "-u", env["REDIS_URL"], "--serializer", JSON, "--all")
    worker = start_worker(env, "--burst")
    assert worker.proc.wait(60) == 0, worker.output()
    assert count(engine, events) == 7
    assert queue.rq.failed_job_registry.get_job_ids() == []
