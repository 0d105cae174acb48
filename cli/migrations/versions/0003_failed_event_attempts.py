"""Every failure of a failed event kept (`eventpipe failed show`), and the failed events
indexed by time and by code for the operators' filters.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "failed_event_attempts",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column(
            "event_id",
            sa.String(24),
            sa.ForeignKey("failed_events.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_failed_event_attempts_event_id", "failed_event_attempts", ["event_id"])
    # Failures recorded before this revision: their latest error is the one history we have.
    op.execute(
        "INSERT INTO failed_event_attempts (event_id, code, message, failed_at) "
        "SELECT id, code, message, failed_at FROM failed_events"
    )
    op.create_index("ix_failed_events_failed_at", "failed_events", ["failed_at"])
    op.create_index("ix_failed_events_code_failed_at", "failed_events", ["code", "failed_at"])


def downgrade() -> None:
    op.drop_index("ix_failed_events_code_failed_at", table_name="failed_events")
    op.drop_index("ix_failed_events_failed_at", table_name="failed_events")
    op.drop_table("failed_event_attempts")
