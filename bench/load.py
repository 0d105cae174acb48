"""Load with wrk: closed-loop runs, paced runs (an offered rate), and runs until a count.

Pacing uses wrk's `delay()` hook. Each wrk thread keeps one schedule of send slots, one every
`threads * 1000 / rate` ms, and a connection whose answer came back takes the next free slot.
That is "each of C connections waits C*1000/rate ms between its requests", corrected for two
biases of that plain formula: the time a request spends in flight would lower the rate, and wrk
truncates the delay to whole milliseconds (2.67 ms becomes 2, a third too fast at 12k/s).
A thread that falls behind skips the missed slots instead of bursting to catch up, so an
offered rate the system cannot take shows as an accepted rate below it. Latency is timed by
wrk from the moment a request is written: time a request waits for a free connection is not
in it (closed loop), so a saturated step shows as a lower accepted rate, not as latency.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

THREADS = 2
REQUEST_LUA = """\
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""
PACER_LUA = """\
local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local interval = {interval_ms}
local next_slot = nil

local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

function delay()
  local now = now_ms()
  if next_slot == nil or next_slot < now then
    next_slot = now
  end
  local wait = next_slot - now
  next_slot = next_slot + interval
  return wait
end
"""
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def find_wrk() -> str | None:
    return shutil.which("wrk") or ("/usr/bin/wrk" if Path("/usr/bin/wrk").exists() else None)


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float

    @property
    def accepted(self) -> int:
        return self.requests - self.non_2xx

    @property
    def accepted_rate(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "seconds": self.seconds,
            "non_2xx": self.non_2xx,
            "socket_errors": self.socket_errors,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "accepted": self.accepted,
            "accepted_per_s": self.accepted_rate,
        }


class Scripts:
    """The Lua scripts of one run, in a temporary directory."""

    def __init__(self, body: dict[str, Any], key: str) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="eventpipe-bench-")
        self._request = REQUEST_LUA.format(body=json.dumps(body), key=key)
        self.closed = self._write("closed.lua", self._request)

    def paced(self, rate: float) -> str:
        interval_ms = THREADS * 1000.0 / rate
        pacer = PACER_LUA.format(interval_ms=f"{interval_ms:.6f}")
        return self._write(f"paced-{rate:.0f}.lua", self._request + pacer)

    def _write(self, name: str, text: str) -> str:
        path = Path(self._dir.name) / name
        path.write_text(text)
        return str(path)

    def close(self) -> None:
        self._dir.cleanup()


def wrk_argv(url: str, script: str, connections: int, seconds: float) -> list[str]:
    return [
        find_wrk() or "wrk",
        f"-t{THREADS}",
        f"-c{connections}",
        f"-d{seconds:.0f}s",
        "--latency",
        "-s",
        script,
        url,
    ]


def run_wrk(url: str, script: str, connections: int, seconds: float) -> WrkResult:
    return run_wrk_until(url, script, connections, seconds, lambda: False)


def run_wrk_until(
    url: str, script: str, connections: int, seconds: float, done: Callable[[], bool]
) -> WrkResult:
    """wrk for `seconds`, or until `done()` (polled every 0.1 s): SIGINT makes wrk stop and
    print its figures."""
    proc = subprocess.Popen(
        wrk_argv(url, script, connections, seconds),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        while proc.poll() is None:
            if done():
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.1)
        out, _ = proc.communicate(timeout=seconds + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return parse_wrk(out)


def _duration_ms(value: str, unit: str) -> float:
    return float(value) * UNITS[unit]


def _latency(out: str, percent: str) -> float:
    found = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s|m|h)\s*$", out, re.MULTILINE)
    return _duration_ms(*found.groups()) if found else float("nan")


def parse_wrk(out: str) -> WrkResult:
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", out)
    if total is None:
        raise RuntimeError(f"unreadable wrk output:\n{out}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        requests=int(total.group(1)),
        seconds=_duration_ms(total.group(2), total.group(3)) / 1000,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        p50_ms=_latency(out, "50"),
        p99_ms=_latency(out, "99"),
    )
