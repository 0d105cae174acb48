"""Worker processes: RQ SimpleWorkers that wait out a store outage and a Redis outage (a
failover included), under a small supervisor."""

from __future__ import annotations

import atexit
import functools
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

from redis.exceptions import RedisError
from rq import SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from shared.db import ping
from shared.errors import PartitionMissing, StoreUnavailable
from shared.logs import configure_logging
from shared.metrics import registry, use_directory
from shared.partitions import Upkeep
from shared.queue import (
    redis_outage,
    refuse_dequeued,
    release_claims,
    release_legacy_claims,
    renew_claims,
)
from shared.settings import get_settings
from worker import metrics
from worker.context import get_context
from worker.jobs import end_failed_job

log = logging.getLogger("eventpipe.worker")
T = TypeVar("T")
# How long a worker waiting for Redis sleeps between looks, at most: about a Sentinel
# failover's length, so that a worker is back within a second or two of the new primary.
REDIS_WAIT_CAP_SECONDS = 1.0


# How long a worker waits before it tries again a job whose time partition it could not make.
PARTITION_PAUSE = 2.0


class EventWorker(SimpleWorker):
    """A SimpleWorker (no fork per job, so the engine's pool survives between jobs) that turns
    a store outage into a pause instead of a failure: the job goes back to the front of the
    queue and the worker stops dequeuing until the store answers again.

    A Redis outage (`redis_outage`: unreachable, timing out, read-only after a failover, out
    of memory, no primary) is a pause too, never an exit: RQ's work loop quits on any error it
    did not expect, so each step of the loop waits Redis out here; a job it interrupts goes
    back to the front of the queue, spending none of its retries (the store ignores the
    events it already has)."""

    # The previous release's claimed lists are looked for at start and at each maintenance
    # pass until none is left (claims.release_legacy_claims).
    legacy_claims_left = True
    # RQ's dequeue waits out a lost connection itself, doubling its pause up to this (60 s by
    # default: a worker would sit idle for up to a minute after a 2 s failover).
    max_connection_wait_time = REDIS_WAIT_CAP_SECONDS
    # The time partitions made ahead, and retention applied, from a thread of their own.
    upkeep: threading.Thread | None = None

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # RQ's SimpleWorker keeps a job in the started registry for its timeout + 60 s and
        # never renews it: a killed worker's job waited ~2.5 min to be found abandoned. A
        # short entry, renewed while the job runs (_JobHeartbeat), is found within seconds.
        return get_context().settings.worker_heartbeat_seconds

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            # Before RQ's own path, which would import and call whatever the job names.
            if refuse_dequeued(get_context().queue, job.id):
                return
            super().execute_job(job, queue)
        except RedisError as exc:
            # Stopped before Redis came back: RQ's recovery brings the job back later.
            if not redis_outage(exc) or not self.wait_for_redis(exc):
                raise
            # Wherever the outage caught the job (dequeued, started, run, being finished),
            # once Redis takes writes again it goes back to the front of the queue, and the
            # group jobs it claimed go back too, all unspent.
            self._ride_out(lambda: self._give_back(job, queue))

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        # A job hash RQ cannot restore (a bogus status) raises inside RQ's dequeue, and its
        # work loop would quit: fail that job and go on. RQ names the job on the exception.
        # RQ's own loop waits out a lost connection, not a refusal (READONLY, OOM): here.
        while True:
            try:
                return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            except RedisError as exc:
                if not redis_outage(exc):
                    raise
                if not self.wait_for_redis(exc):
                    return None  # stopping: RQ's loop ends
            except Exception as exc:
                job_id = getattr(exc, "job_id", None)
                if not isinstance(job_id, str):
                    raise
                reason = f"unreadable job ({exc})"
                self._ride_out(
                    functools.partial(refuse_dequeued, get_context().queue, job_id, reason)
                )

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        # A worker started while Redis is away waits for it instead of exiting.
        self._ride_out(lambda: super(EventWorker, self).bootstrap(*args, **kwargs))

    def check_for_suspension(self, burst: bool) -> None:
        self._ride_out(lambda: super(EventWorker, self).check_for_suspension(burst))

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's heartbeat; on its own (not on a pipeline) an outage only skips it: the next
        one gets through, and RQ's loop would quit on the error."""
        try:
            super().heartbeat(timeout, pipeline)
        except RedisError as exc:
            if pipeline is not None or not redis_outage(exc):
                raise
            log.warning("worker heartbeat skipped: %s", exc)

    def set_state(self, state: str, pipeline: Any = None) -> None:
        # The state shown in RQ's tools: worth an outage's pause of no one.
        try:
            super().set_state(state, pipeline)
        except RedisError as exc:
            if pipeline is not None or not redis_outage(exc):
                raise  # (RQ set the state in memory before writing it)

    def teardown(self) -> None:
        try:
            super().teardown()  # type: ignore[no-untyped-call]
        except RedisError as exc:
            if not redis_outage(exc):
                raise
            log.warning("could not record this worker's end in Redis: %s", exc)

    def _ride_out(self, step: Callable[[], T]) -> T:
        """`step()`, waiting out each Redis outage it meets and trying again (the outage
        raised if a stop comes first)."""
        while True:
            try:
                return step()
            except RedisError as exc:
                if not redis_outage(exc) or not self.wait_for_redis(exc):
                    raise

    def wait_for_redis(self, exc: RedisError) -> bool:
        """Wait until Redis takes a write again (the worker's own heartbeat: a replica or a
        full Redis answers PING but refuses a write); False if a stop came first. Through
        Sentinel, each try asks for the primary anew."""
        log.warning("Redis unavailable (%s: %s); waiting for it", type(exc).__name__, exc)
        metrics.REDIS_WAITS.inc()
        started = time.monotonic()
        delay = 0.05
        back = False
        while not back and not self._stop_requested:
            time.sleep(delay)
            delay = min(delay * 2, REDIS_WAIT_CAP_SECONDS)
            try:
                super().heartbeat()
                back = True
            except RedisError as again:
                if not redis_outage(again):
                    raise
        waited = time.monotonic() - started
        metrics.REDIS_WAIT_SECONDS.inc(waited)
        if back:
            log.warning("Redis takes writes again after %.1f s; resuming", waited)
        return back

    def _execution(self) -> Execution | None:
        # The one in this process's hands, never RQ's fallback to Redis.
        return next(iter(self.executions.values()), None)

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        with _JobHeartbeat(self, job, execution, self.get_heartbeat_ttl(job)):
            return bool(super().perform_job(job, queue, execution))

    def run_maintenance_tasks(self) -> None:
        self._ride_out(self._maintain)

    def _maintain(self) -> None:
        super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
        if self.legacy_claims_left:
            self.legacy_claims_left = not release_legacy_claims(get_context().queue)
        if self.upkeep is None:
            self.upkeep = threading.Thread(target=_run_upkeep, name="upkeep", daemon=True)
            self.upkeep.start()

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        error = exc_info[1]
        if isinstance(error, StoreUnavailable):
            log.warning("store unavailable while running job %s; it is requeued", job.id)
            return
        if isinstance(error, RedisError) and redis_outage(error):
            log.warning(
                "Redis unavailable while running job %s (%s); it is requeued", job.id, error
            )
            return
        super().handle_exception(job, *exc_info)

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: StartedJobRegistry | None = None,
        exc_string: str = "",
        execution: Execution | None = None,
    ) -> None:
        self._release_claims()
        # Called from inside RQ's `except:` block, so the exception is still current.
        error = sys.exc_info()[1]
        if isinstance(error, StoreUnavailable):
            self._requeue(job, queue, execution)
            # A partition that could not be made: the store answers, and at once would spin.
            self.wait_for_store(PARTITION_PAUSE if isinstance(error, PartitionMissing) else 0)
            return
        if isinstance(error, RedisError) and redis_outage(error):
            # Redis answered RQ's failure path, so it is back: the job goes back unspent.
            self._ride_out(lambda: self._requeue(job, queue, execution))
            return
        final = not job.should_retry
        super().handle_job_failure(
            job,
            queue,
            started_job_registry=started_job_registry,
            exc_string=exc_string,
            execution=execution,
        )
        if final:
            self._end_events(job, type(error).__name__ if error else "unknown")

    def _end_events(self, job: Job, reason: str) -> None:
        try:
            end_failed_job(job.args[0] if job.args else None, job.id, reason)
        except Exception:  # RQ keeps the failed job, its events in it: nothing is lost
            log.exception("could not record the events of failed job %s", job.id)

    def _release_claims(self) -> None:
        """The failed job's claimed group jobs go back to the queue, unspent: they did not
        fail. With Redis away they stay claimed, and RQ's cleanup brings them back once their
        entries expire, as for a dead worker."""
        try:
            release_claims(get_context().queue, self.name)
        except RedisError as exc:
            log.warning("could not give claimed jobs back (%s); they come back on expiry", exc)

    def _give_back(self, job: Job, queue: Queue) -> None:
        release_claims(get_context().queue, self.name)
        self._requeue(job, queue, self._execution())

    def _requeue(self, job: Job, queue: Queue, execution: Execution | None) -> None:
        """The job back at the front of the queue, its retries unspent, out of RQ's started
        registry and intermediate queue (else RQ's cleanup would bring it back a second
        time)."""
        with self.connection.pipeline() as pipe:
            pipe.multi()  # RQ's enqueue_job wants MULTI before any command on the pipeline
            # RQ 3 cleans an execution only when it is passed (worker.execution is not read).
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            pipe.lrem(queue.intermediate_queue_key, 0, job.id)
            queue.enqueue_job(job, pipeline=pipe, at_front=True)
            pipe.execute()

    def wait_for_store(self, pause: float = 0) -> None:
        """Until the store answers and takes writes; at least `pause` seconds (a partition
        that could not be made: the store answers, and trying again at once would spin)."""
        engine = get_context().engine
        # Pooled sessions keep what they were given at connect: one opened while the database
        # was read-only stays read-only after it is writable again.
        engine.dispose()
        delay = 0.2
        started = time.monotonic()
        metrics.STORE_WAITS.inc()
        pause_until = started + pause
        while not self._stop_requested and (time.monotonic() < pause_until or not ping(engine)):
            self.heartbeat()
            engine.dispose()
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        metrics.STORE_WAIT_SECONDS.inc(time.monotonic() - started)
        log.info("store reachable, resuming")


