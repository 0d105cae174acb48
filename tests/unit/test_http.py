"""api.http: reading a body with its bounds, chunk by chunk, as uvicorn hands it over."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterable
from typing import Any

import pytest
from starlette.datastructures import Headers
from starlette.requests import Request

from api.http import SendHeaders, check_declared_size, parse_json, read_body
from shared.errors import EventpipeError
from shared.jsonio import MAX_DEPTH
from tests.hostile import BODY, gzip_cut_before_trailer, gzip_empty_blocks

LIMIT = 32 * 1024


class Feed:
    """An ASGI receive() handing out `chunks`, counting what was taken; `cut`: the client
    disconnects after the last chunk, having said more was coming."""

    def __init__(self, chunks: Iterable[bytes], cut: bool = False) -> None:
        self.chunks = list(chunks)
        self.cut = cut
        self.taken = 0

    async def __call__(self) -> dict[str, Any]:
        if self.taken == len(self.chunks):
            return {"type": "http.disconnect"}
        self.taken += 1
        more = self.cut or self.taken < len(self.chunks)
        return {"type": "http.request", "body": self.chunks[self.taken - 1], "more_body": more}


def request(feed: Feed, **headers: str) -> Request:
    raw = [(k.lower().replace("_", "-").encode(), v.encode("latin-1")) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "headers": raw}, feed)


def split(data: bytes, size: int = 4096) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


async def refused(feed: Feed, **headers: str) -> EventpipeError:
    with pytest.raises(EventpipeError) as caught:
        await read_body(request(feed, **headers), LIMIT)
    return caught.value


async def test_plain_and_gzip_bodies_are_read_whole() -> None:
    assert await read_body(request(Feed(split(BODY, 7))), LIMIT) == BODY
    feed = Feed(split(gzip.compress(BODY), 5))
    assert await read_body(request(feed, content_encoding="gzip"), LIMIT) == BODY


async def test_a_stream_over_the_limit_stops_at_the_limit() -> None:
    feed = Feed(split(b"x" * (10 * LIMIT)))
    assert (await refused(feed)).status == 413
    assert feed.taken == LIMIT // 4096 + 1  # not one chunk more


@pytest.mark.parametrize(
    "data",
    [
        gzip.compress(BODY) + gzip.compress(b"garbage"),  # a second member
        gzip.compress(BODY) + b"GARBAGE" * 100,  # raw bytes after the trailer
        gzip.compress(BODY) + b"\x00",
    ],
)
async def test_data_after_the_gzip_stream_is_400_at_once(data: bytes) -> None:
    feed = Feed([*split(data, 64), *[b"more"] * 1000])
    exc = await refused(feed, content_encoding="gzip")
    assert (exc.status, exc.message) == (
        400,
        "Request body is not valid gzip: data after the end of the stream",
    )
    assert feed.taken <= len(split(data, 64)) + 1  # stopped there, nothing copied further


async def test_a_gzip_stream_cut_before_its_trailer_is_400() -> None:
    exc = await refused(Feed(split(gzip_cut_before_trailer(BODY))), content_encoding="gzip")
    assert exc.status == 400 and "cut short" in exc.message


async def test_compressed_bytes_count_against_the_limit() -> None:
    """An endless run of empty deflate blocks inflates to nothing: the bytes sent end it."""
    feed = Feed(split(gzip_empty_blocks(BODY, 1_000_000)))  # 5 MB on the wire
    assert (await refused(feed, content_encoding="gzip")).status == 413
    assert feed.taken == LIMIT // 4096 + 1


async def test_a_bomb_is_413_after_at_most_limit_bytes_inflated() -> None:
    bomb = gzip.compress(b"[" + b"0," * (5 * 1024 * 1024) + b"0]")  # 10 MB inflated
    assert len(bomb) < LIMIT
    assert (await refused(Feed([bomb]), content_encoding="gzip")).status == 413


async def test_invalid_gzip_is_400() -> None:
    assert (await refused(Feed([BODY]), content_encoding="gzip")).status == 400
    bad = zlib.compress(BODY)  # zlib, not gzip
    assert (await refused(Feed([bad]), content_encoding="gzip")).status == 400


async def test_a_disconnect_mid_body_is_a_400_not_a_500() -> None:
    """Starlette would raise ClientDisconnect, which the app took for a bug (500)."""
    assert (await refused(Feed([b'{"a": '], cut=True))).status == 400


@pytest.mark.parametrize(
    ("declared", "status"),
    [
        ("32769", 413),
        ("9" * 5000, 413),  # refused on its length, before int()
        ("\u00b2", 400),
        ("\u00d9\u00a3", 400),  # the UTF-8 bytes of Arabic-Indic 3, as latin-1
        ("-1", 400),
    ],
)
def test_a_declared_size_is_checked_with_a_bound(declared: str, status: int) -> None:
    with pytest.raises(EventpipeError) as caught:
        check_declared_size(request(Feed([]), content_length=declared), LIMIT)
    assert caught.value.status == status
    check_declared_size(request(Feed([]), content_length=str(LIMIT)), LIMIT)


def test_parse_json_holds_the_nesting_limit_and_the_nul_rule() -> None:
    assert parse_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    for body in (
        b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),
        b"[" * 1000 + b"]" * 1000,
        b'{"a": ' + b"[" * 600 + b'"\\u0000"' + b"]" * 600 + b"}",
        b'{"a\\u0000": 1}',
    ):
        with pytest.raises(EventpipeError) as caught:
            parse_json(body)
        assert caught.value.status == 400


def test_send_headers_answer_as_starlettes_headers_do() -> None:
    raw = [(b"content-length", b"12"), (b"x-dup", b"first"), (b"x-dup", b"second")]
    ours, theirs = SendHeaders({"headers": list(raw)}), Headers(raw=list(raw))
    for name in ("content-length", "Content-Length", "x-dup", "prefer", "X-Absent"):
        assert ours.get(name) == theirs.get(name)
        assert ours.get(name, "d") == theirs.get(name, "d")
    assert ours.getlist("x-dup") == ["first", "second"] and ours["x-dup"] == "first"
