"""Coercion of contact-property values to their declared type.

Values arrive as decoded JSON (see ``shared.jsonio``) and are stored in canonical
form: strings as given, numbers as ``int`` when integral and exactly representable
(``abs < 2**53``) else ``float``, booleans as ``bool`` and dates as UTC strings
``YYYY-MM-DDTHH:MM:SS.sssZ``. ``None`` passes through for every type. Containers,
NaN, infinities, ``OutOfRange`` numbers and anything else outside the rules raise
``CoercionError``, whose ``expected`` text feeds the API's validation message.
"""

import math
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Final

from shared.clock import iso_ms, parse_rfc3339

__all__ = ["PROPERTY_TYPES", "CoercionError", "coerce_suggested", "coerce_value"]

PROPERTY_TYPES: Final = ("string", "number", "date", "boolean")

_EXPECTED: Final = {
    "string": "a string",
    "number": "a number",
    "date": "a date",
    "boolean": "a boolean",
}
# Longest string accepted where text stands for a number, boolean or date.
_MAX_TEXT: Final = 100
# Integers beyond this are not exact in a double (nor in the JavaScript clients).
_SAFE_INT: Final = 2**53
# Epoch values at least this large are milliseconds (1e11 s would be in year 5138).
_EPOCH_MS_FROM: Final = 10**11
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_BOOLEAN_TEXT: Final = {"true": True, "false": False, "1": True, "0": False}

# [0-9] rather than \d, which also matches digits of other scripts ("١٢").
_NUMBER_RE: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class CoercionError(ValueError):
    """A value that does not fit its declared type; ``expected`` is e.g. ``"a number"``."""

    def __init__(self, expected: str, detail: str = "") -> None:
        self.expected = expected
        self.detail = detail
        super().__init__(f"expected {expected}" + (f" ({detail})" if detail else ""))

    def __reduce__(self) -> tuple[type["CoercionError"], tuple[str, str]]:
        # Keeps ``expected`` intact when the error crosses a process boundary (job results).
        return (CoercionError, (self.expected, self.detail))


def coerce_value(declared: str, value: object) -> str | int | float | bool | None:
    """Coerce one value to ``declared`` (one of ``PROPERTY_TYPES``).

    An unknown ``declared`` is a programming error: plain ``ValueError``.
    """
    coercer = _coercer(declared)
    if value is None:
        return None
    return coercer(value)


def coerce_suggested(declared: str, raw: object) -> list[str | int | float | bool | None]:
    """Coerce ``suggestedValues``: a JSON array or a comma-separated string.

    String items are trimmed before coercion. ``None`` and a blank string give ``[]``.
    A ``null`` array item is kept as ``None`` (``coerce_value`` semantics).
    """
    _coercer(declared)
    if raw is None:
        return []
    if isinstance(raw, str):
        items: Sequence[object] = raw.split(",") if raw.strip() else []
    elif isinstance(raw, list):
        items = raw
    else:
        raise ValueError("suggestedValues must be an array or a comma-separated string")
    return [_coerce_item(declared, index, item) for index, item in enumerate(items)]


def _coerce_item(declared: str, index: int, item: object) -> str | int | float | bool | None:
    try:
        return coerce_value(declared, item.strip() if isinstance(item, str) else item)
    except CoercionError as exc:
        raise CoercionError(exc.expected, f"suggested value #{index + 1}") from exc


def _coercer(declared: str) -> Callable[[object], str | int | float | bool]:
    coercer = _COERCERS.get(declared)
    if coercer is None:
        raise ValueError(f"unknown property type {declared!r}")
    return coercer


# --- string ---------------------------------------------------------------------------