def _run_upkeep() -> None:
    """Partitions ahead (hourly) and retention (daily), in a thread: RQ stops an idle worker by
    raising from its signal handler, which must not land inside a store call (it would leave
    the connection mid-command); signal handlers run only in the main thread."""
    ctx = get_context()
    upkeep = Upkeep(ctx.settings)
    while True:
        upkeep.run(ctx.engine)
        time.sleep(ctx.settings.worker_maintenance_seconds)


class _JobHeartbeat:
    """Renews the running job's started-registry entry, and those of the group jobs it
    claimed, every third of their TTL, from a thread (the job runs in this one), so that only
    a dead worker's jobs ever expire."""

    def __init__(self, worker: EventWorker, job: Job, execution: Execution, ttl: int) -> None:
        self._worker, self._job, self._execution, self._ttl = worker, job, execution, ttl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-heartbeat", daemon=True)

    def __enter__(self) -> None:
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        queue = get_context().queue
        while not self._stop.wait(self._ttl / 3):
            try:
                with self._worker.connection.pipeline() as pipe:
                    self._execution.heartbeat(self._job.started_job_registry, self._ttl, pipe)
                    renew_claims(queue, pipe, self._worker.name, self._ttl)
                    self._worker.heartbeat(self._ttl + 60, pipeline=pipe)
                    pipe.execute()
            except RedisError as exc:  # the next beat may get through; the job goes on
                log.warning("job heartbeat failed: %s", exc)


