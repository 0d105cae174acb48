"""Engines, transactions and the dialect-specific SQL (the one place that knows both dialects)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    DateTime,
    Engine,
    Integer,
    Table,
    create_engine,
    delete,
    event,
    func,
    select,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeEngine

from shared import jsonio
from shared.errors import (
    EventpipeError,
    PartitionMissing,
    StoreRefused,
    StoreTimeout,
    StoreUnavailable,
    ValueRefused,
)
from shared.settings import Settings

log = logging.getLogger("eventpipe.store")


def _json_text(value: Any) -> str:
    return jsonio.dumps(value).decode()


# JSON columns read back with the API's own parser: the stdlib one would turn a stored
# 5.09e52 (jsonb keeps it as an integral numeric) into an int that no answer can encode.
_JSON_CODEC: dict[str, Any] = {"json_serializer": _json_text, "json_deserializer": jsonio.loads}


def make_engine(settings: Settings) -> Engine:
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(settings)
    return create_engine(
        url,
        **_JSON_CODEC,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=True,
        pool_timeout=settings.db_connect_timeout,
        connect_args={
            "connect_timeout": settings.db_connect_timeout,
            # A statement must never outlive its job: the job timeout is the bigger bound.
            "options": f"-c statement_timeout={settings.db_statement_timeout_ms}"
            f" -c lock_timeout={settings.db_lock_timeout_ms}",
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        },
    )


def _sqlite_engine(settings: Settings) -> Engine:
    engine = create_engine(
        settings.database_url,
        **_JSON_CODEC,
        connect_args={"timeout": 30, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
        # The API and the workers share one file: WAL lets readers run beside the writer, and
        # the busy timeout makes a second writer wait instead of failing.
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


@contextlib.contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction; the driver's errors become eventpipe's (see translate)."""
    try:
        with engine.begin() as conn:
            yield conn
    except sa_exc.DBAPIError as exc:
        error = translate(exc)
        if error is None:
            raise
        if isinstance(error, ValueRefused):
            # The database's words are logged, not answered: they describe our schema, not
            # the client's request.
            log.warning("the store refused a value: %s", error.detail)
        raise error from exc


# SQLSTATE classes and codes of a store that does not answer, or not now: connection (08),
# resources (53), operator intervention (57: shutdown, cannot connect now), system (58),
# transaction rollback (40: serialization, deadlock); a read-only transaction (a replica
# promoted, a database set read-only) and a lock not granted within lock_timeout.
OUTAGE_CLASSES = frozenset({"08", "53", "57", "58", "40"})
OUTAGE_STATES = frozenset({"25006", "55P03"})
READ_ONLY_STATE = "25006"
# statement_timeout, or a query cancelled by an operator: maybe load, maybe one slow row.
TIMEOUT_STATE = "57014"
# A check violation naming no constraint: no partition of `events` holds the row's time.
CHECK_VIOLATION = "23514"


def translate(exc: sa_exc.DBAPIError) -> EventpipeError | None:
    """The one reading of a driver error, by its SQLSTATE (SQLAlchemy's classes mislead: an
    over-long index value is an OperationalError, a read-only transaction an InternalError).
    None: not a store error of ours (left to rise as it is)."""
    state: str | None = getattr(exc.orig, "sqlstate", None)
    if state == TIMEOUT_STATE:
        return StoreTimeout(state, _primary(exc))
    if state == CHECK_VIOLATION and _names_no_constraint(exc):
        return PartitionMissing()
    if exc.connection_invalidated or state in OUTAGE_STATES or (state or "")[:2] in OUTAGE_CLASSES:
        return StoreUnavailable()
    if state is None and isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return StoreUnavailable()  # no answer at all (refused, closed), or SQLite busy
    if isinstance(exc, sa_exc.DataError):
        # A value the store cannot hold that the checks let through: the caller's input.
        return ValueRefused(state or "22000", _primary(exc))
    if state is None and not isinstance(exc, sa_exc.IntegrityError):
        return None
    return StoreRefused(state or "23000", _primary(exc))


