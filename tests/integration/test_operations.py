"""The operators' tools for real: failed events, replay, stats, the admin API, health and
metrics, against real Redis, PostgreSQL, uvicorn and worker processes."""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from typing import Any

import httpx2 as httpx
import psutil
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
        queue.rq.failed_job_registry.remove(fixed[0], delete_job=True)

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
        assert sorted(queue.rq.failed_job_registry.get_job_ids()) == sorted(unfixed)
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
    enqueue_events(JobWriter(queue), redis_client, batch)
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
    assert redis_client.hlen(PENDING_KEY) == 0 and queue.rq.count == 0

    # Requeued once with no worker running: a second run finds it on its way.
    first = cli_json(env, "replay", "--id", ids[0], "--wait", "0")
    assert first["requeued"] == 1
    # Another requeued by RQ's own tool meanwhile, as the README used to suggest.
    queue.rq.failed_job_registry.requeue(ids[1])
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
        from api.store import upsert_contact

        for i in range(5):
            upsert_contact(project_id, f"ghost{i}@example.com", {}, conn=conn)
    worker = start_worker(env, "--burst")
    assert worker.proc.wait(60) == 0, worker.output()
    assert stored_ids(engine) == ids
    assert failed_rows(engine) == {}
    assert queue.rq.failed_job_registry.count == 0
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
    assert queue.rq.failed_job_registry.count == 0
    assert all(queue.rq.fetch_job(i) is None for i in ids)
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
            from api.store import upsert_contact

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
    writer = JobWriter(queue)
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
    assert busy["queue"] == {
        "events": 0,
        "jobs": 0,
        "startedJobs": 0,
        "oldestAgeSeconds": None,
        "failedJobs": 3,
    }
    assert busy["workers"][0]["state"] in ("idle", "busy")
    text = run_cli(env, "stats")
    assert "workers alive: 1" in text and f"{CNF} 3" in text


