"""`events` partitioned by acceptance time on PostgreSQL (shared/partitions.py).

A new install (no project yet, so no event can be on its way) gets the partitioned table
here, with the current and coming partitions. An install with projects keeps its table as it
is, and works on it unchanged: moving it is `eventpipe db partition --online`, run once every
process runs this release (README, "Time partitions"), because the previous release's insert
names a conflict target a partitioned table cannot offer. SQLite is left as it is.

The lead may renumber this revision at merge: `revision` below is the one place to change
(and the file name's prefix).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sys

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from shared.clock import utcnow
from shared.partitions import ahead, create_parent, create_partitions, is_partitioned
from shared.settings import get_settings

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql" or is_partitioned(bind):
        return
    if bind.exec_driver_sql("SELECT EXISTS (SELECT 1 FROM projects)").scalar():
        print(
            "eventpipe: events is not partitioned (this install has projects); once every "
            "API and worker runs this release, run `eventpipe db partition --online`",
            file=sys.stderr,
        )
        return
    op.drop_table("events")
    create_parent(bind, 1)
    settings = get_settings()
    create_partitions(bind, ahead(utcnow(), settings), settings.events_partition_size)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql" or not is_partitioned(bind):
        return
    if bind.exec_driver_sql("SELECT EXISTS (SELECT 1 FROM events)").scalar():
        raise RuntimeError(
            "events is partitioned and holds rows: this downgrade does not copy them back "
            "into one table"
        )
    op.execute("DROP TABLE events CASCADE")  # its partitions and its sequence with it
    _plain_events()


def _plain_events() -> None:
    """`events` as revisions 0001 and 0002 left it."""
    op.create_table(
        "events",
        sa.Column("id", sa.String(24), primary_key=True),
        sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("project_id", sa.String(24), nullable=False),
        sa.Column("contact_id", sa.String(24), nullable=False),
        sa.Column("event_name", sa.String(64), nullable=False),
        sa.Column("properties", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("seq", name="uq_events_seq"),
    )
    op.create_index("ix_events_project_contact_seq", "events", ["project_id", "contact_id", "seq"])
    op.create_index(
        "ix_events_project_contact_name_seq",
        "events",
        ["project_id", "contact_id", "event_name", "seq"],
    )
