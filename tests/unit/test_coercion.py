"""api.coercion: one test row per rule and edge of the property-type contract."""

import math
import pickle
import sys
from typing import Any

import pytest

from api.coercion import PROPERTY_TYPES, CoercionError, coerce_suggested, coerce_value
from shared.jsonio import OutOfRange, loads

EXPECTED = {"string": "a string", "number": "a number", "date": "a date", "boolean": "a boolean"}
NEVER_VALID: list[Any] = [
    {},
    {"a": 1},
    [],
    [1],
    math.nan,
    math.inf,
    -math.inf,
    OutOfRange("1e400"),
    OutOfRange(),
    10**400,
    (1,),
    b"1",
    object(),
]


def test_property_types() -> None:
    assert PROPERTY_TYPES == ("string", "number", "date", "boolean")


@pytest.mark.parametrize("declared", PROPERTY_TYPES)
def test_none_passes_through(declared: str) -> None:
    assert coerce_value(declared, None) is None


@pytest.mark.parametrize("declared", PROPERTY_TYPES)
@pytest.mark.parametrize("value", NEVER_VALID, ids=repr)
def test_never_valid(declared: str, value: Any) -> None:
    with pytest.raises(CoercionError) as info:
        coerce_value(declared, value)
    assert info.value.expected == EXPECTED[declared]


@pytest.mark.parametrize("declared", ["text", "", "String", "int"])
def test_unknown_declared_type(declared: str) -> None:
    with pytest.raises(ValueError) as info:
        coerce_value(declared, "x")
    assert not isinstance(info.value, CoercionError)


def test_coercion_error() -> None:
    error = CoercionError("a number")
    assert isinstance(error, ValueError)
    assert error.expected == "a number"
    assert str(error) == "expected a number"
    copy = pickle.loads(pickle.dumps(CoercionError("a date", "detail")))
    assert (copy.expected, copy.detail) == ("a date", "detail")


# --- string ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("hello", "hello"),
        ("", ""),
        ("  padded  ", "  padded  "),
        ("x" * 10_000, "x" * 10_000),
        ("1e400", "1e400"),
        (True, "true"),
        (False, "false"),
        (42, "42"),
        (42.0, "42"),
        (-7, "-7"),
        (0, "0"),
        (0.0, "0"),
        (-0.0, "0"),
        (0.1, "0.1"),
        (-2.5, "-2.5"),
        (1e3, "1000"),
        (1e-7, "1e-7"),
        (1.5e-7, "1.5e-7"),
        (-1e-7, "-1e-7"),
        (1e-6, "0.000001"),
        (0.000123, "0.000123"),
        (123.456, "123.456"),
        (1e20, "100000000000000000000"),
        (1.2345678901234568e20, "123456789012345680000"),
        (1e21, "1e21"),
        (1.5e300, "1.5e300"),
        (-1e21, "-1e21"),
        (5e-324, "5e-324"),
        (sys.float_info.max, "1.7976931348623157e308"),
        (1 / 3, "0.3333333333333333"),
        (2**53 + 1, "9007199254740993"),
        (2**64 - 1, "18446744073709551615"),
        (float(2**64), "18446744073709552000"),
    ],
)
def test_string(value: Any, expected: str) -> None:
    assert coerce_value("string", value) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [("42", "42"), ("42.0", "42"), ("1e3", "1000"), ("1E-7", "1e-7"), ("-0.0", "0")],
)
def test_string_from_json_text(body: str, expected: str) -> None:
    assert coerce_value("string", loads(body)) == expected


# --- number ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (42, 42),
        (-42, -42),
        (0, 0),
        (42.0, 42),
        (-0.0, 0),
        (1e3, 1000),
        (0.5, 0.5),
        (-2.25, -2.25),
        (2**53 - 1, 2**53 - 1),
        (-(2**53) + 1, -(2**53) + 1),
        (2**53, float(2**53)),
        (-(2**53), float(-(2**53))),
        (2**64 - 1, float(2**64 - 1)),
        (9007199254740992.0, 9007199254740992.0),
        (1e300, 1e300),
        (sys.float_info.max, sys.float_info.max),
        ("129.99", 129.99),
        ("42", 42),
        (" -3 ", -3),
        ("\t7\n", 7),
        ("1e3", 1000),
        ("1E3", 1000),
        ("2.5e-3", 0.0025),
        ("+5", 5),
        (".5", 0.5),
        ("5.", 5),
        ("-.5", -0.5),
        ("0", 0),
        ("-0", 0),
        ("007", 7),
        ("1e-400", 0),
        ("9007199254740993", float(2**53)),
        ("1" * 100, float("1" * 100)),
    ],
)
def test_number(value: Any, expected: int | float) -> None:
    result = coerce_value("number", value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        "",
        "   ",
        "abc",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "Infinity",
        "infinity",
        "0x10",
        "1_000",
        "1,000",
        "1.2.3",
        "e5",
        "1e",
        "1e+",
        ".",
        "+",
        "-",
        "++1",
        "1 2",
        "٣",
        "１",
        "1e400",
        "-1e400",
        "true",
        "1" * 101,
        " " * 50 + "1" * 101 + " " * 50,
    ],
)
def test_number_invalid(value: Any) -> None:
    with pytest.raises(CoercionError) as info:
        coerce_value("number", value)
    assert info.value.expected == "a number"


