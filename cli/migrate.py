"""Alembic, driven from code: `eventpipe db upgrade`, `eventpipe db revision` and the tests
use the same configuration, so no alembic.ini is needed, in a checkout or in a wheel."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alembic import command, op
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from shared.errors import EventpipeError

# Inside the package (package data), so that an installed wheel finds them too.
SCRIPTS = Path(__file__).resolve().parent / "migrations"
# A checkout holds pyproject.toml beside the packages; an installed wheel does not.
SOURCE_TREE = SCRIPTS.parents[1] / "pyproject.toml"


def config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    # 0004_add_a_column.py: ids are numbers in order, like the ones before them.
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str) -> None:
    """Migrate to head; running it again is a no-op."""
    _ensure_sqlite_dir(database_url)
    command.upgrade(config(database_url), "head")


def heads() -> Sequence[str]:
    return ScriptDirectory.from_config(config("")).get_heads()


def revision(database_url: str, message: str, *, autogenerate: bool = True) -> Path:
    """Write the next migration into the source tree: by default what `shared/models.py`
    holds and the database at `database_url` (migrated to head) lacks."""
    if not SOURCE_TREE.exists():
        raise EventpipeError(
            "db revision writes into the source tree: run it from a checkout "
            "(an editable install, as `make` makes), not from an installed wheel"
        )
    cfg = config(database_url)
    _format_with_ruff(cfg)
    try:
        script = command.revision(
            cfg, message=message, autogenerate=autogenerate, rev_id=_next_id(cfg)
        )
    except CommandError as exc:
        raise EventpipeError(f"db revision: {exc}") from exc
    assert script is not None and not isinstance(script, list)
    return Path(script.path)


def _next_id(cfg: Config) -> str:
    numbers = [int(s.revision) for s in ScriptDirectory.from_config(cfg).walk_revisions()]
    return f"{max(numbers, default=0) + 1:04d}"


def _format_with_ruff(cfg: Config) -> None:
    """The generated file passes `make lint` as written (imports sorted, unused ones gone)."""
    if importlib.util.find_spec("ruff") is None:
        return
    cfg.set_section_option("post_write_hooks", "hooks", "ruff_fix, ruff_format")
    for name, options in (("ruff_fix", "check --fix --quiet"), ("ruff_format", "format --quiet")):
        cfg.set_section_option("post_write_hooks", f"{name}.type", "module")
        cfg.set_section_option("post_write_hooks", f"{name}.module", "ruff")
        cfg.set_section_option(
            "post_write_hooks", f"{name}.options", f"{options} REVISION_SCRIPT_FILENAME"
        )


def include_object(conn: Connection) -> Callable[..., bool]:
    """Autogenerate's filter for this database: the partitions of `events` (tables of their
    own in the catalog, found there by `relispartition`, never by name) are not the models'
    business, and an object the models declare for one dialect only is left out on others."""
    partitions: set[str] = set()
    if conn.dialect.name == "postgresql":
        partitions = set(
            conn.exec_driver_sql(
                "SELECT relname FROM pg_class WHERE relispartition AND relkind IN ('r', 'p')"
            ).scalars()
        )

    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        if type_ == "table" and reflected and name in partitions:
            return False
        only_on = getattr(obj, "info", {}).get("only_on")
        return only_on is None or only_on == conn.dialect.name

    return include


def revision_before(slug: str) -> str:
    """The revision before the one whose file is named `<number>_<slug>.py` (for the tests and
    benchmarks that build the schema as it stood before it, whatever it is numbered)."""
    for script in ScriptDirectory.from_config(config("")).walk_revisions():
        if Path(script.path).stem.split("_", 1)[1] == slug:
            return str(script.down_revision)
    raise LookupError(slug)


def create_index_concurrently(name: str, table: str, columns: Sequence[str]) -> None:
    """For migration scripts: an index on a table that may be large, built on PostgreSQL
    CONCURRENTLY (writes go on while it builds; a plain CREATE INDEX blocks them), which
    PostgreSQL runs only outside a transaction. A build that failed or was interrupted
    leaves an invalid index behind: it is dropped and built again."""
    if op.get_bind().dialect.name != "postgresql":
        op.create_index(name, table, list(columns))
        return
    with op.get_context().autocommit_block():
        if _is_invalid_index(name):
            op.drop_index(name, table_name=table, postgresql_concurrently=True)
        op.create_index(
            name, table, list(columns), postgresql_concurrently=True, if_not_exists=True
        )


def drop_index_concurrently(name: str, table: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.drop_index(name, table_name=table)
        return
    with op.get_context().autocommit_block():
        op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)


def _is_invalid_index(name: str) -> bool:
    query = text("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)")
    return bool(op.get_bind().execute(query, {"name": name}).scalar())


def _ensure_sqlite_dir(database_url: str) -> None:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
