"""`eventpipe projects limits`: the flags change only what they name, `off` and `default` put
a limit back, bad input is an error (exit 1), and a change is announced to the APIs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.store import create_project
from cli.main import main
from shared.db import make_engine, transaction
from shared.models import metadata
from shared.settings import Settings, get_settings


@pytest.fixture
def project_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    engine = make_engine(Settings(database_url=url))
    metadata.create_all(engine)
    with transaction(engine) as conn:
        found, _ = create_project("acme", conn=conn)
    engine.dispose()
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("MAX_QUEUED_EVENTS", "1000")
    get_settings.cache_clear()
    yield found
    get_settings.cache_clear()


def limits(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["projects", "limits", *args, "--json"]) == 0
    shown: dict[str, Any] = json.loads(capsys.readouterr().out)
    return shown


def test_the_flags_change_what_they_name(
    project_id: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    announced: list[Settings] = []
    monkeypatch.setattr("cli.main._announce", announced.append)
    shown = limits(capsys, project_id)
    assert (shown["rate"], shown["burst"], shown["backlogLimit"]) == (None, None, 500)
    assert announced == []  # nothing changed, nothing to announce
    shown = limits(capsys, project_id, "--rate", "6000/min")
    assert (shown["rate"], shown["burst"]) == ("100/s", 100)
    shown = limits(capsys, project_id, "--burst", "250", "--backlog-share", "0.1")
    assert (shown["rate"], shown["burst"], shown["backlogLimit"]) == ("100/s", 250, 100)
    shown = limits(capsys, project_id, "--rate", "off")
    assert (shown["rate"], shown["burst"], shown["backlogShare"]) == (None, None, 0.1)
    shown = limits(capsys, project_id, "--backlog-share", "default")
    assert shown["backlogShareIsDefault"] is True and shown["backlogLimit"] == 500
    assert len(announced) == 4
    assert main(["projects", "limits", project_id, "--rate", "2/s", "--burst", "4"]) == 0
    assert "2/s, burst 4; backlog share 0.5 (the default), 500 events" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags",
    [
        ["--burst", "5"],  # no rate to burst
        ["--rate", "fast"],
        ["--rate", "0/s"],
        ["--rate", "1/s", "--burst", "-3"],
        ["--backlog-share", "2"],
        ["--backlog-share", "most"],
    ],
)
def test_bad_flags_are_errors(
    project_id: str, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    assert main(["projects", "limits", project_id, *flags]) == 1
    assert capsys.readouterr().err.startswith("error: ")


def test_an_unknown_project_is_an_error(
    project_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["projects", "limits", "0" * 24]) == 1
    assert "not found" in capsys.readouterr().err
