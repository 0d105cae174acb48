"""Logging set-up, the same in every process (CLI, each uvicorn worker, each RQ worker)."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: str) -> None:
    # uvicorn's worker processes are spawned, not forked: each one configures itself here.
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format=FORMAT)
    logging.getLogger("eventpipe").setLevel(level)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
