"""`eventpipe db partition --online`: today's single `events` table becomes the first partition
of a partitioned `events`, in place, while the API accepts and the workers store.

Nothing is copied. The slow steps take no lock that stops inserts:
1. a unique index on (id, created_at) built CONCURRENTLY: the partitioned table's primary key
   must hold the partition key, and ATTACH adopts a matching index instead of building one;
2. a CHECK (created_at < bound) added NOT VALID, then VALIDATEd (a scan under a lock that lets
   inserts go on): ATTACH then trusts it and skips its own scan under a stronger lock.
Then one short transaction (milliseconds; under a lock_timeout, tried again if the lock is
not granted in time): the table is renamed events_legacy, loses its identity (partitions
cannot have one), its unique `seq` and its id-only primary key; the partitioned `events`
is created with a sequence starting above the highest `seq` ever given (cursors stay valid),
the old table attached FROM (MINVALUE) TO (bound), and the coming partitions created.
Inserts waiting on the lock meanwhile resolve `events` again once it is released: they land in
the new table.

The bound is the end of the partition period that holds tomorrow: at least a day ahead, so
no event accepted while the move runs can fall past it (the CHECK would refuse it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy import exc as sa_exc

from shared.clock import utcnow
from shared.errors import EventpipeError
from shared.partitions import (
    PARENT,
    PARENT_INDEXES,
    ahead,
    bounds_sql,
    create_parent,
    ensure_holding,
    is_partitioned,
    period_end,
    period_start,
)
from shared.settings import Settings

LEGACY = "events_legacy"
LEGACY_KEY = "events_legacy_pkey"
BOUND_CHECK = "events_before_partitioning"
SWAP_LOCK_TIMEOUT = "2s"
SWAP_TRIES = 30


@dataclass
class MoveReport:
    bound: datetime | None = None
    seq_start: int = 0
    swap_ms: float = 0.0  # how long the table was locked: from the lock granted to COMMIT
    lock_wait_ms: float = 0.0  # waiting for the lock (transactions in flight ended first)
    swap_tries: int = 0
    steps: list[str] = field(default_factory=list)
    already: bool = False


def move_online(
    engine: Engine, settings: Settings, say: Callable[[str], None] = print
) -> MoveReport:
    report = MoveReport()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if conn.dialect.name != "postgresql":
            raise EventpipeError("time partitions are for PostgreSQL (SQLite has none)")
        conn.exec_driver_sql("SET statement_timeout = 0")
        if is_partitioned(conn):
            report.already = True
            say("events is partitioned already: nothing to do")
            return report
        report.bound = move_bound(utcnow(), settings.events_partition_size)
        _step(report, say, f"unique index {LEGACY_KEY} on (id, created_at), concurrently")
        _unique_key(conn)
        _step(report, say, f"CHECK (created_at < {report.bound:%Y-%m-%d}), added NOT VALID")
        bound = report.bound
        _with_lock_retries(lambda: _bound_check(engine, bound), say)
        _step(report, say, "CHECK validated (inserts go on while it scans)")
        conn.exec_driver_sql(f"ALTER TABLE {PARENT} VALIDATE CONSTRAINT {BOUND_CHECK}")
        conn.exec_driver_sql("RESET statement_timeout")
    report.swap_tries = _with_lock_retries(lambda: _swap(engine, settings, report), say)
    _step(
        report,
        say,
        f"swapped in {report.swap_ms:.1f} ms (the lock waited for {report.lock_wait_ms:.1f} ms): "
        f"{LEGACY} is the partition FROM (MINVALUE) TO "
        f"({report.bound:%Y-%m-%d}); events_seq starts at {report.seq_start}",
    )
    return report


def move_bound(now: datetime, size: str) -> datetime:
    return period_end(period_start(now + timedelta(days=1), size), size)


def _step(report: MoveReport, say: Callable[[str], None], text: str) -> None:
    report.steps.append(text)
    say(text)


def _unique_key(conn: Connection) -> None:
    invalid = conn.exec_driver_sql(
        "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%(i)s)",
        {"i": LEGACY_KEY},
    ).scalar()
    if invalid:  # an interrupted build of an earlier run
        conn.exec_driver_sql(f"DROP INDEX CONCURRENTLY {LEGACY_KEY}")
    conn.exec_driver_sql(
        f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {LEGACY_KEY} ON {PARENT} (id, created_at)"
    )


def _bound_check(engine: Engine, bound: datetime) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'")
        conn.exec_driver_sql(f"ALTER TABLE {PARENT} DROP CONSTRAINT IF EXISTS {BOUND_CHECK}")
        conn.exec_driver_sql(
            f"ALTER TABLE {PARENT} ADD CONSTRAINT {BOUND_CHECK} "
            f"CHECK (created_at < '{bound.isoformat()}') NOT VALID"
        )


def _with_lock_retries(fn: Callable[[], None], say: Callable[[str], None]) -> int:
    """`fn` (one transaction taking a strong lock under SWAP_LOCK_TIMEOUT), tried again while
    its lock is not granted in time (a long transaction holds the table); the tries made."""
    for attempt in range(1, SWAP_TRIES + 1):
        try:
            fn()
            return attempt
        except sa_exc.OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != "55P03" or attempt == SWAP_TRIES:
                raise
            say(f"the table's lock was not granted within {SWAP_LOCK_TIMEOUT}; trying again")
            time.sleep(1)
    return SWAP_TRIES


def _swap(engine: Engine, settings: Settings, report: MoveReport) -> None:
    assert report.bound is not None
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'")
        conn.exec_driver_sql(f"LOCK TABLE {PARENT} IN ACCESS EXCLUSIVE MODE")
        locked = time.perf_counter()
        report.lock_wait_ms = (locked - started) * 1000
        report.seq_start = _next_seq(conn)
        conn.exec_driver_sql(f"ALTER TABLE {PARENT} RENAME TO {LEGACY}")
        for constraint in _constraints(conn, LEGACY, "pu"):
            conn.exec_driver_sql(f'ALTER TABLE {LEGACY} DROP CONSTRAINT "{constraint}"')
        # ATTACH adopts a partition's index for the parent's primary key only if it backs a
        # primary key itself: the unique index built concurrently becomes one (no scan: the
        # columns are NOT NULL already).
        conn.exec_driver_sql(
            f"ALTER TABLE {LEGACY} ADD CONSTRAINT {LEGACY_KEY} PRIMARY KEY USING INDEX {LEGACY_KEY}"
        )
        for name in PARENT_INDEXES:  # the names go to the parent's indexes
            legacy_name = name.replace(f"ix_{PARENT}_", f"ix_{LEGACY}_")
            conn.exec_driver_sql(f"ALTER INDEX IF EXISTS {name} RENAME TO {legacy_name}")
        conn.exec_driver_sql(f"ALTER TABLE {LEGACY} ALTER COLUMN seq DROP IDENTITY IF EXISTS")
        create_parent(conn, report.seq_start)
        conn.exec_driver_sql(
            f"ALTER TABLE {PARENT} ATTACH PARTITION {LEGACY} "
            f"FOR VALUES {bounds_sql(None, report.bound)}"
        )
        conn.exec_driver_sql(f"ALTER TABLE {LEGACY} DROP CONSTRAINT {BOUND_CHECK}")
    report.swap_ms = (time.perf_counter() - locked) * 1000  # committed: the lock is gone
    # The coming partitions after the lock: the old table takes every row until the bound,
    # at least a day away.
    ensure_holding(engine, ahead(utcnow(), settings) + [report.bound], settings)


def _next_seq(conn: Connection) -> int:
    """Above the highest `seq` stored and above the identity's last value (a rolled-back
    insert spends values too)."""
    highest = conn.exec_driver_sql(f"SELECT coalesce(max(seq), 0) FROM {PARENT}").scalar()
    identity = conn.exec_driver_sql(
        "SELECT pg_get_serial_sequence(%(t)s, 'seq')", {"t": PARENT}
    ).scalar()
    last: Any = 0
    if identity:
        last = conn.exec_driver_sql(
            "SELECT coalesce(last_value, 0) FROM pg_sequences "
            "WHERE schemaname || '.' || sequencename = %(s)s",
            {"s": identity},
        ).scalar()
    return int(max(highest or 0, last or 0)) + 1


def _constraints(conn: Connection, table: str, kinds: str) -> list[str]:
    """The table's constraints of these kinds (p: primary key, u: unique), by the catalog:
    their names are whatever the revision that made them chose."""
    return list(
        conn.exec_driver_sql(
            "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%(t)s) "
            "AND contype = ANY(%(k)s)",
            {"t": table, "k": list(kinds)},
        ).scalars()
    )
