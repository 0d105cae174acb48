"""The tables, as SQLAlchemy Core: the worker writes events in bulk, so rows stay plain dicts."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

JsonType = JSON().with_variant(JSONB(), "postgresql")


def _id(name: str = "id") -> Column[str]:
    return Column(name, String(24), primary_key=True)


def _ts(name: str, nullable: bool = False) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=nullable)


projects = Table(
    "projects",
    metadata,
    _id(),
    Column("name", String(200), nullable=False),
    _ts("created_at"),
)

# A project's fair-share limits (README, "Rate limits and backlog shares"); no row, or a null
# column, means the default: no rate limit, the PROJECT_BACKLOG_SHARE setting.
project_limits = Table(
    "project_limits",
    metadata,
    Column(
        "project_id",
        String(24),
        ForeignKey("projects.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("rate_per_second", Float, nullable=True),
    Column("burst", Integer, nullable=True),
    Column("backlog_share", Float, nullable=True),
    _ts("updated_at"),
)

api_keys = Table(
    "api_keys",
    metadata,
    _id(),
    Column("project_id", String(24), ForeignKey("projects.id"), nullable=False, index=True),
    # SHA-256 of the secret part: keys are 256-bit random, so a fast hash is enough and a
    # stolen table reveals no usable key.
    Column("secret_hash", String(64), nullable=False),
    _ts("created_at"),
    _ts("revoked_at", nullable=True),
)

event_definitions = Table(
    "event_definitions",
    metadata,
    _id(),
    Column("project_id", String(24), ForeignKey("projects.id"), nullable=False),
    Column("event_name", String(64), nullable=False),
    Column("description", Text, nullable=True),
    Column("properties", JsonType, nullable=False),
    _ts("created_at"),
    _ts("updated_at"),
    _ts("deleted_at", nullable=True),
    # One active definition per name; soft-deleted ones keep their rows for the stored logs.
    Index(
        "uq_event_definitions_active_name",
        "project_id",
        "event_name",
        unique=True,
        postgresql_where=text("deleted_at IS NULL"),
        sqlite_where=text("deleted_at IS NULL"),
    ),
)

contacts = Table(
    "contacts",
    metadata,
    _id(),
    Column("project_id", String(24), ForeignKey("projects.id"), nullable=False),
    Column("email", String(254), nullable=False),
    Column("first_name", String(200), nullable=True),
    Column("last_name", String(200), nullable=True),
    Column("user_id", String(200), nullable=True),
    Column("custom_fields", JsonType, nullable=False),
    _ts("created_at"),
    _ts("updated_at"),
    Index("uq_contacts_project_email", "project_id", "email", unique=True),
    Index("ix_contacts_project_user", "project_id", "user_id"),
)

# On PostgreSQL a table partitioned by range on created_at (one partition a month by default,
# shared/partitions.py; migration 0004 or `eventpipe db partition --online`): its primary key
# holds the partition key, and `seq` comes from the sequence events_seq (the migration sets the
# default; partitions cannot share an identity column). On SQLite one plain table, `seq`
# numbered by the insert (MAX + 1, served by uq_events_seq, which exists on SQLite only).
events = Table(
    "events",
    metadata,
    _id(),
    # Pages are cut by this database-assigned sequence, never by created_at: created_at is the
    # acceptance time at the edge, so rows arrive out of created_at order.
    Column("seq", BigInteger, nullable=False),
    Column("project_id", String(24), nullable=False),
    Column("contact_id", String(24), nullable=False),
    Column("event_name", String(64), nullable=False),
    Column("properties", JsonType, nullable=False),
    # The partition key: the acceptance time, set at the edge and kept across retries and
    # replays (it travels in the job payload), so a re-run meets its own row.
    Column("created_at", DateTime(timezone=True), nullable=False, primary_key=True),
    _ts("stored_at"),
    Index("ix_events_project_contact_seq", "project_id", "contact_id", "seq"),
    # GET /v1/contacts/{id}/events?eventName=...: a rare name must not mean reading them all.
    Index("ix_events_project_contact_name_seq", "project_id", "contact_id", "event_name", "seq"),
    postgresql_partition_by="RANGE (created_at)",
)
SQLITE_ONLY = "sqlite"
_seq_unique = UniqueConstraint("seq", name="uq_events_seq", info={"only_on": SQLITE_ONLY})
events.append_constraint(_seq_unique.ddl_if(dialect=SQLITE_ONLY))

failed_events = Table(
    "failed_events",
    metadata,
    _id(),
    Column("project_id", String(24), nullable=False),
    Column("event_name", String(64), nullable=False),
    # The whole queued event, so it can be replayed after RQ's registry entry has expired.
    Column("payload", JsonType, nullable=False),
    Column("code", String(64), nullable=False),
    Column("message", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    _ts("created_at"),
    _ts("failed_at"),
    Index("ix_failed_events_project_failed_at", "project_id", "failed_at"),
    # The operators' filters (eventpipe failed list / replay, GET /v1/admin/failed).
    Index("ix_failed_events_failed_at", "failed_at"),
    Index("ix_failed_events_code_failed_at", "code", "failed_at"),
)

# One row per failure of a failed event, for `eventpipe failed show`; goes with its event
# (replayed into the store or purged).
failed_event_attempts = Table(
    "failed_event_attempts",
    metadata,
    Column(
        "seq",
        BigInteger().with_variant(Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    Column(
        "event_id",
        String(24),
        ForeignKey("failed_events.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("code", String(64), nullable=False),
    Column("message", Text, nullable=False),
    _ts("failed_at"),
)
