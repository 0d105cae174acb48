"""A store that refuses some events (a trigger, a statement timeout) against real
PostgreSQL, Redis, API and worker processes: the refused events fail alone, the rest are
stored, nothing stays queued, and replay stores the refused ones once the cause is gone."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2 as httpx
import redis
from sqlalchemy import Engine, select, text

from shared.db import transaction
from shared.models import events, failed_event_attempts, failed_events
from shared.queue import PENDING_KEY
from tests.integration.services import Proc, run_cli, start_api, start_worker, wait_until
from tests.integration.test_guarantees import _project
from tests.integration.test_pipeline import SEED, auth

POISON = "POISON"


def _send(
    base: str, key: str, singles: list[dict[str, Any]], batch: list[dict[str, Any]]
) -> list[str]:
    """Singles sent concurrently (so group commit forms groups) and one batch; the ids."""
    with httpx.Client(base_url=base, headers=auth(key), timeout=30) as http:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda body: http.post("/v1/events/send", json=body), singles))
        assert {r.status_code for r in answers} == {202}
        ids = [r.json()["data"]["id"] for r in answers]
        r = http.post("/v1/events/batch", json={"events": batch})
        assert r.status_code == 202
    return ids + [x["id"] for x in r.json()["data"]["receipts"]]


def _event(total: int, currency: str = "USD") -> dict[str, Any]:
    return {**SEED, "eventProperties": {"order_total": total, "currency": currency}}


def _refuse_currency(engine: Engine, currency: str, body: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.properties->>'currency' = '{currency}' THEN {body} END IF; "
                "RETURN NEW; END $$"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON events"
                " FOR EACH ROW EXECUTE FUNCTION refuse()"
            )
        )


def _refusing_api(
    env: dict[str, str], engine: Engine, procs: list[Proc], body: str
) -> tuple[str, str]:
    """An API and a project (its base URL and key), the store refusing POISON with `body`."""
    api, base = start_api(env)
    procs.append(api)
    key = _project(env, base)
    _refuse_currency(engine, POISON, body)
    return base, key


def _send_poison(base: str, key: str, singles: int, batch: int, at: int) -> list[str]:
    """Ids of `singles` single sends then a batch of `batch`, the single at `at` POISON."""
    bodies = [_event(i, POISON if i == at else "USD") for i in range(singles)]
    return _send(base, key, bodies, [_event(1000 + i) for i in range(batch)])


def _ids(engine: Engine, column: Any) -> list[str]:
    with transaction(engine) as conn:
        return list(conn.execute(select(column)).scalars())


def _nothing_left(client: redis.Redis) -> None:
    """No state outlives its job: no pending mark, queue or started work, no claim list."""
    assert client.hlen(PENDING_KEY) == 0
    assert client.llen("rq:queue:eventpipe") == 0
    assert client.zcard("rq:wip:eventpipe") == 0
    assert list(client.scan_iter("eventpipe:claimed:*")) == []


def test_a_trigger_refusing_one_event_among_300_fails_it_alone_and_replay_stores_it(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis, procs_cleanup: list[Proc]
) -> None:
    body = "RAISE EXCEPTION 'no poison orders, said the DBA';"
    base, key = _refusing_api(env, engine, procs_cleanup, body)
    accepted = _send_poison(base, key, 150, 150, at=77)
    poison = accepted[77]
    assert redis_client.hlen(PENDING_KEY) == 300  # no worker yet: all queued together
    procs_cleanup += [start_worker(env), start_worker(env)]
    wait_until(lambda: redis_client.hlen(PENDING_KEY) == 0, 60, "every event to be final")

    assert sorted(_ids(engine, events.c.id)) == sorted(set(accepted) - {poison})
    with transaction(engine) as conn:
        failed = conn.execute(select(failed_events)).one()
        attempts = conn.execute(select(failed_event_attempts)).all()
    assert failed.id == poison and failed.code == "STORE_REJECTED" and len(attempts) == 1
    assert failed.message.startswith("P0001: no poison orders, said the DBA")
    _nothing_left(redis_client)
    with httpx.Client(base_url=base, headers=auth(key), timeout=10) as http:
        seen = http.get(f"/v1/events/{poison}").json()["data"]
    assert seen["status"] == "failed" and seen["error"]["code"] == "STORE_REJECTED"
    assert "DBA" not in json.dumps(seen)  # the database's words are for operators
    assert "said the DBA" in run_cli(env, "failed", "show", poison)
    assert poison in run_cli(env, "failed", "list", "--code", "STORE_REJECTED")

    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER refuse ON events"))
    run_cli(env, "replay", "--code", "STORE_REJECTED", "--wait", "30")
    wait_until(lambda: poison in _ids(engine, events.c.id), 30, "the replay stored")
    assert len(_ids(engine, events.c.id)) == 300 and _ids(engine, failed_events.c.id) == []
    _nothing_left(redis_client)


def test_a_statement_timeout_on_one_event_fails_it_alone_after_bounded_retries(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis, procs_cleanup: list[Proc]
) -> None:
    base, key = _refusing_api(env, engine, procs_cleanup, "PERFORM pg_sleep(2);")
    accepted = _send_poison(base, key, 20, 40, at=5)
    slow = accepted[5]
    procs_cleanup.append(start_worker({**env, "DB_STATEMENT_TIMEOUT_MS": "300"}))
    wait_until(lambda: redis_client.hlen(PENDING_KEY) == 0, 60, "every event to be final")

    assert sorted(_ids(engine, events.c.id)) == sorted(set(accepted) - {slow})
    with transaction(engine) as conn:
        failed = conn.execute(select(failed_events)).one()
    assert failed.id == slow and failed.code == "STORE_TIMEOUT"
    assert failed.message.startswith("57014:")
    assert redis_client.zcard("rq:failed:eventpipe") == 1  # the event's own failed job only
    _nothing_left(redis_client)


def test_a_read_only_database_is_waited_out_without_failing_anything(
    env: dict[str, str],
    engine: Engine,
    admin_engine: Engine,
    redis_client: redis.Redis,
    procs_cleanup: list[Proc],
) -> None:
    api, base = start_api(env)
    procs_cleanup.append(api)
    key = _project(env, base)
    worker = start_worker(env)
    procs_cleanup.append(worker)
    name = engine.url.database
    with admin_engine.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'))
        conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
            {"n": name},
        )
    accepted = _send(
        base, key, [_event(i) for i in range(10)], [_event(100 + i) for i in range(20)]
    )
    wait_until(lambda: "store unavailable" in worker.output(), 30, "the worker to wait")
    assert _ids(engine, events.c.id) == [] and _ids(engine, failed_events.c.id) == []
    assert redis_client.zcard("rq:failed:eventpipe") == 0
    with admin_engine.connect() as conn:  # no restart of anything
        conn.execute(text(f'ALTER DATABASE "{name}" RESET default_transaction_read_only'))
    wait_until(lambda: redis_client.hlen(PENDING_KEY) == 0, 60, "every event to be final")
    assert sorted(_ids(engine, events.c.id)) == sorted(accepted)
    assert _ids(engine, failed_events.c.id) == []
    assert redis_client.zcard("rq:failed:eventpipe") == 0
    _nothing_left(redis_client)


def _sleeping_insert(engine: Engine) -> bool:
    with engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event = 'PgSleep' AND query LIKE 'INSERT INTO events%'"
            )
        ).scalar()
    return bool(found)


def test_a_worker_killed_while_it_splits_a_group_loses_and_doubles_nothing(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis, procs_cleanup: list[Proc]
) -> None:
    body = "PERFORM pg_sleep(1); RAISE EXCEPTION 'slow refusal';"
    base, key = _refusing_api(env, engine, procs_cleanup, body)
    accepted = _send_poison(base, key, 10, 30, at=3)
    quick = {"WORKER_HEARTBEAT_SECONDS": "2", "WORKER_MAINTENANCE_SECONDS": "1"}
    first = start_worker({**env, **quick})
    procs_cleanup.append(first)
    wait_until(lambda: _sleeping_insert(engine), 30, "an insert of the split to sleep")
    first.proc.kill()
    first.proc.wait()
    procs_cleanup.append(start_worker({**env, **quick}))
    wait_until(lambda: redis_client.hlen(PENDING_KEY) == 0, 90, "every event to be final")

    stored = _ids(engine, events.c.id)
    assert len(stored) == len(set(stored)) == 39
    assert set(stored) == set(accepted) - {accepted[3]}
    assert _ids(engine, failed_events.c.id) == [accepted[3]]
    _nothing_left(redis_client)
