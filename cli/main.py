"""The `eventpipe` command: migrations, projects and keys, the operator tools, and the API
and worker processes.

The top of the import graph. The API and the worker are imported only by their own
subcommands, so that `eventpipe worker` never loads Starlette and `eventpipe serve` never
loads the worker."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from api import limits as limits_mod
from api import store
from cli import operations as opscli
from cli import storecmds
from shared.db import make_engine, transaction
from shared.errors import EventpipeError
from shared.logs import configure_logging
from shared.settings import Settings, get_settings


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        result: int = args.handler(args, settings)
        return result
    except EventpipeError as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        print(f"error: {exc.message}{cause}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eventpipe", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    db = sub.add_parser("db", help="database migrations").add_subparsers(required=True)
    db.add_parser("upgrade", help="migrate to the newest schema").set_defaults(handler=db_upgrade)
    revision = db.add_parser(
        "revision", help="maintainers: write the next migration (from a checkout)"
    )
    revision.add_argument("-m", "--message", required=True, help="what the migration does")
    revision.add_argument(
        "--empty",
        action="store_true",
        help="an empty script to fill in, instead of the difference between "
        "shared/models.py and the database at DATABASE_URL (migrated to head)",
    )
    revision.set_defaults(handler=db_revision)
    storecmds.add_db_commands(db)

    projects = sub.add_parser("projects", help="projects").add_subparsers(required=True)
    create = projects.add_parser("create", help="create a project and its first key")
    create.add_argument("name")
    _json_flag(create).set_defaults(handler=projects_create)
    _json_flag(projects.add_parser("list", help="list projects")).set_defaults(
        handler=projects_list
    )

    limits = projects.add_parser(
        "limits",
        help="show or set a project's rate limit and backlog share (every API within a second)",
    )
    limits.add_argument("project")
    limits.add_argument(
        "--rate", metavar="N/s", help="requests a second (100/s, 6000/min, 5000/h), or off"
    )
    limits.add_argument(
        "--burst", metavar="N", help="requests at once (default: one second of the rate), or off"
    )
    limits.add_argument(
        "--backlog-share",
        metavar="F",
        help="fraction of MAX_QUEUED_EVENTS the project may have queued, or default",
    )
    _json_flag(limits).set_defaults(handler=projects_limits)

    keys = sub.add_parser("keys", help="project API keys").add_subparsers(required=True)
    kcreate = keys.add_parser("create", help="create a key (shown once)")
    kcreate.add_argument("--project", required=True)
    _json_flag(kcreate).set_defaults(handler=keys_create)
    klist = keys.add_parser("list", help="list a project's keys")
    klist.add_argument("--project", required=True)
    _json_flag(klist).set_defaults(handler=keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key (401 within a second)")
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=keys_revoke)

    serve = sub.add_parser("serve", help="run the HTTP API (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.add_argument("--access-log", action="store_true")
    serve.set_defaults(handler=serve_api)

    run = sub.add_parser("run", help="migrate, then run the API and the workers together")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--processes", type=int, default=1, help="worker processes (0: none)")
    run.add_argument(
        "--no-dev-project", action="store_true", help="do not create or print the dev project"
    )
    run.set_defaults(handler=run_all)

    worker = sub.add_parser("worker", help="run RQ worker processes")
    worker.add_argument("--processes", type=int, default=1)
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.add_argument(
        "--metrics-port", type=int, default=None, help="serve the workers' Prometheus metrics"
    )
    worker.set_defaults(handler=run_worker)
    opscli.add_commands(sub)
    storecmds.add_commands(sub)
    return parser


def _json_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _print(args: argparse.Namespace, data: Any, text: Callable[[Any], str]) -> int:
    print(json.dumps(data, default=str) if args.json else text(data))
    return 0


def db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from cli.migrate import upgrade

    upgrade(settings.database_url)
    return 0


def db_revision(args: argparse.Namespace, settings: Settings) -> int:
    from cli.migrate import revision

    path = revision(settings.database_url, args.message, autogenerate=not args.empty)
    print(f"wrote {path}: review it, then `make test`")
    return 0


def _in_transaction(settings: Settings, fn: Callable[..., Any]) -> Any:
    engine = make_engine(settings)
    try:
        with transaction(engine) as conn:
            return fn(conn=conn)
    finally:
        engine.dispose()


def _announce(settings: Settings) -> None:
    """Make running API processes reload keys now rather than at their periodic reload."""
    from redis.exceptions import RedisError

    from shared.queue import bump_config_version, connect_redis

    try:
        bump_config_version(connect_redis(settings))
    except RedisError:
        print(
            "warning: Redis unreachable; API processes pick the change up within "
            f"{settings.config_reload_seconds:.0f}s",
            file=sys.stderr,
        )


def projects_create(args: argparse.Namespace, settings: Settings) -> int:
    project_id, key = _in_transaction(
        settings, lambda conn: store.create_project(args.name, conn=conn)
    )
    _announce(settings)
    data = {"projectId": project_id, "apiKey": key.api_key, "keyId": key.key_id}
    return _print(
        args,
        data,
        lambda d: (
            f"project {d['projectId']}\napi key {d['apiKey']}\n(the key is shown only now: keep it)"
        ),
    )


def projects_list(args: argparse.Namespace, settings: Settings) -> int:
    rows = _in_transaction(settings, store.list_projects)
    return _print(args, rows, lambda rs: "\n".join(f"{r['id']}  {r['name']}" for r in rs))


def projects_limits(args: argparse.Namespace, settings: Settings) -> int:
    def change(conn: Any) -> tuple[limits_mod.ProjectLimits, bool]:
        found = limits_mod.get_limits(args.project, conn=conn)
        wanted = _changed_limits(found, args)
        if wanted != found:
            limits_mod.set_limits(args.project, wanted, conn=conn)
        return wanted, wanted != found

    limits, changed = _in_transaction(settings, change)
    if changed:
        _announce(settings)
    data = limits_mod.limits_view(
        args.project, limits, settings.max_queued_events, settings.project_backlog_share
    )
    return _print(args, data, _describe_limits)


def _changed_limits(
    found: limits_mod.ProjectLimits, args: argparse.Namespace
) -> limits_mod.ProjectLimits:
    """The limits with the flags given applied; `off` or `default` puts one back."""
    rate, burst, share = found.rate, found.burst, found.backlog_share
    if args.rate is not None:
        rate = None if args.rate == "off" else limits_mod.parse_rate(args.rate)
        burst = None if rate is None else burst
    if args.burst is not None:
        burst = None if args.burst == "off" else _integer(args.burst, "--burst")
        if burst is not None and rate is None:
            raise EventpipeError("--burst needs a rate (--rate 100/s)")
        burst = burst if burst is None else limits_mod.check_burst(burst)
    if args.backlog_share is not None:
        default = args.backlog_share == "default"
        share = None if default else limits_mod.check_share(_number(args.backlog_share))
    return limits_mod.ProjectLimits(rate, burst, share)


def _integer(text: str, flag: str) -> int:
    if not text.isdigit() or len(text) > 12:
        raise EventpipeError(f"{flag} must be a whole number, or off")
    return int(text)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise EventpipeError(f"{text[:40]!r} is not a number") from exc


def _describe_limits(d: dict[str, Any]) -> str:
    rate = f"{d['rate']}, burst {d['burst']}" if d["rate"] else "no rate limit"
    default = " (the default)" if d["backlogShareIsDefault"] else ""
    return (
        f"project {d['projectId']}: {rate}; backlog share {d['backlogShare']:g}{default},"
        f" {d['backlogLimit']} events"
    )


def keys_create(args: argparse.Namespace, settings: Settings) -> int:
    key = _in_transaction(settings, lambda conn: store.create_key(args.project, conn=conn))
    _announce(settings)
    data = {"projectId": args.project, "keyId": key.key_id, "apiKey": key.api_key}
    return _print(args, data, lambda d: f"key {d['keyId']}\napi key {d['apiKey']}")


def keys_list(args: argparse.Namespace, settings: Settings) -> int:
    rows = _in_transaction(settings, lambda conn: store.list_keys(args.project, conn=conn))
    return _print(
        args,
        rows,
        lambda rs: "\n".join(
            f"{r['id']}  created {r['createdAt']}  "
            + (f"revoked {r['revokedAt']}" if r["revokedAt"] else "active")
            for r in rs
        ),
    )


def keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    _in_transaction(settings, lambda conn: store.revoke_key(args.key_id, conn=conn))
    _announce(settings)
    print(f"revoked {args.key_id}")
    return 0


def serve_api(args: argparse.Namespace, settings: Settings) -> int:
    import shutil

    from shared.metrics import use_directory

    check_redis(settings)
    if settings.redis_durability != "aof":
        # Here, not only in each worker's lifespan: uvicorn with --workers > 1 exits 0 when
        # its workers fail to start, and a supervisor would take that for a clean stop.
        _check_durability(settings)
    # Before uvicorn starts its workers: they inherit the metrics directory's setting.
    metrics_dir, temporary = use_directory(settings, "api")
    try:
        _run_uvicorn(args, settings)
    finally:
        if temporary:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def check_redis(settings: Settings) -> None:
    """Before any process starts (uvicorn with --workers > 1 exits 0 when its workers fail):
    refuse a Redis that may evict queued events (EventpipeError, exit 1); warn of one
    without AOF."""
    from shared.queue import check_redis_keeps

    for warning in check_redis_keeps(settings):
        print(f"warning: {warning}", file=sys.stderr)


def _check_durability(settings: Settings) -> None:
    """Raises EventpipeError (exit 1 with its message) when the server cannot confirm what
    REDIS_DURABILITY asks (an fsync, a replica)."""
    import asyncio

    from shared.queue import check_durability_support, connect_async

    async def check() -> None:
        client = connect_async(settings)
        try:
            await check_durability_support(settings, client)
        finally:
            await client.aclose()

    asyncio.run(check())


def _run_uvicorn(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    from cli.httpserver import PROTOCOL

    uvicorn.run(
        "api.app:create_app",
        factory=True,
        http=PROTOCOL,  # httptools, with limits on the request line and headers
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=args.access_log,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=30,
        # JSON logs: uvicorn's loggers go through the root handler (shared.logs), not its own.
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
    )


def run_all(args: argparse.Namespace, settings: Settings) -> int:
    from cli.devrun import run_pipeline

    return run_pipeline(settings, args.host, args.port, args.processes, dev=not args.no_dev_project)


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker.runner import run_workers

    check_redis(settings)
    return run_workers(args.processes, burst=args.burst, metrics_port=args.metrics_port)


if __name__ == "__main__":
    sys.exit(main())
