"""POST /v1/events/batch against real uvicorn, Redis, PostgreSQL and worker processes."""

from __future__ import annotations

import gzip
import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2 as httpx
from sqlalchemy import Engine

from tests.integration.services import Proc, start_api, start_worker, wait_until
from tests.integration.test_guarantees import _project, _stored_ids, _waiting_on_lock
from tests.integration.test_pipeline import SEED, auth


def _items(n: int, offset: int = 0) -> list[dict[str, Any]]:
    return [{**SEED, "eventProperties": {"order_total": offset + i}} for i in range(n)]


def test_receipts_on_the_real_path(
    env: dict[str, str], engine: Engine, procs_cleanup: list[Proc]
) -> None:
    api, base = start_api(env)
    procs_cleanup.append(api)
    key = _project(env, base)
    procs_cleanup.append(start_worker(env))
    with httpx.Client(base_url=base, headers=auth(key), timeout=30) as http:
        single = http.post("/v1/events/send", json=SEED, headers={"Idempotency-Key": "k0"})
        items = [
            {**SEED, "idempotencyKey": "k0"},
            {**SEED, "eventProperties": {"order_total": "lots"}},
            {**SEED, "idempotencyKey": "k1"},
            {**SEED, "idempotencyKey": "k1"},
            *_items(3),
        ]
        raw = gzip.compress(json.dumps({"events": items}).encode())
        r = http.post("/v1/events/batch", content=raw, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 202
        receipts = r.json()["data"]["receipts"]
        assert [x["status"] for x in receipts] == [
            "duplicate",
            "rejected",
            "accepted",
            "duplicate",
            "accepted",
            "accepted",
            "accepted",
        ]
        assert receipts[0]["id"] == single.json()["data"]["id"]
        assert receipts[3]["id"] == receipts[2]["id"]
        over = http.post("/v1/events/batch", json={"events": _items(501)})
        assert over.status_code == 400
        new = {x["id"] for x in receipts if x["status"] == "accepted"}
        expected = new | {single.json()["data"]["id"]}
        wait_until(lambda: set(_stored_ids(engine)) == expected, 30, "the batch stored")


def test_a_worker_killed_while_batches_are_in_flight_loses_and_doubles_nothing(
    env: dict[str, str], engine: Engine, procs_cleanup: list[Proc]
) -> None:
    api, base = start_api(env)
    procs_cleanup.append(api)
    key = _project(env, base)

    def send(n: int) -> list[str]:
        with httpx.Client(base_url=base, headers=auth(key), timeout=30) as http:
            r = http.post("/v1/events/batch", json={"events": _items(500, n * 500)})
            assert r.status_code == 202, r.text
            return [x["id"] for x in r.json()["data"]["receipts"]]

    with engine.connect() as blocker:
        blocker.exec_driver_sql("BEGIN")
        blocker.exec_driver_sql("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        victim = start_worker(env)
        procs_cleanup.append(victim)
        with ThreadPoolExecutor(4) as pool:
            first = list(pool.map(send, range(8)))
            wait_until(lambda: _waiting_on_lock(engine), 30, "the worker inside its insert")
            more = pool.map(send, range(8, 16))
            os.kill(victim.proc.pid, signal.SIGKILL)
            victim.proc.wait()
            accepted = [i for ids in first + list(more) for i in ids]
        blocker.exec_driver_sql("ROLLBACK")
    procs_cleanup.append(start_worker(env))
    wait_until(lambda: len(_stored_ids(engine)) >= len(accepted), 60, "every event stored")
    stored = _stored_ids(engine)
    assert len(accepted) == 8000 == len(set(accepted))
    assert sorted(stored) == sorted(accepted)
