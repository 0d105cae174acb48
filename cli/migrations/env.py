"""Alembic environment: the URL comes from the caller (cli.migrate) or the settings,
never from alembic.ini."""

from __future__ import annotations

from dataclasses import replace

from alembic import context

from cli.migrate import include_object
from shared.db import make_engine
from shared.models import metadata
from shared.settings import get_settings


def run_migrations() -> None:
    settings = get_settings()
    url = context.config.attributes.get("database_url")
    engine = make_engine(replace(settings, database_url=url) if url else settings)
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # The API's statement_timeout would cut an index build on a large table short.
            conn.exec_driver_sql("SET statement_timeout = 0")
        include = include_object(conn)
        conn.commit()  # the revisions' own transactions start from a clean connection
        context.configure(
            connection=conn,
            target_metadata=metadata,
            # SQLite cannot ALTER most things: batch mode rebuilds the table instead.
            render_as_batch=conn.dialect.name == "sqlite",
            # The partitions of `events` are made at run time, not by migrations.
            include_object=include,
            # Each revision commits on its own: one that builds an index outside a
            # transaction (CONCURRENTLY) leaves the ones before it recorded as done.
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        conn.commit()
    engine.dispose()


run_migrations()
