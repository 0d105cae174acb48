"""Alembic, driven from code: `eventpipe db upgrade` and the tests use the same call."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

# Inside the package (package data), so that an installed wheel finds them too.
SCRIPTS = Path(__file__).resolve().parent / "migrations"


def upgrade(database_url: str) -> None:
    """Migrate to head; running it again is a no-op."""
    _ensure_sqlite_dir(database_url)
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["database_url"] = database_url
    command.upgrade(config, "head")


def _ensure_sqlite_dir(database_url: str) -> None:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
