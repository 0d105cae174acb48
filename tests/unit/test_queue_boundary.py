"""The queue adapter is the one door to RQ and redis-py internals.

Outside shared/queue/: only the worker runner (it subclasses RQ's worker) and the command line
import `rq`; nothing imports redis-py beyond its clients and exceptions; nothing reaches into
the adapter's modules past its front door (shared/queue/__init__.py); and nothing names RQ's
keys, registries or redis-py's pipeline internals. Every import counts, lazy ones too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cli", "api", "worker", "ops", "shared")
ADAPTER = Path("shared/queue")
MAY_IMPORT_RQ = (ADAPTER, Path("worker/runner.py"), Path("cli"))
# redis-py's public surface: the clients and the exceptions.
PUBLIC_REDIS = {"redis", "redis.asyncio", "redis.exceptions"}
INTERNAL_NAMES = {
    "command_stack",
    "pack_commands",
    "send_packed_command",
    "redis_job_namespace_prefix",
    "redis_queues_keys",
    "failed_job_registry",
    "started_job_registry",
    "finished_job_registry",
}
# The runner hands RQ's own execution its own registry.
RUNNER_NAMES = {"started_job_registry"}


def _under(path: Path, places: tuple[Path, ...]) -> bool:
    return any(path == p or p in path.parents for p in places)


def _imports(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def module_violations(path: Path, source: str) -> list[str]:
    if _under(path, (ADAPTER,)):
        return []
    tree = ast.parse(source)
    found = []
    for name in _imports(tree):
        top = name.split(".")[0]
        if top == "rq" and not _under(path, MAY_IMPORT_RQ):
            found.append(f"{path} imports {name}")
        if top == "redis" and name not in PUBLIC_REDIS:
            found.append(f"{path} imports redis-py's internal {name}")
        if name.startswith("shared.queue."):
            found.append(f"{path} imports {name}, past the adapter's front door")
    allowed = RUNNER_NAMES if path == Path("worker/runner.py") else set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in INTERNAL_NAMES - allowed:
            found.append(f"{path} uses .{node.attr}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.startswith("rq:"):
                found.append(f"{path} names RQ's key {node.value!r}")
    return found


def violations(root: Path) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            found += module_violations(path.relative_to(root), path.read_text())
    return found


def test_only_the_adapter_knows_rq_and_redis_py_internals() -> None:
    assert violations(ROOT) == []


def test_the_check_sees_each_kind_of_breach() -> None:
    def check(path: str, source: str) -> list[str]:
        return module_violations(Path(path), source)

    assert check("ops/x.py", "def f():\n    from rq import Queue\n") == ["ops/x.py imports rq"]
    assert check("api/x.py", "import rq.job\n") == ["api/x.py imports rq.job"]
    assert check("api/x.py", "from redis.asyncio.client import Pipeline\n") == [
        "api/x.py imports redis-py's internal redis.asyncio.client"
    ]
    assert check("worker/jobs.py", "from shared.queue.claims import claim_jobs\n") == [
        "worker/jobs.py imports shared.queue.claims, past the adapter's front door"
    ]
    assert check("ops/x.py", "n = q.failed_job_registry.count\n") == [
        "ops/x.py uses .failed_job_registry"
    ]
    assert check("api/x.py", "p.command_stack\n") == ["api/x.py uses .command_stack"]
    assert check("ops/x.py", "key = 'rq:queue:eventpipe'\n") == [
        "ops/x.py names RQ's key 'rq:queue:eventpipe'"
    ]
    # What is allowed: the runner and the CLI with rq, anyone with redis-py's clients.
    assert check("worker/runner.py", "from rq import SimpleWorker\nj.started_job_registry\n") == []
    assert check("cli/x.py", "import rq\n") == []
    assert (
        check("api/x.py", "import redis.asyncio as aioredis\nfrom redis.exceptions import E\n")
        == []
    )
    assert check("shared/queue/claims.py", "from rq.job import JobStatus\n") == []