def test_number_length_limit_applies_after_trimming() -> None:
    assert coerce_value("number", " " * 200 + "1" * 100 + " " * 200) == float("1" * 100)


# --- boolean --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("false", False),
        ("TRUE", True),
        ("False", False),
        ("tRuE", True),
        ("  true\n", True),
        (" FALSE ", False),
        (1, True),
        (0, False),
        (1.0, True),
        (0.0, False),
        (-0.0, False),
        ("1", True),
        ("0", False),
        (" 1 ", True),
        ("\t0\t", False),
    ],
)
def test_boolean(value: Any, expected: bool) -> None:
    assert coerce_value("boolean", value) is expected


@pytest.mark.parametrize(
    "value",
    [
        2,
        -1,
        0.5,
        1.0000001,
        "",
        "yes",
        "no",
        "on",
        "t",
        "f",
        "2",
        "1.0",
        "0.0",
        "01",
        "+1",
        "-0",
        "true false",
        "\u0130",
        "true" + " " * 101 + "x",
        "x" * 101,
    ],
)
def test_boolean_invalid(value: Any) -> None:
    with pytest.raises(CoercionError) as info:
        coerce_value("boolean", value)
    assert info.value.expected == "a boolean"


def test_boolean_length_limit_applies_after_trimming() -> None:
    assert coerce_value("boolean", " " * 500 + "true" + " " * 500) is True


# --- date -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-05-08", "2026-05-08T00:00:00.000Z"),
        ("2026-05-08T10:20", "2026-05-08T10:20:00.000Z"),
        ("2026-05-08T10:20:30", "2026-05-08T10:20:30.000Z"),
        ("2026-05-08T10:20:30Z", "2026-05-08T10:20:30.000Z"),
        ("2026-05-08t10:20:30z", "2026-05-08T10:20:30.000Z"),
        ("2026-05-08 10:20:30", "2026-05-08T10:20:30.000Z"),
        ("2026-05-08T10:20Z", "2026-05-08T10:20:00.000Z"),
        ("2026-05-08T10:20:30.5Z", "2026-05-08T10:20:30.500Z"),
        ("2026-05-08T10:20:30.12Z", "2026-05-08T10:20:30.120Z"),
        ("2026-05-08T10:20:30.123Z", "2026-05-08T10:20:30.123Z"),
        ("2026-05-08T10:20:30.1239Z", "2026-05-08T10:20:30.123Z"),
        ("2026-05-08T10:20:30.999999999Z", "2026-05-08T10:20:30.999Z"),
        ("2026-05-08T10:20:30+02:00", "2026-05-08T08:20:30.000Z"),
        ("2026-05-08T10:20:30-05:30", "2026-05-08T15:50:30.000Z"),
        ("2026-05-08T01:00:00+02:00", "2026-05-07T23:00:00.000Z"),
        ("2026-12-31T23:30:00-01:00", "2027-01-01T00:30:00.000Z"),
        ("2026-05-08T10:20+02:00", "2026-05-08T08:20:00.000Z"),
        ("2026-05-08T10:20:30-00:00", "2026-05-08T10:20:30.000Z"),
        ("2026-05-08T10:20:30+23:59", "2026-05-07T10:21:30.000Z"),
        ("  2026-05-08T10:20:30Z \n", "2026-05-08T10:20:30.000Z"),
        ("2024-02-29", "2024-02-29T00:00:00.000Z"),
        ("0001-01-01", "0001-01-01T00:00:00.000Z"),
        ("0999-03-04", "0999-03-04T00:00:00.000Z"),
        ("9999-12-31T23:59:59.999Z", "9999-12-31T23:59:59.999Z"),
        ("0001-01-01T00:30:00-00:30", "0001-01-01T01:00:00.000Z"),
        ("2026-05-08T10:20:30." + "1" * 70 + "Z", "2026-05-08T10:20:30.111Z"),
        # Epoch seconds below 1e11, milliseconds from 1e11 up.
        (0, "1970-01-01T00:00:00.000Z"),
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1778235630, "2026-05-08T10:20:30.000Z"),
        (1778235630.5, "2026-05-08T10:20:30.500Z"),
        (1778235630.1239, "2026-05-08T10:20:30.123Z"),
        (1.001, "1970-01-01T00:00:01.001Z"),
        (1778235630123, "2026-05-08T10:20:30.123Z"),
        (1778235630123.9, "2026-05-08T10:20:30.123Z"),
        (1778235630123.0, "2026-05-08T10:20:30.123Z"),
        (99_999_999_999, "5138-11-16T09:46:39.000Z"),
        (10**11, "1973-03-03T09:46:40.000Z"),
        (1e11, "1973-03-03T09:46:40.000Z"),
        (-1, "1969-12-31T23:59:59.000Z"),
        (-0.5, "1969-12-31T23:59:59.500Z"),
        (-0.0005, "1969-12-31T23:59:59.999Z"),
        (-(10**11), "1966-10-31T14:13:20.000Z"),
        (-62135596800, "0001-01-01T00:00:00.000Z"),
        (99_999_999_999.999, "5138-11-16T09:46:39.999Z"),
        (253402300799, "1978-01-11T21:31:40.799Z"),
        (253402300799999, "9999-12-31T23:59:59.999Z"),
        (-62135596800000, "0001-01-01T00:00:00.000Z"),
    ],
)
def test_date(value: Any, expected: str) -> None:
    assert coerce_value("date", value) == expected


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        "",
        "   ",
        "today",
        "20260508",
        "2026-W19",
        "2026-W19-5",
        "2026-128",
        "2026-05",
        "2026",
        "26-05-08",
        "2026-5-8",
        "2026/05/08",
        "2026-05-08T",
        "2026-05-08T10",
        "2026-05-08T1020",
        "2026-05-08T10:20:30.",
        "2026-05-08T10:20:30,5",
        "2026-05-08T10:20:30+02",
        "2026-05-08T10:20:30+0200",
        "2026-05-08T10:20:30 Z",
        "2026-05-08Z",
        "2026-05-08+02:00",
        "2026-05-08T10:20:30UTC",
        "2026-05-08  10:20",
        "2026-05-08_10:20",
        "2026-02-30",
        "2025-02-29",
        "2026-13-01",
        "2026-00-10",
        "2026-05-00",
        "2026-05-32",
        "0000-01-01",
        "2026-05-08T24:00",
        "2026-05-08T10:60",
        "2026-05-08T10:20:60",
        "2026-05-08T10:20:30+24:00",
        "2026-05-08T10:20:30+01:60",
        "0001-01-01T00:30:00+01:00",
        "9999-12-31T23:30:00-01:00",
        "２０２６-05-08",
        "2026-05-08T10:20:30." + "1" * 90 + "Z",
        " " * 10 + "x" * 101,
        -62135596801,
        -99_999_999_999,
        253402300800000,
        -62135596800001,
        1e300,
        -1e300,
        sys.float_info.max,
    ],
)
def test_date_invalid(value: Any) -> None:
    with pytest.raises(CoercionError) as info:
        coerce_value("date", value)
    assert info.value.expected == "a date"


