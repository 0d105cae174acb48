"""The migrations on PostgreSQL: the schema they build is the models', every revision goes
down and up again, and the index on `events` is built CONCURRENTLY, outside a transaction,
rebuilding one that an interrupted build left invalid."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from cli import migrate
from shared.models import metadata

INDEX = "ix_events_project_contact_name_seq"


def query(url: str, sql: str, **params: Any) -> list[Any]:
    engine = create_engine(url)
    with engine.begin() as conn:
        result = conn.execute(text(sql), params)
        rows = list(result) if result.returns_rows else []
    engine.dispose()
    return rows


def index_state(url: str) -> list[Any]:
    """(valid, unique, definition) of the index, or [] when there is none."""
    return query(
        url,
        "SELECT i.indisvalid, i.indisunique, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "WHERE i.indexrelid = to_regclass(:name)",
        name=INDEX,
    )


def test_the_migrated_schema_is_the_models(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        # With autogenerate's own filter: the partitions of `events` are no models' tables.
        context = MigrationContext.configure(
            conn, opts={"include_object": migrate.include_object(conn)}
        )
        assert compare_metadata(context, metadata) == []
    engine.dispose()


def test_every_revision_goes_down_and_up_again(database_url: str) -> None:
    command.downgrade(migrate.config(database_url), "base")
    assert query(database_url, "SELECT to_regclass('events')") == [(None,)]
    migrate.upgrade(database_url)
    assert index_state(database_url)[0][:2] == (True, False)


def test_the_events_index_is_built_concurrently_outside_a_transaction(
    empty_database: str,
) -> None:
    command.upgrade(migrate.config(empty_database), "0001")
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        driver = conn.connection.driver_connection
        if isinstance(driver, psycopg.Connection) and INDEX in statement:
            seen.append((statement, driver.info.transaction_status))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        # Up to the time partitions, which build the partitioned table's own indexes (on a
        # new, empty table).
        command.upgrade(migrate.config(empty_database), migrate.revision_before("events_by_time"))
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    builds = [(s, status) for s, status in seen if s.startswith("CREATE INDEX")]
    assert len(builds) == 1, seen
    statement, status = builds[0]
    assert statement.startswith("CREATE INDEX CONCURRENTLY IF NOT EXISTS"), statement
    assert status == psycopg.pq.TransactionStatus.IDLE  # not inside BEGIN ... COMMIT
    assert index_state(empty_database)[0][:2] == (True, False)


def test_an_index_left_invalid_by_an_interrupted_build_is_built_again(
    empty_database: str,
) -> None:
    command.upgrade(migrate.config(empty_database), "0001")
    query(
        empty_database,
        "INSERT INTO projects VALUES ('p' || repeat('0', 23), 'p', now());"
        "INSERT INTO events (id, project_id, contact_id, event_name, properties, created_at,"
        " stored_at) SELECT lpad(n::text, 24, '0'), 'p', 'c', 'e', '{}', now(), now()"
        " FROM generate_series(1, 2) n",
    )
    # A concurrent build that fails (here on a duplicate) leaves an invalid index behind.
    with psycopg.connect(make_url(empty_database).set(drivername="postgresql").render_as_string(
        hide_password=False), autocommit=True) as conn:  # fmt: skip
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {INDEX} ON events (project_id)")
    assert index_state(empty_database)[0][:2] == (False, True)

    migrate.upgrade(empty_database)
    ((valid, unique, definition),) = index_state(empty_database)
    assert valid and not unique
    assert definition.endswith("(project_id, contact_id, event_name, seq)"), definition
