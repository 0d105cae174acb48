"""`eventpipe run`: the whole pipeline in one command, for a first try and for development.

Starts, in order: a Redis of its own when no REDIS_URL is given (cli.embedded), the
migrations, the `dev` project (first start), the worker processes and the API; then prints a
working key and a ready-to-paste curl. Children run in their own sessions so a Ctrl-C reaches
only this process, which stops them in order: the API first (no new events; waiting requests
answered), then the workers (after their current job), then Redis (AOF flushed).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

from cli.devseed import ensure_dev_project, seed_curl
from cli.embedded import EmbeddedRedis, find_server
from cli.migrate import upgrade
from shared.db import make_engine
from shared.partitions import ensure_ahead
from shared.settings import Settings

STOP_TIMEOUT = 30.0
_PASSWORD_PARAM = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


class Child:
    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(list(argv), env=env, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if not self.alive():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"eventpipe: {self.name} did not stop in {STOP_TIMEOUT:.0f}s, killing it")
            self.proc.kill()
            self.proc.wait()


class Stopper:
    """Turns the first SIGINT/SIGTERM into a flag the main loop checks."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGINT, self._request)
        signal.signal(signal.SIGTERM, self._request)

    def _request(self, _signum: int, _frame: FrameType | None) -> None:
        self.requested = True


def run_pipeline(settings: Settings, host: str, port: int, processes: int, dev: bool) -> int:
    stopper = Stopper()
    redis_server = None
    env = dict(os.environ, DATABASE_URL=settings.database_url)
    if not settings.redis_url_configured:
        redis_server = EmbeddedRedis(
            find_server(settings.embedded_redis), Path(settings.var_dir) / "redis"
        )
        redis_server.start()
        env["REDIS_URL"] = redis_server.url
    try:
        upgrade(settings.database_url)
        _maintain(settings)
        api_key = _dev_key(settings) if dev else None
        return _supervise(env, host, port, processes, stopper, redis_server, api_key)
    finally:
        if redis_server is not None:
            redis_server.stop()


def _maintain(settings: Settings) -> None:
    """`eventpipe db maintain`'s partitions: the coming months exist before the first event
    (on PostgreSQL; nothing to do on SQLite)."""
    engine = make_engine(settings)
    try:
        ensure_ahead(engine, settings)
    finally:
        engine.dispose()


def _dev_key(settings: Settings) -> str:
    engine = make_engine(settings)
    try:
        return ensure_dev_project(engine, Path(settings.var_dir) / "dev-api-key")
    finally:
        engine.dispose()


def _supervise(
    env: dict[str, str],
    host: str,
    port: int,
    processes: int,
    stopper: Stopper,
    redis_server: EmbeddedRedis | None,
    api_key: str | None,
) -> int:
    exe = [sys.executable, "-m", "cli.main"]
    children = [Child("api", [*exe, "serve", "--host", host, "--port", str(port)], env)]
    if processes > 0:
        children.append(Child("workers", [*exe, "worker", "--processes", str(processes)], env))
    if _wait_for_port(host, port, children[0], stopper):
        _banner(host, port, processes, env, redis_server, api_key)
    while not stopper.requested and all(c.alive() for c in children):
        time.sleep(0.2)
    failed = [c.name for c in children if not c.alive()]
    for child in children:  # API first, then workers; Redis after them (caller)
        child.stop()
    if failed and not stopper.requested:
        print(f"eventpipe: {', '.join(failed)} exited; stopped everything", file=sys.stderr)
        return 1
    print("eventpipe: stopped", flush=True)
    return 0


def _wait_for_port(host: str, port: int, api: Child, stopper: Stopper) -> bool:
    while api.alive() and not stopper.requested:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def _banner(
    host: str,
    port: int,
    processes: int,
    env: dict[str, str],
    redis_server: EmbeddedRedis | None,
    api_key: str | None,
) -> None:
    base = f"http://{host}:{port}"
    queue = (
        f"{redis_server.binary.source} on port {redis_server.port}, AOF in {redis_server.dir}"
        if redis_server
        else masked_url(env.get("REDIS_URL", "REDIS_URL"))
    )
    lines = [
        "",
        f"eventpipe is running: API {base}, {processes} worker process(es)",
        f"  queue: {queue}",
        f"  store: {masked_url(env['DATABASE_URL'])}",
    ]
    if api_key:
        lines += [
            f"  dev project API key: {api_key}",
            "",
            "Send the first event (Jane, order_completed) with:",
            "",
            seed_curl(base, api_key),
            "",
            "and see it stored: GET /v1/events/<id from the answer> with the same key.",
        ]
    lines += ["Ctrl-C stops everything.", ""]
    print("\n".join(lines), flush=True)


def masked_url(url: str) -> str:
    """`url` with its password (in the user part or a `password=` parameter) shown as ***,
    for anything printed: a terminal's scrollback or a CI log is no place for it."""
    netloc = urlsplit(url).netloc
    user, at, host = netloc.rpartition("@")
    if at and ":" in user:
        url = url.replace(netloc, f"{user.partition(':')[0]}:***@{host}", 1)
    return _PASSWORD_PARAM.sub(r"\1***", url)
