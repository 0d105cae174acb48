"""Failover with nothing lost: REDIS_DURABILITY=replicated against a primary, two replicas and
three Sentinels (quorum 2), real processes on free loopback ports, under a load of sends and
batches; the primary is SIGKILLed.

Checked: every 202 is stored exactly once after the failover; while no primary is elected,
sends answer 503 (never 202, never a hang); the same API and worker processes carry on by
themselves. The window of 503s and the accepted events/s a second before and after are
printed (`pytest -s`) for the record.
"""

from __future__ import annotations

import functools
import json
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import redis
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from shared.db import transaction
from shared.models import events
from shared.queue import PENDING_KEY, connect_redis
from shared.settings import Settings
from tests.integration.conftest import service_env
from tests.integration.services import (
    Answer,
    Load,
    Proc,
    RedisServer,
    free_port,
    port_open,
    run_cli,
    send_event,
    start_api,
    start_worker,
    wait_until,
)
from tests.integration.test_durability import _refused_start
from tests.integration.test_guarantees import _project
from tests.integration.test_pipeline import SEED, auth

MASTER = "mymaster"
SEND_THREADS = 6
BATCH_THREADS = 2
BATCH_SIZE = 20
# A request slower than this is a hang, not an answer.
ANSWER_SECONDS = 8.0
PRIMARY = {"repl-diskless-sync": "yes", "repl-diskless-sync-delay": "0"}


