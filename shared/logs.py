"""Logging set-up, the same in every process (CLI, each uvicorn worker, each RQ worker).

LOG_FORMAT=json writes one JSON object a line: time, level, logger, message, pid, and the
structured `fields` a call passes (`log.info("job", extra={"fields": {...}})`). Callers put
ids and counts there, never API keys or property values.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(data, default=str).decode()


def configure_logging(level: str, fmt: str = "text") -> None:
    # uvicorn's worker processes are spawned, not forked: each one configures itself here.
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format=FORMAT)
    if fmt == "json":
        for handler in root.handlers:
            handler.setFormatter(JsonFormatter())
    logging.getLogger("eventpipe").setLevel(level)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
