"""Fixtures of the unit and the integration tests alike."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cli import migrate


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the migration scripts, standing for a checkout's, for revision to write in."""
    scripts = tmp_path / "cli" / "migrations"
    shutil.copytree(migrate.SCRIPTS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "pyproject.toml").write_text("")
    monkeypatch.setattr(migrate, "SCRIPTS", scripts)
    monkeypatch.setattr(migrate, "SOURCE_TREE", tmp_path / "pyproject.toml")
    return scripts
