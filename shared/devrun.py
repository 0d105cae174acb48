"""`eventpipe run`: migrations, then the API and the workers as child processes.

Children run in their own sessions so a Ctrl-C reaches only this process, which then stops
them in order: the API first (no new events, waiting requests answered), then the workers
(after their current job).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

STOP_TIMEOUT = 30.0


class Child:
    def __init__(self, name: str, argv: Sequence[str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(list(argv), start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if not self.alive():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"eventpipe: {self.name} did not stop in {STOP_TIMEOUT:.0f}s, killing it")
            self.proc.kill()
            self.proc.wait()


def run_pipeline(host: str, port: int, processes: int) -> int:
    exe = [sys.executable, "-m", "shared.cli"]
    stop_requested = False

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    workers = Child("workers", [*exe, "worker", "--processes", str(processes)])
    api = Child("api", [*exe, "serve", "--host", host, "--port", str(port)])
    print(f"eventpipe: API on http://{host}:{port}, {processes} worker process(es); Ctrl-C stops")
    children = [api, workers]  # stop order
    while not stop_requested and all(c.alive() for c in children):
        time.sleep(0.2)
    failed = [c.name for c in children if not c.alive()]
    for child in children:
        child.stop()
    if failed and not stop_requested:
        print(f"eventpipe: {', '.join(failed)} exited; stopped everything", file=sys.stderr)
        return 1
    print("eventpipe: stopped")
    return 0
