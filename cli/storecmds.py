"""The store's upkeep commands: `eventpipe db maintain`, `eventpipe db partition --online` and
`eventpipe retention`. The work is in shared.partitions (which the workers run too) and
ops.partition_move."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from shared.clock import parse_age
from shared.db import make_engine
from shared.errors import EventpipeError
from shared.partitions import apply_retention, ensure_ahead, is_partitioned
from shared.settings import Settings


def add_db_commands(db: Any) -> None:
    maintain = db.add_parser(
        "maintain",
        help="make the coming time partitions of events and apply EVENTS_RETENTION and "
        "FAILED_EVENTS_RETENTION (what workers do by themselves, hourly and daily)",
    )
    maintain.set_defaults(handler=db_maintain)
    partition = db.add_parser(
        "partition", help="move an existing events table to time partitions, online"
    )
    partition.add_argument(
        "--online",
        action="store_true",
        required=True,
        help="attach the table as the first partition while the API and workers run "
        "(every process must run this release first)",
    )
    partition.set_defaults(handler=db_partition)


def add_commands(sub: Any) -> None:
    retention = sub.add_parser(
        "retention", help="drop stored events (whole partitions) and failed events by age"
    )
    retention.add_argument("--older-than", type=_age, help="events accepted before, e.g. 13mo")
    retention.add_argument(
        "--failed-older-than", type=_age, help="failed events that failed before, e.g. 90d"
    )
    retention.add_argument("--dry-run", action="store_true", help="say what would go")
    retention.add_argument("--json", action="store_true")
    retention.set_defaults(handler=retention_cmd)


def _age(text: str) -> str:
    try:
        parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def db_maintain(args: argparse.Namespace, settings: Settings) -> int:
    engine = make_engine(settings)
    try:
        with engine.connect() as conn:
            partitioned = is_partitioned(conn)
        if not partitioned:
            print(
                "events is not partitioned (SQLite, or an install not moved yet: "
                "`eventpipe db partition --online`)"
            )
        else:
            created = ensure_ahead(engine, settings)
            print(
                f"partitions created: {', '.join(created)}" if created else "partitions: up to date"
            )
        if settings.events_retention or settings.failed_events_retention:
            removed = apply_retention(
                engine, settings.events_retention, settings.failed_events_retention
            )
            for line in removed.lines():
                print(f"retention: {line}")
    finally:
        engine.dispose()
    return 0


def db_partition(args: argparse.Namespace, settings: Settings) -> int:
    from ops.partition_move import move_online

    engine = make_engine(settings)
    try:
        move_online(engine, settings, say=lambda line: print(line, flush=True))
    finally:
        engine.dispose()
    return 0


def retention_cmd(args: argparse.Namespace, settings: Settings) -> int:
    if not args.older_than and not args.failed_older_than:
        raise EventpipeError("say what to remove: --older-than AGE and/or --failed-older-than AGE")
    engine = make_engine(settings)
    try:
        removed = apply_retention(
            engine, args.older_than or "", args.failed_older_than or "", dry_run=args.dry_run
        )
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(removed.as_json()))
    else:
        print("\n".join(removed.lines()), file=sys.stdout)
    return 0
