"""shared.jsonio: strict parsing, out-of-range numbers, and the orjson fast path."""

import json
import sys
from typing import Any

import orjson
import pytest

from shared import jsonio
from shared.jsonio import OutOfRange, dumps, loads

MAX_FLOAT_INT = int(sys.float_info.max)
# Halfway between the largest float and 2**1024: the smallest integer that rounds to infinity.
OVERFLOW_INT = MAX_FLOAT_INT + 2**970


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"a": 1, "b": [true, false, null], "c": "x"}',
            {"a": 1, "b": [True, False, None], "c": "x"},
        ),
        ("1.5", 1.5),
        ("-0.0", -0.0),
        ("1e-400", 0.0),
        ("1.7976931348623158e308", sys.float_info.max),
        ('"\\u00e9\\ud83d\\ude00"', "é😀"),
        ("  [1]  ", [1]),
        (str(2**64 - 1), 2**64 - 1),
        (str(-(2**63)), -(2**63)),
        (str(2**64), float(2**64)),
        (str(-(2**63) - 1), float(-(2**63) - 1)),
        (str(MAX_FLOAT_INT), sys.float_info.max),
    ],
)
def test_loads_valid(text: str, expected: Any) -> None:
    assert loads(text) == expected
    assert loads(text.encode()) == expected


