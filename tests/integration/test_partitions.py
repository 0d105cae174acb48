"""Time partitions of `events` against real PostgreSQL, Redis and worker processes: made ahead
and on demand (a missing one is waited out, never a refusal), an event stored once however
often it runs, retention by bounds, reads pruned to the partitions they need, autogenerate
blind to the partitions, and the online move of a 1,000,000-row table under live traffic."""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import redis
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, func, insert, select, text

from api.store import create_project, stored_event_query, upsert_contact
from cli import migrate
from shared.clock import add_months, iso_ms, utcnow
from shared.db import insert_ignoring_duplicates, transaction
from shared.ids import new_id
from shared.models import events, failed_events, metadata
from shared.partitions import (
    DETACHED_COMMENT,
    Partition,
    ensure_holding,
    is_partitioned,
    list_partitions,
    period_start,
)
from shared.queue import PENDING_KEY, JobWriter, enqueue_events, make_queue
from shared.settings import Settings
from tests.integration.conftest import REDIS_URL, service_env
from tests.integration.services import Proc, run_cli, start_api, start_worker, wait_until
from tests.integration.test_pipeline import (
    SEED,
    SEED_DEFINITION,
    _event,
    auth,
    count,
    new_project,
)


def partitions(engine: Engine) -> list[Partition]:
    with transaction(engine) as conn:
        return list_partitions(conn)


def month(offset: int) -> datetime:
    """The start of the month `offset` months from now."""
    return add_months(period_start(utcnow(), "1mo"), offset)


def test_a_new_install_is_partitioned_by_month_with_the_coming_months_made(
    engine: Engine, env: dict[str, str]
) -> None:
    with transaction(engine) as conn:
        assert is_partitioned(conn)
        key = conn.exec_driver_sql(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'events'::regclass AND contype = 'p'"
        ).scalar()
        defaults = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_class WHERE relispartition"
            " AND pg_get_expr(relpartbound, oid) = 'DEFAULT'"
        ).scalar()
    assert key == "PRIMARY KEY (id, created_at)"
    assert defaults == 0  # a DEFAULT partition would block making a month with rows in it
    assert [(p.lower, p.upper) for p in partitions(engine)] == [
        (month(n), month(n + 1)) for n in range(3)
    ]
    assert run_cli(env, "db", "maintain").strip() == "partitions: up to date"


def _seed(engine: Engine) -> str:
    with transaction(engine) as conn:
        project_id, _ = create_project("partitions", conn=conn)
        upsert_contact(project_id, "jane@example.com", {}, conn=conn)
    return project_id


def _queue(env: dict[str, str], client: redis.Redis) -> Any:
    return make_queue(
        Settings(database_url=env["DATABASE_URL"], redis_url=env["REDIS_URL"]), client
    )


def test_a_worker_makes_a_missing_partition_and_fails_only_what_retention_dropped(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis
) -> None:
    project_id = _seed(engine)
    queue = _queue(env, redis_client)
    # Past the months made ahead.
    ahead = _event(project_id, created_at=month(9) + timedelta(days=3))
    behind = _event(project_id, created_at=month(-2) + timedelta(hours=5))  # kept, never made
    expired = _event(project_id, created_at=month(-30))  # older than EVENTS_RETENTION
    now = _event(project_id, created_at=utcnow())
    enqueue_events(JobWriter(queue), queue.connection, [now, ahead, behind, expired])
    worker = start_worker(dict(env, EVENTS_RETENTION="13mo"), "--burst")
    assert worker.proc.wait(60) == 0, worker.output()

    with transaction(engine) as conn:
        stored = set(conn.execute(select(events.c.id)).scalars())
        failed = conn.execute(select(failed_events.c.id, failed_events.c.code)).all()
    assert stored == {now["id"], ahead["id"], behind["id"]}
    assert [tuple(f) for f in failed] == [(expired["id"], "PAST_RETENTION")]
    lowers = {p.lower for p in partitions(engine)}
    assert {month(9), month(-2)} <= lowers and month(-30) not in lowers
    assert redis_client.hlen(PENDING_KEY) == 0


