"""A project's fair-share limits: its rate limit and its backlog share, as the CLI and the
admin API read and write them, and as the API processes load them with the keys.

A rate is written `N/s`, `N/min` or `N/h` (a bare number is per second) and kept as tokens
per second; `burst` is how many requests may come at once (by default one second of the
rate, at least 1). A backlog share is the fraction of MAX_QUEUED_EVENTS the project may have
queued (by default PROJECT_BACKLOG_SHARE)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from shared.clock import utcnow
from shared.errors import NotFound, ValidationFailed
from shared.models import project_limits, projects

MAX_RATE = 1e9  # tokens per second
MAX_BURST = 1_000_000_000
_PERIODS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
}
_RATE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(?:/\s*([a-z]+))?\s*")


@dataclass(frozen=True)
class ProjectLimits:
    rate: float | None = None  # tokens per second; None: no rate limit
    burst: int | None = None  # None: one second of the rate
    backlog_share: float | None = None  # None: the PROJECT_BACKLOG_SHARE setting

    @property
    def effective_burst(self) -> int | None:
        if self.rate is None:
            return None
        return self.burst if self.burst is not None else max(1, math.ceil(self.rate))

    def is_default(self) -> bool:
        return self.rate is None and self.burst is None and self.backlog_share is None


NO_LIMITS = ProjectLimits()


def parse_rate(text: str) -> float:
    """`100/s`, `6000/min`, `5000/h` or `100` (per second): tokens per second."""
    found = _RATE.fullmatch(text.lower()) if len(text) <= 40 else None
    period = _PERIODS.get(found.group(2) or "s") if found else None
    if found is None or period is None:
        raise ValidationFailed(f"{text[:40]!r} is not a rate: write it like 100/s or 6000/min")
    return check_rate(float(found.group(1)) / period)


def check_rate(rate: Any) -> float:
    if type(rate) not in (int, float) or not 0 < rate <= MAX_RATE or math.isnan(rate):
        raise ValidationFailed(f"a rate must be above 0 and at most {MAX_RATE:.0f}/s")
    return float(rate)


def check_burst(burst: Any) -> int:
    if type(burst) is not int or not 1 <= burst <= MAX_BURST:
        raise ValidationFailed(f"burst must be an integer from 1 to {MAX_BURST}")
    return burst


def check_share(share: Any) -> float:
    if type(share) not in (int, float) or not 0 < share <= 1:
        raise ValidationFailed("backlogShare must be a fraction above 0, at most 1")
    return float(share)


def format_rate(rate: float) -> str:
    """The rate as a person would write it: 100/s, 30/min, 2/h."""
    for unit, seconds in (("s", 1), ("min", 60), ("h", 3600)):
        if rate * seconds >= 1 or unit == "h":
            return f"{round(rate * seconds, 6):g}/{unit}"
    raise AssertionError("unreachable")


def limits_view(
    project_id: str, limits: ProjectLimits, max_queued: int, default_share: float
) -> dict[str, Any]:
    """The limits as the admin API and `eventpipe projects limits --json` show them."""
    share = limits.backlog_share if limits.backlog_share is not None else default_share
    return {
        "projectId": project_id,
        "rate": None if limits.rate is None else format_rate(limits.rate),
        "ratePerSecond": limits.rate,
        "burst": limits.effective_burst,
        "backlogShare": share,
        "backlogShareIsDefault": limits.backlog_share is None,
        "backlogLimit": backlog_limit(max_queued, share),
    }


def backlog_limit(max_queued: int, share: float) -> int:
    """How many events a project with `share` may have queued (at least 1)."""
    return max(1, math.floor(max_queued * share))


# --- the store ------------------------------------------------------------------------------


def get_limits(project_id: str, *, conn: Connection) -> ProjectLimits:
    _check_project(project_id, conn)
    row = conn.execute(
        select(project_limits).where(project_limits.c.project_id == project_id)
    ).first()
    return NO_LIMITS if row is None else _from_row(row)


def set_limits(project_id: str, limits: ProjectLimits, *, conn: Connection) -> None:
    """Replace the project's limits; all defaults: the row goes."""
    _check_project(project_id, conn)
    where = project_limits.c.project_id == project_id
    if limits.is_default():
        conn.execute(delete(project_limits).where(where))
        return
    values = {
        "rate_per_second": limits.rate,
        "burst": limits.burst,
        "backlog_share": limits.backlog_share,
        "updated_at": utcnow(),
    }
    if conn.execute(update(project_limits).where(where).values(**values)).rowcount == 0:
        conn.execute(insert(project_limits).values(project_id=project_id, **values))


def load_limits(*, conn: Connection) -> dict[str, ProjectLimits]:
    """Every project's limits that are not all defaults (for the API's snapshot)."""
    return {r.project_id: _from_row(r) for r in conn.execute(select(project_limits))}


def _from_row(row: Any) -> ProjectLimits:
    return ProjectLimits(row.rate_per_second, row.burst, row.backlog_share)


def _check_project(project_id: str, conn: Connection) -> None:
    if conn.execute(select(projects.c.id).where(projects.c.id == project_id)).first() is None:
        raise NotFound(f"Project {project_id[:40]} not found")
