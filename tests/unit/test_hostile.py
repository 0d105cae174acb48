"""The hostile-input corpus (tests/hostile.py) in-process: the app's own answers to every case,
on SQLite and fakeredis (the real server's run, with the HTTP server's own limits, is
tests/integration/test_hostile.py)."""

from __future__ import annotations

import fakeredis
from sqlalchemy import Engine

from shared.settings import Settings
from tests.hostile import CORPUS, OPERATOR_TOKEN, run_corpus
from tests.unit.conftest import make_client
from worker.context import WorkerContext


def test_every_case_of_the_corpus_is_a_4xx_in_the_envelope(
    settings: Settings,
    engine: Engine,
    fake_server: fakeredis.FakeServer,
    worker_ctx: WorkerContext,
    project: tuple[str, str, str],
) -> None:
    with make_client(settings, engine, fake_server, operator_token=OPERATOR_TOKEN) as client:
        assert run_corpus(client, project[1]) == len(CORPUS)
