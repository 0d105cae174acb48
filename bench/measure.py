"""The measurements: (a) the accept path, (b) stored events/s with a flat backlog, (c) Redis
bytes per queued event, (d) the drain rate of a 100k backlog."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bench.load import Scripts, WrkResult, run_wrk, run_wrk_until
from bench.naive import enqueue_backlog
from bench.procs import settle
from bench.systems import API_WORKERS, System, api, workers
from bench.world import SEED, World

ACCEPT_CONNECTIONS = 64
ACCEPT_SECONDS = 10
WARMUP_SECONDS = 2
# As many as the closed-loop run: paced, more connections add no load, but too few cap the
# rate at connections / latency once latency grows.
STEP_CONNECTIONS = int(os.environ.get("BENCH_STEP_CONNECTIONS", "64"))
STEP_SECONDS = 8
RATES: dict[System, tuple[int, ...]] = {
    "eventpipe": (1000, 2000, 4000, 6000, 8000, 10000, 12000),
    "naive": (200, 400, 800, 1200, 1600),
}
STEP_DOWNS = 4
FLAT_SHARE = 0.05
FLAT_EVENTS = 500
KEPT_UP_SHARE = 0.9
# Below this share of the offered rate accepted, the API (not the worker) is the limit.
SATURATED_SHARE = 0.8
DRAINED_BELOW = 50
DRAIN_WAIT_S = 60.0
MEMORY_EVENTS = 10_000
BACKLOG = 100_000
FILL_LIMIT_S = 180
BURST_LIMIT_S = 300.0
# Not 0.5 s: a 100k drain by eventpipe takes about 5 s, and 0.5 s would leave its middle 80%
# two or three samples wide. A count(*) of 100k rows costs PostgreSQL a few ms.
SAMPLE_S = 0.2
NAIVE_WINDOW_S = 20.0

Counter = Callable[[], int]


def backlog_counter(world: World, system: System) -> Counter:
    return world.pending if system == "eventpipe" else world.naive_backlog


def steady(count: Counter, timeout: float = 10.0) -> int:
    """The count once it stops moving (requests in flight when wrk stopped have landed)."""
    previous = count()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.3)
        current = count()
        if current == previous:
            break
        previous = current
    return previous


# --- (a) the accept path ------------------------------------------------------------------


def measure_accept(
    world: World, scripts: Scripts, system: System, processes: int = API_WORKERS
) -> WrkResult:
    """Closed loop, no worker running: what the API alone accepts."""
    return measure_accept_latency(world, scripts, system, processes, half_rate=False)[0]


def measure_accept_latency(
    world: World, scripts: Scripts, system: System, processes: int, half_rate: bool = True
) -> tuple[WrkResult, WrkResult | None]:
    """The closed-loop maximum (as measure_accept) and, with `half_rate`, the same API then
    paced at half that rate: its latency when it is not saturated (a closed loop's latency is
    mostly the queue in front of a saturated server)."""
    world.flush()
    half = None
    with api(world, system, processes) as url:
        run_wrk(url, scripts.closed, ACCEPT_CONNECTIONS, WARMUP_SECONDS)
        result = run_wrk(url, scripts.closed, ACCEPT_CONNECTIONS, ACCEPT_SECONDS)
        if half_rate and result.accepted_rate > 0:
            paced = scripts.paced(result.accepted_rate / 2)
            half = run_wrk(url, paced, ACCEPT_CONNECTIONS, ACCEPT_SECONDS)
    world.check_alone(f"accept path of {system}")
    world.flush()
    return result, half


# --- (b) stored events/s with a flat backlog ------------------------------------------------


@dataclass(frozen=True)
class Step:
    offered_per_s: float
    seconds: float
    load: WrkResult
    stored_per_s: float
    backlog_start: int
    backlog_end: int

    @property
    def p99_ms(self) -> float:
        return self.load.p99_ms

    @property
    def kept_up(self) -> bool:
        """Stored at least KEPT_UP_SHARE of what was accepted: the floor of FLAT_EVENTS lets a
        short step at a low rate pass for flat while its backlog still grows."""
        return self.stored_per_s >= KEPT_UP_SHARE * self.load.accepted_rate

    @property
    def api_saturated(self) -> bool:
        return self.load.accepted_rate < SATURATED_SHARE * self.offered_per_s

    @property
    def flat(self) -> bool:
        growth = self.backlog_end - self.backlog_start
        offered = self.offered_per_s * self.load.seconds
        return growth < FLAT_SHARE * offered or growth < FLAT_EVENTS

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            load=self.load.as_dict(),
            flat=self.flat,
            kept_up=self.kept_up,
            api_saturated=self.api_saturated,
        )
        return data


def run_step(world: World, url: str, scripts: Scripts, system: System, rate: int) -> Step:
    backlog = backlog_counter(world, system)
    backlog_start, stored_start, start = backlog(), world.stored(), time.monotonic()
    load = run_wrk(url, scripts.paced(rate), STEP_CONNECTIONS, STEP_SECONDS)
    backlog_end, stored_end, end = backlog(), world.stored(), time.monotonic()
    return Step(
        offered_per_s=rate,
        seconds=end - start,
        load=load,
        stored_per_s=(stored_end - stored_start) / (end - start),
        backlog_start=backlog_start,
        backlog_end=backlog_end,
    )


def next_rate(system: System, steps: list[Step]) -> int | None:
    """Up the ladder while the backlog stays flat; stop at the first step where it grows, or
    after two steps in a row where the API took less than SATURATED_SHARE of the offer (more
    offered would not be accepted). When the very first step already grows, halve the rate
    (at most STEP_DOWNS times) until a step is flat and kept up, so that there is a sustained
    figure at all."""
    last = steps[-1]
    if steps[0].flat:
        higher = [r for r in RATES[system] if r > last.offered_per_s]
        saturated = len(steps) >= 2 and all(s.api_saturated for s in steps[-2:])
        return higher[0] if last.flat and higher and not saturated else None
    if (last.flat and last.kept_up) or len(steps) > STEP_DOWNS:
        return None
    return int(last.offered_per_s) // 2


def measure_sustained(world: World, scripts: Scripts, system: System) -> list[Step]:
    """Offered-rate steps with the API and one worker process, until the backlog grows."""
    world.reset()
    backlog = backlog_counter(world, system)
    steps: list[Step] = []
    first = RATES[system][0]
    rate: int | None = first
    with api(world, system) as url, workers(world, system, 1):
        run_wrk(url, scripts.paced(first), STEP_CONNECTIONS, WARMUP_SECONDS)  # warm-up
        while rate is not None:
            if not settle(lambda: backlog() < DRAINED_BELOW, DRAIN_WAIT_S):
                print(f"  backlog still {backlog()} after {DRAIN_WAIT_S:.0f}s; stepping on")
            steps.append(run_step(world, url, scripts, system, rate))
            print_step(system, steps[-1])
            rate = next_rate(system, steps)
    world.check_alone(f"sustained rate of {system}")
    return steps


def print_step(system: System, step: Step) -> None:
    load = step.load
    print(
        f"  {system} offered {step.offered_per_s:>6.0f}/s: accepted {load.accepted_rate:>7.0f}/s"
        f" p99 {load.p99_ms:7.1f} ms, stored {step.stored_per_s:>7.0f}/s"
        f" ({step.stored_per_s / max(load.accepted_rate, 1):.0%} of accepted), backlog"
        f" {step.backlog_start} -> {step.backlog_end} ({'flat' if step.flat else 'GROWING'})"
        f", non-2xx {load.non_2xx}, socket errors {load.socket_errors}"
    )


def best_flat_step(steps: list[Step]) -> Step | None:
    flat = [s for s in steps if s.flat]
    return max(flat, key=lambda s: s.stored_per_s) if flat else None


def sustained_rate(steps: list[Step]) -> float | None:
    """The highest stored rate among the steps whose backlog stayed flat."""
    best = best_flat_step(steps)
    return best.stored_per_s if best else None


# --- (c) Redis bytes per queued event -------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    events: int
    bytes: int  # INFO used_memory, after - before
    keys_bytes: int  # MEMORY USAGE summed over the database's keys, after
    load: WrkResult

    @property
    def per_event(self) -> float:
        return self.bytes / self.events if self.events else float("nan")

    @property
    def keys_per_event(self) -> float:
        return self.keys_bytes / self.events if self.events else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "bytes": self.bytes,
            "per_event": self.per_event,
            "keys_bytes": self.keys_bytes,
            "keys_per_event": self.keys_per_event,
            "load": self.load.as_dict(),
        }


def measure_memory(world: World, scripts: Scripts, system: System) -> Memory:
    """used_memory before and after at least MEMORY_EVENTS events, no worker running."""
    world.flush()
    count = backlog_counter(world, system)
    with api(world, system) as url:
        before = world.used_memory()
        load = run_wrk_until(
            url,
            scripts.closed,
            ACCEPT_CONNECTIONS,
            FILL_LIMIT_S,
            lambda: count() >= MEMORY_EVENTS,
        )
        events = steady(count)
        after = world.used_memory()
        keys = world.keys_memory()
    world.check_alone(f"Redis memory of {system}", events, load.accepted)
    world.flush()
    return Memory(events, after - before, keys, load)


# --- (d) draining a 100k backlog ------------------------------------------------------------


@dataclass(frozen=True)
class Drain:
    processes: int
    events: int
    seconds: float
    middle_per_s: float | None
    first_row_s: float | None = None  # from the start to the first stored row: start-up

    @property
    def per_s(self) -> float:
        return self.events / self.seconds if self.seconds else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "per_s": self.per_s}


def crossing(samples: list[tuple[float, int]], target: float) -> float | None:
    """When the row count reached `target`, interpolated between two samples."""
    for (t0, n0), (t1, n1) in zip(samples, samples[1:], strict=False):
        if n0 < target <= n1:
            return t0 + (t1 - t0) * (target - n0) / (n1 - n0)
    return None


def middle_rate(samples: list[tuple[float, int]], total: int) -> float | None:
    """Events/s over the middle 80% (from 10% to 90% stored): no start-up, no tail."""
    start, end = crossing(samples, 0.1 * total), crossing(samples, 0.9 * total)
    if start is None or end is None or end <= start:
        return None
    return 0.8 * total / (end - start)


def fill_eventpipe(world: World, scripts: Scripts) -> int:
    """At least BACKLOG events accepted by eventpipe's API, no worker running."""
    with api(world, "eventpipe") as url:
        load = run_wrk_until(
            url,
            scripts.closed,
            ACCEPT_CONNECTIONS,
            FILL_LIMIT_S,
            lambda: world.pending() >= BACKLOG,
        )
        events = steady(world.pending)
    world.check_alone("100k fill of eventpipe", events, load.accepted)
    print(f"  filled {events} events in {load.seconds:.1f}s (non-2xx {load.non_2xx})")
    return events


