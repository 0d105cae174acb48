"""`eventpipe stats`: the pipeline at a glance, from Redis (totals, queue, memory, workers)
and PostgreSQL (failed events held for replay). Either one down is reported, not raised."""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any

import redis
from sqlalchemy import Engine, func, select
from sqlalchemy import exc as sa_exc

from shared.clock import iso_ms, utcnow
from shared.db import transaction
from shared.errors import StoreUnavailable
from shared.models import failed_events, project_limits
from shared.queue import (
    ACCEPTED_KEY,
    FAILED_KEY,
    STORED_KEY,
    JobQueue,
    queue_figures,
    rate_bucket_levels,
    read_rates,
    top_queued,
    workers,
)

# `eventpipe stats` lists this many of the projects with the most events queued.
TOP_PROJECTS = 5


def collect(engine: Engine, queue: JobQueue) -> dict[str, Any]:
    data: dict[str, Any] = {"at": iso_ms(utcnow()), "queueName": queue.name}
    try:
        data.update(redis_stats(queue))
    except redis.RedisError as exc:
        data["redis"] = {"reachable": False, "error": str(exc)}
    data["store"] = store_stats(engine)
    try:
        data["shares"] = share_stats(engine, queue)
    except (redis.RedisError, StoreUnavailable, sa_exc.SQLAlchemyError):
        data["shares"] = None  # the section above says which one is down
    return data


def share_stats(engine: Engine, queue: JobQueue) -> dict[str, Any]:
    """Fair shares: the projects with the most events queued against their share, and the
    rate-limited projects with the tokens their shared bucket holds now."""
    settings = queue.settings
    with transaction(engine) as conn:
        rows = conn.execute(select(project_limits)).all()
    shares = {r.project_id: r.backlog_share for r in rows if r.backlog_share is not None}
    # The burst's default as api/limits.py has it: one second of the rate, at least 1.
    rates = {
        r.project_id: (r.rate_per_second, r.burst or max(1, math.ceil(r.rate_per_second)))
        for r in rows
        if r.rate_per_second is not None
    }
    levels = rate_bucket_levels(queue.connection, rates)
    queued = []
    for project_id, n in top_queued(queue.connection, TOP_PROJECTS).items():
        share = shares.get(project_id, settings.project_backlog_share)
        limit = max(1, math.floor(settings.max_queued_events * share))
        queued.append({"projectId": project_id, "queued": n, "backlogLimit": limit})
    limited = [
        {"projectId": p, "ratePerSecond": rate, "burst": burst, "tokensLeft": round(levels[p], 1)}
        for p, (rate, burst) in sorted(rates.items())
    ]
    return {"mostQueued": queued, "rateLimited": limited}


def redis_stats(queue: JobQueue) -> dict[str, Any]:
    connection = queue.connection
    with connection.pipeline(transaction=False) as pipe:
        pipe.get(ACCEPTED_KEY)
        pipe.get(STORED_KEY)
        pipe.hgetall(FAILED_KEY)
        accepted, stored, failed = pipe.execute()
    figures = queue_figures(queue)
    try:
        memory = connection.info("memory")
    except redis.ResponseError:  # a server or proxy that refuses INFO: no memory figures
        memory = {}
    age = figures.oldest_age
    return {
        "totals": {
            "accepted": int(accepted or 0),
            "stored": int(stored or 0),
            "failed": {k.decode(): int(v) for k, v in failed.items()},
        },
        "queue": {
            "events": figures.events,
            "jobs": figures.jobs,
            "startedJobs": figures.started,
            "oldestAgeSeconds": None if age is None else round(age, 3),
            "failedJobs": figures.failed_jobs,
        },
        "redis": {
            "reachable": True,
            "usedMemory": int(memory.get("used_memory", 0)),
            "maxMemory": int(memory.get("maxmemory", 0)),
            "maxMemoryPolicy": str(memory.get("maxmemory_policy", "")),
        },
        "workers": worker_stats(queue),
    }


def rates(queue: JobQueue, seconds: int = 3600) -> dict[str, Any] | None:
    """Accepted, stored and failed events a second over the last `seconds`, in five-second
    buckets kept in Redis (never a scan of the events table); None while Redis is down."""
    try:
        return read_rates(queue.connection, seconds)
    except redis.RedisError:
        return None


