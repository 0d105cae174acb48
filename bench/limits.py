"""`bench/run.py --limits`: the cost of the fair-share check on the accept path. eventpipe's
accept path (a) measured with the seed project unlimited, then with a rate limit far above
what the machine can send (so nothing is refused and the figure is the check itself: one
dict lookup, the local bucket, the X-RateLimit-* headers), alternating, `ROUNDS` times each.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import median

from api.limits import NO_LIMITS, ProjectLimits, set_limits
from bench.load import Scripts, WrkResult
from bench.measure import measure_accept
from bench.world import World
from shared.db import transaction

ROUNDS = 2
# Far above what two cores accept (~10k/s): the check runs, nothing is refused.
RATE = 10_000_000.0
BURST = 100_000_000


def limit_seed(world: World, on: bool) -> None:
    limits = ProjectLimits(RATE, BURST, None) if on else NO_LIMITS
    with transaction(world.engine) as conn:
        set_limits(world.project_id, limits, conn=conn)


def run_limits(world: World, scripts: Scripts, out_dir: Path) -> dict[str, list[WrkResult]]:
    print(
        f"(limits) accept path of eventpipe, limits off and on ({RATE:.0f}/s, burst {BURST}),"
        f" alternating, {ROUNDS} rounds: wrk -t2 -c64 -d10s --latency, no worker running"
    )
    runs: dict[str, list[WrkResult]] = {"off": [], "on": []}
    for _ in range(ROUNDS):
        for mode in ("off", "on"):
            limit_seed(world, mode == "on")
            result = measure_accept(world, scripts, "eventpipe")
            runs[mode].append(result)
            print(
                f"  limits {mode}: {result.accepted_rate:.0f} accepted/s, p50"
                f" {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, non-2xx"
                f" {result.non_2xx}"
            )
    limit_seed(world, False)
    print_summary(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = {mode: [r.as_dict() for r in results] for mode, results in runs.items()}
    (out_dir / "limits.json").write_text(json.dumps(raw, indent=2))
    return runs


def print_summary(runs: dict[str, list[WrkResult]]) -> None:
    print("\n| accept path, eventpipe | accepted/s (median) | p50 ms | p99 ms | non-2xx |")
    print("|---|---|---|---|---|")
    for mode, results in runs.items():
        print(
            f"| limits {mode} | {median(r.accepted_rate for r in results):,.0f}"
            f" | {median(r.p50_ms for r in results):.2f}"
            f" | {median(r.p99_ms for r in results):.2f}"
            f" | {sum(r.non_2xx for r in results)} |"
        )
    off = median(r.accepted_rate for r in runs["off"])
    on = median(r.accepted_rate for r in runs["on"])
    if off:
        print(f"\nlimits on / off: {on / off:.3f} ({(on - off) / off * 100:+.1f}%)")
