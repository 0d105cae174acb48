"""Only eventpipe's jobs run: foreign jobs written straight into the queue are failed unrun
by a real worker process, whether it dequeues them or a group job claims them."""

from __future__ import annotations

import sys
import zlib
from pathlib import Path
from typing import Any, cast

import redis
from sqlalchemy import Engine, select

from shared import jsonio
from shared.db import transaction
from shared.models import events
from shared.queue import JobWriter, make_payload, make_queue
from shared.settings import load_settings
from tests.integration.services import Proc, start_worker, wait_until
from tests.integration.test_pipeline import new_project
from tests.integration.test_refusals import _nothing_left
from tests.unit.test_worker import add_contact, an_event

QUEUE = "rq:queue:eventpipe"


def _write(client: redis.Redis, job_id: str, fields: dict[str, Any]) -> None:
    client.hset(f"rq:job:{job_id}", mapping=cast(Any, fields))
    client.rpush(QUEUE, job_id)


def _data(func: str, payload: Any) -> bytes:
    return zlib.compress(jsonio.dumps([func, None, [payload], {}]))


def test_a_worker_fails_foreign_jobs_unrun_and_stores_the_real_ones(
    env: dict[str, str],
    engine: Engine,
    redis_client: redis.Redis,
    procs_cleanup: list[Proc],
    tmp_path: Path,
) -> None:
    pid = new_project(env)["projectId"]
    add_contact(engine, pid, "jane@example.com")
    queue = make_queue(load_settings(env), redis_client)
    writer = JobWriter(queue)
    marker = tmp_path / "pwned"
    ours = writer.fields([an_event(pid)])
    real = [an_event(pid) for _ in range(3)]
    _write(redis_client, "os", {**ours, "data": _data("os.system", f"touch {marker}")})
    module = tmp_path / "evilmod.py"
    module.write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\ndef run(x): pass\n")
    _write(redis_client, "imp", {**ours, "data": _data("evilmod.run", None)})
    callback = {**writer.fields([real[0]]), "failure_callback_name": "os.system"}
    _write(redis_client, "callback", callback)
    hook = '[{"url": "http://127.0.0.1:9/", "method": "POST"}]'
    _write(redis_client, "hook", {**writer.fields([real[0]]), "webhooks": hook})
    _write(redis_client, "bogus", {**writer.fields([real[0]]), "status": "bogus"})
    _write(redis_client, "g1", writer.fields([real[0]]))
    # Right behind a real group, with a group's description: claimed, never stored.
    claimed = {**ours, "data": _data("os.system", make_payload([an_event(pid)]))}
    _write(redis_client, "gforeign", claimed)
    _write(redis_client, "g2", writer.fields(real[1:]))

    worker_env = {**env, "PYTHONPATH": f"{tmp_path}:{env.get('PYTHONPATH', '')}"}
    worker = start_worker(worker_env, "--burst")
    procs_cleanup.append(worker)
    wait_until(lambda: worker.proc.poll() is not None, 60, "the burst worker to finish")
    assert worker.proc.returncode == 0, worker.output()

    assert not marker.exists() and not (tmp_path / "imported").exists()
    with transaction(engine) as conn:
        stored = set(conn.execute(select(events.c.id)).scalars())
    assert stored == {e["id"] for e in real}
    refused = {"os", "imp", "callback", "hook", "bogus", "gforeign"}
    assert set(queue.rq.failed_job_registry.get_job_ids()) == refused
    for job_id in refused:
        job = queue.rq.fetch_job(job_id)
        assert job is not None and job.get_status().value == "failed"
        assert (job._exc_info or "").startswith("refused: "), job_id
        assert not redis_client.hget(f"rq:job:{job_id}", "failure_callback_name")
    assert "refused unrun" in worker.output()
    _nothing_left(redis_client)
    assert sys.modules.get("evilmod") is None