def drain_eventpipe(world: World, scripts: Scripts, processes: int) -> Drain:
    """`eventpipe worker --processes N --burst`, timed from its start to its exit."""
    world.reset()
    events = fill_eventpipe(world, scripts)
    samples: list[tuple[float, int]] = [(0.0, 0)]
    start = time.monotonic()
    with workers(world, "eventpipe", processes, burst=True) as procs:
        while procs[0].alive() and time.monotonic() - start < BURST_LIMIT_S:
            time.sleep(SAMPLE_S)
            samples.append((time.monotonic() - start, world.stored()))
        seconds = time.monotonic() - start
    stored = world.stored()
    samples.append((seconds, stored))
    if stored != events:
        print(f"  stored {stored} rows of {events} events (backlog {world.pending()})")
    world.check_alone(f"eventpipe drain with {processes} process(es)")
    first_row = next((t for t, n in samples if n > 0), None)
    return Drain(processes, stored, seconds, middle_rate(samples, events), first_row)


def fill_naive(world: World) -> float:
    """Top the naive queue up to BACKLOG jobs; the jobs/s it took."""
    missing = BACKLOG - world.naive_backlog()
    start = time.monotonic()
    enqueue_backlog(world.redis, world.project_id, SEED, missing)
    return missing / (time.monotonic() - start)


def drain_naive(world: World, processes: int) -> Drain:
    """The naive workers over a fixed window: 100k jobs would take them minutes."""
    fill_naive(world)
    before = world.stored()
    with workers(world, "naive", processes):
        settle(lambda: world.stored() > before, 30, step=0.05)
        stored_start, start = world.stored(), time.monotonic()
        time.sleep(NAIVE_WINDOW_S)
        stored_end, end = world.stored(), time.monotonic()
    world.check_alone(f"naive drain with {processes} process(es)")
    return Drain(processes, stored_end - stored_start, end - start, None)


def print_drain(system: System, drain: Drain) -> None:
    middle = f", middle 80% {drain.middle_per_s:.0f}/s" if drain.middle_per_s else ""
    if drain.first_row_s is not None:
        middle += f", first row after {drain.first_row_s:.1f}s"
    print(
        f"  {system} drain, {drain.processes} process(es): {drain.events} events in"
        f" {drain.seconds:.1f}s = {drain.per_s:.0f}/s{middle}"
    )
