"""Time in the contract's format: UTC, ISO 8601 with milliseconds; RFC 3339 read."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta, timezone

_RFC3339 = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})"
    r"(?:[Tt ](?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})"
    r"(?::(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]+))?)?"
    r"(?P<offset>[Zz]|[+-][0-9]{2}:[0-9]{2})?)?"
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """SQLite returns naive datetimes; everything eventpipe stores is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# The current second and its `2026-05-08T13:45:00.` prefix, as one tuple: threads that race
# on it read and write a consistent pair.
_second: tuple[int, str] = (-1, "")


def now_iso_ms() -> str:
    """iso_ms(utcnow()) at a fifth of its cost: every send stamps its event with it, and the
    date and time part changes once a second."""
    global _second
    second, millis = divmod(time.time_ns() // 1_000_000, 1000)
    cached, prefix = _second
    if cached != second:
        prefix = _to_the_second(*time.gmtime(second)[:6])
        _second = (second, prefix)
    return f"{prefix}{millis:03d}Z"


def iso_ms(moment: datetime) -> str:
    """`2026-05-08T13:45:00.000Z`. Formatted by hand: strftime costs 5x more, on every send."""
    m = aware(moment).astimezone(UTC)
    prefix = _to_the_second(m.year, m.month, m.day, m.hour, m.minute, m.second)
    return f"{prefix}{m.microsecond // 1000:03d}Z"


def _to_the_second(year: int, month: int, day: int, hour: int, minute: int, second: int) -> str:
    """`2026-05-08T13:45:00.`: what iso_ms and now_iso_ms write before the milliseconds."""
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}."


def parse_iso_ms(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 date or date-time (no offset means UTC), in UTC; ValueError otherwise.

    The regex, not datetime.fromisoformat, decides the syntax: fromisoformat also takes basic
    (20260508) and week (2026-W19) forms that are not RFC 3339."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError("not an RFC 3339 date or date-time")
    part = match.groupdict()
    fraction = (part["fraction"] or "")[:6].ljust(6, "0")
    try:
        moment = datetime(
            int(part["year"]),
            int(part["month"]),
            int(part["day"]),
            int(part["hour"] or 0),
            int(part["minute"] or 0),
            int(part["second"] or 0),
            int(fraction),
            tzinfo=_offset(part["offset"]),
        )
        return moment.astimezone(UTC)
    except OverflowError as exc:  # year 0 or 10000 once in UTC
        raise ValueError("out of range") from exc


def _offset(text: str | None) -> timezone:
    if text is None or text in ("Z", "z"):
        return UTC
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 23 or minutes > 59:
        raise ValueError("offset out of range")
    delta = timedelta(hours=hours, minutes=minutes)
    return timezone(-delta if text[0] == "-" else delta)


_AGE = re.compile(r"([0-9]{1,4})(d|w|mo|y)")
_AGE_UNITS = {"d": (0, 1), "w": (0, 7), "mo": (1, 0), "y": (12, 0)}


def add_months(moment: datetime, months: int) -> datetime:
    """`moment` moved by whole calendar months, the day kept (clamped to the month's end)."""
    index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(index, 12)
    day = min(moment.day, _month_days(year, month + 1))
    return moment.replace(year=year, month=month + 1, day=day)


def _month_days(year: int, month: int) -> int:
    nxt = datetime(year + month // 12, month % 12 + 1, 1)
    return (nxt - timedelta(days=1)).day


def parse_age(text: str) -> tuple[int, int]:
    """An age such as `13mo`, `90d`, `2w` or `1y`, as (months, days); ValueError otherwise."""
    match = _AGE.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not an age: a positive number and d, w, mo or y (13mo)")
    months, days = _AGE_UNITS[match.group(2)]
    count = int(match.group(1))
    return months * count, days * count


def age_cutoff(now: datetime, age: str) -> datetime:
    """The moment `age` before `now`: rows accepted before it are older than `age`."""
    months, days = parse_age(age)
    return add_months(now, -months) - timedelta(days=days)
