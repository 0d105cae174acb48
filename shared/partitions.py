"""Time partitions of `events` on PostgreSQL, and retention on both dialects.

`events` is partitioned by range on `created_at`, the acceptance time set at the edge, one
partition per EVENTS_PARTITION_SIZE (a month by default; months align on years, days on
Monday 1970-01-05, so 7d partitions are ISO weeks). Partitions are found by their
bounds in pg_catalog, never by their names (names are for people: events_pYYYYMMDD after the
lower bound). Creating one is CREATE TABLE (LIKE events) + ATTACH PARTITION (a lighter lock
on the parent than CREATE TABLE ... PARTITION OF), under an advisory lock, since every
worker may try at once. There is no DEFAULT partition: it would block creating a month that
already has rows in it. A row whose partition is missing fails its insert (23514), which the
worker takes for an outage: it creates the partition and tries again (worker/events.py).

Retention drops whole partitions whose upper bound is past the cutoff: DETACH PARTITION ...
CONCURRENTLY (inserts go on), then DROP. On SQLite, and for failed events (never
partitioned), it deletes rows by age, in batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select

from shared.clock import add_months, age_cutoff, parse_age, utcnow
from shared.db import transaction
from shared.errors import EventpipeError
from shared.models import events, failed_events
from shared.settings import Settings

log = logging.getLogger("eventpipe.partitions")

PARENT = "events"
# pg_advisory locks: one for partition DDL, one for a retention pass (bigints, "evp1"/"evp2").
DDL_LOCK = 0x65767031
RETENTION_LOCK = 0x65767032
# Set on a partition before it is detached: a pass interrupted between DETACH and DROP
# leaves a table the next pass still finds (a detached table has no bounds left).
DETACHED_COMMENT = "eventpipe: detached by retention, to be dropped"
DELETE_BATCH = 5000

_BOUNDS_SQL = """
SELECT c.relname AS name,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz
           AS lower,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]::timestamptz
           AS upper,
       greatest(c.reltuples, 0)::bigint AS rows,
       (SELECT coalesce(sum(r.relpages), 0) FROM pg_class r
         WHERE r.oid IN (c.oid, c.reltoastrelid)
            OR r.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = c.oid))::bigint
         * current_setting('block_size')::bigint AS bytes,
       i.inhdetachpending AS detach_pending
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = to_regclass(%(parent)s)
ORDER BY lower NULLS FIRST
"""


@dataclass(frozen=True)
class Partition:
    name: str
    lower: datetime | None  # None: MINVALUE (the table that was there before partitioning)
    upper: datetime | None  # None: MAXVALUE
    # The catalog's estimates (as of the last VACUUM or ANALYZE): counting would read it all,
    # and sizing it (pg_total_relation_size) would lock it, and a worker's upkeep pass must
    # not wait on a partition someone holds.
    rows: int
    bytes: int
    detach_pending: bool = False

    def holds(self, moment: datetime) -> bool:
        return (self.lower is None or self.lower <= moment) and (
            self.upper is None or moment < self.upper
        )

    def describe(self) -> str:
        lower = "MINVALUE" if self.lower is None else f"{self.lower:%Y-%m-%d}"
        upper = "MAXVALUE" if self.upper is None else f"{self.upper:%Y-%m-%d}"
        return f"{self.name} [{lower}, {upper}): ~{self.rows:,} rows, {self.bytes / 1e6:,.1f} MB"


def is_partitioned(conn: Connection) -> bool:
    if conn.dialect.name != "postgresql":
        return False
    kind = conn.exec_driver_sql(
        "SELECT relkind FROM pg_class WHERE oid = to_regclass(%(t)s)", {"t": PARENT}
    ).scalar()
    return bool(kind == "p")


def list_partitions(conn: Connection) -> list[Partition]:
    rows = conn.exec_driver_sql(_BOUNDS_SQL, {"parent": PARENT}).mappings()
    return [Partition(**row) for row in rows]


_DAY_ZERO = datetime(1970, 1, 5, tzinfo=UTC)  # a Monday


def period_start(moment: datetime, size: str) -> datetime:
    """The start of the partition period of `size` ("1mo", "3mo", "1d", "7d") holding
    `moment`: months aligned on the year (3mo: quarters), days on a Monday (7d: ISO weeks)."""
    months, days = parse_age(size)
    moment = moment.astimezone(UTC)
    if months:
        month = (moment.month - 1) // months * months + 1
        return datetime(moment.year, month, 1, tzinfo=UTC)
    return _DAY_ZERO + timedelta(days=(moment - _DAY_ZERO).days // days * days)


def period_end(start: datetime, size: str) -> datetime:
    months, days = parse_age(size)
    return add_months(start, months) if months else start + timedelta(days=days)


def gap_around(
    moment: datetime, size: str, existing: Sequence[Partition]
) -> tuple[datetime, datetime] | None:
    """The range a new partition for `moment` gets: its period, cut where existing partitions
    begin or end (a period size changed since, or the pre-partitioning table's bound); None
    when a partition holds `moment` already."""
    if any(p.holds(moment) for p in existing):
        return None
    lower = period_start(moment, size)
    upper = period_end(lower, size)
    for p in existing:
        if p.upper is not None and p.upper <= moment:
            lower = max(lower, p.upper)
        if p.lower is not None and p.lower > moment:
            upper = min(upper, p.lower)
    return lower, upper


def bounds_sql(lower: datetime | None, upper: datetime) -> str:
    start = "MINVALUE" if lower is None else f"'{lower.isoformat()}'"
    return f"FROM ({start}) TO ('{upper.isoformat()}')"


def partition_name(lower: datetime) -> str:
    return f"{PARENT}_p{lower:%Y%m%d}"


def create_partitions(conn: Connection, moments: Iterable[datetime], size: str) -> list[str]:
    """Partitions holding each of `moments`, created where missing, in the caller's
    transaction, under the DDL advisory lock (held to its end). Returns the names created."""
    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%(k)s)", {"k": DDL_LOCK})
    existing = list_partitions(conn)
    created = []
    for moment in sorted(set(moments)):
        gap = gap_around(moment, size, existing)
        if gap is None:
            continue
        name = partition_name(gap[0])
        conn.exec_driver_sql(f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS)")
        # Literals: a utility statement takes no bind parameters (both are our datetimes).
        conn.exec_driver_sql(
            f"ALTER TABLE {PARENT} ATTACH PARTITION {name} FOR VALUES {bounds_sql(*gap)}"
        )
        existing.append(Partition(name, gap[0], gap[1], 0, 0))
        created.append(name)
        log.info("created partition %s [%s, %s)", name, gap[0], gap[1])
    return created


def ahead(now: datetime, settings: Settings) -> list[datetime]:
    """The moments whose partitions must exist: the current period and the next ones."""
    moments = [period_start(now, settings.events_partition_size)]
    for _ in range(settings.events_partitions_ahead):
        moments.append(period_end(moments[-1], settings.events_partition_size))
    return moments


def ensure_ahead(
    engine: Engine, settings: Settings, now: datetime | None = None, *, lock_wait_ms: int = 0
) -> list[str]:
    """Create the current and coming partitions where missing (nothing on SQLite or on a
    table not partitioned yet). Returns the names created. `lock_wait_ms`: give up (a store
    error) rather than wait longer on a lock (reading the bounds locks each partition for a
    moment, and someone may hold the table)."""
    with transaction(engine) as conn:
        if not is_partitioned(conn):
            return []
        if lock_wait_ms:
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(lock_wait_ms)}")
        return create_partitions(
            conn, ahead(now or utcnow(), settings), settings.events_partition_size
        )


def ensure_holding(engine: Engine, moments: Iterable[datetime], settings: Settings) -> list[str]:
    """Create the partitions these acceptance times need (a worker met a missing one)."""
    with transaction(engine) as conn:
        if not is_partitioned(conn):
            return []
        return create_partitions(conn, moments, settings.events_partition_size)


# --- retention ---------------------------------------------------------------------------


@dataclass
class Removed:
    """What a retention pass removed (or, dry, would remove)."""

    cutoff: datetime | None = None
    partitions: list[Partition] | None = None  # PostgreSQL, partitioned
    event_rows: int = 0  # SQLite: rows deleted
    failed_cutoff: datetime | None = None
    failed_rows: int = 0
    dry_run: bool = False

    def lines(self) -> list[str]:
        verb = "would drop" if self.dry_run else "dropped"
        out = []
        if self.cutoff is not None:
            head = f"events accepted before {self.cutoff:%Y-%m-%d %H:%M}Z:"
            if self.partitions is None:
                out.append(f"{head} {verb.replace('drop', 'delete')} {self.event_rows:,} rows")
            elif not self.partitions:
                out.append(f"{head} no partition lies wholly before it")
            else:
                out += [f"{head} {verb} {p.describe()}" for p in self.partitions]
        if self.failed_cutoff is not None:
            would = "would delete" if self.dry_run else "deleted"
            out.append(
                f"failed events failed before {self.failed_cutoff:%Y-%m-%d %H:%M}Z:"
                f" {would} {self.failed_rows:,}"
            )
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "dryRun": self.dry_run,
            "cutoff": self.cutoff.isoformat() if self.cutoff else None,
            "partitions": [
                {
                    "name": p.name,
                    "from": p.lower.isoformat() if p.lower else None,
                    "to": p.upper.isoformat() if p.upper else None,
                    "rowsEstimate": p.rows,
                    "bytes": p.bytes,
                }
                for p in self.partitions or []
            ],
            "eventRowsDeleted": self.event_rows,
            "failedCutoff": self.failed_cutoff.isoformat() if self.failed_cutoff else None,
            "failedRows": self.failed_rows,
        }


def apply_retention(
    engine: Engine,
    events_age: str = "",
    failed_age: str = "",
    *,
    dry_run: bool = False,
    now: datetime | None = None,
) -> Removed:
    """Remove events older than `events_age` and failed events older than `failed_age`
    (empty: keep them). On PostgreSQL `events` must be partitioned: deleting rows from one
    big table is what partitioning is there to avoid."""
    now = now or utcnow()
    removed = Removed(dry_run=dry_run)
    if events_age:
        removed.cutoff = age_cutoff(now, events_age)
        if engine.dialect.name == "postgresql":
            removed.partitions = drop_partitions_before(engine, removed.cutoff, dry_run=dry_run)
        else:
            removed.event_rows = _delete_before(
                engine, events, events.c.created_at, removed.cutoff, dry_run
            )
    if failed_age:
        removed.failed_cutoff = age_cutoff(now, failed_age)
        removed.failed_rows = _delete_before(
            engine, failed_events, failed_events.c.failed_at, removed.failed_cutoff, dry_run
        )
    return removed


def drop_partitions_before(engine: Engine, cutoff: datetime, *, dry_run: bool) -> list[Partition]:
    """Drop the partitions holding only rows accepted before `cutoff` (upper bound at or
    before it). One pass at a time (an advisory lock; a pass that finds it taken drops
    nothing). DETACH ... CONCURRENTLY runs outside a transaction, hence AUTOCOMMIT."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if not is_partitioned(conn):
            raise EventpipeError(
                "events is not partitioned: run `eventpipe db partition --online` first "
                "(retention drops whole partitions; it never deletes rows from one big table)"
            )
        doomed = [p for p in list_partitions(conn) if p.upper is not None and p.upper <= cutoff]
        leftovers = _detached_leftovers(conn)
        if dry_run:
            return doomed + leftovers
        if not conn.exec_driver_sql(
            "SELECT pg_try_advisory_lock(%(k)s)", {"k": RETENTION_LOCK}
        ).scalar():
            log.info("another retention pass is running; this one drops nothing")
            return []
        try:
            conn.exec_driver_sql("SET statement_timeout = 0")
            for partition in doomed:
                _detach_and_drop(conn, partition)
            for partition in leftovers:
                conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{partition.name}"')
        finally:
            conn.exec_driver_sql("RESET statement_timeout")
            conn.exec_driver_sql("SELECT pg_advisory_unlock(%(k)s)", {"k": RETENTION_LOCK})
    return doomed + leftovers


def _detach_and_drop(conn: Connection, partition: Partition) -> None:
    name = f'"{partition.name}"'
    conn.exec_driver_sql(f"COMMENT ON TABLE {name} IS '{DETACHED_COMMENT}'")
    # A pass interrupted inside DETACH CONCURRENTLY leaves it pending: FINALIZE completes it.
    mode = "FINALIZE" if partition.detach_pending else "CONCURRENTLY"
    conn.exec_driver_sql(f"ALTER TABLE {PARENT} DETACH PARTITION {name} {mode}")
    conn.exec_driver_sql(f"DROP TABLE {name}")
    log.info("retention dropped %s", partition.describe())


def _detached_leftovers(conn: Connection) -> list[Partition]:
    """Tables a pass detached but did not drop (found by their comment, not their name)."""
    rows = conn.exec_driver_sql(
        "SELECT c.relname FROM pg_class c JOIN pg_description d ON d.objoid = c.oid"
        " AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0"
        " WHERE c.relkind = 'r' AND NOT c.relispartition AND d.description = %(c)s",
        {"c": DETACHED_COMMENT},
    ).scalars()
    return [Partition(name, None, None, 0, 0) for name in rows]


def _delete_before(engine: Engine, table: Any, column: Any, cutoff: datetime, dry_run: bool) -> int:
    """Rows with `column` before `cutoff`, deleted in batches (short transactions), or
    counted when dry."""
    old = column < cutoff
    if dry_run:
        with transaction(engine) as conn:
            return int(
                conn.execute(select(func.count()).select_from(table).where(old)).scalar_one()
            )
    total = 0
    while True:
        with transaction(engine) as conn:
            batch = select(table.c.id).where(old).limit(DELETE_BATCH).scalar_subquery()
            deleted = conn.execute(delete(table).where(table.c.id.in_(batch))).rowcount
        total += deleted
        if deleted < DELETE_BATCH:
            return total


# --- the workers' upkeep -------------------------------------------------------------------

AHEAD_EVERY = 3600.0
UPKEEP_LOCK_WAIT_MS = 200
RETENTION_EVERY = 24 * 3600.0


class Upkeep:
    """What a worker does between jobs (at its maintenance passes): make the coming
    partitions hourly, apply the retention settings daily. Failures are logged and tried
    again at the next pass that is due; they never stop the worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.next_ahead = 0.0
        self.next_retention = 0.0

    def run(self, engine: Engine, clock: float | None = None) -> None:
        clock = time.monotonic() if clock is None else clock
        if clock >= self.next_ahead:
            self.next_ahead = clock + AHEAD_EVERY if self._ahead(engine) else clock + 60
        if clock >= self.next_retention and self._wants_retention():
            ok = self._retention(engine)
            self.next_retention = clock + (RETENTION_EVERY if ok else AHEAD_EVERY)

    def _wants_retention(self) -> bool:
        return bool(self.settings.events_retention or self.settings.failed_events_retention)

    def _ahead(self, engine: Engine) -> bool:
        try:
            # A worker between jobs does not wait on a held table: it tries again in a minute.
            ensure_ahead(engine, self.settings, lock_wait_ms=UPKEEP_LOCK_WAIT_MS)
            return True
        except Exception as exc:  # the next pass tries again; jobs go on meanwhile
            log.warning("could not create the coming partitions: %s", exc)
            return False

    def _retention(self, engine: Engine) -> bool:
        settings = self.settings
        try:
            removed = apply_retention(
                engine, _events_age(engine, settings), settings.failed_events_retention
            )
        except Exception as exc:
            log.warning("retention pass failed: %s", exc)
            return False
        for line in removed.lines():
            log.info("retention: %s", line)
        return True


def _events_age(engine: Engine, settings: Settings) -> str:
    """EVENTS_RETENTION, unless PostgreSQL's `events` is not partitioned yet (then workers
    leave events alone, with a warning: deleting rows from one big table is no retention)."""
    if not settings.events_retention or engine.dialect.name != "postgresql":
        return settings.events_retention
    with engine.connect() as conn:
        if is_partitioned(conn):
            return settings.events_retention
    log.warning(
        "EVENTS_RETENTION is set but events is not partitioned: run "
        "`eventpipe db partition --online`"
    )
    return ""


# --- the partitioned parent ----------------------------------------------------------------

SEQUENCE = "events_seq"
# The columns of migration 0001's `events`, in its order (ATTACH wants the same columns), with
# `seq` drawn from a sequence of its own (a partitioned table takes no identity column in
# PostgreSQL 15) and the primary key holding the partition key.
_PARENT_DDL = f"""
CREATE TABLE {PARENT} (
    id VARCHAR(24) NOT NULL,
    seq BIGINT NOT NULL DEFAULT nextval('{SEQUENCE}'),
    project_id VARCHAR(24) NOT NULL,
    contact_id VARCHAR(24) NOT NULL,
    event_name VARCHAR(64) NOT NULL,
    properties JSONB NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    stored_at TIMESTAMP WITH TIME ZONE NOT NULL,
    CONSTRAINT pk_events PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at)
