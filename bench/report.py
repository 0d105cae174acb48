"""The run's results: one markdown table, a plot and the raw figures as JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from bench.load import WrkResult
from bench.measure import (
    FLAT_EVENTS,
    Drain,
    Memory,
    Step,
    best_flat_step,
    sustained_rate,
)
from bench.systems import System

Cell = float | None
DRAIN_NOTE = "(eventpipe: start to exit; naive: a 20 s window)"


@dataclass
class Results:
    machine: dict[str, Any]
    accept: dict[System, WrkResult] = field(default_factory=dict)
    accept_one: dict[System, WrkResult] = field(default_factory=dict)  # 1 uvicorn worker
    half_rate: dict[System, WrkResult] = field(default_factory=dict)  # paced at accept / 2
    memory: dict[System, Memory] = field(default_factory=dict)
    sustained: dict[System, list[Step]] = field(default_factory=dict)
    drains: dict[System, list[Drain]] = field(default_factory=dict)
    naive_fill_per_s: float | None = None
    batch_accept: WrkResult | None = None
    batch_sustained: list[Step] = field(default_factory=list)
    interference: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "accept": {k: v.as_dict() for k, v in self.accept.items()},
            "accept_one": {k: v.as_dict() for k, v in self.accept_one.items()},
            "half_rate": {k: v.as_dict() for k, v in self.half_rate.items()},
            "memory": {k: v.as_dict() for k, v in self.memory.items()},
            "sustained": {k: [s.as_dict() for s in v] for k, v in self.sustained.items()},
            "sustained_per_s": {k: sustained_rate(v) for k, v in self.sustained.items()},
            "drains": {k: [d.as_dict() for d in v] for k, v in self.drains.items()},
            "naive_fill_per_s": self.naive_fill_per_s,
            "batch_accept": self.batch_accept.as_dict() if self.batch_accept else None,
            "batch_sustained": [s.as_dict() for s in self.batch_sustained],
            "batch_sustained_per_s": sustained_rate(self.batch_sustained),
            "interference": self.interference,
            "seconds": self.seconds,
        }


def fmt(value: Cell, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def ratio(a: Cell, b: Cell) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return ""
    return f"{a / b:.2f}x"


def row(
    label: str, ceiling: Cell, naive: Cell, eventpipe: Cell, digits: int = 0, ratios: bool = True
) -> str:
    cells = [label, fmt(ceiling, digits), fmt(naive, digits), fmt(eventpipe, digits)]
    cells += [ratio(eventpipe, ceiling), ratio(eventpipe, naive)] if ratios else ["", ""]
    return "| " + " | ".join(cells) + " |"


def accept_rows(results: Results) -> list[str]:
    def line(runs: dict[System, WrkResult], label: str, attr: str, digits: int = 0) -> str:
        def get(system: System) -> Cell:
            return float(getattr(runs[system], attr)) if system in runs else None

        return row(label, get("ceiling"), get("naive"), get("eventpipe"), digits)

    acc, one, half = results.accept, results.accept_one, results.half_rate
    return [
        line(
            acc,
            "accepted events/s, 2 uvicorn workers (wrk -t2 -c64 10 s, closed loop, no worker)",
            "accepted_rate",
        ),
        line(acc, "accept latency p50, ms (closed loop)", "p50_ms", 2),
        line(acc, "accept latency p99, ms (closed loop)", "p99_ms", 2),
        line(acc, "non-2xx answers in that run", "non_2xx"),
        line(acc, "socket errors (connect/read/write/timeout) in that run", "socket_errors"),
        line(half, "accept latency p50, ms, paced at half the accepted rate above", "p50_ms", 2),
        line(half, "accept latency p99, ms, paced at half the accepted rate above", "p99_ms", 2),
        line(one, "accepted events/s, 1 uvicorn worker (closed loop)", "accepted_rate"),
    ]


def drain_cell(drains: Sequence[Drain], processes: int, middle: bool) -> Cell:
    for drain in drains:
        if drain.processes == processes:
            return drain.middle_per_s if middle else drain.per_s
    return None


def sustained_rows(results: Results) -> list[str]:
    best = {k: best_flat_step(v) for k, v in results.sustained.items()}

    def get(system: System, attr: str) -> Cell:
        step = best.get(system)
        return None if step is None else float(getattr(step, attr))

    return [
        row(
            "stored events/s sustained with a flat backlog (API + 1 worker process)",
            None,
            get("naive", "stored_per_s"),
            get("eventpipe", "stored_per_s"),
        ),
        row(
            "offered events/s of that step",
            None,
            get("naive", "offered_per_s"),
            get("eventpipe", "offered_per_s"),
            ratios=False,
        ),
        row(
            "p99 latency of that step, ms",
            None,
            get("naive", "p99_ms"),
            get("eventpipe", "p99_ms"),
            2,
            ratios=False,
        ),
    ]


def drain_rows(results: Results) -> list[str]:
    naive, ours = results.drains.get("naive", []), results.drains.get("eventpipe", [])
    lines = []
    for n in (1, 2):
        per_s = (drain_cell(naive, n, False), drain_cell(ours, n, False))
        middle = (drain_cell(naive, n, False), drain_cell(ours, n, True))
        lines.append(
            row(
                f"drain of a 100k backlog, {n} worker process(es), events/s {DRAIN_NOTE}",
                None,
                *per_s,
            )
        )
        lines.append(
            row(f"the same, eventpipe over its middle 80% (naive: its window), {n}", None, *middle)
        )
    return lines


def batch_rows(results: Results) -> list[str]:
    accept, best = results.batch_accept, best_flat_step(results.batch_sustained)

    def one(label: str, value: Cell, digits: int = 0) -> str:
        return row(label, None, None, value, digits, ratios=False)

    return [
        one(
            "batch: accepted events/s, 500-event batches (wrk -t2 -c16 10 s, no worker)",
            accept.accepted_rate if accept else None,
        ),
        one("batch: non-2xx events in that run", accept.non_2xx if accept else None),
        one("batch: latency p50 of a batch, ms", accept.p50_ms if accept else None, 1),
        one("batch: latency p99 of a batch, ms", accept.p99_ms if accept else None, 1),
        one(
            "batch: stored events/s sustained with a flat backlog (API + 2 worker processes)",
            best.stored_per_s if best else None,
        ),
        one("batch: offered events/s of that step", best.offered_per_s if best else None),
    ]


def table(results: Results) -> str:
    m = results.machine
    memory = {k: v.per_event for k, v in results.memory.items()}
    keys_memory = {k: v.keys_per_event for k, v in results.memory.items()}
    lines = [
        f"machine: {m['cpus']} CPUs, {m['platform']}, Python {m['python']}, Redis {m['redis']},"
        f" PostgreSQL {m['postgres']}, {m['wrk']}; everything on loopback, on the same CPUs;"
        f" 1-min load average {m['load_at_start']:.1f} at start, {m.get('load_at_end', 0):.1f}"
        " at end (anything else running shares the CPUs)",
        "",
        "| figure | ceiling | naive | eventpipe | eventpipe / ceiling | eventpipe / naive |",
        "|---|---:|---:|---:|---:|---:|",
        *accept_rows(results),
        *sustained_rows(results),
        row(
            "Redis bytes per queued event, INFO used_memory delta (lower is better)",
            None,
            memory.get("naive"),
            memory.get("eventpipe"),
        ),
        row(
            "Redis bytes per queued event, MEMORY USAGE of the keys (lower is better)",
            None,
            keys_memory.get("naive"),
            keys_memory.get("eventpipe"),
        ),
        *drain_rows(results),
        *batch_rows(results),
        *notes(results),
    ]
    return "\n".join(lines)


def kept_up_note(steps: list[Step]) -> str:
    kept = [s for s in steps if s.flat and s.kept_up]
    if not kept:
        return "No step tried kept up."
    best = max(kept, key=lambda s: s.stored_per_s)
    return (
        f"The best step that also kept up: offered {best.offered_per_s:.0f}/s,"
        f" stored {best.stored_per_s:.0f}/s."
    )


def notes(results: Results) -> list[str]:
    """Caveats: a flat step that did not keep up or whose rate the API set; interference."""
    lines = []
    for system, steps in results.sustained.items():
        best = best_flat_step(steps)
        if best is not None and best.api_saturated:
            lines.append(
                f"\nnote: at {system}'s best flat step the API accepted only"
                f" {best.load.accepted_rate:.0f}/s of {best.offered_per_s:.0f}/s offered: its"
                " sustained figure is bounded by the accept path on these shared CPUs, not by"
                " its worker."
            )
        if best is not None and not best.kept_up:
            lines.append(
                f"\nnote: {system}'s sustained figure comes from a step that is flat only by"
                f" the {FLAT_EVENTS}-event floor: offered {best.offered_per_s:.0f}/s, stored"
                f" {best.stored_per_s:.0f}/s, backlog {best.backlog_start} ->"
                f" {best.backlog_end}. {kept_up_note(steps)}"
            )
    lines.extend(f"\nWARNING, not to be trusted: {message}" for message in results.interference)
    return lines


def plot(results: Results, path: Path) -> None:
    """Stored events/s and p99 latency against the offered rate, both systems."""
    fig = Figure(figsize=(9, 6), layout="constrained")
    ax = fig.add_subplot()
    ax2 = ax.twinx()
    colors: dict[System, str] = {"eventpipe": "tab:blue", "naive": "tab:orange"}
    for system, color in colors.items():
        steps = sorted(results.sustained.get(system, []), key=lambda s: s.offered_per_s)
        offered = [s.offered_per_s for s in steps]
        ax.plot(
            offered,
            [s.load.accepted_rate for s in steps],
            "x:",
            color=color,
            label=f"{system}: accepted events/s",
        )
        ax.plot(
            offered,
            [s.stored_per_s for s in steps],
            "o-",
            color=color,
            label=f"{system}: stored events/s",
        )
        ax2.plot(
            offered,
            [s.load.p99_ms for s in steps],
            "s--",
            color=color,
            alpha=0.6,
            label=f"{system}: p99 latency",
        )
    everything = [s.offered_per_s for v in results.sustained.values() for s in v]
    if everything:
        span = [min(everything), max(everything)]
        ax.plot(span, span, ":", color="grey", label="= offered")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax2.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis, ax2.yaxis):
        label_log_axis(axis)
    ax.set_xlabel("offered events/s (wrk, 64 connections, paced)")
    ax.set_ylabel("accepted and stored events/s (1 worker process)")
    ax2.set_ylabel("p99 latency of POST /v1/events/send, ms")
    ax.set_title("eventpipe and the naive peer: stored rate and latency under offered load")
    handles, labels = ax.get_legend_handles_labels()
    handles2, labels2 = ax2.get_legend_handles_labels()
    fig.legend(
        handles + handles2, labels + labels2, loc="outside lower center", ncols=3, fontsize=8
    )
    fig.savefig(path, dpi=120)


def label_log_axis(axis: Axis) -> None:
    """Ticks of a log axis at 100, 200, 500, 1000... written plainly, not as powers of ten."""
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def clean(value: Any) -> Any:
    """JSON without NaN: NaN becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def save(results: Results, directory: Path) -> tuple[Path, Path | None]:
    """The raw figures, and the plot of the sustained steps (none in a `--batch` run)."""
    directory.mkdir(parents=True, exist_ok=True)
    raw, png = directory / "bench.json", directory / "bench.png"
    raw.write_text(json.dumps(clean(results.as_dict()), indent=2) + "\n")
    if not any(results.sustained.values()):
        return raw, None
    plot(results, png)
    return raw, png
