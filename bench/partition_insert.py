"""The store path's insert cost per event, on the plain `events` table (the schema of migration
0003) and on the partitioned one (head), in the same run, alternating. A script that prints
figures; it asserts nothing.

    .venv/bin/python -m bench.partition_insert [--rows 300000] [--batch 500] [--preload 1000000]

Each database (created and dropped here, on BENCH_DATABASE_URL's server) gets `--preload` rows
first (INSERT ... SELECT generate_series, spread over the last 60 days: on the partitioned
one, the pre-partitioning table is moved online, as an existing install would be), then the
worker's own insert (`insert_ignoring_duplicates`: one jsonb_to_recordset statement, ON
CONFLICT DO NOTHING) of `--rows` new events in batches of `--batch`, one transaction per batch,
each batch's events spread over 2,000 contacts. Reported: microseconds of wall clock per
event (client and server together, one connection) and the table's bytes per row.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alembic import command
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from bench.world import ADMIN_URL
from cli import migrate
from ops.partition_move import move_online
from shared.clock import utcnow
from shared.db import insert_ignoring_duplicates, transaction
from shared.ids import new_id
from shared.models import events
from shared.settings import Settings


def database(admin: Engine, name: str) -> str:
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def preload(engine: Engine, rows: int) -> None:
    with transaction(engine) as conn:
        conn.execute(
            text(
                "INSERT INTO events (id, project_id, contact_id, event_name, properties,"
                " created_at, stored_at) SELECT lpad(to_hex(g), 24, '0'), 'p',"
                " lpad(to_hex(g % 2000), 24, '0'), 'order_completed', '{\"order_total\": 1}',"
                " now() - (g % 5184000) * interval '1 second', now()"
                " FROM generate_series(1, :n) g"
            ),
            {"n": rows},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE events"))


def batch_rows(n: int) -> list[dict[str, Any]]:
    now = utcnow()
    return [
        {
            "id": new_id(),
            "project_id": "p",
            "contact_id": f"{i % 2000:024x}",
            "event_name": "order_completed",
            "properties": {"order_total": 129.99, "currency": "USD", "is_first_purchase": True},
            "created_at": now,
            "stored_at": now,
        }
        for i in range(n)
    ]


def insert_round(engine: Engine, rows: int, batch: int) -> float:
    """Seconds per event of one round of `rows` events."""
    batches = [batch_rows(batch) for _ in range(rows // batch)]
    started = time.perf_counter()
    for part in batches:
        with transaction(engine) as conn:
            insert_ignoring_duplicates(conn, events, part)
    return (time.perf_counter() - started) / (len(batches) * batch)


def bytes_per_row(engine: Engine) -> float:
    with transaction(engine) as conn:
        size, count = conn.execute(
            text(
                "SELECT coalesce((SELECT sum(pg_total_relation_size(relid))"
                " FROM pg_partition_tree('events')), pg_total_relation_size('events')),"
                " (SELECT count(*) FROM events)"
            )
        ).one()
    return float(size) / max(int(count), 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--preload", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    urls = {
        "plain": database(admin, "bench_events_plain"),
        "partitioned": database(admin, "bench_events_partitioned"),
    }
    engines = {}
    for kind, url in urls.items():
        command.upgrade(migrate.config(url), migrate.revision_before("events_by_time"))
        engine = create_engine(url)
        preload(engine, args.preload)
        if kind == "partitioned":
            migrate.upgrade(url)
            move_online(engine, Settings(database_url=url), say=lambda line: None)
        engines[kind] = engine
    per_event: dict[str, list[float]] = {kind: [] for kind in engines}
    for _ in range(args.rounds):  # alternating, so drift on the shared machine hits both
        for kind, engine in engines.items():
            per_event[kind].append(insert_round(engine, args.rows // args.rounds, args.batch))
    print(
        f"insert cost per event, {args.rows:,} events in batches of {args.batch},"
        f" after {args.preload:,} preloaded rows ({args.rounds} alternating rounds):"
    )
    for kind, engine in engines.items():
        runs = ", ".join(f"{s * 1e6:.1f}" for s in per_event[kind])
        print(
            f"  {kind:12s} median {statistics.median(per_event[kind]) * 1e6:6.1f} us/event"
            f" (rounds: {runs}); {bytes_per_row(engine):.0f} bytes per stored row"
        )
        engine.dispose()
    with admin.connect() as conn:
        for url in urls.values():
            conn.execute(text(f'DROP DATABASE "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


if __name__ == "__main__":
    main()
