"""What hostile bodies cost a running API process: a script that prints figures; it asserts
nothing (tests/hostile.py holds the answers each must get).

    .venv/bin/python bench/hostile.py --base-url http://127.0.0.1:8000 --api-key AS_... \\
        --api-pid PID [--rounds 3]

PID is the API process (`eventpipe serve` with one worker; on Linux). For each case: the
status, the time until the answer was read, and the process's peak RSS during the case over
its RSS before (VmHWM, reset through /proc/PID/clear_refs before each case). Cases: a send
whose gzip stream is followed by 40 MB of data, sent with its Content-Length and chunked
(no length: the compressed bytes are counted as they come), and a send nested 450 deep.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2 as httpx

if __package__ in (None, ""):  # run as a file: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.factories import SEND  # noqa: E402
from tests.hostile import send_with_ignored  # noqa: E402

MB = 1024 * 1024
SEND_PATH = "/v1/events/send"


def peak_reset(pid: int) -> int:
    """Reset the peak RSS; the RSS now, in kB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status(pid)["VmRSS"]


def peak(pid: int) -> int:
    return _status(pid)["VmHWM"]


def _status(pid: int) -> dict[str, int]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0])
    return found


def trailing_gzip() -> bytes:
    return gzip.compress(json.dumps(SEND).encode()) + b"\x00" * (40 * MB)


def chunks(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def cases() -> list[tuple[str, Callable[[httpx.Client, dict[str, str]], httpx.Response]]]:
    body = trailing_gzip()
    deep = send_with_ignored(449)  # the body nests 450 deep
    gz = {"Content-Encoding": "gzip"}

    def declared(http: httpx.Client, auth: dict[str, str]) -> httpx.Response:
        return http.post(SEND_PATH, content=body, headers=auth | gz)

    def chunked(http: httpx.Client, auth: dict[str, str]) -> httpx.Response:
        return http.post(SEND_PATH, content=chunks(body), headers=auth | gz)

    def nested(http: httpx.Client, auth: dict[str, str]) -> httpx.Response:
        return http.post(SEND_PATH, content=deep, headers=auth)

    return [
        ("40 MB gzip + trailing data, Content-Length", declared),
        ("40 MB gzip + trailing data, chunked", chunked),
        ("450-deep body", nested),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--api-pid", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    auth = {"Authorization": f"Bearer {args.api_key}"}
    print("case | status | ms (median) | peak RSS over before, MB (max)")
    for name, call in cases():
        times, growth, statuses = [], [], set()
        for _ in range(args.rounds):
            with httpx.Client(base_url=args.base_url, timeout=120) as http:
                before = peak_reset(args.api_pid)
                started = time.perf_counter()
                try:
                    statuses.add(str(call(http, auth).status_code))
                except httpx.HTTPError as exc:  # the server may close before all is sent
                    statuses.add(type(exc).__name__)
                times.append((time.perf_counter() - started) * 1000)
                growth.append((peak(args.api_pid) - before) / 1024)
        times.sort()
        print(
            f"{name} | {'/'.join(sorted(statuses))} | {times[len(times) // 2]:.0f} | "
            f"{max(growth):.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
