"""CI's smoke test of what users install: eventpipe from its wheel, in a fresh virtualenv,
run as an unprivileged user, against the real PostgreSQL and Redis (.ci/run sets it up).

    python smoke.py wheel               from an empty directory, with the wheel installed:
                                        db upgrade, projects create, serve, worker, a send,
                                        the event stored, a failed event replayed
    python smoke.py buildpack SOURCE    a buildpack's deploy: requirements.txt installed, the
                                        Procfile's release line run in the source tree

Standard library only (plus psycopg, a dependency, to create and drop its own database).
Environment: SMOKE_ADMIN_URL (a PostgreSQL URL allowed to CREATE DATABASE) and
SMOKE_REDIS_URL (a Redis database it may flush).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

BIN = Path(sys.executable).parent
ADMIN_URL = os.environ["SMOKE_ADMIN_URL"]
REDIS_URL = os.environ["SMOKE_REDIS_URL"]


def say(message: str) -> None:
    print(f"smoke: {message}", flush=True)


def wait_until(check: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise SystemExit(f"smoke: FAILED: no {what} within {seconds:.0f}s")
        time.sleep(0.2)


@contextmanager
def own_database() -> Iterator[str]:
    """A database of its own, dropped afterwards; its URL in eventpipe's form."""
    name = f"eventpipe_smoke_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        base, _, _ = ADMIN_URL.rpartition("/")
        yield f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def flush_redis() -> None:
    """The smoke's Redis database starts and ends empty (redis-py: a dependency)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    client.close()


def eventpipe(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([str(BIN / "eventpipe"), *args], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"smoke: FAILED: eventpipe {' '.join(args)}:\n{done.stderr}")
    return done.stdout


def http(method: str, url: str, key: str | None = None, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, data, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")
    except OSError:
        return 0, None


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_installed_from_the_wheel() -> None:
    """Every package of ours comes from the virtualenv, none from a source tree."""
    import importlib.util

    for package in ("api", "worker", "shared", "ops", "cli"):
        spec = importlib.util.find_spec(package)
        assert spec and spec.origin and spec.origin.startswith(sys.prefix), (package, spec)
    say(f"eventpipe is installed in {sys.prefix}, no source tree on the path")


def wheel() -> int:
    check_installed_from_the_wheel()
    flush_redis()
    with own_database() as database_url:
        env = dict(os.environ, DATABASE_URL=database_url, REDIS_URL=REDIS_URL,
                   LOG_LEVEL="WARNING", CONFIG_POLL_SECONDS="0.2")  # fmt: skip
        run_pipeline(env)
    flush_redis()
    say("PASSED")
    return 0


def run_pipeline(env: dict[str, str]) -> None:
    eventpipe(env, "db", "upgrade")
    eventpipe(env, "db", "upgrade")  # a second run is a no-op
    say("db upgrade: migrated from the wheel's own scripts, twice")
    refused = subprocess.run([str(BIN / "eventpipe"), "db", "revision", "-m", "x"], env=env,
                             capture_output=True, text=True)  # fmt: skip
    assert refused.returncode == 1 and "from a checkout" in refused.stderr, refused.stderr
    key = json.loads(eventpipe(env, "projects", "create", "smoke", "--json"))["apiKey"]
    say("projects create: a key")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = subprocess.Popen([str(BIN / "eventpipe"), "serve", "--port", str(port)], env=env)
    worker = subprocess.Popen([str(BIN / "eventpipe"), "worker", "--processes", "1"], env=env)
    try:
        wait_until(lambda: http("GET", f"{base}/readyz")[0] == 200, 60, "ready API")
        say(f"serve and worker: {base}/readyz answers 200")
        send_store_and_replay(env, base, key)
    finally:
        for proc in (serve, worker):
            proc.terminate()
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert serve.wait(60) in (0, -signal.SIGTERM), f"serve exited {serve.returncode}"
    assert worker.wait(60) == 0, f"worker exited {worker.returncode}"
    say("serve and worker stopped cleanly on SIGTERM")


def send_store_and_replay(env: dict[str, str], base: str, key: str) -> None:
    definition = {"eventName": "order_completed",
                  "properties": [{"propertyName": "order_total", "type": "number"}]}  # fmt: skip
    assert http("POST", f"{base}/v1/events", key, definition)[0] == 201
    assert http("POST", f"{base}/v1/contacts/email", key, {"email": "jane@example.com"})[0] == 200
    stored = send(base, key, "jane@example.com")
    wait_for_status(base, key, stored, "stored")
    say(f"a send: event {stored} accepted (202) and stored by the worker")

    failed = send(base, key, "bob@example.com")  # no such contact yet: it fails, kept
    wait_for_status(base, key, failed, "failed")
    listed = json.loads(eventpipe(env, "failed", "list", "--json"))
    assert [row["id"] for row in listed] == [failed], listed
    assert http("POST", f"{base}/v1/contacts/email", key, {"email": "bob@example.com"})[0] == 200
    eventpipe(env, "replay", "--id", failed)
    wait_for_status(base, key, failed, "stored")
    assert json.loads(eventpipe(env, "failed", "list", "--json")) == []
    say(f"a replay: failed event {failed} requeued and stored once its contact existed")


def send(base: str, key: str, email: str) -> str:
    body = {"eventName": "order_completed", "email": email,
            "eventProperties": {"order_total": "129.99"}}  # fmt: skip
    status, answer = http("POST", f"{base}/v1/events/send", key, body)
    assert status == 202 and answer["data"]["status"] == "queued", (status, answer)
    return str(answer["data"]["id"])


def wait_for_status(base: str, key: str, event_id: str, status: str) -> None:
    def reached() -> bool:
        code, answer = http("GET", f"{base}/v1/events/{event_id}", key)
        return code == 200 and answer["data"]["status"] == status

    wait_until(reached, 60, f"event {event_id} {status}")


def buildpack(source: Path) -> int:
    """A buildpack installs requirements.txt and runs the Procfile's lines in the source tree."""
    procfile = dict(line.split(": ", 1) for line in (source / "Procfile").read_text().splitlines())
    with own_database() as database_url:
        # The platform's shell runs the line, with the virtualenv's python first on PATH.
        env = dict(os.environ, DATABASE_URL=database_url, LOG_LEVEL="WARNING",
                   PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")  # fmt: skip
        done = subprocess.run(["sh", "-c", procfile["release"]], cwd=source, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            version = str(row[0]) if row else "nothing"
    say(f"buildpack: the Procfile's release ({shlex.quote(procfile['release'])}) migrated to "
        f"{version}")  # fmt: skip
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["wheel"]:
        sys.exit(wheel())
    if sys.argv[1:2] == ["buildpack"] and len(sys.argv) == 3:
        sys.exit(buildpack(Path(sys.argv[2])))
    sys.exit(__doc__)
