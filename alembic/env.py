"""Alembic environment: the URL comes from eventpipe's settings, never from alembic.ini."""

from __future__ import annotations

from alembic import context
from shared.db import make_engine
from shared.models import metadata
from shared.settings import get_settings


def run_migrations() -> None:
    engine = make_engine(get_settings())
    with engine.connect() as conn:
        context.configure(
            connection=conn,
            target_metadata=metadata,
            # SQLite cannot ALTER most things: batch mode rebuilds the table instead.
            render_as_batch=conn.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()
