"""Child processes: each in a session of its own, stopped with everything it started.

Their output goes to var/bench/logs/<run start>/.

Every process started here is registered, so `stop_all` in the run's `finally` leaves none
behind even after Ctrl-C. Processes are signalled by pid or by their own process group, never
by name. eventpipe's worker supervisor moves its children into process groups of their own,
so a stop also signals every descendant found before the stop, one pid at a time.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "var" / "bench"
LOG_DIR = OUT_DIR / "logs" / time.strftime("%Y%m%d-%H%M%S")
PYTHON = sys.executable

_started: list[Proc] = []
_numbers = itertools.count(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settle(check: Callable[[], bool], timeout: float, step: float = 0.2) -> bool:
    """Poll `check` until it holds or `timeout` passes; whether it held."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 0.1) -> None:
    if not settle(check, timeout, step):
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


class Proc:
    """A child process in its own session, its output in var/bench/logs/."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], name: str) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log = LOG_DIR / f"{next(_numbers):02d}-{name}.log"
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                list(argv),
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _started.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        family = self._descendants()
        if not self.alive() and not family:
            return  # exited and reaped: its pid and group may belong to someone else now
        deadline = time.monotonic() + timeout
        self._signal_group(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        _, alive = psutil.wait_procs(family, timeout=max(0.1, deadline - time.monotonic()))
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if self.alive():
            self._signal_group(signal.SIGKILL)
            self.popen.wait(5)

    def _descendants(self) -> list[psutil.Process]:
        try:
            return list(psutil.Process(self.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            return []

    def _signal_group(self, signum: signal.Signals) -> None:
        # The session leader's pid is its group id; the group may outlive the leader.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)


def stop_all() -> None:
    while _started:
        _started.pop().stop(timeout=10)


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in reversed(procs):
            proc.stop()


def answers_http(base: str) -> bool:
    try:
        urllib.request.urlopen(f"{base}/v1/nothing", timeout=1).close()
    except urllib.error.HTTPError:
        return True  # any HTTP answer (404 here) means a worker is serving
    except OSError:
        return False
    return True


def start_http(argv: Sequence[str], env: dict[str, str], name: str, port: int) -> Proc:
    """Start a server and wait until it answers; a failed start raises with its log tail."""
    proc = Proc(argv, env, name)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if not proc.alive():
            raise RuntimeError(f"{name} exited at start:\n{proc.tail()}")
        return answers_http(base)

    try:
        wait_until(ready, 60, f"{name} to answer on {base}")
    except BaseException:
        proc.stop()
        raise
    time.sleep(1.0)  # every uvicorn worker process up, not only the first
    return proc


def uvicorn_argv(app: str, port: int, workers: int = 2) -> list[str]:
    return [
        *(PYTHON, "-m", "uvicorn", f"bench.apps:{app}"),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)),
        *("--no-access-log", "--log-level", "warning"),
    ]


def eventpipe_argv(*args: str) -> list[str]:
    return [PYTHON, "-m", "cli.main", *args]
