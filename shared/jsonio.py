"""JSON decoding and encoding for the whole service.

``loads`` parses request bodies (and anything else read as JSON); ``dumps`` encodes
job payloads and HTTP responses. Both use orjson; ``loads`` falls back to the stdlib
parser only for documents holding numbers beyond the float range, which orjson
refuses outright but which the API must answer with a per-field validation error
rather than "invalid JSON". Such numbers are returned as ``OutOfRange`` instances.

Numbers come out exactly as orjson produces them, whichever parser ran: integers in
[-2**63, 2**64 - 1] stay ``int``, larger integers become ``float`` (precision is lost,
as in JavaScript), and anything that would be infinite becomes ``OutOfRange``.
"""

import json
import math
import re
from typing import Any, Final

import orjson

__all__ = [
    "MAX_DEPTH",
    "OutOfRange",
    "TooDeep",
    "canonical",
    "check_depth",
    "dumps",
    "holds_nul",
    "loads",
    "may_nest_deeper",
]

# The nesting limit of a request body (objects and arrays, the top one counting 1): what the
# API's parse refuses above, so that every later step handling the parsed body (the NUL
# check, the idempotency fingerprint, which encodes it with orjson) works within it. Event
# bodies nest 3 or 4 deep; 64 leaves room for any ignored field a client may add.
MAX_DEPTH: Final = 64
# orjson's parser accepts 1024 levels and its serializer only 254 (it raises above): the
# fingerprint of a body orjson parsed could fail. MAX_DEPTH must stay below both.
_ORJSON_DUMPS_DEPTH: Final = 254
assert MAX_DEPTH < _ORJSON_DUMPS_DEPTH
# orjson's nesting limit; the fallback must not accept deeper documents than the fast path.
_MAX_DEPTH: Final = 1024
# orjson keeps integers that fit an i64 or a u64 and turns larger ones into floats.
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
# JSON forbids leading zeros, so a literal with more digits is >= 1e309 > the largest float;
# deciding on the length also avoids int()'s 4300-digit limit on hostile input.
_MAX_INT_DIGITS: Final = 309
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


class OutOfRange:
    """A JSON number beyond the float range (``1e400``, ``-1e400``, a 400-digit integer).

    ``text`` is the literal as written in the document (empty when built by hand).
    Not JSON-serialisable on purpose: validation must reject it before it goes anywhere.
    """

    __slots__ = ("text",)

    def __init__(self, text: str = "") -> None:
        self.text = text

    def __repr__(self) -> str:
        shown = self.text if len(self.text) <= 40 else self.text[:37] + "..."
        return f"OutOfRange({shown!r})"


def loads(data: bytes | str) -> Any:
    """Parse one JSON document; raise ``ValueError`` if it is not valid JSON.

    ``NaN``/``Infinity`` are invalid. Duplicate keys: the last value wins, at the
    position of the first occurrence (both parsers behave so).
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as fast_error:
        # orjson never returns inf: it raises on out-of-range numbers, so any document
        # it accepts is final and only failures need a second look.
        return _fallback_loads(data, fast_error)


class TooDeep(ValueError):
    """A document nested deeper than MAX_DEPTH."""


def may_nest_deeper(data: bytes) -> bool:
    """False when `data` cannot nest deeper than MAX_DEPTH: it does not hold that many
    brackets at all (two C-speed counts, so a typical send body is never walked)."""
    return data.count(b"[") + data.count(b"{") > MAX_DEPTH


def check_depth(value: Any) -> None:
    """Raise TooDeep past MAX_DEPTH: one iterative walk over the containers only (a 500-event
    batch costs ~0.3 ms here, the parse itself ~0.2 ms)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        item, depth = pop()
        if depth > MAX_DEPTH:
            raise TooDeep(f"JSON nested deeper than {MAX_DEPTH} levels")
        for child in item.values() if type(item) is dict else item:
            if type(child) is dict or type(child) is list:
                push((child, depth + 1))


def holds_nul(value: Any) -> bool:
    """Whether any string (key or value) of a parsed document holds U+0000; raises TooDeep
    past MAX_DEPTH. One iterative walk (no recursion, whatever the depth) does both."""
    found = False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            found = found or "\x00" in item
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise TooDeep(f"JSON nested deeper than {MAX_DEPTH} levels")
            stack.extend((child, depth + 1) for child in _children(item))
    return found


def dumps(obj: Any) -> bytes:
    """Encode job payloads and HTTP responses as compact UTF-8 JSON."""
    return orjson.dumps(obj)


def canonical(obj: Any) -> bytes:
    """One encoding per parsed document (keys sorted), to compare bodies as JSON, not bytes.

    An out-of-range number (only possible in a field that validation ignores) is encoded as
    its literal text. Raises ValueError for what orjson cannot encode (a document deeper than
    MAX_DEPTH may be one; the API's parse refuses those first)."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS, default=_literal)
    except orjson.JSONEncodeError as exc:
        raise ValueError(str(exc)) from exc


def _literal(value: Any) -> str:
    if isinstance(value, OutOfRange):
        return f"OutOfRange({value.text})"
    raise TypeError(f"not JSON: {type(value).__name__}")


def _fallback_loads(data: bytes | str, fast_error: ValueError) -> Any:
    """Re-parse a document orjson refused; accept it only if out-of-range numbers were why."""
    # Strict UTF-8 as orjson does: the stdlib would also guess UTF-16/32 or skip a BOM.
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    try:
        result = json.loads(
            text,
            parse_float=_parse_float,
            parse_int=_parse_int,
            parse_constant=_reject_constant,
        )
    except RecursionError as exc:
        # Python's recursion limit (~1000) is below orjson's 1024 levels: such documents
        # are refused, which only matters if they also hold an out-of-range number.
        raise ValueError("JSON document nested too deeply") from exc
    if not _has_out_of_range(result):
        # orjson failed for a reason the stdlib tolerates (lone surrogate, depth): keep
        # orjson's verdict so that both paths accept exactly the same documents.
        raise fast_error
    return result


def _parse_float(literal: str) -> float | OutOfRange:
    value = float(literal)
    return value if math.isfinite(value) else OutOfRange(literal)


def _parse_int(literal: str) -> int | float | OutOfRange:
    if len(literal.lstrip("-")) > _MAX_INT_DIGITS:
        return OutOfRange(literal)
    value = int(literal)
    if _INT_MIN <= value <= _INT_MAX:
        return value
    try:
        return float(value)
    except OverflowError:
        return OutOfRange(literal)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


def _has_out_of_range(result: Any) -> bool:
    """Walk a fallback result; raise ValueError where orjson would have refused it."""
    found = False
    stack: list[tuple[Any, int]] = [(result, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, OutOfRange):
            found = True
        elif isinstance(value, str):
            _check_text(value)
        elif isinstance(value, dict | list):
            if depth >= _MAX_DEPTH:
                raise ValueError("JSON document nested too deeply")
            stack.extend((item, depth + 1) for item in _children(value))
    return found


def _children(container: dict[str, Any] | list[Any]) -> list[Any]:
    if isinstance(container, list):
        return container
    # Keys are checked like string values: they must be encodable too.
    return [*container.keys(), *container.values()]


def _check_text(text: str) -> None:
    if _SURROGATE.search(text):
        raise ValueError("JSON string holds a lone surrogate")
