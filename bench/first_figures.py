"""First figures of the pipeline: events/s accepted by POST /v1/events/send (wrk against a
real uvicorn), then events/s stored by one worker process draining what was accepted.

Needs PostgreSQL and Redis (BENCH_DATABASE_URL, BENCH_REDIS_URL; defaults are the local
services) and wrk (Debian: `apt-get install wrk`). It creates and drops its own database and
flushes its own Redis database. A script, not a test: it prints figures, it asserts nothing.

    .venv/bin/python bench/first_figures.py [--seconds 10] [--connections 64] [--api-workers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.db import transaction  # noqa: E402
from shared.definitions import check_definition  # noqa: E402
from shared.ids import new_id  # noqa: E402
from shared.migrations import upgrade  # noqa: E402
from shared.models import events  # noqa: E402
from shared.queue import PENDING_KEY  # noqa: E402
from shared.store import create_definition, create_project, upsert_contact  # noqa: E402
from tests.integration.services import start_api, start_worker  # noqa: E402

ADMIN_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
SEED = {
    "eventName": "order_completed",
    "email": "jane@example.com",
    "eventProperties": {"order_total": 129.99, "currency": "USD", "is_first_purchase": True},
}
LUA = """
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--api-workers", type=int, default=1)
    args = parser.parse_args()
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"eventpipe_bench_{new_id()}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        run(url, args)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def setup(url: str) -> str:
    upgrade(url)
    engine = create_engine(url)
    with transaction(engine) as conn:
        project_id, key = create_project("bench", conn=conn)
        spec = check_definition(
            {
                "eventName": "order_completed",
                "properties": [
                    {"propertyName": "order_total", "type": "number"},
                    {"propertyName": "currency", "type": "string"},
                    {"propertyName": "is_first_purchase", "type": "boolean"},
                ],
            }
        )
        create_definition(project_id, spec, conn=conn)
        upsert_contact(project_id, "jane@example.com", {}, conn=conn)
    engine.dispose()
    return key.api_key


def run(url: str, args: argparse.Namespace) -> None:
    r = redis.Redis.from_url(REDIS_URL)
    r.flushdb()
    key = setup(url)
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": REDIS_URL, "LOG_LEVEL": "WARNING"}
    api, base = start_api(env, workers=args.api_workers)
    try:
        accepted = load(base, key, args)
    finally:
        api.stop()
    queued = int(r.hlen(PENDING_KEY))  # type: ignore[arg-type]
    stored_rate = drain(url, env, queued)
    print(f"\nmachine: {os.cpu_count()} cores; API uvicorn workers: {args.api_workers}")
    print("| figure | value |\n|---|---|")
    print(
        f"| accepted POST /v1/events/send (wrk, {args.connections} connections) "
        f"| {accepted['rps']:.0f} events/s (p50 {accepted['p50']}, p99 {accepted['p99']}) |"
    )
    print(f"| non-2xx answers | {accepted['errors']} |")
    print(
        f"| stored by 1 worker process, draining {queued} queued events | "
        f"{stored_rate:.0f} events/s |"
    )
    r.flushdb()


def load(base: str, key: str, args: argparse.Namespace) -> dict[str, object]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA.format(body=json.dumps(SEED), key=key))
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{args.connections}",
            f"-d{args.seconds}s",
            "--latency",
            "-s",
            f.name,
            f"{base}/v1/events/send",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    print(out)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": p50, "p99": p99, "errors": int(errors.group(1)) if errors else 0}


def drain(url: str, env: dict[str, str], queued: int) -> float:
    engine = create_engine(url)

    def stored() -> int:
        with transaction(engine) as conn:
            return int(conn.execute(select(func.count()).select_from(events)).scalar() or 0)

    worker = start_worker(env, "--burst")
    samples: list[tuple[float, int]] = []
    while worker.proc.poll() is None:
        samples.append((time.monotonic(), stored()))
        time.sleep(0.25)
    samples.append((time.monotonic(), stored()))
    engine.dispose()
    # Rate between the first row and the last: the process start-up is not storing.
    moving = [s for s in samples if s[1] > 0]
    if len(moving) < 2:
        return float(samples[-1][1])
    (t0, n0), (t1, n1) = moving[0], moving[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else float(n1)


if __name__ == "__main__":
    main()
