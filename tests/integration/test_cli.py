"""The `eventpipe` command against real PostgreSQL and Redis, and its process management."""

from __future__ import annotations

import json
import signal
import subprocess

import psutil
import redis
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from shared.models import events
from shared.queue import JobWriter, enqueue_events, make_queue
from shared.settings import Settings
from tests.integration.services import (
    ROOT,
    Proc,
    eventpipe,
    free_port,
    run_cli,
    wait_for_api,
    wait_until,
)
from tests.integration.test_pipeline import _event, _seed_store, count


def test_db_upgrade_twice_is_harmless(env: dict[str, str]) -> None:
    run_cli(env, "db", "upgrade")
    run_cli(env, "db", "upgrade")


def test_projects_and_keys(env: dict[str, str]) -> None:
    created = json.loads(run_cli(env, "projects", "create", "acme", "--json"))
    assert created["apiKey"].startswith("AS_")
    listed = json.loads(run_cli(env, "projects", "list", "--json"))
    assert [p["id"] for p in listed] == [created["projectId"]]
    # The key is shown once: nothing the CLI lists contains the secret.
    assert created["apiKey"] not in run_cli(env, "keys", "list", "--project", created["projectId"])
    second = json.loads(run_cli(env, "keys", "create", "--project", created["projectId"], "--json"))
    run_cli(env, "keys", "revoke", second["keyId"])
    keys = json.loads(run_cli(env, "keys", "list", "--project", created["projectId"], "--json"))
    revoked = {k["id"]: k["revokedAt"] is not None for k in keys}
    assert revoked == {created["keyId"]: False, second["keyId"]: True}
    failed = subprocess.run(
        eventpipe("keys", "revoke", second["keyId"]), env=env, cwd=ROOT, capture_output=True
    )
    assert failed.returncode == 1 and b"No active key" in failed.stderr


def test_worker_processes_drain_the_queue_together(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis
) -> None:
    project_id = _seed_store(engine)
    settings = Settings(database_url=env["DATABASE_URL"], redis_url=env["REDIS_URL"])
    queue = make_queue(settings, redis_client)
    for _ in range(40):
        enqueue_events(
            JobWriter(queue),
            queue.connection,
            [_event(project_id, "jane@example.com") for _ in range(25)],
        )
    done = subprocess.run(
        eventpipe("worker", "--processes", "2", "--burst"), env=env, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0
    assert count(engine, events) == 1000


def test_run_starts_the_pipeline_and_ctrl_c_stops_every_process(env: dict[str, str]) -> None:
    port = free_port()
    # A password in DATABASE_URL (the machine's PostgreSQL trusts, so any will do): the
    # banner must not print it.
    url = make_url(env["DATABASE_URL"]).set(password="s3cret-pw")
    env = {**env, "DATABASE_URL": url.render_as_string(hide_password=False)}
    proc = Proc(eventpipe("run", "--port", str(port), "--processes", "2"), env, "run")
    try:
        wait_for_api(proc, port)
        wait_until(lambda: "store:" in proc.output(), 10, "the banner")
        assert "s3cret-pw" not in proc.output() and ":***@" in proc.output()
        # The supervisor plus its two worker processes: wait until all three are up.
        wait_until(
            lambda: len(psutil.Process(proc.proc.pid).children(recursive=True)) >= 4,
            30,
            "the API and the worker processes",
        )
        children = psutil.Process(proc.proc.pid).children(recursive=True)
        proc.proc.send_signal(signal.SIGINT)
        assert proc.proc.wait(60) == 0, proc.output()
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert alive == [], [p.cmdline() for p in alive]
        assert "stopped" in proc.output()
    finally:
        proc.stop()
