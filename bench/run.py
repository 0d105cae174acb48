"""`make bench`: eventpipe against a bare Starlette ceiling and a naive one-job-per-event RQ
peer, loaded the same way with wrk on loopback. A script that prints figures; it asserts
nothing.

    .venv/bin/python bench/run.py        # or: make bench
    .venv/bin/python bench/run.py --batch   # only (e), the batch endpoint
    .venv/bin/python bench/run.py --limits  # only eventpipe's accept path, limits off / on

Needs wrk, PostgreSQL at BENCH_DATABASE_URL (default
postgresql+psycopg://postgres@127.0.0.1:5432/test; a database of its own is created and
dropped) and Redis at BENCH_REDIS_URL (default redis://127.0.0.1:6379/14, flushed);
BENCH_STEP_CONNECTIONS (default 64) is wrk's connections in the paced steps of (b). Takes
six to nine minutes. Prints the table and writes var/bench/bench.json and var/bench/bench.png;
the children's logs are under var/bench/logs/.

Measured: (a) accepted events/s and latency of the accept path alone, for the three systems;
(b) stored events/s with a flat backlog under paced offered rates, API + 1 worker process;
(c) Redis bytes per queued event; (d) the drain rate of a 100k backlog with 1 and 2 worker
processes; (e) the ratios of eventpipe's figures to the others'.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

if __package__ in (None, ""):  # run as a file: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.batch import (  # noqa: E402
    BATCH_WORKERS,
    ITEMS,
    BatchScripts,
    measure_batch_accept,
    measure_batch_sustained,
)
from bench.limits import run_limits  # noqa: E402
from bench.load import Scripts, WrkResult, find_wrk  # noqa: E402
from bench.measure import (  # noqa: E402
    drain_eventpipe,
    drain_naive,
    fill_naive,
    measure_accept_latency,
    measure_memory,
    measure_sustained,
    print_drain,
    sustained_rate,
)
from bench.procs import OUT_DIR, stop_all  # noqa: E402
from bench.report import Results, save, table  # noqa: E402
from bench.systems import API_WORKERS, SYSTEMS  # noqa: E402
from bench.world import SEED, World, machine, open_world  # noqa: E402


def run_accept(world: World, scripts: Scripts, results: Results) -> None:
    print(
        "(a) accept path: wrk -t2 -c64 -d10s --latency, no worker running; with 2 uvicorn"
        " workers then paced at half the rate reached, and with 1"
    )
    for system in SYSTEMS:
        result, half = measure_accept_latency(world, scripts, system, API_WORKERS)
        results.accept[system] = result
        print_accept(f"{system}, {API_WORKERS} uvicorn workers", result)
        if half is not None:
            results.half_rate[system] = half
            print_accept(f"{system}, paced at {result.accepted_rate / 2:.0f}/s", half)
        one, _ = measure_accept_latency(world, scripts, system, 1, half_rate=False)
        results.accept_one[system] = one
        print_accept(f"{system}, 1 uvicorn worker", one)


def print_accept(label: str, result: WrkResult) -> None:
    print(
        f"  {label}: {result.accepted_rate:.0f} accepted/s, p50 {result.p50_ms:.2f} ms,"
        f" p99 {result.p99_ms:.2f} ms, non-2xx {result.non_2xx},"
        f" socket errors {result.socket_errors}"
    )


def run_memory(world: World, scripts: Scripts, results: Results) -> None:
    print("(c) Redis bytes per queued event, no worker running")
    for system in ("eventpipe", "naive"):
        memory = measure_memory(world, scripts, system)
        results.memory[system] = memory
        print(
            f"  {system}: used_memory +{memory.bytes} bytes for {memory.events} events ="
            f" {memory.per_event:.0f} B/event (keys: {memory.keys_per_event:.0f} B/event);"
            f" wrk had {memory.load.accepted} 2xx answers in {memory.load.seconds:.1f}s"
        )


def run_sustained(world: World, scripts: Scripts, results: Results) -> None:
    print("(b) stored events/s with a flat backlog: paced steps of 8 s, API + 1 worker")
    for system in ("eventpipe", "naive"):
        steps = measure_sustained(world, scripts, system)
        results.sustained[system] = steps
        print(f"  {system} sustained: {sustained_rate(steps) or 0:.0f} stored events/s")


def run_drains(world: World, scripts: Scripts, results: Results) -> None:
    print("(d) draining a 100k backlog")
    results.drains["eventpipe"] = []
    for processes in (1, 2):
        drain = drain_eventpipe(world, scripts, processes)
        results.drains["eventpipe"].append(drain)
        print_drain("eventpipe", drain)
    world.reset()
    results.naive_fill_per_s = fill_naive(world)
    print(f"  naive: 100k jobs enqueued at {results.naive_fill_per_s:.0f} jobs/s (enqueue_many)")
    results.drains["naive"] = []
    for processes in (1, 2):
        drain = drain_naive(world, processes)
        results.drains["naive"].append(drain)
        print_drain("naive", drain)


def run_batch(world: World, results: Results) -> None:
    print(f"(e) POST /v1/events/batch, {ITEMS} events a request")
    scripts = BatchScripts(world.api_key)
    try:
        results.batch_accept = measure_batch_accept(world, scripts)
        accept = results.batch_accept
        print(
            f"  accepted {accept.accepted_rate:.0f} events/s, p50 {accept.p50_ms:.1f} ms,"
            f" p99 {accept.p99_ms:.1f} ms a batch, non-2xx {accept.non_2xx}"
        )
        results.batch_sustained = measure_batch_sustained(world, scripts)
        best = sustained_rate(results.batch_sustained) or 0
        print(f"  sustained: {best:.0f} stored events/s ({BATCH_WORKERS} worker processes)")
    finally:
        scripts.close()


def run_all(world: World, only_batch: bool = False) -> Results:
    results = Results(machine=machine(world))
    scripts = Scripts(SEED, world.api_key)
    try:
        if not only_batch:
            run_accept(world, scripts, results)
            run_memory(world, scripts, results)
            run_sustained(world, scripts, results)
            run_drains(world, scripts, results)
        run_batch(world, results)
    finally:
        scripts.close()
        stop_all()
        results.interference = world.interference
    return results


def only_limits(world: World) -> int:
    scripts = Scripts(SEED, world.api_key)
    try:
        run_limits(world, scripts, OUT_DIR)
    finally:
        scripts.close()
        stop_all()
    return 0


def on_signal(signum: int, _frame: FrameType | None) -> None:
    # Through every `finally`: processes stopped, database dropped, Redis flushed.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> int:
    if find_wrk() is None:
        print("install wrk: apt-get install wrk")
        return 2
    # SIGINT explicitly too: a shell starting this in the background sets it to ignored.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    start = time.monotonic()
    try:
        with open_world() as world:
            if "--limits" in sys.argv:
                return only_limits(world)
            results = run_all(world, only_batch="--batch" in sys.argv)
    except KeyboardInterrupt:
        print("\ninterrupted: processes stopped, database dropped, Redis flushed")
        return 130
    finally:
        stop_all()
    results.seconds = time.monotonic() - start
    results.machine["load_at_end"] = os.getloadavg()[0]
    raw, png = save(results, OUT_DIR)
    print()
    print(table(results))
    drawn = png or "none (no sustained steps in this run)"
    print(f"\nrun took {results.seconds / 60:.1f} min; raw figures {raw}; plot {drawn}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
