"""The event log filtered by name: an index that serves it without reading other names.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_events_project_contact_name_seq",
        "events",
        ["project_id", "contact_id", "event_name", "seq"],
    )


def downgrade() -> None:
    op.drop_index("ix_events_project_contact_name_seq", table_name="events")
