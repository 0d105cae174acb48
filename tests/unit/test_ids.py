"""shared.ids: format, timestamps, and uniqueness across threads, forks and spawns."""

import multiprocessing
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from shared import ids
from shared.ids import id_time, is_id, new_id


def _draw(count: int) -> tuple[bool, list[str]]:
    """Runs in child processes: was the state still undrawn, and some fresh ids."""
    undrawn = ids._state is None
    return undrawn, [new_id() for _ in range(count)]


def test_format() -> None:
    value = new_id()
    assert len(value) == 24
    assert value == value.lower()
    int(value, 16)
    assert is_id(value)


def test_id_time() -> None:
    before = int(time.time())
    value = new_id()
    after = int(time.time())
    stamp = id_time(value)
    assert stamp.tzinfo is UTC
    assert before <= stamp.timestamp() <= after


def test_id_time_of_known_id() -> None:
    assert id_time("6a1f2c3e" + "0" * 16) == datetime.fromtimestamp(0x6A1F2C3E, tz=UTC)
    assert id_time("00000000" + "f" * 16) == datetime(1970, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("value", ["", "xyz", "6A1F2C3E0000000000000000", "0" * 23, "0" * 25])
def test_id_time_rejects_non_ids(value: str) -> None:
    with pytest.raises(ValueError):
        id_time(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0123456789abcdef01234567", True),
        ("0" * 24, True),
        ("0123456789ABCDEF01234567", False),
        ("0123456789abcdef0123456", False),
        ("0123456789abcdef012345678", False),
        ("0123456789abcdef0123456g", False),
        ("0123456789abcdef0123456\n", False),
        (" 0123456789abcdef0123456", False),
        ("０123456789abcdef0123456", False),
        (b"0123456789abcdef01234567", False),
        (None, False),
        (123, False),
    ],
)
def test_is_id(value: Any, expected: bool) -> None:
    assert is_id(value) is expected


def test_layout_within_a_process() -> None:
    first, second = new_id(), new_id()
    assert first[8:18] == second[8:18]  # same 5-byte process part
    assert (int(first[18:], 16) + 1) % 2**24 == int(second[18:], 16)


def test_counter_wraps(monkeypatch: pytest.MonkeyPatch) -> None:
    new_id()
    assert ids._state is not None
    monkeypatch.setattr(ids._state, "counter", 2**24 - 1)
    assert new_id()[18:] == "ffffff"
    assert new_id()[18:] == "000000"


def test_state_is_drawn_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ids, "_state", None)
    value = new_id()
    assert ids._state is not None
    assert ids._state.random_part.hex() == value[8:18]


def test_unique_in_one_process() -> None:
    drawn = [new_id() for _ in range(100_000)]
    assert len(set(drawn)) == len(drawn)


def test_unique_across_threads() -> None:
    results: list[list[str]] = [[] for _ in range(8)]

    def work(slot: list[str]) -> None:
        slot.extend(new_id() for _ in range(10_000))

    threads = [threading.Thread(target=work, args=(slot,)) for slot in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    drawn = [value for slot in results for value in slot]
    assert len(set(drawn)) == len(drawn) == 80_000


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_unique_across_processes(method: str) -> None:
    parent = [new_id() for _ in range(1_000)]  # state drawn before the children start
    context = multiprocessing.get_context(method)
    # One task per worker process, so that every task sees a brand-new process.
    # close() and join(), not the context manager: its terminate() races the pool's own
    # thread, which forks a replacement worker after each task (maxtasksperchild=1) that
    # terminate() may never signal, and the test then hangs (seen in a CI run).
    pool = context.Pool(4, maxtasksperchild=1)
    try:
        children = pool.map(_draw, [10_000] * 4, chunksize=1)
    finally:
        pool.close()
        pool.join()
    for undrawn, _ in children:
        # fork: the at-fork hook dropped the inherited state; spawn: the import drew nothing.
        assert undrawn
    parts = {parent[0][8:18]} | {drawn[0][8:18] for _, drawn in children}
    assert len(parts) == 5
    everything = parent + [value for _, drawn in children for value in drawn]
    assert len(set(everything)) == len(everything) == 41_000
