"""The operators' commands: `eventpipe failed list|show|purge`, `replay` and `stats`.

cli.main only wires them in (`add_commands`); the work is in ops.failed, ops.replay
and ops.stats, which the admin API calls too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import Engine

from ops import failed as failed_mod
from shared.db import make_engine, transaction
from shared.errors import EventpipeError
from shared.queue import JobQueue, connect_redis, make_queue
from shared.settings import Settings


@dataclass(frozen=True)
class Services:
    engine: Engine
    redis: redis.Redis
    queue: JobQueue


@contextmanager
def services(settings: Settings) -> Iterator[Services]:
    engine = make_engine(settings)
    connection = connect_redis(settings)
    try:
        yield Services(engine, connection, make_queue(settings, connection))
    finally:
        connection.close()
        engine.dispose()


def add_commands(sub: Any) -> None:
    failed = sub.add_parser("failed", help="failed events kept for replay").add_subparsers(
        required=True
    )
    flist = failed.add_parser("list", help="one line per failed event, newest accepted first")
    _filters(flist)
    flist.add_argument("--limit", type=_positive, default=100)
    flist.add_argument("--json", action="store_true", help="print one JSON array")
    flist.set_defaults(handler=failed_list)
    show = failed.add_parser("show", help="an event's payload and every failure")
    show.add_argument("event_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=failed_show)
    purge = failed.add_parser("purge", help="delete failed events (after a confirmation)")
    _filters(purge)
    purge.add_argument("--all", action="store_true", help="every failed event (no filter)")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.set_defaults(handler=failed_purge)

    replay = sub.add_parser("replay", help="requeue failed events (their cause fixed)")
    _filters(replay)
    replay.add_argument("--id", dest="ids", action="append", default=[], metavar="ID")
    replay.add_argument("--all", action="store_true", help="every failed event (no filter)")
    replay.add_argument("--limit", type=_positive, default=None, help="at most N events")
    replay.add_argument("--dry-run", action="store_true", help="say what would be requeued")
    replay.add_argument("--rate", type=_rate, default=None, metavar="N/s")
    replay.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="wait this long for the workers' outcome (0: do not wait)",
    )
    replay.add_argument("--json", action="store_true")
    replay.set_defaults(handler=replay_cmd)

    stats = sub.add_parser("stats", help="the pipeline at a glance")
    stats.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    stats.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(handler=stats_cmd)


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--code", help="error code, e.g. CONTACT_NOT_FOUND_FOR_EVENT")
    parser.add_argument("--event-name")
    parser.add_argument("--project", help="project id")
    parser.add_argument("--since", type=_time, help="last failed at or after (ISO time or 2h)")
    parser.add_argument("--until", type=_time, help="last failed before (ISO time or 30m)")


def _time(text: str) -> datetime:
    try:
        return failed_mod.parse_time(text)
    except EventpipeError as exc:
        raise argparse.ArgumentTypeError(exc.message) from exc


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _rate(text: str) -> float:
    number = text.strip().removesuffix("/s")
    try:
        value = float(number)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate: use 100/s") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError("a rate must be above 0")
    return value


def _filter_of(args: argparse.Namespace) -> failed_mod.FailedFilter:
    return failed_mod.FailedFilter(
        code=args.code,
        event_name=args.event_name,
        project_id=args.project,
        since=args.since,
        until=args.until,
        ids=failed_mod.check_ids(getattr(args, "ids", [])),
    )


def _require_scope(flt: failed_mod.FailedFilter, args: argparse.Namespace, verb: str) -> None:
    if flt.is_empty() and not args.all:
        raise EventpipeError(f"no filter given: pass --all to {verb} every failed event")


# --- failed ------------------------------------------------------------------------------


def failed_list(args: argparse.Namespace, settings: Settings) -> int:
    flt = _filter_of(args)
    engine = make_engine(settings)
    try:
        with transaction(engine) as conn:
            rows = failed_mod.list_failed(flt, args.limit, conn=conn)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        print(
            f"{r['id']}  {r['projectId']}  {r['eventName']}  {r['code']}  "
            f"attempts={r['attempts']}  {r['failedAt']}  {r['message']}"
        )
    return 0


def failed_show(args: argparse.Namespace, settings: Settings) -> int:
    engine = make_engine(settings)
    try:
        with transaction(engine) as conn:
            data = failed_mod.show_failed(args.event_id, conn=conn)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(data))
        return 0
    print(
        f"event {data['id']}  project {data['projectId']}  {data['eventName']}\n"
        f"accepted {data['createdAt']}, failed {data['attempts']} time(s), "
        f"last {data['failedAt']}: {data['code']}"
    )
    print("payload: " + json.dumps(data["payload"], indent=2))
    for n, attempt in enumerate(data["history"], 1):
        print(f"attempt {n}  {attempt['failedAt']}  {attempt['code']}: {attempt['message']}")
    return 0


def failed_purge(args: argparse.Namespace, settings: Settings) -> int:
    flt = _filter_of(args)
    _require_scope(flt, args, "purge")
    with services(settings) as s:
        with transaction(s.engine) as conn:
            matching = failed_mod.count_failed(flt, conn=conn)
        if matching == 0:
            print("no failed event matches")
            return 0
        if not args.yes and not _confirm(f"Purge {matching} failed event(s) for good?"):
            print("nothing purged", file=sys.stderr)
            return 1
        purged = failed_mod.purge_failed(flt, s.queue, s.engine)
    print(f"purged {purged}")
    return 0


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise EventpipeError("not a terminal: pass --yes to confirm")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


# --- replay ------------------------------------------------------------------------------


def replay_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from ops.replay import ProgressBar, Replayer, describe

    flt = _filter_of(args)
    _require_scope(flt, args, "replay")
    with services(settings) as s:
        replayer = Replayer(settings, s.engine, s.redis, s.queue)
        with transaction(s.engine) as conn:
            total = failed_mod.count_failed(flt, conn=conn)
        bar = ProgressBar(min(total, args.limit) if args.limit else total)
        summary = replayer.run(
            flt, limit=args.limit, dry_run=args.dry_run, rate=args.rate, progress=bar
        )
        bar.close()
        if not args.dry_run and not summary.interrupted and args.wait > 0:
            try:
                replayer.wait_for_outcomes(summary, args.wait)
            except KeyboardInterrupt:
                pass  # the requeue is done; only the report of outcomes is cut short
    print(json.dumps(summary.to_json()) if args.json else describe(summary))
    return 130 if summary.interrupted else 0


# --- stats -------------------------------------------------------------------------------


def stats_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from ops.stats import collect, describe_stats, watch

    with services(settings) as s:
        if args.watch:
            return watch(s, args.interval, args.json)
        data = collect(s.engine, s.queue)
    print(json.dumps(data) if args.json else describe_stats(data))
    return 0