def run_worker(burst: bool = False) -> bool:
    ctx = get_context()
    settings = ctx.settings
    configure_logging(settings.log_level, settings.log_format)
    worker = _new_worker(
        lambda: EventWorker(
            [ctx.queue.rq],
            connection=ctx.redis,
            serializer=JSONSerializer,
            maintenance_interval=settings.worker_maintenance_seconds,
            # An idle worker blocks on the queue for worker_ttl - 15 s between maintenance runs
            # (RQ's rule): this keeps the abandoned-job check at the maintenance interval.
            worker_ttl=settings.worker_maintenance_seconds + 15,
        )
    )
    return bool(
        worker.work(
            burst=burst,
            max_jobs=settings.worker_max_jobs or None,
            logging_level=settings.log_level,
        )
    )


def _new_worker(make: Callable[[], EventWorker]) -> EventWorker:
    """RQ's worker names itself to Redis as it is made (CLIENT SETNAME): a worker started
    during a Redis outage waits for Redis here rather than exit."""
    delay, told = 0.05, False
    while True:
        try:
            return make()
        except RedisError as exc:
            if not redis_outage(exc):
                raise
            if not told:
                log.warning("Redis unavailable (%s); the worker starts once it answers", exc)
                told = True
        time.sleep(delay)
        delay = min(delay * 2, REDIS_WAIT_CAP_SECONDS)


