"""(e) POST /v1/events/batch: accepted events/s with 500-event batches (closed loop, no
worker), and stored events/s sustained with a flat backlog under paced batch rates (API and
BATCH_WORKERS worker processes, everything on the same CPUs)."""

from __future__ import annotations

import dataclasses
import time

from bench.load import Scripts, WrkResult, run_wrk
from bench.measure import (
    ACCEPT_SECONDS,
    DRAIN_WAIT_S,
    DRAINED_BELOW,
    WARMUP_SECONDS,
    Step,
    print_step,
)
from bench.procs import settle
from bench.systems import api, workers
from bench.world import SEED, World

ITEMS = 500
BATCH_PATH = "/v1/events/batch"
BATCH_CONNECTIONS = 16
BATCH_RATES = (20, 30, 40, 50, 60, 80, 100)  # batches/s offered: x500 events/s
BATCH_WORKERS = 2


class BatchScripts(Scripts):
    """The wrk scripts posting one batch of ITEMS seed events to BATCH_PATH."""

    def __init__(self, key: str) -> None:
        super().__init__({"events": [SEED] * ITEMS}, key)
        self._request += f'wrk.path = "{BATCH_PATH}"\n'
        self.closed = self._write("batch-closed.lua", self._request)


def in_events(load: WrkResult) -> WrkResult:
    """wrk counts requests; a batch request carries ITEMS events (latency stays per batch)."""
    return dataclasses.replace(load, requests=load.requests * ITEMS, non_2xx=load.non_2xx * ITEMS)


def measure_batch_accept(world: World, scripts: BatchScripts) -> WrkResult:
    world.flush()
    with api(world, "eventpipe") as url:
        run_wrk(url, scripts.closed, BATCH_CONNECTIONS, WARMUP_SECONDS)
        result = run_wrk(url, scripts.closed, BATCH_CONNECTIONS, ACCEPT_SECONDS)
    world.check_alone("batch accept path")
    world.flush()
    return in_events(result)


def measure_batch_sustained(world: World, scripts: BatchScripts) -> list[Step]:
    """Up the batch-rate ladder while the backlog stays flat; stop at the first step where
    it grows."""
    world.reset()
    steps: list[Step] = []
    with api(world, "eventpipe") as url, workers(world, "eventpipe", BATCH_WORKERS):
        run_wrk(url, scripts.paced(BATCH_RATES[0]), BATCH_CONNECTIONS, WARMUP_SECONDS)
        for rate in BATCH_RATES:
            if not settle(lambda: world.pending() < DRAINED_BELOW, DRAIN_WAIT_S):
                print(f"  backlog still {world.pending()} after {DRAIN_WAIT_S:.0f}s; stepping on")
            steps.append(batch_step(world, url, scripts, rate))
            print_step("eventpipe", steps[-1])
            if not steps[-1].flat:
                break
    world.check_alone("batch sustained rate")
    return steps


def batch_step(world: World, url: str, scripts: BatchScripts, rate: int) -> Step:
    backlog_start, stored_start, start = world.pending(), world.stored(), time.monotonic()
    load = run_wrk(url, scripts.paced(rate), BATCH_CONNECTIONS, 8)
    backlog_end, stored_end, end = world.pending(), world.stored(), time.monotonic()
    return Step(
        offered_per_s=rate * ITEMS,
        seconds=end - start,
        load=in_events(load),
        stored_per_s=(stored_end - stored_start) / (end - start),
        backlog_start=backlog_start,
        backlog_end=backlog_end,
    )
