"""Initial schema: projects, keys, definitions, contacts, events, failed events.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _id() -> sa.Column[str]:
    return sa.Column("id", sa.String(24), primary_key=True)


def upgrade() -> None:
    op.create_table(
        "projects", _id(), sa.Column("name", sa.String(200), nullable=False), _ts("created_at")
    )
    op.create_table(
        "api_keys",
        _id(),
        sa.Column("project_id", sa.String(24), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        _ts("created_at"),
        _ts("revoked_at", nullable=True),
    )
    op.create_index("ix_api_keys_project_id", "api_keys", ["project_id"])
    op.create_table(
        "event_definitions",
        _id(),
        sa.Column("project_id", sa.String(24), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("event_name", sa.String(64), nullable=False),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("properties", JSON, nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("deleted_at", nullable=True),
    )
    op.create_index(
        "uq_event_definitions_active_name",
        "event_definitions",
        ["project_id", "event_name"],
        unique=True,
        postgresql_where=sa.text("deleted_at IS NULL"),
        sqlite_where=sa.text("deleted_at IS NULL"),
    )
    op.create_table(
        "contacts",
        _id(),
        sa.Column("project_id", sa.String(24), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("first_name", sa.String(200), nullable=True),
        sa.Column("last_name", sa.String(200), nullable=True),
        sa.Column("user_id", sa.String(200), nullable=True),
        sa.Column("custom_fields", JSON, nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
    )
    op.create_index("uq_contacts_project_email", "contacts", ["project_id", "email"], unique=True)
    op.create_index("ix_contacts_project_user", "contacts", ["project_id", "user_id"])
    op.create_table(
        "events",
        _id(),
        sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("project_id", sa.String(24), nullable=False),
        sa.Column("contact_id", sa.String(24), nullable=False),
        sa.Column("event_name", sa.String(64), nullable=False),
        sa.Column("properties", JSON, nullable=False),
        _ts("created_at"),
        _ts("stored_at"),
        sa.UniqueConstraint("seq", name="uq_events_seq"),
    )
    op.create_index("ix_events_project_contact_seq", "events", ["project_id", "contact_id", "seq"])
    op.create_table(
        "failed_events",
        _id(),
        sa.Column("project_id", sa.String(24), nullable=False),
        sa.Column("event_name", sa.String(64), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        _ts("created_at"),
        _ts("failed_at"),
    )
    op.create_index(
        "ix_failed_events_project_failed_at", "failed_events", ["project_id", "failed_at"]
    )


def downgrade() -> None:
    for table in ("failed_events", "events", "contacts", "event_definitions", "api_keys"):
        op.drop_table(table)
    op.drop_table("projects")