@pytest.mark.parametrize(
    "text",
    [
        "NaN",
        "Infinity",
        "-Infinity",
        "[NaN]",
        '{"a": -Infinity}',
        "",
        "{",
        "[1,]",
        "{'a': 1}",
        "01",
        "1 2",
        '"\x01"',
        "\ufeff{}",
        '"\\ud800"',
        "[1e400, NaN]",
        '[1e400, "\\ud800"]',
        "[1e400, 01]",
        "[" * 1025 + "]" * 1025,
        "[" * 1025 + "1e400" + "]" * 1025,
        "[" * 100_000 + "1e400" + "]" * 100_000,
    ],
)
def test_loads_invalid(text: str) -> None:
    with pytest.raises(ValueError):
        loads(text)
    with pytest.raises(ValueError):
        loads(text.encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize(
    "data",
    [b"\xff", b'"\xc3"', b"\xef\xbb\xbf[1e400]", "[1e400]".encode("utf-16")],
)
def test_loads_rejects_non_utf8_bytes(data: bytes) -> None:
    with pytest.raises(ValueError):
        loads(data)


@pytest.mark.parametrize(
    "literal",
    [
        "1e400",
        "-1e400",
        "1.7976931348623159e308",
        "0.1e310",
        str(OVERFLOW_INT),
        "-" + str(OVERFLOW_INT),
        "1" + "0" * 309,
        "-" + "9" * 5000,
        "1" * 100_000,
    ],
)
def test_loads_out_of_range(literal: str) -> None:
    result = loads('{"n": ' + literal + ', "ok": 1}')
    assert isinstance(result["n"], OutOfRange)
    assert result["n"].text == literal
    assert result["ok"] == 1


def test_loads_largest_finite_integer_stays_finite() -> None:
    assert loads(str(OVERFLOW_INT - 1)) == sys.float_info.max


def test_fallback_keeps_same_number_types_as_orjson() -> None:
    fast = loads(b"[18446744073709551616, 3, 1.5, -0.0]")
    slow = loads(b"[18446744073709551616, 3, 1.5, -0.0, 1e400]")
    assert slow[:4] == fast
    assert [type(v) for v in slow[:4]] == [type(v) for v in fast] == [float, int, float, float]


def test_loads_nested_out_of_range() -> None:
    result = loads("[" * 500 + "1e400" + "]" * 500)
    for _ in range(500):
        result = result[0]
    assert isinstance(result, OutOfRange)


def test_fallback_depth_is_bounded_by_the_stdlib_recursion_limit() -> None:
    # orjson allows 1024 levels; the stdlib parser stops near sys.getrecursionlimit().
    # Only documents that also hold an out-of-range number see the lower bound.
    assert loads("[" * 1024 + "1" + "]" * 1024) is not None
    with pytest.raises(ValueError, match="nested too deeply"):
        loads("[" * 1024 + "1e400" + "]" * 1024)


@pytest.mark.parametrize(
    "text", ['{"a": 1, "b": 2, "a": 3}', '{"a": 1, "b": 2, "a": 3, "c": 1e400}']
)
def test_duplicate_keys_last_wins_and_order_is_body_order(text: str) -> None:
    result = loads(text)
    assert result["a"] == 3
    assert list(result)[:2] == ["a", "b"]


def test_key_order_is_body_order() -> None:
    assert list(loads('{"z": 1, "a": 2, "m": 3}')) == ["z", "a", "m"]
    assert list(loads('{"z": 1, "a": 1e400, "m": 3}')) == ["z", "a", "m"]


def test_out_of_range_repr() -> None:
    assert repr(OutOfRange("1e400")) == "OutOfRange('1e400')"
    assert repr(OutOfRange()) == "OutOfRange('')"
    assert "..." in repr(OutOfRange("9" * 500))
    assert len(repr(OutOfRange("9" * 500))) < 60


def test_orjson_raises_instead_of_returning_inf() -> None:
    # The fast path trusts every orjson result; this pins the behaviour it relies on.
    for literal in (b"1e400", b"-1e400", b"1" + b"0" * 400):
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(literal)


def test_fast_path_used_for_normal_input(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []

    def spy(data: bytes | str, fast_error: ValueError) -> Any:
        calls.append(data)
        raise AssertionError("fallback used")

    monkeypatch.setattr(jsonio, "_fallback_loads", spy)
    body = {"type": "signup", "properties": {"plan": "pro", "seats": 3, "price": 9.99}}
    assert loads(json.dumps(body).encode()) == body
    assert loads(json.dumps(body)) == body
    assert calls == []
    with pytest.raises(AssertionError):
        loads(b"[1e400]")
    assert calls == [b"[1e400]"]


def test_dumps() -> None:
    assert (
        dumps({"a": [1, 2.5, None, True], "é": "x"}) == '{"a":[1,2.5,null,true],"é":"x"}'.encode()
    )
    assert isinstance(dumps([]), bytes)


def test_dumps_refuses_out_of_range() -> None:
    with pytest.raises(TypeError):
        dumps({"n": OutOfRange("1e400")})


# --- the one nesting limit (issue 14) ----------------------------------------------------


def _nest(depth: int, leaf: Any = 0) -> Any:
    """`depth` lists around `leaf`, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def test_holds_nul_walks_to_the_limit_and_refuses_past_it() -> None:
    assert jsonio.holds_nul(_nest(jsonio.MAX_DEPTH)) is False
    assert jsonio.holds_nul(_nest(jsonio.MAX_DEPTH, "a\x00")) is True
    assert jsonio.holds_nul({"a\x00": 1}) is True  # keys too
    with pytest.raises(jsonio.TooDeep):
        jsonio.holds_nul(_nest(jsonio.MAX_DEPTH + 1))


def test_holds_nul_is_not_recursive() -> None:
    # 100k levels: a recursive walk would hit Python's recursion limit long before.
    with pytest.raises(jsonio.TooDeep):
        jsonio.holds_nul(_nest(100_000))


def test_may_nest_deeper_counts_brackets() -> None:
    limit = jsonio.MAX_DEPTH
    assert not jsonio.may_nest_deeper(b"[" * limit + b"]" * limit)
    assert jsonio.may_nest_deeper(b"[" * (limit + 1) + b"]" * (limit + 1))
    assert jsonio.may_nest_deeper(b'{"a": "' + b"{" * (limit + 1) + b'"}')  # a walk, no harm


def test_the_limit_is_within_what_the_fingerprint_can_encode() -> None:
    """canonical() encodes anything parse lets through; deeper, it raises ValueError (orjson
    refuses past 254 levels), never orjson's own error."""
    deepest = loads(json.dumps(_nest(jsonio.MAX_DEPTH)))
    assert jsonio.canonical(deepest)
    with pytest.raises(ValueError):
        jsonio.canonical(_nest(300))


def test_check_depth_walks_containers_to_the_limit() -> None:
    jsonio.check_depth(_nest(jsonio.MAX_DEPTH))
    jsonio.check_depth({"a": [{"b": _nest(jsonio.MAX_DEPTH - 3)}]})
    for deep in (_nest(jsonio.MAX_DEPTH + 1), {"a": [{"b": _nest(jsonio.MAX_DEPTH - 2)}]}):
        with pytest.raises(jsonio.TooDeep):
            jsonio.check_depth(deep)
    with pytest.raises(jsonio.TooDeep):
        jsonio.check_depth(_nest(100_000))  # not recursive