def _primary(exc: sa_exc.DBAPIError) -> str:
    """The server's message without DETAIL or HINT (a check violation's DETAIL quotes the
    row's values)."""
    primary = getattr(_diag(exc), "message_primary", None)
    return str(primary or exc.orig).strip().splitlines()[0][:500]


def _diag(exc: sa_exc.DBAPIError) -> Any:
    return getattr(exc.orig, "diag", None)


def _names_no_constraint(exc: sa_exc.DBAPIError) -> bool:
    """PostgreSQL's diagnostics name the violated constraint of a check violation; a row no
    partition takes violates none (a driver without diagnostics tells nothing: a refusal)."""
    diag = _diag(exc)
    return diag is not None and not getattr(diag, "constraint_name", None)


def insert_ignoring_duplicates(
    conn: Connection, table: Table, rows: Sequence[dict[str, Any]]
) -> int:
    """INSERT ... ON CONFLICT DO NOTHING, as one executemany; returns the rows added.

    No conflict target: the key is `id` on a plain table and (id, created_at) on a partitioned
    one (a unique index there must hold the partition key), and this statement serves both,
    before and after `eventpipe db partition --online`."""
    if not rows:
        return 0
    if conn.dialect.name == "postgresql":
        return _insert_recordset(conn, table, rows)
    stmt = sqlite.insert(table).on_conflict_do_nothing()
    if "seq" in table.c:
        # SQLite has no identity columns: number each row as it goes in. SQLite has one
        # writer at a time, so MAX+1 cannot be taken twice.
        next_seq = select(func.coalesce(func.max(table.c.seq), 0) + 1).scalar_subquery()
        stmt = stmt.values(seq=next_seq)
    return int(conn.execute(stmt, list(rows)).rowcount)


def _insert_recordset(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> int:
    """One statement and one parameter for the whole batch: the rows travel as one JSON
    document (orjson, in C) that PostgreSQL turns back into rows with jsonb_to_recordset.
    SQLAlchemy's executemany spent ~130 us of worker CPU per row compiling and binding, and
    psycopg's array parameters ~60 us (measured); this is a few us."""
    columns = list(rows[0])
    names = ", ".join(columns)
    shape = ", ".join(f"{c} {_pg_type(table.c[c].type)}" for c in columns)
    sql = (
        f"INSERT INTO {table.name} ({names}) SELECT {names} "
        f"FROM jsonb_to_recordset(%(rows)s::jsonb) AS r({shape}) ON CONFLICT DO NOTHING"
    )
    result = conn.exec_driver_sql(sql, {"rows": jsonio.dumps(list(rows)).decode()})
    return int(result.rowcount)


def _pg_type(column_type: TypeEngine[Any]) -> str:
    if isinstance(column_type, JSON):
        return "jsonb"
    if isinstance(column_type, DateTime):
        return "timestamptz"
    if isinstance(column_type, Integer):
        return "bigint"
    return "text"


def ping(engine: Engine) -> bool:
    """Whether the store answers and takes writes: a read-only session (25006, a database
    set read-only, a standby) answers SELECT 1 but is still an outage to the worker."""
    try:
        with engine.connect() as conn:
            if conn.dialect.name != "postgresql":
                conn.exec_driver_sql("SELECT 1")
                return True
            return conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "off"
    except sa_exc.SQLAlchemyError:
        return False


def record_failures(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert failed events; a repeat failure bumps `attempts` and keeps the latest error."""
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=["id"],
        set_={
            "attempts": table.c.attempts + 1,
            "code": stmt.excluded.code,
            "message": stmt.excluded.message,
            "failed_at": stmt.excluded.failed_at,
        },
    )
    conn.execute(stmt, list(rows))


def delete_failed(table: Table, ids: Sequence[str], *, conn: Connection) -> None:
    """Drop failure records (their attempts go with them: ON DELETE CASCADE, which SQLite
    enforces too, with the foreign keys make_engine turns on)."""
    if ids:
        conn.execute(delete(table).where(table.c.id.in_(ids)))