def test_date_length_limit_applies_after_trimming() -> None:
    assert coerce_value("date", " " * 300 + "2026-05-08" + " " * 300) == "2026-05-08T00:00:00.000Z"


# --- suggested values -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "raw", "expected"),
    [
        ("string", None, []),
        ("number", None, []),
        ("string", [], []),
        ("string", "", []),
        ("string", "   ", []),
        ("string", "free, pro ,enterprise", ["free", "pro", "enterprise"]),
        ("string", "solo", ["solo"]),
        ("string", "a,,b", ["a", "", "b"]),
        ("string", ["  free ", "pro", 3, 2.0, True], ["free", "pro", "3", "2", "true"]),
        ("string", [None, "x"], [None, "x"]),
        ("number", "1, 2.5 ,1e3", [1, 2.5, 1000]),
        ("number", [1, " 2 ", 3.0, "4.5"], [1, 2, 3, 4.5]),
        ("boolean", "true, FALSE,1 , 0", [True, False, True, False]),
        ("boolean", [True, "false", 1, 0.0], [True, False, True, False]),
        (
            "date",
            "2026-05-08, 2026-05-09T10:00Z",
            ["2026-05-08T00:00:00.000Z", "2026-05-09T10:00:00.000Z"],
        ),
        ("date", [0, " 2026-05-08 "], ["1970-01-01T00:00:00.000Z", "2026-05-08T00:00:00.000Z"]),
    ],
)
def test_suggested(declared: str, raw: Any, expected: list[Any]) -> None:
    result = coerce_suggested(declared, raw)
    assert result == expected
    assert [type(v) for v in result] == [type(v) for v in expected]


@pytest.mark.parametrize(
    ("declared", "raw"),
    [
        ("number", "1, two, 3"),
        ("number", "1,,3"),
        ("number", ["1", {}]),
        ("number", [[1]]),
        ("boolean", "true, maybe"),
        ("date", ["2026-02-30"]),
        ("string", [{"a": 1}]),
        ("string", [math.nan]),
        ("number", [OutOfRange("1e400")]),
    ],
)
def test_suggested_bad_item(declared: str, raw: Any) -> None:
    with pytest.raises(CoercionError) as info:
        coerce_suggested(declared, raw)
    assert info.value.expected == EXPECTED[declared]


def test_suggested_error_names_the_item() -> None:
    with pytest.raises(CoercionError, match="#2"):
        coerce_suggested("number", "1, x, 3")


@pytest.mark.parametrize("raw", [{"a": 1}, 42, True, ("a",), b"a,b"])
def test_suggested_wrong_container(raw: Any) -> None:
    with pytest.raises(ValueError) as info:
        coerce_suggested("string", raw)
    assert not isinstance(info.value, CoercionError)


def test_suggested_unknown_declared_type() -> None:
    with pytest.raises(ValueError):
        coerce_suggested("text", None)
