"""api.emails: pragmatic ASCII address syntax and normalisation."""

from typing import Any

import pytest

from api.emails import InvalidEmail, normalize_email


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("user@example.com", "user@example.com"),
        ("  User@Example.COM \n", "user@example.com"),
        ("first.last@sub.example.co.uk", "first.last@sub.example.co.uk"),
        ("a@b.io", "a@b.io"),
        ("user+tag@example.com", "user+tag@example.com"),
        ("!#$%&'*+/=?^_`{|}~-@example.com", "!#$%&'*+/=?^_`{|}~-@example.com"),
        ("o'brien@example.ie", "o'brien@example.ie"),
        ("x@my-host.example", "x@my-host.example"),
        ("x@123.example.com", "x@123.example.com"),
        ("x@a1-b2.c3.museum", "x@a1-b2.c3.museum"),
        ("x@xn--bcher-kva.example", "x@xn--bcher-kva.example"),
        ("l" * 64 + "@example.com", "l" * 64 + "@example.com"),
        ("x@" + "a" * 63 + ".com", "x@" + "a" * 63 + ".com"),
        ("x@example." + "a" * 63, "x@example." + "a" * 63),
    ],
)
def test_valid(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


def test_max_total_length() -> None:
    domain = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 10, "com"])  # 206 chars
    local = "l" * (254 - 1 - len(domain))
    address = f"{local}@{domain}"
    assert len(address) == 254
    assert normalize_email(f"  {address}  ") == address
    with pytest.raises(InvalidEmail):
        normalize_email("l" + address)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "plainaddress",
        "@example.com",
        "user@",
        "user@@example.com",
        "a@b@example.com",
        ".user@example.com",
        "user.@example.com",
        "us..er@example.com",
        "us er@example.com",
        '"quoted"@example.com',
        "user(comment)@example.com",
        "user,x@example.com",
        "user;x@example.com",
        "user\\x@example.com",
        "l" * 65 + "@example.com",
        "user@localhost",
        "user@example",
        "user@example.c",
        "user@example.c0m",
        "user@example.123",
        "user@example.xn--p1ai",
        "user@.example.com",
        "user@example..com",
        "user@example.com.",
        "user@-example.com",
        "user@example-.com",
        "user@exa_mple.com",
        "user@exa mple.com",
        "user@" + "a" * 64 + ".com",
        "user@[192.168.0.1]",
        "user@192.168.0.1",
        "usér@example.com",
        "user@exämple.com",
        "user@例え.jp",
        "user@example.com\nbcc@evil.com",
        "user\x00@example.com",
        "user@example.com\u200b",
        "user@ｅxample.com",
    ],
)
def test_invalid(raw: str) -> None:
    with pytest.raises(InvalidEmail):
        normalize_email(raw)


@pytest.mark.parametrize("raw", [None, 42, b"user@example.com", ["user@example.com"]])
def test_not_a_string(raw: Any) -> None:
    with pytest.raises(InvalidEmail):
        normalize_email(raw)


def test_invalid_email_is_a_value_error() -> None:
    assert issubclass(InvalidEmail, ValueError)
