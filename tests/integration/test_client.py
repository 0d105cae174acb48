"""The producer library (client/) and eventpipe-send against a real API, worker, PostgreSQL
and Redis: every event stored exactly once through an API restart and a Redis that refuses
writes; rejections, drops, forks, exit and an interrupted backfill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import redis
from sqlalchemy import Engine, text

from eventpipe_client import Client
from tests.factories import SEND
from tests.integration.conftest import service_env
from tests.integration.services import (
    Proc,
    RedisServer,
    eventpipe,
    free_port,
    start_api,
    start_worker,
    wait_for_api,
    wait_until,
)
from tests.integration.test_guarantees import _project

# The 100,000: about 12 s here on 2 cores, the 3 s of refused writes included.
EVENTS = int(os.environ.get("CLIENT_TEST_EVENTS", "100000"))
BAD = 50


def _event(total: int) -> dict[str, Any]:
    return {**SEND["eventProperties"], "order_total": total}


def _totals(engine: Engine) -> list[int]:
    """order_total of every stored event: the producers number their events."""
    with engine.connect() as conn:
        query = text("SELECT (properties->>'order_total')::bigint FROM events")
        return list(conn.execute(query).scalars())


def _pipeline(env: dict[str, str], procs_cleanup: list[Proc]) -> tuple[str, str]:
    """An API and a worker, and a project's key with the seed definition and contact."""
    api, base = start_api(env)
    procs_cleanup.append(api)
    key = _project(env, base)
    procs_cleanup.append(start_worker(env))
    return base, key


def _serve(env: dict[str, str], port: int) -> tuple[Proc, str]:
    proc = Proc(eventpipe("serve", "--port", str(port), "--workers", "1"), env, "api")
    return proc, wait_for_api(proc, port)


