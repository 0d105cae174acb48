"""shared.partitions without PostgreSQL: partition periods and gaps, ages and cutoffs, the
missing-partition error, and retention on SQLite (rows deleted by age)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select
from sqlalchemy import exc as sa_exc

from shared.clock import add_months, age_cutoff, parse_age
from shared.db import insert_ignoring_duplicates, transaction, translate
from shared.errors import PartitionMissing, StoreRefused
from shared.ids import new_id
from shared.models import events, failed_event_attempts, failed_events
from shared.partitions import (
    Partition,
    Upkeep,
    apply_retention,
    gap_around,
    period_end,
    period_start,
)
from shared.settings import Settings, load_settings


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("moment", "size", "start", "end"),
    [
        (utc(2026, 12, 1, 0, 0, 0), "1mo", utc(2026, 12, 1), utc(2027, 1, 1)),
        (utc(2026, 12, 31, 23, 59, 59), "1mo", utc(2026, 12, 1), utc(2027, 1, 1)),
        (utc(2026, 5, 8, 13, 45), "3mo", utc(2026, 4, 1), utc(2026, 7, 1)),
        (utc(2026, 5, 8, 13, 45), "1y", utc(2026, 1, 1), utc(2027, 1, 1)),
        (utc(2026, 5, 8, 13, 45), "1d", utc(2026, 5, 8), utc(2026, 5, 9)),
        (utc(2026, 12, 3, 13, 45), "7d", utc(2026, 11, 30), utc(2026, 12, 7)),  # a Monday
    ],
)
def test_a_period_starts_on_a_month_aligned_with_the_year_or_a_day(
    moment: datetime, size: str, start: datetime, end: datetime
) -> None:
    assert period_start(moment, size) == start
    assert period_end(start, size) == end


def test_a_new_partition_fills_the_gap_around_its_moment_and_no_more() -> None:
    legacy = Partition("events_legacy", None, utc(2027, 1, 1), 0, 0)
    quarter = Partition("events_p20270401", utc(2027, 4, 1), utc(2027, 7, 1), 0, 0)
    # Held already: nothing to make.
    assert gap_around(utc(2026, 3, 5), "1mo", [legacy]) is None
    # Its month, whole.
    assert gap_around(utc(2027, 2, 5), "1mo", [legacy, quarter]) == (
        utc(2027, 2, 1),
        utc(2027, 3, 1),
    )
    # Quarters now, but the legacy table ends in January and a quarter starts in April.
    assert gap_around(utc(2027, 1, 5), "3mo", [legacy]) == (utc(2027, 1, 1), utc(2027, 4, 1))
    june = Partition("events_p20260601", utc(2026, 6, 1), utc(2026, 7, 1), 0, 0)
    assert gap_around(utc(2026, 5, 8), "3mo", [june]) == (utc(2026, 4, 1), utc(2026, 6, 1))
    # Days now, inside the month partitions' world: a day, cut by nothing.
    assert gap_around(utc(2026, 8, 8, 5), "1d", [june]) == (utc(2026, 8, 8), utc(2026, 8, 9))


def test_ages_and_cutoffs() -> None:
    assert parse_age("13mo") == (13, 0)
    assert parse_age("90d") == (0, 90)
    assert parse_age("2w") == (0, 14)
    assert parse_age("1y") == (12, 0)
    for bad in ("", "13", "0d", "13m", "-1d", "1.5y", "mo"):
        with pytest.raises(ValueError):
            parse_age(bad)
    assert age_cutoff(utc(2026, 12, 1), "13mo") == utc(2025, 11, 1)
    assert age_cutoff(utc(2026, 3, 31), "1mo") == utc(2026, 2, 28)
    assert age_cutoff(utc(2026, 12, 1), "90d") == utc(2026, 12, 1) - timedelta(days=90)
    assert add_months(utc(2026, 11, 15), 2) == utc(2027, 1, 15)


def test_settings_refuse_bad_partition_sizes_and_ages() -> None:
    settings = load_settings({"EVENTS_PARTITION_SIZE": "3mo", "EVENTS_RETENTION": "13mo"})
    assert (settings.events_partition_size, settings.events_retention) == ("3mo", "13mo")
    assert load_settings({"EVENTS_PARTITION_SIZE": "1d"}).events_partition_size == "1d"
    for env in (
        {"EVENTS_PARTITION_SIZE": "5mo"},
        {"EVENTS_PARTITION_SIZE": "400d"},
        {"EVENTS_PARTITION_SIZE": "monthly"},
        {"EVENTS_PARTITIONS_AHEAD": "-1"},
        {"EVENTS_RETENTION": "13 months"},
        {"FAILED_EVENTS_RETENTION": "soon"},
    ):
        with pytest.raises(ValueError):
            load_settings(env)


def driver_error(sqlstate: str, constraint: str | None) -> sa_exc.IntegrityError:
    diag = SimpleNamespace(constraint_name=constraint, message_primary="refused")
    orig = SimpleNamespace(sqlstate=sqlstate, diag=diag)
    return sa_exc.IntegrityError("INSERT ...", {}, orig)  # type: ignore[arg-type]


def test_a_row_no_partition_holds_is_an_outage_and_a_named_check_a_refusal() -> None:
    missing = translate(driver_error("23514", None))
    assert isinstance(missing, PartitionMissing) and missing.retryable
    refused = translate(driver_error("23514", "positive_total"))
    assert isinstance(refused, StoreRefused) and not isinstance(refused, PartitionMissing)


def event_row(created_at: datetime) -> dict[str, Any]:
    return {
        "id": new_id(),
        "project_id": "p" * 24,
        "contact_id": "c" * 24,
        "event_name": "order_completed",
        "properties": {},
        "created_at": created_at,
        "stored_at": created_at,
    }


def failed_row(failed_at: datetime) -> dict[str, Any]:
    return {
        "id": new_id(),
        "project_id": "p" * 24,
        "event_name": "order_completed",
        "payload": {},
        "code": "CONTACT_NOT_FOUND_FOR_EVENT",
        "message": "m",
        "attempts": 1,
        "created_at": failed_at,
        "failed_at": failed_at,
    }


def count(engine: Engine, table: Any) -> int:
    with transaction(engine) as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_retention_on_sqlite_deletes_rows_by_age_and_a_dry_run_only_counts(
    engine: Engine,
) -> None:
    now = utc(2026, 12, 1)
    old, recent = now - timedelta(days=500), now - timedelta(days=10)
    with transaction(engine) as conn:
        insert_ignoring_duplicates(conn, events, [event_row(old) for _ in range(3)])
        insert_ignoring_duplicates(conn, events, [event_row(recent) for _ in range(2)])
        rows = [failed_row(old), failed_row(recent)]
        conn.execute(insert(failed_events), rows)
        conn.execute(
            insert(failed_event_attempts),
            [{"event_id": r["id"], "code": "C", "message": "m", "failed_at": old} for r in rows],
        )

    dry = apply_retention(engine, "13mo", "90d", dry_run=True, now=now)
    assert (dry.event_rows, dry.failed_rows) == (3, 1)
    assert "would delete 3 rows" in "\n".join(dry.lines())
    assert (count(engine, events), count(engine, failed_events)) == (5, 2)

    done = apply_retention(engine, "13mo", "90d", now=now)
    assert (done.event_rows, done.failed_rows) == (3, 1)
    assert (count(engine, events), count(engine, failed_events)) == (2, 1)
    assert count(engine, failed_event_attempts) == 1  # the deleted one's went with it


def test_workers_apply_retention_daily(engine: Engine, tmp_path: Any) -> None:
    settings = Settings(database_url=str(engine.url), events_retention="1d")
    upkeep = Upkeep(settings)

    def add_old() -> None:
        with transaction(engine) as conn:
            insert_ignoring_duplicates(
                conn, events, [event_row(datetime.now(UTC) - timedelta(days=3))]
            )

    add_old()
    upkeep.run(engine, clock=1000.0)
    assert count(engine, events) == 0
    add_old()
    upkeep.run(engine, clock=1000.0 + 3600)  # an hour later: not due
    assert count(engine, events) == 1
    upkeep.run(engine, clock=1000.0 + 24 * 3600)
    assert count(engine, events) == 0
