"""Prometheus metrics across processes (prometheus-client's multiprocess mode).

The API runs several uvicorn worker processes and a worker supervisor runs several RQ
workers: each process writes its counters to files in one directory, and the process that
answers a scrape adds them up. prometheus-client picks its mode when it is first imported,
from PROMETHEUS_MULTIPROC_DIR, so `use_directory` runs in the parent before any child starts
and before anything imports prometheus_client (metric modules import it lazily or in the
children). The directory is emptied at start: files left by an earlier run would be added in.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from shared.settings import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def use_directory(settings: Settings, role: str) -> tuple[Path, bool]:
    """Prepare this role's (api, worker) metrics directory, empty, and point
    prometheus-client at it for this process and its children. Returns the directory and
    whether it is a temporary one (the caller removes it at exit)."""
    if settings.metrics_dir:
        path, temporary = Path(settings.metrics_dir) / role, False
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    else:
        path, temporary = Path(tempfile.mkdtemp(prefix=f"eventpipe-metrics-{role}-")), True
    # The library reads its mode from the environment; this is where eventpipe sets it.
    os.environ[MULTIPROC_ENV] = str(path)
    return path, temporary


def registry() -> Any:
    """What a scrape reports: every process's files in multiprocess mode, else this
    process's own metrics (unit tests, a single process started without a directory)."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return REGISTRY
    combined = CollectorRegistry()
    MultiProcessCollector(combined, path=path)  # type: ignore[no-untyped-call]
    return combined
