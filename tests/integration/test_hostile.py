"""The hostile-input corpus (tests/hostile.py) against a real uvicorn server, and what only the
HTTP server sees: oversized request lines and headers, and a declared size it must refuse
before the body arrives."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx2 as httpx
import pytest

from cli.httpserver import MAX_HEAD_BYTES, MAX_HEADERS, MAX_URL_BYTES
from tests.hostile import CORPUS, OPERATOR_TOKEN, run_corpus
from tests.integration.services import Proc, start_api
from tests.integration.test_pipeline import new_project

CHUNK = 16 * 1024


@pytest.fixture
def server(env: dict[str, str], procs_cleanup: list[Proc]) -> Iterator[tuple[str, str]]:
    """(base URL, project key) of a running API with the admin API on."""
    project = new_project(env)
    proc, base = start_api({**env, "OPERATOR_TOKEN": OPERATOR_TOKEN})
    procs_cleanup.append(proc)
    yield base, project["apiKey"]


def test_the_corpus_gets_4xx_from_a_real_server(server: tuple[str, str]) -> None:
    base, key = server
    with httpx.Client(base_url=base, timeout=30) as http:
        assert run_corpus(http, key) == len(CORPUS)
        assert http.get("/healthz").status_code == 200  # and the server is still fine


def _stream(base: str, head: bytes, filler: bytes, total: int) -> tuple[bytes, int]:
    """Send `head`, then up to `total` bytes of `filler` in small writes, watching for an
    answer after each; (the answer, the bytes sent when it came)."""
    address = urlsplit(base)
    sent = 0
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(head)
        try:
            while sent < total:
                sock.sendall(filler * (CHUNK // len(filler)))
                sent += CHUNK
                if select.select([sock], [], [], 0.02)[0]:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed first: what it answered is still read below
        return _read_answer(sock), sent


def _read_answer(sock: socket.socket) -> bytes:
    answer = b""
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    except (ConnectionResetError, TimeoutError):
        pass
    return answer


@pytest.mark.parametrize(
    ("head", "status", "code", "limit"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: ", 431, "HEADERS_TOO_LARGE", MAX_HEAD_BYTES),
        (b"GET /healthz?", 414, "URI_TOO_LONG", MAX_URL_BYTES),
    ],
)
def test_64_mb_of_header_or_url_is_refused_once_past_its_limit(
    server: tuple[str, str], head: bytes, status: int, code: str, limit: int
) -> None:
    base, _ = server
    answer, sent = _stream(base, head, b"a", 64 << 20)
    assert answer.startswith(b"HTTP/1.1 %d" % status), answer[:200]
    assert b'"code":"%s"' % code.encode() in answer
    # Refused after its limit and at most one more read (256 KB), not after 64 MB.
    assert sent < limit + (1 << 20), sent


def test_too_many_headers_is_431(server: tuple[str, str]) -> None:
    base, key = server
    headers = {f"X-H{i}": "1" for i in range(MAX_HEADERS + 1)}
    r = httpx.get(f"{base}/healthz", headers=headers)
    assert r.status_code == 431 and r.json()["error"]["code"] == "HEADERS_TOO_LARGE"
    fine = {f"X-H{i}": "1" for i in range(MAX_HEADERS - 10)}
    assert httpx.get(f"{base}/healthz", headers=fine).status_code == 200


def test_a_declared_size_over_the_limit_is_413_before_the_body_comes(
    server: tuple[str, str],
) -> None:
    """Content-Length: 50 MB with gzip, and 2 bytes sent: the answer comes at once."""
    base, _ = server
    address = urlsplit(base)
    head = (
        b"POST /v1/events/send HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
        b"Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n\x1f\x8b"
    )
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        while b"}}" not in answer:  # the head and the envelope, maybe in two reads
            data = sock.recv(65536)
            assert data, answer
            answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"PAYLOAD_TOO_LARGE" in answer


@pytest.mark.parametrize("declared", [b"\xb2", b"\xd9\xa3", b"9" * 5000])
def test_a_malformed_content_length_is_400_in_the_envelope(
    server: tuple[str, str], declared: bytes
) -> None:
    base, _ = server
    address = urlsplit(base)
    head = b"POST /v1/events/send HTTP/1.1\r\nHost: x\r\nContent-Length: " + declared
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(head + b"\r\n\r\n{}")
        answer = _read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b'"success":false' in answer