def worker_stats(queue: JobQueue) -> list[dict[str, Any]]:
    now = utcnow()
    found = []
    for w in sorted(workers(queue), key=lambda w: (w["hostname"] or "", w["pid"] or 0)):
        beat = w.pop("lastHeartbeat")
        w["heartbeatAgeSeconds"] = round((now - beat).total_seconds(), 1) if beat else None
        found.append(w)
    return found


def store_stats(engine: Engine) -> dict[str, Any]:
    """Failed events held for replay, by code; the store's health is reported here."""
    try:
        with transaction(engine) as conn:
            rows = conn.execute(
                select(failed_events.c.code, func.count()).group_by(failed_events.c.code)
            ).all()
    except (StoreUnavailable, sa_exc.SQLAlchemyError) as exc:
        return {"reachable": False, "error": str(exc.__cause__ or exc).splitlines()[0]}
    return {"reachable": True, "failedHeld": {code: int(n) for code, n in rows}}


def describe_stats(data: dict[str, Any]) -> str:
    lines = [f"eventpipe at {data['at']} (queue {data['queueName']})"]
    red = data.get("redis", {})
    if not red.get("reachable"):
        lines.append(f"redis: UNREACHABLE ({red.get('error')})")
    else:
        t, q = data["totals"], data["queue"]
        failed = ", ".join(f"{c} {n}" for c, n in sorted(t["failed"].items())) or "none"
        age = q["oldestAgeSeconds"]
        limit = red["maxMemory"]
        lines += [
            f"totals: accepted {t['accepted']}, stored {t['stored']}, failed: {failed}",
            f"queue: {q['events']} events in {q['jobs']} jobs ({q['startedJobs']} started), "
            + "oldest queued "
            + (f"{age:.1f}s ago" if age is not None else "-")
            + f", {q['failedJobs']} failed jobs in RQ",
            f"redis memory: {_mb(red['usedMemory'])} of "
            + (_mb(limit) if limit else "no limit")
            + f" (policy {red['maxMemoryPolicy']})",
            f"workers alive: {len(data['workers'])}",
        ]
        lines += [_worker_line(w) for w in data["workers"]]
    if data.get("shares"):
        lines += _share_lines(data["shares"])
    store = data["store"]
    if store["reachable"]:
        held = ", ".join(f"{c} {n}" for c, n in sorted(store["failedHeld"].items())) or "none"
        lines.append(f"store: reachable; failed events held for replay: {held}")
    else:
        lines.append(f"store: UNREACHABLE ({store['error']})")
    return "\n".join(lines)


def _share_lines(shares: dict[str, Any]) -> list[str]:
    most = [
        f"{q['projectId']} {q['queued']} of {q['backlogLimit']}"
        + (" (AT ITS SHARE: its sends get 503)" if q["queued"] >= q["backlogLimit"] else "")
        for q in shares["mostQueued"]
    ]
    lines = ["most queued by project: " + ("; ".join(most) or "none")]
    limited = shares["rateLimited"]
    lines.append(f"rate-limited projects: {len(limited)}")
    lines += [
        f"  {r['projectId']}: {_rate_text(r['ratePerSecond'])}, burst {r['burst']},"
        f" {r['tokensLeft']:g} tokens left"
        + (" (AT ITS LIMIT: its sends get 429)" if r["tokensLeft"] < 1 else "")
        for r in limited
    ]
    return lines


def _rate_text(rate: float) -> str:
    """As the limits are written (api/limits.py): 100/s, 30/min, 1/h."""
    if rate >= 1:
        return f"{round(rate, 6):g}/s"
    if rate * 60 >= 1:
        return f"{round(rate * 60, 6):g}/min"
    return f"{round(rate * 3600, 6):g}/h"


def _mb(n: int) -> str:
    return f"{n / 1_048_576:.1f} MB"


def _worker_line(w: dict[str, Any]) -> str:
    doing = f"running {w['currentJob']}" if w["currentJob"] else w["state"]
    return (
        f"  {w['hostname']} pid {w['pid']}: {doing}; {w['jobsDone']} jobs done, "
        f"{w['jobsFailed']} failed; heartbeat {w['heartbeatAgeSeconds']}s ago"
    )


def watch(services: Any, interval: float, as_json: bool) -> int:
    """Redraw every `interval` seconds until Ctrl-C (JSON: one object per line)."""
    try:
        while True:
            data = collect(services.engine, services.queue)
            if as_json:
                print(json.dumps(data), flush=True)
            else:
                clear = "\033[H\033[2J" if sys.stdout.isatty() else ""
                print(clear + describe_stats(data), flush=True)
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