class Sentinels:
    """Three Sentinels watching `primary_port` (quorum 2), each config in a writable temp
    dir (Sentinel rewrites it), preseeded with each other and the replicas so that they agree
    at once instead of after their discovery rounds."""

    def __init__(self, primary_port: int, replica_ports: list[int]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="eventpipe-sentinel-"))
        self.ports = [free_port() for _ in range(3)]
        ids = [f"{i + 1:040x}" for i in range(3)]
        self.procs: list[subprocess.Popen[bytes]] = []
        for i, port in enumerate(self.ports):
            lines = [
                f"port {port}",
                "bind 127.0.0.1",
                f'dir "{self.dir}"',
                f"sentinel myid {ids[i]}",
                f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2",
                f"sentinel down-after-milliseconds {MASTER} 1000",
                f"sentinel failover-timeout {MASTER} 4000",
                f"sentinel parallel-syncs {MASTER} 2",
            ]
            lines += [f"sentinel known-replica {MASTER} 127.0.0.1 {p}" for p in replica_ports]
            lines += [
                f"sentinel known-sentinel {MASTER} 127.0.0.1 {other} {ids[j]}"
                for j, other in enumerate(self.ports)
                if j != i
            ]
            conf = self.dir / f"sentinel-{port}.conf"
            conf.write_text("\n".join(lines) + "\n")
            self.procs.append(
                subprocess.Popen(
                    ["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL
                )
            )
        for port in self.ports:
            wait_until(functools.partial(port_open, port), 10, "a sentinel")
        wait_until(self._agreed, 15, "the sentinels to know each other and both replicas")

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def _agreed(self) -> bool:
        for port in self.ports:
            with redis.Redis(port=port, decode_responses=True) as client:
                state = client.sentinel_master(MASTER)
                if state["num-other-sentinels"] < 2 or state["num-slaves"] < 2:
                    return False
        return True

    def primary_port(self) -> int:
        with redis.Redis(port=self.ports[0], decode_responses=True) as client:
            _host, port = client.sentinel_get_master_addr_by_name(MASTER)
        return int(port)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Group:
    primary: RedisServer
    replicas: list[RedisServer]
    sentinels: Sentinels


@pytest.fixture
def group() -> Iterator[Group]:
    primary = RedisServer(config=PRIMARY)
    replicas = [
        RedisServer(config=PRIMARY, extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
        for _ in range(2)
    ]
    sentinels = None
    try:
        # Before any load: WAIT counts only replicas online (a syncing one acknowledges
        # nothing, and every send would wait its timeout out).
        with redis.Redis(port=primary.port) as client:
            wait_until(lambda: _online(client) == 2, 15, "both replicas online")
        sentinels = Sentinels(primary.port, [r.port for r in replicas])
        yield Group(primary, replicas, sentinels)
    finally:
        if sentinels is not None:
            sentinels.close()
        for server in (primary, *replicas):
            server.close()


def _online(client: redis.Redis) -> int:
    info = client.info("replication")
    return sum(
        1
        for name, value in info.items()
        if name.startswith("slave") and isinstance(value, dict) and value["state"] == "online"
    )


def _batch(http: httpx.Client) -> tuple[httpx.Response, list[str]]:
    """POST /v1/events/batch of BATCH_SIZE events; the ids of a 202 (all accepted)."""
    items = [{**SEED, "eventProperties": {"order_total": i}} for i in range(BATCH_SIZE)]
    r = http.post("/v1/events/batch", json={"events": items})
    if r.status_code != 202:
        return r, []
    receipts = r.json()["data"]["receipts"]
    assert all(x["status"] == "accepted" for x in receipts), receipts
    return r, [x["id"] for x in receipts]


def _load(base: str, key: str) -> Load:
    """Threads sending single events and batches; every answer, timed. A thread pauses after
    a 503, as a client honouring Retry-After would, only sooner."""
    requests = [send_event(SEED)] * SEND_THREADS + [_batch] * BATCH_THREADS
    return Load(
        base,
        auth(key),
        requests,
        timeout=ANSWER_SECONDS,
        pause_after=lambda status: status == 503,
    )


class Promotion:
    """When the first Sentinel announces a promoted replica (or the switch): before that,
    no primary can take a write, since clients are pointed at the new one only from then."""

    CHANNELS = ("+promoted-slave", "+switch-master")

    def __init__(self, ports: list[int]) -> None:
        self.at: float | None = None
        self._clients = [redis.Redis(port=port) for port in ports]
        self._pubsubs = [client.pubsub() for client in self._clients]  # type: ignore[no-untyped-call]
        self._threads = []
        for pubsub in self._pubsubs:
            pubsub.subscribe(**dict.fromkeys(self.CHANNELS, self._seen))
            self._threads.append(pubsub.run_in_thread(sleep_time=0.01, daemon=True))

    def _seen(self, _message: Any) -> None:
        seen = time.monotonic()
        if self.at is None or seen < self.at:
            self.at = seen

    def close(self) -> None:
        for thread in self._threads:
            thread.stop()
            thread.join(5)
        for pubsub, client in zip(self._pubsubs, self._clients, strict=True):
            pubsub.close()
            client.close()


def _stored_counts(engine: Engine, ids: set[str]) -> dict[str, int]:
    with transaction(engine) as conn:
        rows = conn.execute(
            select(events.c.id, func.count()).where(events.c.id.in_(ids)).group_by(events.c.id)
        ).all()
    return {row[0]: int(row[1]) for row in rows}


@pytest.mark.parametrize("fault", ["kill", "freeze"])
def test_a_primary_lost_under_load_loses_nothing_and_nothing_restarts(
    fault: str, group: Group, database_url: str, engine: Engine, procs_cleanup: list[Proc]
) -> None:
    """`kill`: SIGKILL, the connections to it break at once. `freeze`: SIGSTOP, its machine
    hung or cut off: connections stay open and nothing answers, so every client must give up
    by its own timeouts (REDIS_TIMEOUT_SECONDS for the API; the worker's blocking dequeue)."""
    env = service_env(
        database_url,
        # Unused: with REDIS_SENTINELS set, the Sentinels name the primary (nothing listens
        # on port 1, so a process that read this address would fail the test).
        "redis://127.0.0.1:1/0",
        REDIS_SENTINELS=group.sentinels.addresses,
        REDIS_SENTINEL_MASTER=MASTER,
        REDIS_DURABILITY="replicated",
        REDIS_REPLICA_TIMEOUT_MS="500",
        REDIS_TIMEOUT_SECONDS="2",
        WORKER_HEARTBEAT_SECONDS="3",
        WORKER_MAINTENANCE_SECONDS="2",
    )
    api, base = start_api(env)
    procs_cleanup.append(api)
    key = _project(env, base)
    worker = start_worker(env)  # one process, no supervisor: it must carry on by itself
    procs_cleanup.append(worker)
    promotion = Promotion(group.sentinels.ports)
    try:
        with _load(base, key) as load:
            wait_until(lambda: load.accepted() >= 500, 30, "sends before the kill")
            killed_at = time.monotonic()
            if fault == "kill":
                group.primary.stop()
            else:
                assert group.primary.proc is not None
                group.primary.proc.send_signal(signal.SIGSTOP)  # SIGKILLed at cleanup
            wait_until(lambda: promotion.at is not None, 30, "a replica promoted")
            wait_until(lambda: load.accepted(since=killed_at) >= 500, 30, "sends after it")
    finally:
        promotion.close()
    promoted_at = promotion.at
    assert promoted_at is not None
    answers = sorted(load.answers, key=lambda a: a.at)

    # Only 202 and 503, each within ANSWER_SECONDS (a timeout is status 0): never a hang,
    # never an error of another kind.
    assert {a.status for a in answers} <= {202, 503}, sorted({a.status for a in answers})
    # No primary from the kill to the promotion: every request sent and answered in between
    # was a 503. (One sent before the kill may get a 202 later: a replica had it already.)
    blind = [a for a in answers if a.started > killed_at and a.at < promoted_at]
    assert all(a.status == 503 for a in blind), [a.status for a in blind]
    # (A frozen primary holds each request for the read timeout, so few or none fit.)
    assert blind or fault == "freeze"

    accepted = {i for a in answers if a.status == 202 for i in a.ids}
    stored: dict[str, int] = {}

    def all_stored() -> bool:
        stored.update(_stored_counts(engine, accepted - set(stored)))
        return len(stored) == len(accepted)

    # Seconds, as a rule; up to RQ's 1-minute cleanup of its intermediate queue if the kill
    # fell between a dequeue reaching the replica and its reply reaching the worker.
    wait_until(all_stored, 90, "every acknowledged event stored", step=0.3)
    assert set(stored.values()) == {1}, "an event stored twice"

    # The same processes carry on: the API answers, the worker drained the queue on the new
    # primary (nothing left pending), neither restarted nor exited.
    settings = Settings(redis_sentinels=group.sentinels.addresses, redis_sentinel_master=MASTER)
    primary = connect_redis(settings)
    try:
        assert group.sentinels.primary_port() != group.primary.port
        wait_until(lambda: primary.hlen(PENDING_KEY) == 0, 20, "the pending marks to clear")
    finally:
        primary.close()
    assert api.proc.poll() is None and worker.proc.poll() is None
    assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
    # The command line finds the new primary too (REDIS_URL's address is a dead end).
    stats = json.loads(run_cli(env, "stats", "--json"))
    assert stats["queue"]["events"] == 0 and stats["totals"]["stored"] > 0, stats
    _report(fault, answers, killed_at, promoted_at, len(accepted))


def _report(
    fault: str, answers: list[Answer], killed_at: float, promoted_at: float, accepted: int
) -> None:
    """The figures of the closing note, printed (`pytest -s` shows them)."""
    refused = [a for a in answers if a.status == 503 and a.at > killed_at]
    first_503 = min(a.at for a in refused)
    back = min(a.at for a in answers if a.status == 202 and a.at > promoted_at)
    last_503 = max((a.at for a in refused if a.at < back + 1), default=back)

    def rate(start: float, end: float) -> float:
        n = sum(len(a.ids) for a in answers if a.status == 202 and start <= a.at < end)
        return n / (end - start)

    print(
        f"\nfailover ({fault}): {accepted} events acknowledged, all stored once;"
        f" promotion {promoted_at - killed_at:.2f} s after the kill;"
        f" 503s from +{first_503 - killed_at:.2f} s to +{last_503 - killed_at:.2f} s"
        f" ({len(refused)} answers), first 202 again at +{back - killed_at:.2f} s;"
        f" accepted events/s: {rate(killed_at - 1, killed_at):.0f} in the second before the kill,"
        f" {rate(back, back + 1):.0f} in the second after the first 202 again;"
        f" slowest answer {max(a.at - a.started for a in answers):.2f} s"
    )


def test_replicated_mode_refuses_to_start_without_a_replica(database_url: str) -> None:
    server = RedisServer()
    try:
        env = service_env(database_url, server.url, REDIS_DURABILITY="replicated")
        output = _refused_start(env)
    finally:
        server.close()
    assert "REDIS_DURABILITY=replicated refused" in output
    assert "has no replica online (connected_slaves: 0)" in output