def _to_string(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    number = _json_number(value)
    if number is None:
        raise CoercionError(_EXPECTED["string"])
    return str(number) if isinstance(number, int) else _format_float(number)


def _format_float(value: float) -> str:
    """Shortest round-trip text in JavaScript's ``Number#toString`` layout, minus ``e+``."""
    if value == 0:
        return "0"  # also -0.0, as JavaScript prints it
    parts = Decimal(repr(abs(value))).normalize().as_tuple()
    assert isinstance(parts.exponent, int)  # finite by construction
    digits = "".join(map(str, parts.digits))
    size = len(digits)
    point = parts.exponent + size  # value == 0.<digits> * 10**point
    sign = "-" if value < 0 else ""
    if size <= point <= 21:
        return sign + digits + "0" * (point - size)
    if 0 < point <= 21:
        return sign + digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return sign + "0." + "0" * -point + digits
    mantissa = digits[0] + ("." + digits[1:] if size > 1 else "")
    return f"{sign}{mantissa}e{point - 1}"


# --- number ---------------------------------------------------------------------------


def _to_number(value: object) -> int | float:
    if isinstance(value, str):
        return _canonical_number(_parse_number_text(value))
    number = _json_number(value)
    if number is None:
        raise CoercionError(_EXPECTED["number"])
    return _canonical_number(number)


def _json_number(value: object) -> int | float | None:
    """``value`` if it is a finite number within the float range (never a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        as_float = float(value)
    except OverflowError:  # an int beyond the float range
        return None
    return value if math.isfinite(as_float) else None


def _parse_number_text(value: str) -> float:
    text = _trimmed(value, "number")
    if not _NUMBER_RE.fullmatch(text):
        raise CoercionError(_EXPECTED["number"])
    number = float(text)
    if not math.isfinite(number):  # "1e400"
        raise CoercionError(_EXPECTED["number"])
    return number


def _canonical_number(number: int | float) -> int | float:
    if abs(number) >= _SAFE_INT:
        return float(number)
    if isinstance(number, float) and number.is_integer():
        return int(number)
    return number


# --- boolean --------------------------------------------------------------------------


def _to_boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = _trimmed(value, "boolean")
        # isascii(): str.lower() maps some non-ASCII letters onto ASCII ones.
        if text.isascii() and text.lower() in _BOOLEAN_TEXT:
            return _BOOLEAN_TEXT[text.lower()]
        raise CoercionError(_EXPECTED["boolean"])
    number = _json_number(value)
    if number is not None and number in (0, 1):
        return number == 1
    raise CoercionError(_EXPECTED["boolean"])


# --- date -----------------------------------------------------------------------------


def parse_date(text: str) -> datetime:
    """An RFC 3339 date or date-time, as the `date` type reads it, in UTC."""
    return _parse_date_text(_trimmed(text, "date"))


def _to_date(value: object) -> str:
    if isinstance(value, str):
        moment = _parse_date_text(_trimmed(value, "date"))
    else:
        number = _json_number(value)
        if number is None:
            raise CoercionError(_EXPECTED["date"])
        moment = _from_epoch(number)
    return iso_ms(moment)


def _parse_date_text(text: str) -> datetime:
    try:
        return parse_rfc3339(text)
    except ValueError as exc:  # 2026-02-30, 25:00, year 0 or 10000 in UTC, not RFC 3339
        raise CoercionError(_EXPECTED["date"]) from exc


def _from_epoch(number: int | float) -> datetime:
    # repr() gives the shortest decimal that round-trips, i.e. what the client wrote:
    # 1.001 s must be 1001 ms, not the 1000.99999... of the binary float times 1000.
    exact = Decimal(number) if isinstance(number, int) else Decimal(repr(number))
    millis = exact if abs(exact) >= _EPOCH_MS_FROM else exact * 1000
    floored = int(millis.to_integral_value(rounding=ROUND_FLOOR))  # truncate toward the past
    try:
        return _EPOCH + timedelta(milliseconds=floored)
    except OverflowError as exc:  # outside years 1..9999
        raise CoercionError(_EXPECTED["date"]) from exc


# --- shared ---------------------------------------------------------------------------


def _trimmed(value: str, declared: str) -> str:
    text = value.strip()
    if len(text) > _MAX_TEXT:
        raise CoercionError(_EXPECTED[declared])
    return text


_COERCERS: Final[dict[str, Callable[[object], str | int | float | bool]]] = {
    "string": _to_string,
    "number": _to_number,
    "date": _to_date,
    "boolean": _to_boolean,
}
