"""shared.db: what a refused value tells the client."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any, cast

import pytest
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from shared.db import transaction
from shared.errors import ValueRefused

DRIVER_TEXT = "PostgreSQL text fields cannot contain NUL (0x00) bytes; bigint out of range"


class RefusingEngine:
    @contextlib.contextmanager
    def begin(self) -> Iterator[Any]:
        raise sa_exc.DataError("INSERT ...", {}, Exception(DRIVER_TEXT))
        yield  # pragma: no cover


def test_the_stores_words_are_logged_not_answered(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "eventpipe.store"):
        with pytest.raises(ValueRefused) as caught:
            with transaction(cast(Engine, RefusingEngine())):
                pass  # pragma: no cover
    assert caught.value.message == "A value in the request cannot be stored"
    assert "PostgreSQL" not in str(caught.value.to_body())
    assert DRIVER_TEXT in caplog.text
