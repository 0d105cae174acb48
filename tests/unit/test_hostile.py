"""The hostile-input corpus (tests/hostile.py) in-process: the app's own answers to every case,
on SQLite and fakeredis (the real server's run, with the HTTP server's own limits, is
tests/integration/test_hostile.py)."""

from __future__ import annotations

import fakeredis
from sqlalchemy import Engine

from shared.settings import Settings
from tests.factories import CONTACT
from tests.hostile import CORPUS, KEY, OPERATOR, OPERATOR_TOKEN, Case, run_corpus
from tests.unit.conftest import SEED_DEFINITION, auth, make_client
from worker.context import WorkerContext


def test_every_case_of_the_corpus_is_a_4xx_in_the_envelope(
    settings: Settings,
    engine: Engine,
    fake_server: fakeredis.FakeServer,
    worker_ctx: WorkerContext,
    project: tuple[str, str, str],
) -> None:
    key = project[1]
    tokens = {KEY: f"Bearer {key}", OPERATOR: f"Bearer {OPERATOR_TOKEN}"}
    with make_client(settings, engine, fake_server, operator_token=OPERATOR_TOKEN) as client:
        assert client.post("/v1/events", json=SEED_DEFINITION, headers=auth(key)).status_code == 201
        made = client.post("/v1/contacts", json={"email": CONTACT}, headers=auth(key))
        contact_id = made.json()["data"]["id"]

        def send(item: Case) -> tuple[int, str]:
            headers = dict(item.headers)
            if item.auth is not None:
                headers[b"Authorization"] = tokens[item.auth].encode()
            r = client.request(
                item.method,
                item.path.format(contact=contact_id),
                content=item.body,
                headers=headers,
            )
            return r.status_code, r.text

        assert run_corpus(send) == len(CORPUS)
