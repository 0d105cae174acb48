"""Starting the three systems: the ceiling, the naive peer and eventpipe (API and workers)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Literal

from bench.apps import SEND_PATH
from bench.naive import QUEUE_NAME as NAIVE_QUEUE
from bench.procs import (
    PYTHON,
    Proc,
    eventpipe_argv,
    free_port,
    running,
    start_http,
    uvicorn_argv,
    wait_until,
)
from bench.world import World
from shared.settings import Settings

System = Literal["ceiling", "naive", "eventpipe"]
SYSTEMS: tuple[System, ...] = ("ceiling", "naive", "eventpipe")
API_WORKERS = 2
START_ATTEMPTS = 3
RETRY_PAUSE_S = 60.0
EVENTPIPE_QUEUE = Settings().queue_name


def api_argv(system: System, port: int, processes: int = API_WORKERS) -> list[str]:
    if system == "eventpipe":
        return eventpipe_argv("serve", "--port", str(port), "--workers", str(processes))
    app = "bare_app" if system == "ceiling" else "naive_app"
    return uvicorn_argv(app, port, processes)


def start_api(world: World, system: System, processes: int = API_WORKERS) -> tuple[Proc, str]:
    """The system's API on a free port; eventpipe's code may be mid-change, so a failed start
    is retried after a pause."""
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_port()
        try:
            proc = start_http(api_argv(system, port, processes), world.env(), f"{system}-api", port)
        except (RuntimeError, TimeoutError) as exc:
            if attempt == START_ATTEMPTS:
                raise
            print(f"  {system} API did not start ({exc}); retrying in {RETRY_PAUSE_S:.0f}s")
            time.sleep(RETRY_PAUSE_S)
            continue
        return proc, f"http://127.0.0.1:{port}{SEND_PATH}"
    raise AssertionError("unreachable")


@contextlib.contextmanager
def api(world: World, system: System, processes: int = API_WORKERS) -> Iterator[str]:
    """The send URL of the system's API (`processes` uvicorn workers), stopped on the way
    out."""
    proc, url = start_api(world, system, processes)
    with running(proc):
        yield url


def worker_procs(world: World, system: System, processes: int, burst: bool) -> list[Proc]:
    env = world.env()
    if system == "eventpipe":
        args = ["worker", "--processes", str(processes), *(["--burst"] if burst else [])]
        return [Proc(eventpipe_argv(*args), env, "eventpipe-worker")]
    argv = [PYTHON, "-m", "bench.naive", "worker"]
    return [Proc(argv, env, "naive-worker") for _ in range(processes)]


def registered_workers(world: World, system: System) -> int:
    queue = EVENTPIPE_QUEUE if system == "eventpipe" else NAIVE_QUEUE
    return world.redis.scard(f"rq:workers:{queue}")


@contextlib.contextmanager
def workers(
    world: World, system: System, processes: int, *, burst: bool = False
) -> Iterator[list[Proc]]:
    """`processes` RQ worker processes of the system, stopped on the way out."""
    procs = worker_procs(world, system, processes, burst)

    def registered() -> bool:
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited at start:\n{proc.tail()}")
        return registered_workers(world, system) >= processes

    with running(*procs):
        if not burst:
            wait_until(registered, 60, f"{processes} {system} worker(s) to register")
        yield procs
