"""The event log filtered by name: an index that serves it without reading other names.

Built CONCURRENTLY on PostgreSQL: `events` is the big table, and a plain CREATE INDEX would
block every insert (the workers) until it is done. Databases that ran the earlier,
transactional version of this revision already have the same index and never run it again.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from cli.migrate import create_index_concurrently, drop_index_concurrently

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

INDEX = "ix_events_project_contact_name_seq"


def upgrade() -> None:
    create_index_concurrently(INDEX, "events", ["project_id", "contact_id", "event_name", "seq"])


def downgrade() -> None:
    drop_index_concurrently(INDEX, "events")