def test_an_event_is_stored_once_however_often_it_runs_replays_included(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis
) -> None:
    with transaction(engine) as conn:
        project_id, _ = create_project("once", conn=conn)
    queue = _queue(env, redis_client)
    # Last month's, so the insert goes to a partition made for it on the way.
    event = _event(project_id, created_at=month(-1) + timedelta(days=2))
    enqueue_events(JobWriter(queue), queue.connection, [event])
    assert start_worker(env, "--burst").proc.wait(60) == 0
    assert count(engine, failed_events) == 1  # no contact yet

    with transaction(engine) as conn:
        upsert_contact(project_id, "jane@example.com", {}, conn=conn)
    replayed = json.loads(run_cli(env, "replay", "--id", event["id"], "--json", "--wait", "0"))
    assert replayed["requeued"] == 1
    assert start_worker(env, "--burst").proc.wait(60) == 0
    assert count(engine, events) == 1 and count(engine, failed_events) == 0

    # The same event, its createdAt kept in the payload, run again twice (RQ delivers at least
    # once): ON CONFLICT meets the row in its partition.
    enqueue_events(JobWriter(queue), queue.connection, [event])
    enqueue_events(JobWriter(queue), queue.connection, [dict(event)])
    assert start_worker(env, "--burst").proc.wait(60) == 0
    with transaction(engine) as conn:
        rows = conn.execute(select(events.c.id, events.c.created_at)).all()
    assert [r.id for r in rows] == [event["id"]]
    assert iso_ms(rows[0].created_at) == event["createdAt"]
    assert count(engine, failed_events) == 0


def _rows(project_id: str, created_at: datetime, n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": new_id(),
            "project_id": project_id,
            "contact_id": "c" * 24,
            "event_name": "order_completed",
            "properties": {},
            "created_at": created_at,
            "stored_at": created_at,
        }
        for _ in range(n)
    ]


def _failed(project_id: str, failed_at: datetime) -> dict[str, Any]:
    return {
        "id": new_id(),
        "project_id": project_id,
        "event_name": "order_completed",
        "payload": {},
        "code": "CONTACT_NOT_FOUND_FOR_EVENT",
        "message": "m",
        "attempts": 1,
        "created_at": failed_at,
        "failed_at": failed_at,
    }


def test_retention_drops_whole_partitions_by_their_bounds_while_events_flow(
    env: dict[str, str], engine: Engine, procs_cleanup: list[Proc]
) -> None:
    settings = Settings(database_url=env["DATABASE_URL"])
    old = [month(-20), month(-16), month(-14)]
    kept = [month(-13), month(-2)]
    ensure_holding(engine, old + kept, settings)
    with transaction(engine) as conn:
        for moment in old + kept:
            insert_ignoring_duplicates(conn, events, _rows("p" * 24, moment, 10))
        # A name that lies: retention reads bounds, not names.
        oldest = next(p.name for p in list_partitions(conn) if p.lower == month(-20))
        conn.exec_driver_sql(f"ALTER TABLE {oldest} RENAME TO events_p29990101")
        conn.execute(
            insert(failed_events),
            [_failed("p" * 24, utcnow() - timedelta(days=d)) for d in (40, 1)],
        )
        conn.exec_driver_sql("ANALYZE events")

    dry = json.loads(
        run_cli(
            env,
            "retention",
            "--older-than",
            "13mo",
            "--failed-older-than",
            "30d",
            "--dry-run",
            "--json",
        )
    )
    assert sorted(p["from"][:10] for p in dry["partitions"]) == [f"{m:%Y-%m-%d}" for m in old]
    assert "events_p29990101" in {p["name"] for p in dry["partitions"]}
    assert dry["failedRows"] == 1 and count(engine, events) == 50

    # Inserts go on meanwhile: the API and a worker store events while partitions detach.
    project = new_project(env)
    api, base = start_api(env)
    procs_cleanup += [api, start_worker(env)]
    with httpx.Client(base_url=base, headers=auth(project["apiKey"]), timeout=10) as http:
        assert http.post("/v1/events", json=SEED_DEFINITION).status_code == 201
        http.post("/v1/contacts/email", json={"email": SEED["email"]})
        sender = _Sender(http)
        sender.start()
        wait_until(lambda: len(sender.ids) > 5, 30, "events flowing")
        out = run_cli(env, "retention", "--older-than", "13mo", "--failed-older-than", "30d")
        sender.stop()
        wait_until(lambda: count(engine, events) == 20 + len(sender.ids), 30, "sends stored")
    print(out)
    assert out.count("dropped events_p") == 3 and "events_p29990101" in out
    assert "deleted 1" in out
    assert {p.lower for p in partitions(engine)}.isdisjoint(old)
    assert count(engine, failed_events) == 1 and sender.ids


