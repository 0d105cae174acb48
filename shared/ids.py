"""Identifiers for stored records: 24 lower-case hex chars in the MongoDB ObjectId layout.

Bytes: 4-byte big-endian Unix seconds, 5 random bytes fixed per process, 3-byte
counter starting at a random value and wrapping at 2**24. Ids sort roughly by creation
time and need no coordination between API and worker processes.

The per-process part is drawn lazily on first use and discarded in forked children,
never at import time: a pre-fork server or an RQ work-horse imports this module once
and forks many times, and children sharing the parent's random bytes and counter
would produce colliding ids.
"""

import os
import re
import secrets
import threading
import time
from datetime import UTC, datetime
from typing import Final

__all__ = ["id_time", "is_id", "new_id"]

_COUNTER_MODULUS: Final = 2**24
_ID_RE: Final = re.compile(r"[0-9a-f]{24}")


class _ProcessState:
    """The per-process random bytes and the running counter."""

    __slots__ = ("counter", "random_part")

    def __init__(self) -> None:
        self.random_part = secrets.token_bytes(5)
        self.counter = int.from_bytes(secrets.token_bytes(3), "big")

    def next_counter(self) -> int:
        value = self.counter
        self.counter = (value + 1) % _COUNTER_MODULUS
        return value


_lock = threading.Lock()
_state: _ProcessState | None = None


def new_id() -> str:
    """A fresh id; unique across threads, processes and forks."""
    global _state
    with _lock:
        if _state is None:
            _state = _ProcessState()
        random_part, counter = _state.random_part, _state.next_counter()
    seconds = int(time.time()) & 0xFFFFFFFF  # wraps in 2106, like ObjectId
    return (seconds.to_bytes(4, "big") + random_part + counter.to_bytes(3, "big")).hex()


def is_id(value: object) -> bool:
    """Whether ``value`` is a string in the id format (24 lower-case hex characters)."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def id_time(value: str) -> datetime:
    """The UTC creation time (whole seconds) encoded in an id; ``ValueError`` if not an id."""
    if not is_id(value):
        raise ValueError(f"not an id: {value!r}")
    return datetime.fromtimestamp(int(value[:8], 16), tz=UTC)


def _after_fork_in_child() -> None:
    global _lock, _state
    # A fresh lock too: another parent thread may have held it at the moment of fork.
    _lock = threading.Lock()
    _state = None


os.register_at_fork(after_in_child=_after_fork_in_child)