def _child(burst: bool) -> None:
    # Out of the terminal's process group: Ctrl-C reaches the supervisor once, and it passes
    # the signal on once, instead of every worker seeing it twice (a cold shutdown).
    os.setpgrp()
    sys.exit(0 if run_worker(burst) else 1)


def run_workers(processes: int, burst: bool = False, metrics_port: int | None = None) -> int:
    """Run `processes` workers; one runs in this process, more (or one with a metrics port)
    under a supervisor."""
    if processes <= 1 and metrics_port is None:
        return 0 if run_worker(burst) else 1
    return Supervisor(max(processes, 1), burst, metrics_port).run()


# After a second SIGTERM/SIGINT, workers still running this long later are killed: RQ ignores
# a second signal that comes within a second of the first, and a worker blocked in a store
# call only sees a signal when the call returns.
COLD_STOP_GRACE = 1.5


class Supervisor:
    """Starts N worker processes and restarts one that exits while we run (crashed, or
    recycled after WORKER_MAX_JOBS jobs). The first SIGTERM or SIGINT is passed on (RQ's warm
    shutdown: stop after the current job); a second one is passed on too, and whatever still
    runs COLD_STOP_GRACE seconds later is killed. With a metrics port, it serves the metrics
    of all its workers (prometheus-client's multiprocess files)."""

    def __init__(self, processes: int, burst: bool, metrics_port: int | None = None) -> None:
        self.processes = processes
        self.burst = burst
        self.metrics_port = metrics_port
        self.stopping = False
        self.signals = 0
        self.kill_at: float | None = None
        self.ctx = multiprocessing.get_context("spawn")
        self.children: list[Any] = []

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        if self.metrics_port is not None:
            self._serve_metrics(self.metrics_port)
        self.children = [self._start() for _ in range(self.processes)]
        while self.children:
            time.sleep(0.2)
            self._reap()
            self._kill_if_overdue()
        return 0

    def _serve_metrics(self, port: int) -> None:
        # Before the first child starts: the children inherit the directory's setting.
        path, temporary = use_directory(get_settings(), "worker")
        if temporary:
            atexit.register(shutil.rmtree, path, True)
        from prometheus_client import start_http_server

        start_http_server(port, registry=registry())
        log.info("worker metrics on port %d", port)

    def _start(self) -> Any:
        proc = self.ctx.Process(target=_child, args=(self.burst,), daemon=False)
        proc.start()
        return proc

    def _reap(self) -> None:
        alive = []
        for proc in self.children:
            if proc.is_alive():
                alive.append(proc)
                continue
            if not self.stopping and not self.burst:
                level = logging.INFO if proc.exitcode == 0 else logging.WARNING
                log.log(
                    level, "worker %s exited with %s; starting another", proc.pid, proc.exitcode
                )
                alive.append(self._start())
        self.children = alive

    def _kill_if_overdue(self) -> None:
        if self.kill_at is None or time.monotonic() < self.kill_at:
            return
        for proc in self.children:
            if proc.is_alive():
                log.warning("worker %s still running after a second stop signal: killed", proc.pid)
                proc.kill()
        self.kill_at = None

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        self.signals += 1
        if self.signals >= 2 and self.kill_at is None:
            self.kill_at = time.monotonic() + COLD_STOP_GRACE
        for proc in self.children:
            if proc.is_alive() and proc.pid:
                try:
                    os.kill(proc.pid, signum)
                except ProcessLookupError:
                    pass