def test_workers_apply_the_retention_setting_and_a_half_done_pass_is_finished(
    env: dict[str, str], engine: Engine, procs_cleanup: list[Proc]
) -> None:
    ensure_holding(engine, [month(-15)], Settings(database_url=env["DATABASE_URL"]))
    with transaction(engine) as conn:
        # A table a pass detached and did not drop (it died in between).
        conn.exec_driver_sql("CREATE TABLE events_leftover (LIKE events)")
        conn.exec_driver_sql(f"COMMENT ON TABLE events_leftover IS '{DETACHED_COMMENT}'")
    procs_cleanup.append(start_worker(dict(env, EVENTS_RETENTION="13mo", LOG_LEVEL="INFO")))

    def gone() -> bool:
        with transaction(engine) as conn:
            left = conn.exec_driver_sql("SELECT to_regclass('events_leftover')").scalar()
        return left is None and month(-15) not in {p.lower for p in partitions(engine)}

    wait_until(gone, 30, "the worker's retention pass")
    assert month(0) in {p.lower for p in partitions(engine)}


class _Sender:
    """Sends the seed event in a loop from a thread, keeping the accepted ids."""

    def __init__(self, http: httpx.Client) -> None:
        self.http, self.ids, self.errors = http, [], []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self.errors, self.errors[:3]

    def _run(self) -> None:
        while not self._stop.is_set():
            r = self.http.post("/v1/events/send", json=SEED)
            if r.status_code == 202:
                self.ids.append(r.json()["data"]["id"])
            elif self.ids or r.status_code != 404:  # a 404 until the new definition is loaded
                self.errors.append(r.text)
            time.sleep(0.005)


# --- reads ----------------------------------------------------------------------------------


def _plan(conn: Any, stmt: Any) -> str:
    sql = stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    return "\n".join(conn.execute(text(f"EXPLAIN {sql}")).scalars())


def _fill_months(engine: Engine, months: list[datetime], per_month: int) -> None:
    """Rows in each month, their ids carrying their time as the API's do."""
    ensure_holding(engine, months, Settings(database_url=str(engine.url)))
    with transaction(engine) as conn:
        for i, start in enumerate(months):
            conn.execute(
                text(
                    "INSERT INTO events (id, project_id, contact_id, event_name, properties,"
                    " created_at, stored_at)"
                    " SELECT lpad(to_hex(extract(epoch FROM t)::bigint), 8, '0')"
                    "        || lpad(to_hex(:i * 10000000 + g), 16, '0'),"
                    " 'p', lpad(to_hex(g % 2000), 24, '0'), 'order_completed', '{}', t, t"
                    " FROM generate_series(1, :n) g,"
                    " LATERAL (SELECT :start + g * interval '10 seconds' AS t) x"
                ),
                {"i": i, "n": per_month, "start": start + timedelta(days=1)},
            )
        conn.execute(text("ANALYZE events"))


def test_get_event_reads_one_partition_by_the_time_its_id_carries(engine: Engine) -> None:
    _fill_months(engine, [month(-2), month(-1), month(0)], 20000)
    with transaction(engine) as conn:
        event_id, created_at = conn.execute(
            select(events.c.id, events.c.created_at)
            .where(events.c.created_at >= month(-1))
            .order_by(events.c.created_at)
            .limit(1)
        ).one()
        plan = _plan(conn, stored_event_query("p", event_id))
        found = conn.execute(stored_event_query("p", event_id)).one()
    print("--- GET /v1/events/{id}\n" + plan)
    assert found.created_at == created_at
    scans = re.findall(r"Index Scan using (\w+)", plan)
    assert len(scans) == 1 and scans[0].endswith("_pkey"), plan  # one partition, its key
    assert "Seq Scan" not in plan, plan


# --- autogenerate ----------------------------------------------------------------------------


def test_autogenerate_sees_no_difference_and_never_the_partitions(
    database_url: str, checkout: Path
) -> None:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        bare = compare_metadata(MigrationContext.configure(conn), metadata)
        filtered = compare_metadata(
            MigrationContext.configure(conn, opts={"include_object": migrate.include_object(conn)}),
            metadata,
        )
    engine.dispose()
    # Without the filter the partitions read as tables to drop; with it, nothing differs.
    dropped = {d[1].name for d in bare if isinstance(d, tuple) and d[0] == "remove_table"}
    assert dropped == {p.name for p in partitions_of(database_url)}, bare
    assert filtered == []

    # Written into `checkout`'s copy of the scripts.
    written = migrate.revision(database_url, "nothing new").read_text()
    assert "drop_table" not in written and "events_p" not in written, written
    assert "uq_events_seq" not in written, written  # SQLite's alone


def partitions_of(url: str) -> list[Partition]:
    engine = create_engine(url)
    try:
        return partitions(engine)
    finally:
        engine.dispose()


