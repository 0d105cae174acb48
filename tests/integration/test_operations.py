"""The operators' tools for real: failed events, replay, stats, the admin API, health and
metrics, against real Redis, PostgreSQL, uvicorn and worker processes."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import httpx
import redis
from sqlalchemy import Engine, func, insert, select

from shared.clock import utcnow
from shared.db import transaction
from shared.models import events, failed_event_attempts, failed_events
from shared.queue import PENDING_KEY, JobWriter, enqueue_events, make_queue
from shared.settings import Settings
from tests.integration.services import (
    ROOT,
    Proc,
    eventpipe,
    run_cli,
    start_api,
    start_worker,
    wait_until,
)
from tests.integration.test_pipeline import (
    SEED,
    SEED_DEFINITION,
    _event,
    _seed_store,
    auth,
    new_project,
)

CNF = "CONTACT_NOT_FOUND_FOR_EVENT"


def cli_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(run_cli(env, *args, "--json"))


def cli_fails(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        eventpipe(*args),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode != 0, done.stdout
    return done


def stored_ids(engine: Engine) -> list[str]:
    with transaction(engine) as conn:
        return list(conn.execute(select(events.c.id).order_by(events.c.id)).scalars())


def failed_rows(engine: Engine) -> dict[str, Any]:
    with transaction(engine) as conn:
        return {r.id: r for r in conn.execute(select(failed_events))}


def send(http: httpx.Client, email: str) -> str:
    answer = http.post("/v1/events/send", json={**SEED, "email": email})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["data"]["id"])


def add_foreign_failure(engine: Engine, event: dict[str, Any], code: str) -> None:
    """A failure with another code, as a later failure kind would record it."""
    now = utcnow()
    with transaction(engine) as conn:
        conn.execute(
            insert(failed_events).values(
                id=event["id"],
                project_id=event["projectId"],
                event_name=event["eventName"],
                payload=event,
                code=code,
                message="something else",
                attempts=1,
                created_at=now,
                failed_at=now,
            )
        )
        conn.execute(
            insert(failed_event_attempts).values(
                event_id=event["id"], code=code, message="something else", failed_at=now
            )
        )


def test_replay_by_code_stores_each_fixed_event_once_and_lists_the_others_again(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis, procs_cleanup: list[Proc]
) -> None:
    """Contact-not-found failures; the contacts of some are created; a replay by code stores
    every fixed event once, and the others fail again and are listed again."""
    project = new_project(env)
    api, base = start_api(env)
    procs_cleanup.append(api)
    procs_cleanup.append(start_worker(env))
    with httpx.Client(base_url=base, headers=auth(project["apiKey"]), timeout=10) as http:
        assert http.post("/v1/events", json=SEED_DEFINITION).status_code == 201
        fixed = [send(http, e) for e in ["ann@example.com", "bob@example.com"] * 2]
        unfixed = [send(http, "cat@example.com") for _ in range(2)]
        wait_until(lambda: len(failed_rows(engine)) == 4 + 2, 30, "six failures")
        # A failure of another kind, for an event whose contact will exist: a replay by
        # code must leave it alone.
        other = {**_event(project["projectId"], "ann@example.com"), "eventName": "order_completed"}
        add_foreign_failure(engine, other, "SOME_OTHER_CODE")
        for email in ("ann@example.com", "bob@example.com"):
            assert http.post("/v1/contacts/email", json={"email": email}).status_code == 200
        # One registry entry expired meanwhile: the replay works from PostgreSQL's record.
        queue = make_queue(Settings(redis_url=env["REDIS_URL"]), redis_client)
        queue.failed_job_registry.remove(fixed[0], delete_job=True)

        summary = cli_json(env, "replay", "--code", CNF, "--wait", "60")
        assert summary["requeued"] == 6 and summary["skipped"] == {}
        assert summary["stored"] == 4
        assert summary["stillFailing"] == {CNF: 2} and summary["stillQueued"] == 0

        assert stored_ids(engine) == sorted(fixed)
        listed = cli_json(env, "failed", "list")
        assert sorted(r["id"] for r in listed) == sorted([*unfixed, other["id"]])
        again = {r["id"]: r for r in listed}
        assert [again[i]["attempts"] for i in unfixed] == [2, 2]
        assert again[other["id"]]["attempts"] == 1 and again[other["id"]]["code"] != CNF
        history = cli_json(env, "failed", "show", unfixed[0])["history"]
        assert [h["code"] for h in history] == [CNF, CNF]
        assert sorted(queue.failed_job_registry.get_job_ids()) == sorted(unfixed)
        for event_id in fixed:
            assert http.get(f"/v1/events/{event_id}").json()["data"]["status"] == "stored"
        assert http.get(f"/v1/events/{unfixed[0]}").json()["data"]["status"] == "failed"

        # Run again: only what still fails is requeued; nothing stored is stored twice.
        summary = cli_json(env, "replay", "--code", CNF, "--wait", "60")
        assert (summary["requeued"], summary["stored"]) == (2, 0)
        assert stored_ids(engine) == sorted(fixed)
        assert failed_rows(engine)[unfixed[0]].attempts == 3


def _failures(env: dict[str, str], engine: Engine, redis_client: redis.Redis, n: int) -> list[str]:
    """`n` contact-not-found failures made by a real worker run (--burst)."""
    project_id = _seed_store(engine)  # creates jane@example.com only
    settings = Settings(database_url=env["DATABASE_URL"], redis_url=env["REDIS_URL"])
    queue = make_queue(settings, redis_client)
    batch = [_event(project_id, f"ghost{i}@example.com") for i in range(n)]
    enqueue_events(JobWriter(queue, settings), redis_client, batch)
    worker = start_worker(env, "--burst")
    assert worker.proc.wait(60) == 0, worker.output()
    assert len(failed_rows(engine)) == n
    return sorted(e["id"] for e in batch)


def test_replay_skips_what_is_on_its_way_or_stored_and_never_stores_twice(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis
) -> None:
    ids = _failures(env, engine, redis_client, 5)
    queue = make_queue(Settings(redis_url=env["REDIS_URL"]), redis_client)
    unknown = "0" * 24

    dry = cli_json(env, "replay", "--all", "--dry-run")
    assert (dry["matched"], dry["requeued"], dry["dryRun"]) == (5, 5, True)
    assert redis_client.hlen(PENDING_KEY) == 0 and queue.count == 0

    # Requeued once with no worker running: a second run finds it on its way.
    first = cli_json(env, "replay", "--id", ids[0], "--wait", "0")
    assert first["requeued"] == 1
    # Another requeued by RQ's own tool meanwhile, as the README used to suggest.
    queue.failed_job_registry.requeue(ids[1])
    # Another stored meanwhile (by any path): its failure record is stale.
    with transaction(engine) as conn:
        row = conn.execute(select(failed_events).where(failed_events.c.id == ids[2])).one()
        conn.execute(
            insert(events).values(
                id=ids[2],
                project_id=row.project_id,
                contact_id="c" * 24,
                event_name=row.event_name,
                properties={},
                created_at=row.created_at,
                stored_at=utcnow(),
            )
        )
    by_id = [arg for i in [*ids, unknown] for arg in ("--id", i)]
    summary = cli_json(env, "replay", *by_id, "--rate", "1000/s", "--wait", "0")
    assert summary["requeued"] == 2  # ids[3], ids[4]
    assert summary["skipped"] == {
        "already queued": 2,
        "already stored": 1,
        "no matching failure record": 1,
    }
    assert ids[2] not in failed_rows(engine)

    # The contacts now exist; the workers store each event once, however often queued.
    with transaction(engine) as conn:
        project_id = row.project_id
        from shared.store import upsert_contact

        for i in range(5):
            upsert_contact(project_id, f"ghost{i}@example.com", {}, conn=conn)
    worker = start_worker(env, "--burst")
    assert worker.proc.wait(60) == 0, worker.output()
    assert stored_ids(engine) == ids
    assert failed_rows(engine) == {}
    assert queue.failed_job_registry.count == 0
    with transaction(engine) as conn:
        assert conn.execute(select(func.count()).select_from(failed_event_attempts)).scalar() == 0


def test_failed_list_show_and_purge_with_filters(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis
) -> None:
    ids = _failures(env, engine, redis_client, 3)
    other = _event(failed_rows(engine)[ids[0]].project_id, "x@example.com")
    other["eventName"] = "signup"
    add_foreign_failure(engine, other, "SOME_OTHER_CODE")

    everything = cli_json(env, "failed", "list")
    assert [r["id"] for r in everything] == sorted([*ids, other["id"]], reverse=True)
    assert set(everything[0]) >= {"id", "projectId", "eventName", "code", "message", "attempts"}
    assert [r["id"] for r in cli_json(env, "failed", "list", "--code", CNF)] == ids[::-1]
    assert [r["id"] for r in cli_json(env, "failed", "list", "--event-name", "signup")] == [
        other["id"]
    ]
    assert cli_json(env, "failed", "list", "--until", "2000-01-01") == []
    assert len(cli_json(env, "failed", "list", "--since", "1h")) == 4
    assert len(cli_json(env, "failed", "list", "--limit", "2")) == 2
    text = run_cli(env, "failed", "list", "--code", CNF)
    assert len(text.splitlines()) == 3 and CNF in text

    shown = cli_json(env, "failed", "show", ids[0])
    assert shown["payload"]["id"] == ids[0] and shown["payload"]["email"] == "ghost0@example.com"
    assert [h["code"] for h in shown["history"]] == [CNF]
    assert "No failed event" in cli_fails(env, "failed", "show", "f" * 24).stderr

    assert "--all" in cli_fails(env, "failed", "purge").stderr
    assert "--yes" in cli_fails(env, "failed", "purge", "--code", CNF).stderr  # no terminal
    assert run_cli(env, "failed", "purge", "--code", CNF, "--yes").strip() == "purged 3"
    assert list(failed_rows(engine)) == [other["id"]]
    queue = make_queue(Settings(redis_url=env["REDIS_URL"]), redis_client)
    assert queue.failed_job_registry.count == 0
    assert all(queue.fetch_job(i) is None for i in ids)
    assert "--all" in cli_fails(env, "replay").stderr


OPERATOR_TOKEN = "ops-" + "k" * 28


def test_admin_api_lists_and_replays_for_real(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis, procs_cleanup: list[Proc]
) -> None:
    ids = _failures(env, engine, redis_client, 3)
    project_id = failed_rows(engine)[ids[0]].project_id
    env = {**env, "OPERATOR_TOKEN": OPERATOR_TOKEN}
    api, base = start_api(env)
    procs_cleanup.append(api)
    procs_cleanup.append(start_worker(env))
    operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    with httpx.Client(base_url=base, timeout=60) as http:
        key = new_project(env)["apiKey"]
        assert http.get("/v1/admin/failed", headers=auth(key)).status_code == 401
        listed = http.get("/v1/admin/failed", params={"code": CNF}, headers=operator)
        assert [r["id"] for r in listed.json()["data"]["failed"]] == ids[::-1]

        with transaction(engine) as conn:
            from shared.store import upsert_contact

            upsert_contact(project_id, "ghost1@example.com", {}, conn=conn)
        answer = http.post(
            "/v1/admin/replay", json={"code": CNF, "wait": 30}, headers=operator
        ).json()["data"]
        assert (answer["requeued"], answer["stored"]) == (3, 1)
        assert answer["stillFailing"] == {CNF: 2}
        left = http.get("/v1/admin/failed", headers=operator).json()["data"]["failed"]
        assert sorted(r["id"] for r in left) == [ids[0], ids[2]]
        assert {r["attempts"] for r in left} == {2}
    assert stored_ids(engine) == [ids[1]]


def test_stats_shows_totals_queue_memory_workers_and_failures(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis, procs_cleanup: list[Proc]
) -> None:
    ids = _failures(env, engine, redis_client, 3)  # 3 accepted, 3 failed
    project_id = failed_rows(engine)[ids[0]].project_id
    settings = Settings(database_url=env["DATABASE_URL"], redis_url=env["REDIS_URL"])
    queue = make_queue(settings, redis_client)
    writer = JobWriter(queue, settings)
    for _ in range(2):
        enqueue_events(writer, redis_client, [_event(project_id, "jane@example.com")] * 2)

    idle = cli_json(env, "stats")
    assert idle["totals"] == {"accepted": 7, "stored": 0, "failed": {CNF: 3}}
    assert idle["queue"]["events"] == 2  # each job carries one event twice: one mark each
    assert idle["queue"]["jobs"] == 2 and idle["queue"]["oldestAgeSeconds"] >= 0
    assert idle["redis"]["usedMemory"] > 0 and "maxMemory" in idle["redis"]
    assert idle["workers"] == []
    assert idle["store"] == {"reachable": True, "failedHeld": {CNF: 3}}

    procs_cleanup.append(start_worker(env))
    wait_until(lambda: cli_json(env, "stats")["queue"]["jobs"] == 0, 30, "the queue to drain")
    wait_until(lambda: len(cli_json(env, "stats")["workers"]) == 1, 30, "the worker to register")
    busy = cli_json(env, "stats")
    assert busy["totals"]["stored"] == 2  # two distinct events; duplicates are not counted
    assert busy["queue"] == {"events": 0, "jobs": 0, "oldestAgeSeconds": None, "failedJobs": 3}
    assert busy["workers"][0]["state"] in ("idle", "busy")
    text = run_cli(env, "stats")
    assert "workers alive: 1" in text and f"{CNF} 3" in text