# --- health, metrics and logs on real processes ----------------------------------------------


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def json_lines(output: str) -> list[dict[str, Any]]:
    found = []
    for line in output.splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def test_metrics_add_up_across_uvicorn_workers_and_logs_are_json_without_keys_or_values(
    env: dict[str, str], procs_cleanup: list[Proc]
) -> None:
    project = new_project(env)
    env = {**env, "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}
    api, base = start_api(env, workers=2)
    procs_cleanup.append(api)
    key = project["apiKey"]
    with httpx.Client(base_url=base, headers=auth(key), timeout=10) as http:
        assert http.post("/v1/events", json=SEED_DEFINITION).status_code == 201
        # A definition made through one process reaches the other within a second.
        wait_until(
            lambda: all(
                http.post("/v1/events/send", json=SEED, headers={"Connection": "close"}).status_code
                == 202
                for _ in range(10)
            ),
            5,
            "both processes to know the definition",
        )
    sent = 0
    # New connections, so both uvicorn processes take some of the sends.
    for _ in range(40):
        with httpx.Client(base_url=base, headers=auth(key), timeout=10) as http:
            assert http.post("/v1/events/send", json=SEED).status_code == 202
            sent += 1
    scrapes = []
    for _ in range(6):
        with httpx.Client(base_url=base, timeout=10) as http:
            scrapes.append(http.get("/metrics").text)
    # Whichever process answers the scrape reports every process's sends.
    totals = {metric(t, "eventpipe_events_accepted_total") for t in scrapes}
    assert len(totals) == 1 and totals.pop() >= sent + 10
    route = 'eventpipe_http_requests_total{route="/v1/events/send",status="202"}'
    assert metric(scrapes[-1], route) >= sent + 10
    assert metric(scrapes[-1], "eventpipe_queue_events") >= sent + 10  # no worker running
    assert metric(scrapes[-1], "eventpipe_redis_used_memory_bytes") > 0

    api.stop()
    lines = json_lines(api.output())
    requests = [line for line in lines if line.get("kind") == "request"]
    sends = [r for r in requests if r["route"] == "/v1/events/send" and r["status"] == 202]
    assert len(sends) >= sent + 10
    assert all(r["projectId"] == project["projectId"] and len(r["eventId"]) == 24 for r in sends)
    assert len({r["pid"] for r in requests}) == 2
    output = api.output()
    # The whole secret: it may itself hold "_", and its last piece alone can be one letter.
    assert key not in output and key.split("_", 2)[2] not in output
    assert "129.99" not in output and "USD" not in output  # the seed's property values


def test_readyz_follows_redis_but_not_the_store(
    pg_and_redis: tuple[Any, Any], procs_cleanup: list[Proc]
) -> None:
    from tests.integration.conftest import service_env

    pg, private_redis = pg_and_redis
    env = service_env(pg.url, private_redis.url)
    api, base = start_api(env)
    procs_cleanup.append(api)
    with httpx.Client(base_url=base, timeout=10) as http:
        assert http.get("/readyz").json()["data"]["checks"] == {"redis": True, "config": True}
        pg.stop()
        assert http.get("/readyz").status_code == 200  # a store outage keeps it in rotation
        private_redis.stop()
        answer = http.get("/readyz")
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
        assert http.get("/healthz").status_code == 200
        assert metric(http.get("/metrics").text, "eventpipe_redis_up") == 0
        private_redis.start()
        wait_until(lambda: http.get("/readyz").status_code == 200, 20, "readiness to return")


# --- the worker supervisor ------------------------------------------------------------------


def _queue_jobs(env: dict[str, str], redis_client: redis.Redis, jobs: list[list[Any]]) -> None:
    settings = Settings(database_url=env["DATABASE_URL"], redis_url=env["REDIS_URL"])
    queue = make_queue(settings, redis_client)
    writer = JobWriter(queue)
    for batch in jobs:
        enqueue_events(writer, redis_client, batch)


def test_supervisor_serves_worker_metrics_recycles_workers_and_logs_jobs_as_json(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis, procs_cleanup: list[Proc]
) -> None:
    from tests.integration.services import free_port

    project_id = _seed_store(engine)
    jobs = [[_event(project_id, "jane@example.com") for _ in range(2)] for _ in range(8)]
    jobs.append([_event(project_id, "ghost@example.com")])
    _queue_jobs(env, redis_client, jobs)
    env = {
        **env,
        "WORKER_MAX_JOBS": "2",
        "WORKER_CLAIM_JOBS": "0",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
    }
    port = free_port()
    worker = start_worker(env, "--processes", "2", "--metrics-port", str(port))
    procs_cleanup.append(worker)

    def scrape() -> str:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return ""

    wait_until(
        lambda: metric(scrape(), "eventpipe_job_seconds_count") == 9, 60, "nine jobs counted"
    )
    text = scrape()
    assert metric(text, "eventpipe_events_stored_total") == 16
    assert metric(text, f'eventpipe_events_failed_total{{code="{CNF}"}}') == 1
    assert metric(text, "eventpipe_job_events_total") == 17
    assert metric(text, "eventpipe_store_waits_total") == 0
    assert len(stored_ids(engine)) == 16

    assert worker.stop() == 0
    lines = json_lines(worker.output())
    job_lines = [line for line in lines if line.get("kind") == "job"]
    assert len(job_lines) == 9
    per_process = Counter(line["pid"] for line in job_lines)
    # Recycled after two jobs each: at least five processes took the nine jobs.
    assert max(per_process.values()) <= 2 and len(per_process) >= 5
    assert {i for line in job_lines for i in line["eventIds"]} == {
        e["id"] for batch in jobs for e in batch
    }
    failed = [line for line in lines if line.get("kind") == "event_failed"]
    assert [(f["eventId"], f["code"]) for f in failed] == [(jobs[-1][0]["id"], CNF)]
    assert '"order_total"' not in worker.output()  # property values stay out of logs


def _children(proc: Proc) -> list[psutil.Process]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    found = []
    for child in psutil.Process(proc.proc.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def test_supervisor_restarts_a_crashed_worker(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis, procs_cleanup: list[Proc]
) -> None:
    worker = start_worker(env, "--processes", "2")
    procs_cleanup.append(worker)
    wait_until(lambda: len(_children(worker)) == 2, 30, "two worker processes")
    first = {p.pid for p in _children(worker)}
    victim = psutil.Process(min(first))
    victim.kill()
    victim.wait(10)
    wait_until(
        lambda: len(_children(worker)) == 2 and {p.pid for p in _children(worker)} != first,
        30,
        "a new worker process",
    )
    project_id = _seed_store(engine)
    _queue_jobs(env, redis_client, [[_event(project_id, "jane@example.com")] for _ in range(4)])
    wait_until(lambda: len(stored_ids(engine)) == 4, 30, "the jobs to be stored")


def _held_store(engine: Engine) -> Any:
    """A transaction holding the events table: a job's insert waits on it."""
    conn = engine.connect()
    conn.exec_driver_sql("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
    return conn


def _busy_worker(env: dict[str, str], engine: Engine, redis_client: redis.Redis) -> Proc:
    """A supervisor with two workers, one of them in the middle of a job (blocked)."""
    from rq import Worker

    project_id = _seed_store(engine)
    worker = start_worker(env, "--processes", "2")
    wait_until(lambda: len(_children(worker)) == 2, 30, "two worker processes")
    queue = make_queue(Settings(redis_url=env["REDIS_URL"]), redis_client)
    wait_until(lambda: len(Worker.all(queue=queue.rq)) == 2, 30, "two registered workers")
    _queue_jobs(env, redis_client, [[_event(project_id, "jane@example.com")]])
    wait_until(
        lambda: any(w.get_state() == "busy" for w in Worker.all(queue=queue.rq)),
        30,
        "a worker to take the job",
    )
    return worker


def test_first_sigterm_lets_the_running_job_finish(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis, procs_cleanup: list[Proc]
) -> None:
    env = {**env, "LOG_LEVEL": "INFO"}
    lock = _held_store(engine)
    try:
        worker = _busy_worker(env, engine, redis_client)
        procs_cleanup.append(worker)
        worker.proc.send_signal(signal.SIGTERM)
        # The idle worker leaves at once; the busy one stays for its job.
        wait_until(lambda: len(_children(worker)) == 1, 30, "the idle worker to stop")
        assert "warm shut down requested" in worker.output()
    finally:
        lock.rollback()
        lock.close()
    assert worker.proc.wait(30) == 0, worker.output()
    assert len(stored_ids(engine)) == 1  # the job in hand was finished, not dropped


def test_second_sigterm_stops_the_workers_at_once(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis, procs_cleanup: list[Proc]
) -> None:
    env = {**env, "LOG_LEVEL": "INFO"}
    lock = _held_store(engine)
    try:
        worker = _busy_worker(env, engine, redis_client)
        procs_cleanup.append(worker)
        children = _children(worker)
        worker.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: len(_children(worker)) == 1, 30, "the idle worker to stop")
        worker.proc.send_signal(signal.SIGTERM)
        # Stopped while the job is still blocked on the store: it was not waited for.
        assert worker.proc.wait(30) == 0, worker.output()
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
    finally:
        lock.rollback()
        lock.close()
    assert stored_ids(engine) == []  # the job in hand was abandoned, not finished


def pending(redis_client: redis.Redis) -> int:
    return redis_client.hlen(PENDING_KEY)


def test_an_interrupted_replay_run_again_queues_each_event_once(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis
) -> None:
    ids = _failures(env, engine, redis_client, 120)
    # 20 a second, a batch of 20 a second: interrupted after the first batch or two.
    replay = Proc(eventpipe("replay", "--all", "--rate", "20/s", "--wait", "0"), env, "replay")
    wait_until(lambda: pending(redis_client) > 0, 30, "the first requeued batch")
    replay.proc.send_signal(signal.SIGINT)
    assert replay.proc.wait(30) == 130, replay.output()
    assert "interrupted" in replay.output()
    first = pending(redis_client)
    assert 0 < first < 120

    summary = cli_json(env, "replay", "--all", "--wait", "0")
    assert summary["requeued"] == 120 - first
    assert summary["skipped"] == {"already queued": first}
    assert pending(redis_client) == 120

    project_id = failed_rows(engine)[ids[0]].project_id
    with transaction(engine) as conn:
        from api.store import upsert_contact

        for i in range(120):
            upsert_contact(project_id, f"ghost{i}@example.com", {}, conn=conn)
    worker = start_worker(env, "--burst")
    assert worker.proc.wait(60) == 0, worker.output()
    assert stored_ids(engine) == ids and failed_rows(engine) == {}


def test_stats_watch_refreshes_until_interrupted(
    env: dict[str, str], engine: Engine, redis_client: redis.Redis
) -> None:
    watch = Proc(eventpipe("stats", "--watch", "--json", "--interval", "0.2"), env, "stats")
    wait_until(lambda: watch.output().count("\n") >= 3, 30, "three refreshes")
    watch.proc.send_signal(signal.SIGINT)
    assert watch.proc.wait(30) == 0
    frames = [json.loads(line) for line in watch.output().splitlines() if line.startswith("{")]
    assert len(frames) >= 3 and all(f["store"]["reachable"] for f in frames)
