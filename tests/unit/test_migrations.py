"""The migrations: one head, numbered in order, building the schema `shared/models.py`
declares; `eventpipe db revision` writes the next one, lint-clean, from a checkout only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from cli import migrate
from cli.main import main
from shared.errors import EventpipeError
from shared.models import metadata
from shared.settings import get_settings


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'migrated.db'}"


def current_revision(url: str) -> str | None:
    engine = create_engine(url)
    with engine.connect() as conn:
        revision = MigrationContext.configure(conn).get_current_revision()
    engine.dispose()
    return revision


def test_the_migrations_have_one_head() -> None:
    assert len(migrate.heads()) == 1, migrate.heads()


def test_revisions_are_numbered_in_order_and_each_follows_the_one_before() -> None:
    scripts = list(reversed(list(ScriptDirectory.from_config(migrate.config("")).walk_revisions())))
    assert [s.revision for s in scripts] == [f"{n:04d}" for n in range(1, len(scripts) + 1)]
    assert [s.down_revision for s in scripts] == [None] + [s.revision for s in scripts[:-1]]
    for script in scripts:
        assert Path(script.path).name.startswith(f"{script.revision}_"), script.path


def test_the_migrated_schema_is_the_models_and_a_second_upgrade_is_a_no_op(
    tmp_path: Path,
) -> None:
    url = sqlite_url(tmp_path)
    migrate.upgrade(url)
    migrate.upgrade(url)
    assert current_revision(url) == migrate.heads()[0]
    engine = create_engine(url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    engine.dispose()


def test_db_revision_autogenerates_the_next_migration_lint_clean(
    checkout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sqlite_url(tmp_path)
    migrate.upgrade(url)
    head = migrate.heads()[0]
    following = f"{int(head) + 1:04d}"
    # The models declare an index this database lacks: the next migration must build it.
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_events_project_contact_name_seq"))
    engine.dispose()
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        assert main(["db", "revision", "-m", "Event log by name, again"]) == 0
    finally:
        get_settings.cache_clear()

    written = checkout / "versions" / f"{following}_event_log_by_name_again.py"
    source = written.read_text()
    assert f'down_revision = "{head}"' in source
    assert "op.create_index(" in source and "ix_events_project_contact_name_seq" in source
    for args in (["check", "--no-cache"], ["format", "--check", "--no-cache"]):
        ruff = subprocess.run([sys.executable, "-m", "ruff", *args, str(written)], text=True,
                              capture_output=True, cwd=migrate.SOURCE_TREE.parent)  # fmt: skip
        assert ruff.returncode == 0, ruff.stdout + ruff.stderr
    assert migrate.heads() == [following]
    migrate.upgrade(url)
    assert current_revision(url) == following


def test_db_revision_refuses_a_database_behind_head(checkout: Path, tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    command.upgrade(migrate.config(url), "0002")
    before = sorted(p.name for p in (checkout / "versions").glob("*.py"))
    with pytest.raises(EventpipeError, match="not up to date"):
        migrate.revision(url, "too early")
    assert sorted(p.name for p in (checkout / "versions").glob("*.py")) == before  # none written


def test_db_revision_refuses_to_write_into_an_installed_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrate, "SOURCE_TREE", tmp_path / "site-packages" / "pyproject.toml")
    with pytest.raises(EventpipeError, match="from a checkout"):
        migrate.revision(sqlite_url(tmp_path), "nowhere to write")