"""
PARENT_INDEXES = {
    "ix_events_project_contact_seq": "(project_id, contact_id, seq)",
    "ix_events_project_contact_name_seq": "(project_id, contact_id, event_name, seq)",
}


def create_parent(conn: Connection, seq_start: int) -> None:
    """The partitioned `events`, empty, its sequence starting at `seq_start` (above every
    `seq` given out before, so event-log cursors stay valid)."""
    conn.exec_driver_sql(f"CREATE SEQUENCE {SEQUENCE} AS BIGINT START WITH {int(seq_start)}")
    conn.exec_driver_sql(_PARENT_DDL)
    conn.exec_driver_sql(f"ALTER SEQUENCE {SEQUENCE} OWNED BY {PARENT}.seq")
    for name, columns in PARENT_INDEXES.items():
        # On a partitioned table with no partitions yet: instant, and each partition attached
        # later gets (or lends, when it has a matching one) its own.
        conn.exec_driver_sql(f"CREATE INDEX {name} ON {PARENT} {columns}")


def make_room(engine: Engine, moments: Iterable[datetime], settings: Settings) -> set[datetime]:
    """Create the partitions these acceptance times need (a worker's insert met a missing
    one), except for times older than EVENTS_RETENTION that no partition holds: their
    partition was dropped, and one made again would only be dropped again. Returns those."""
    retention = settings.events_retention
    cutoff = age_cutoff(utcnow(), retention) if retention else None
    with transaction(engine) as conn:
        if not is_partitioned(conn):
            return set()
        existing = list_partitions(conn)
        expired = {
            m
            for m in moments
            if cutoff is not None and m < cutoff and not any(p.holds(m) for p in existing)
        }
        create_partitions(conn, set(moments) - expired, settings.events_partition_size)
    return expired
