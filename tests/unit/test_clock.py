"""The send path's cached clock: the same text iso_ms gives, across second boundaries."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from shared import clock


@pytest.mark.parametrize(
    "ns",
    [
        1_780_000_000_000_000_000,  # some second, .000
        1_780_000_000_999_999_999,  # its last millisecond
        1_780_000_001_000_000_000,  # the next second: the cached prefix must move
        1_780_000_001_123_456_789,
        1_798_761_599_999_000_000,  # the last millisecond of a year
        1_798_761_600_000_000_000,  # the first of the next
    ],
)
def test_now_iso_ms_formats_as_iso_ms_does(monkeypatch: pytest.MonkeyPatch, ns: int) -> None:
    monkeypatch.setattr("shared.clock.time.time_ns", lambda: ns)
    moment = datetime.fromtimestamp(ns // 1_000_000 / 1000, UTC)
    assert clock.now_iso_ms() == clock.iso_ms(moment)


def test_now_iso_ms_follows_the_clock_past_its_cached_second() -> None:
    first = clock.now_iso_ms()
    deadline = time.monotonic() + 5
    while clock.now_iso_ms()[:19] == first[:19]:  # poll until the second turns
        assert time.monotonic() < deadline
        time.sleep(0.01)
    later = clock.now_iso_ms()
    assert later > first
    assert clock.parse_iso_ms(later) <= datetime.now(UTC)