def test_every_event_is_stored_once_through_an_api_restart_and_a_redis_refusing_writes(
    database_url: str, engine: Engine, procs_cleanup: list[Proc]
) -> None:
    server = RedisServer(config={"maxmemory-policy": "noeviction"})
    try:
        # A claim left by the killed API expires in 5 s, not 60: the client retries a key in
        # use for longer than the claim either way.
        env = service_env(database_url, server.url, IDEMPOTENCY_CLAIM_SECONDS="5")
        port = free_port()
        api, base = _serve(env, port)
        procs_cleanup.append(api)
        key = _project(env, base)
        worker = start_worker(env)
        procs_cleanup.append(worker)
        rejected: list[tuple[dict[str, Any], str, str]] = []
        errors: list[str] = []
        client = Client(
            key,
            base,
            max_queue=20_000,
            on_rejected=lambda e, c, m: rejected.append((e, c, m)),
            on_error=lambda events, reason: errors.append(reason),
        )
        sent = threading.Event()
        refusing = threading.Event()
        faults: dict[str, float] = {}

        def produce() -> None:
            for i in range(EVENTS):
                if i == EVENTS * 3 // 4:
                    # The last quarter waits for Redis to refuse writes: on a busy machine the
                    # rest could otherwise all be sent while the worker stops (a failed run).
                    refusing.wait(240)
                client.send("order_completed", email="jane@example.com", properties=_event(i))
                if i % (EVENTS // BAD) == 0:
                    bad = {"order_total": "lots"}
                    client.send("order_completed", email="jane@example.com", properties=bad)
                if i % 2000 == 0:
                    time.sleep(0.01)  # a producer that takes a breath: faults land mid-stream
            sent.set()

        producer = threading.Thread(target=produce, daemon=True)
        started = time.monotonic()
        producer.start()
        wait_until(lambda: client.counters.sent >= EVENTS // 4, 120, "a quarter sent")
        api.proc.kill()  # no graceful end: answers in flight are lost
        api.proc.wait()
        faults["api killed"] = time.monotonic() - started
        api, _ = _serve(env, port)
        procs_cleanup.append(api)
        wait_until(lambda: client.counters.sent >= EVENTS // 2, 120, "half sent")
        # The worker runs on through the refusal: it waits for Redis to take writes again.
        r = redis.Redis.from_url(server.url)
        r.config_set("maxmemory", "1")  # noeviction: every write is refused (OOM): 503s
        faults["redis refusing"] = time.monotonic() - started
        retried = client.counters.retried
        refusing.set()
        wait_until(lambda: client.counters.retried > retried, 30, "the client to retry")
        time.sleep(3)  # the refusal lasts a few seconds by design, not a wait for a result
        r.config_set("maxmemory", "0")
        producer.join(300)
        assert client.flush(180)
        counters = client.counters.snapshot()
        client.close()
        print(f"{EVENTS:,} events in {time.monotonic() - started:.1f} s: {counters} {faults}")
        assert errors == []
        assert counters["sent"] + counters["duplicate"] == EVENTS
        assert counters["rejected"] == len(rejected) == BAD
        assert counters["retried"] > 0 and counters["dropped"] == 0
        assert {code for _, code, _ in rejected} == {"INVALID_PROPERTY_VALUE"}
        assert all(e["eventProperties"]["order_total"] == "lots" for e, _, _ in rejected)
        wait_until(lambda: len(_totals(engine)) >= EVENTS, 120, "every event stored")
        totals = _totals(engine)
        assert len(totals) == EVENTS and set(totals) == set(range(EVENTS))
        assert worker.proc.poll() is None, worker.output()  # the same worker, never exited
        r.close()
    finally:
        server.close()


PRODUCER = textwrap.dedent(
    """
    import json, multiprocessing, os, sys
    from eventpipe_client import Client

    key, base, out = sys.argv[1:4]

    def send(client, start, n):
        for i in range(start, start + n):
            client.send("order_completed", email="jane@example.com", properties={"order_total": i})

    client = Client(key, base)
    send(client, 0, 1000)
    pid = os.fork()
    if pid == 0:
        send(client, 10_000, 1000)  # the child's own sender; the parent's queue is not its
        sys.exit(0)  # through atexit: no close()
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=send, args=(client, 20_000, 1000))
    child.start()  # ends with os._exit: flushed by its finalizer
    child.join()
    os.waitpid(pid, 0)
    # A full queue in drop mode: counted, never sent.
    dropping = Client(key, base, max_queue=50, block=False)
    send(dropping, 30_000, 5000)
    assert dropping.flush(60)
    json.dump(dropping.counters.snapshot(), open(out, "w"))
    send(client, 1000, 1000)  # and the interpreter exits: the atexit flush sends these
    """
)


def test_drops_forks_and_exit(
    env: dict[str, str], engine: Engine, procs_cleanup: list[Proc], tmp_path: Path
) -> None:
    base, key = _pipeline(env, procs_cleanup)
    out = tmp_path / "drops.json"
    run = subprocess.run(
        [sys.executable, "-c", PRODUCER, key, base, str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-6000:]
    drops = json.loads(out.read_text())
    assert drops["dropped"] > 0 and drops["sent"] + drops["dropped"] == 5000
    expected = [*range(2000), *range(10_000, 11_000), *range(20_000, 21_000)]
    dropped_range = range(30_000, 35_000)

    def stored() -> bool:
        return len(_totals(engine)) >= len(expected) + int(drops["sent"])

    wait_until(stored, 60, "every event stored")
    totals = _totals(engine)
    assert sorted(t for t in totals if t not in dropped_range) == expected
    kept = [t for t in totals if t in dropped_range]
    assert len(kept) == len(set(kept)) == drops["sent"]


def test_send_one_waits_for_the_stored_record(
    env: dict[str, str], procs_cleanup: list[Proc]
) -> None:
    base, key = _pipeline(env, procs_cleanup)
    with Client(key, base) as client:
        record = client.send_one(
            "order_completed", email="jane@example.com", properties={"order_total": "12"}, wait=10
        )
        assert record["contactId"] and record["properties"]["order_total"] == 12
        assert "status" not in record  # AutoSend's 201 record, not the 202's queued view
        queued = client.send_one("order_completed", email="jane@example.com")
        assert queued["status"] == "queued"
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as http:
        got = http.get(f"/v1/events/{record['id']}").json()["data"]
        assert got["status"] == "stored"


def test_a_backfill_interrupted_and_resumed_stores_each_line_once(
    env: dict[str, str], engine: Engine, procs_cleanup: list[Proc], tmp_path: Path
) -> None:
    base, key = _pipeline(env, procs_cleanup)
    lines = 20_000
    bad = {7, 9_999, 15_001}
    path = tmp_path / "events.ndjson"
    with path.open("w") as f:
        for i in range(1, lines + 1):
            total: Any = "lots" if i in bad else i
            f.write(json.dumps({**SEND, "eventProperties": {"order_total": total}}) + "\n")
    cli = Path(sys.executable).with_name("eventpipe-send")
    argv = [str(cli), "--file", str(path), "--rate", "4000"]
    run_env = {**os.environ, "EVENTPIPE_API_KEY": key, "EVENTPIPE_BASE_URL": base}
    first = subprocess.Popen(argv, env=run_env, stdout=subprocess.PIPE, text=True)
    progress = Path(f"{path}.progress")

    def some_acknowledged() -> bool:
        return progress.exists() and json.loads(progress.read_text())["line"] >= 5000

    wait_until(some_acknowledged, 60, "part of the file acknowledged")
    first.send_signal(signal.SIGKILL)  # batches in flight, their answers never read
    first.wait()
    done_before = json.loads(progress.read_text())["line"]
    assert done_before < lines
    second = subprocess.run(argv[:3], env=run_env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"lines {done_before + 1}-{lines}" in second.stdout
    totals = json.loads(progress.read_text())["totals"]
    assert totals["accepted"] + totals["duplicate"] + totals["rejected"] == lines
    assert totals["rejected"] == len(bad)
    rejected = Path(tmp_path / "events.rejected.ndjson").read_text().splitlines()
    assert [json.loads(x)["eventProperties"]["order_total"] for x in rejected] == ["lots"] * 3
    wait_until(lambda: len(_totals(engine)) >= lines - len(bad), 60, "every line stored")
    stored = _totals(engine)
    assert sorted(stored) == sorted(set(range(1, lines + 1)) - bad)
    # The keys are the file's and its line numbers': the whole file again is all duplicates.
    again = subprocess.run(
        [*argv[:3], "--restart"], env=run_env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"0 accepted, {lines - len(bad):,} duplicate, {len(bad)} rejected" in again.stdout
    assert len(_totals(engine)) == lines - len(bad)
