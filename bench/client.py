"""The producer library's figures against a running eventpipe (2 API processes, 2 worker
processes, everything on this machine's CPUs), against BENCH_DATABASE_URL and BENCH_REDIS_URL:

1. the caller's cost of Client.send() (median and p99, microseconds);
2. the events a second one producer process delivers through the library (accepted/s), with
   no worker running (the accept path alone) and with two workers storing meanwhile;
3. a backfill of BACKFILL_LINES NDJSON lines with eventpipe-send, killed (SIGKILL) once and
   resumed, then every line counted in PostgreSQL: each stored once.

Figures, not a test: it prints and asserts nothing but the exactly-once count.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from bench.procs import PYTHON, wait_until
from bench.systems import start_api, workers
from bench.world import SEED, World, open_world
from eventpipe_client import Client

SENDS = int(os.environ.get("BENCH_CLIENT_SENDS", "200000"))
DELIVER = int(os.environ.get("BENCH_CLIENT_EVENTS", "1000000"))
BACKFILL_LINES = int(os.environ.get("BENCH_BACKFILL_LINES", "1000000"))
PROPS = SEED["eventProperties"]
THREADS = int(os.environ.get("BENCH_CLIENT_THREADS", "2"))


def caller_cost(world: World, base: str) -> None:
    client = Client(world.api_key, base, max_queue=SENDS + 1)
    send, clock = client.send, time.perf_counter_ns
    costs = []
    for i in range(SENDS):
        props = {**PROPS, "order_total": i}
        t0 = clock()
        send("order_completed", email="jane@example.com", properties=props)
        costs.append(clock() - t0)
    client.close()
    costs.sort()
    median, p99 = statistics.median(costs) / 1000, costs[int(len(costs) * 0.99)] / 1000
    print(f"send() caller cost over {SENDS:,} sends: median {median:.1f} us, p99 {p99:.1f} us")


def delivered(world: World, base: str, label: str) -> None:
    client = Client(world.api_key, base, max_queue=50_000, threads=THREADS)
    started = time.monotonic()
    for i in range(DELIVER):
        client.send(
            "order_completed", email="jane@example.com", properties={**PROPS, "order_total": i}
        )
    assert client.flush(600)
    seconds = time.monotonic() - started
    counters = client.counters.snapshot()
    client.close()
    rate = counters["sent"] / seconds
    print(
        f"one producer, {label}: {counters['sent']:,} accepted in {seconds:.1f} s: "
        f"{rate:,.0f} events/s ({counters})"
    )


def write_file(path: Path) -> None:
    with path.open("w") as f:
        for n in range(1, BACKFILL_LINES + 1):
            body = {**SEED, "eventProperties": {**PROPS, "currency": "BKF", "order_total": n}}
            f.write(json.dumps(body, separators=(",", ":")) + "\n")


def backfill(world: World, base: str) -> None:
    wait_until(lambda: world.pending() == 0, 600, "the earlier events stored", step=1.0)
    tmp = Path(tempfile.mkdtemp(prefix="eventpipe-backfill-"))
    path = tmp / "events.ndjson"
    t0 = time.monotonic()
    write_file(path)
    print(
        f"backfill: wrote {BACKFILL_LINES:,} lines ({path.stat().st_size / 1e6:.0f} MB) "
        f"in {time.monotonic() - t0:.1f} s"
    )
    cli = str(Path(PYTHON).with_name("eventpipe-send"))
    env = {**os.environ, "EVENTPIPE_API_KEY": world.api_key, "EVENTPIPE_BASE_URL": base}
    progress = Path(f"{path}.progress")

    def acknowledged() -> int:
        try:
            return int(json.loads(progress.read_text())["line"])
        except (OSError, ValueError):
            return 0

    t0 = time.monotonic()
    first = subprocess.Popen([cli, "--file", str(path)], env=env, stdout=subprocess.PIPE)
    wait_until(lambda: acknowledged() >= BACKFILL_LINES * 2 // 5, 600, "40% acknowledged")
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = acknowledged()
    t1 = time.monotonic()
    second = subprocess.run([cli, "--file", str(path)], env=env, capture_output=True, text=True)
    t2 = time.monotonic()
    print(
        f"backfill: first run killed after line {killed_at:,} at {t1 - t0:.1f} s; "
        f"resumed run {t2 - t1:.1f} s; whole: {t2 - t0:.1f} s "
        f"({BACKFILL_LINES / (t2 - t0):,.0f} lines/s)"
    )
    print("  " + second.stdout.strip().replace("\n", "\n  "))

    def count() -> tuple[int, int]:
        with world.engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT (properties->>'order_total')) FROM events"
                    " WHERE properties->>'currency' = 'BKF'"
                )
            ).one()
            return int(row[0]), int(row[1])

    wait_until(lambda: count()[0] >= BACKFILL_LINES, 900, "every line stored", step=1.0)
    time.sleep(2)  # a late second copy, if there were one, would land now
    rows, distinct = count()
    print(
        f"backfill: {rows:,} rows, {distinct:,} distinct lines stored "
        f"(each once: {rows == distinct == BACKFILL_LINES}); "
        f"stored by {time.monotonic() - t0:.1f} s"
    )
    for name in (path, progress, tmp / "events.rejected.ndjson"):
        name.unlink(missing_ok=True)
    tmp.rmdir()


def main() -> None:
    started = time.monotonic()
    with open_world() as world:
        proc, url = start_api(world, "eventpipe")
        base = url.rsplit("/v1/", 1)[0]
        try:
            caller_cost(world, base)
            delivered(world, base, "no worker running")
            world.reset()
            with workers(world, "eventpipe", 2):
                delivered(world, base, "2 workers storing meanwhile")
                backfill(world, base)
        finally:
            proc.stop()
    print(f"wall time: {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