# --- the online move -------------------------------------------------------------------------

MOVE_ROWS = 1_000_000


@pytest.mark.slow
def test_an_existing_table_of_a_million_rows_moves_online_while_events_flow(
    empty_database: str, redis_client: redis.Redis, procs_cleanup: list[Proc]
) -> None:
    url = empty_database
    # The release before: one plain table.
    command.upgrade(migrate.config(url), migrate.revision_before("events_by_time"))
    engine = create_engine(url)
    env = service_env(url, REDIS_URL)
    project = new_project(env)
    contact = _fill_legacy(engine, project["projectId"])
    migrate.upgrade(url)  # this release's migrations leave a table with rows as it is
    with transaction(engine) as conn:
        assert not is_partitioned(conn)

    api, base = start_api(env)
    procs_cleanup += [api, start_worker(env, "--processes", "2")]
    with httpx.Client(base_url=base, headers=auth(project["apiKey"]), timeout=30) as http:
        assert http.post("/v1/events", json=SEED_DEFINITION).status_code == 201
        path = f"/v1/contacts/{contact}/events"
        before = http.get(path, params={"limit": 50}).json()["data"]
        sender = _Sender(http)
        sender.start()
        wait_until(lambda: len(sender.ids) > 20, 30, "events flowing")
        with transaction(engine) as conn:
            seq_before = conn.execute(select(func.max(events.c.seq))).scalar_one()
        started = time.monotonic()
        out = run_cli(env, "db", "partition", "--online")
        took = time.monotonic() - started
        sent_before_end = len(sender.ids)
        time.sleep(1)  # and a second of traffic on the partitioned table
        sender.stop()
        wait_until(
            lambda: count(engine, events) == MOVE_ROWS + len(sender.ids),
            120,
            "every accepted event stored",
            step=0.5,
        )
        after = http.get(path, params={"limit": 50, "cursor": before["nextCursor"]}).json()
        newest = http.get(path, params={"limit": 1}).json()["data"]["events"][0]
    print(f"\n{out}\nonline move of {MOVE_ROWS:,} rows: {took:.1f} s in all")
    assert re.search(r"swapped in [0-9.]+ ms", out), out
    assert count(engine, failed_events) == 0
    wait_until(lambda: redis_client.hlen(PENDING_KEY) == 0, 10, "no event left pending")
    seq_start = int(re.findall(r"events_seq starts at ([0-9]+)", out)[0])
    with transaction(engine) as conn:
        assert is_partitioned(conn)
        parts = list_partitions(conn)
        seqs, distinct = conn.execute(
            select(func.count(events.c.seq), func.count(events.c.seq.distinct()))
        ).one()
        late = conn.execute(
            select(func.min(events.c.seq)).where(events.c.id.in_(sender.ids[sent_before_end:]))
        ).scalar_one()
        filtered = compare_metadata(
            MigrationContext.configure(conn, opts={"include_object": migrate.include_object(conn)}),
            metadata,
        )
    assert parts[0].name == "events_legacy" and parts[0].lower is None
    # The sequence went on above every seq given before: no seq twice, cursors keep their order.
    assert seq_start > seq_before and late >= seq_start and seqs == distinct
    # A cursor handed out before the move still pages on, from where it stood.
    assert len(after["data"]["events"]) == 50
    assert {e["id"] for e in after["data"]["events"]}.isdisjoint(e["id"] for e in before["events"])
    assert newest["id"] in sender.ids[sent_before_end:]
    assert filtered == []
    assert "up to date" in run_cli(env, "db", "maintain")
    engine.dispose()


def _fill_legacy(engine: Engine, project_id: str) -> str:
    """MOVE_ROWS rows over the last 60 days, 1% of them the seed contact's."""
    with transaction(engine) as conn:
        contact_id = upsert_contact(project_id, SEED["email"], {}, conn=conn).id
        conn.execute(
            text(
                "INSERT INTO events (id, project_id, contact_id, event_name, properties,"
                " created_at, stored_at)"
                " SELECT lpad(to_hex(g), 24, '0'), :p,"
                " CASE WHEN g % 100 = 0 THEN :c ELSE lpad(to_hex(g % 5000), 24, '0') END,"
                " 'order_completed', '{\"order_total\": 1}',"
                " now() - (g % 5184000) * interval '1 second', now()"
                " FROM generate_series(1, :n) g"
            ),
            {"p": project_id, "c": contact_id, "n": MOVE_ROWS},
        )
        conn.execute(text("ANALYZE events"))
    return str(contact_id)
