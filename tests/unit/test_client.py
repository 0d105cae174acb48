"""The producer library's decisions, driven step by step (sans-IO) or over a mock transport:
retries and their keys, Retry-After, receipts read item by item, keys in use, the budget,
drop mode, sync mode, AsyncClient, and eventpipe-send's blocks and resume."""

from __future__ import annotations

import gzip
import json
import threading
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from eventpipe_client import AsyncClient, Client, Counters, EventpipeError, Policy, cli
from eventpipe_client._wire import (
    IN_USE,
    Batch,
    Post,
    Reply,
    Report,
    Sleep,
    batches_of,
    deliver,
)

EVENT = {"eventName": "order_completed", "email": "jane@example.com"}
FAST = Policy(retry_seconds=5, base_delay=0.001, max_delay=0.01, in_use_seconds=5)


def receipts(*statuses: str, code: str = "INVALID_PROPERTY_VALUE") -> dict[str, Any]:
    items = []
    for index, status in enumerate(statuses):
        item: dict[str, Any] = {"index": index, "status": status, "id": None}
        if status == "rejected":
            item["error"] = {"code": code, "message": "no"}
        else:
            item["id"] = f"{index:024x}"
        items.append(item)
    ok = any(s != "rejected" for s in statuses)
    return {"success": ok, "data": {"receipts": items}}


def recorder() -> tuple[Report, list[Any], list[Any]]:
    rejected: list[Any] = []
    errors: list[Any] = []
    report = Report(
        Counters(), lambda e, c, m: rejected.append((e, c)), lambda es, r: errors.append((es, r))
    )
    return report, rejected, errors


def test_a_retry_repeats_the_key_and_body_and_waits_at_least_retry_after() -> None:
    report, _, errors = recorder()
    steps = deliver(Batch.of([EVENT, EVENT]), FAST, report)
    first = next(steps)
    assert isinstance(first, Post) and first.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(first.content)) == {"events": [EVENT, EVENT]}
    wait = steps.send(Reply(503, {"success": False}, retry_after=2.0))
    assert isinstance(wait, Sleep) and wait.seconds >= 2.0
    again = steps.send(Reply())
    assert isinstance(again, Post)
    assert again.headers["Idempotency-Key"] == first.headers["Idempotency-Key"]
    assert again.content == first.content
    wait = steps.send(Reply(error="ConnectError: refused"))
    assert isinstance(wait, Sleep) and wait.seconds <= FAST.max_delay
    steps.send(Reply())
    with pytest.raises(StopIteration) as done:
        steps.send(Reply(202, receipts("accepted", "duplicate")))
    assert (done.value.value.sent, done.value.value.duplicate) == (1, 1)
    assert report.counters.snapshot() | {} == {
        "sent": 1,
        "duplicate": 1,
        "rejected": 0,
        "failed": 0,
        "dropped": 0,
        "retried": 4,
    }
    assert errors == []


def test_a_400_with_receipts_is_read_item_by_item() -> None:
    report, rejected, errors = recorder()
    events = [{**EVENT, "n": i} for i in range(3)]
    steps = deliver(Batch.of(events), FAST, report)
    next(steps)
    with pytest.raises(StopIteration):
        steps.send(Reply(400, receipts("rejected", "rejected", "rejected")))
    assert [(e["n"], code) for e, code in rejected] == [(0, "INVALID_PROPERTY_VALUE")] + [
        (i, "INVALID_PROPERTY_VALUE") for i in (1, 2)
    ]
    assert report.counters.rejected == 3 and errors == []


def test_items_whose_key_is_in_use_go_again_in_a_batch_of_their_own() -> None:
    report, rejected, _ = recorder()
    events = [{**EVENT, "n": i} for i in range(3)]
    steps = deliver(Batch.of(events), FAST, report)
    first = next(steps)
    answer = receipts("accepted", "rejected", "accepted", code=IN_USE)
    assert isinstance(steps.send(Reply(202, answer)), Sleep)
    second = steps.send(Reply())
    assert isinstance(first, Post) and isinstance(second, Post)
    assert json.loads(gzip.decompress(second.content))["events"] == [events[1]]
    assert second.headers["Idempotency-Key"] != first.headers["Idempotency-Key"]
    with pytest.raises(StopIteration):
        steps.send(Reply(202, receipts("duplicate")))
    assert rejected == [] and report.counters.snapshot()["sent"] == 2
    assert report.counters.duplicate == 1 and report.counters.retried == 1


def test_a_batch_key_in_use_is_retried_past_the_retry_budget_until_the_claim_time() -> None:
    report, _, errors = recorder()
    policy = Policy(retry_seconds=0, base_delay=0.001, max_delay=0.001, in_use_seconds=5)
    steps = deliver(Batch.of([EVENT]), policy, report)
    next(steps)
    in_use = {"success": False, "error": {"code": IN_USE, "message": "in flight"}}
    assert isinstance(steps.send(Reply(409, in_use)), Sleep)
    # Another 503 with no budget left: the events go to on_error with the reason.
    steps.send(Reply())
    with pytest.raises(StopIteration) as done:
        steps.send(Reply(503, {"success": False, "error": {"code": "SERVICE_UNAVAILABLE"}}))
    assert done.value.value.failed and "503 SERVICE_UNAVAILABLE" in done.value.value.failed
    assert errors == [([EVENT], done.value.value.failed)]
    assert report.counters.failed == 1


def test_a_refusal_of_the_whole_batch_is_not_retried() -> None:
    report, _, errors = recorder()
    steps = deliver(Batch.of([EVENT]), FAST, report)
    next(steps)
    with pytest.raises(StopIteration):
        steps.send(Reply(401, {"success": False, "error": {"code": "UNAUTHORIZED"}}))
    assert report.counters.retried == 0 and errors[0][1].startswith("401 UNAUTHORIZED")


def test_the_backoff_is_jittered_and_capped() -> None:
    delays = [FAST.delay(20, None) for _ in range(200)]
    assert all(0 <= d <= FAST.max_delay for d in delays) and len(set(delays)) > 100
    assert Policy().delay(0, 7.0) >= 7.0


def test_batches_over_a_megabyte_are_split() -> None:
    big = [{**EVENT, "pad": "x" * 30_000} for _ in range(100)]
    parts = batches_of(big)
    assert len(parts) > 1 and sum(len(p.events) for p in parts) == 100
    assert all(len(p.body) <= 1024 * 1024 for p in parts)


class Server:
    """A mock eventpipe: answers each batch by `answer(n events)`, recording them."""

    def __init__(self, status: int = 202, hold: threading.Event | None = None) -> None:
        self.status, self.hold, self.events, self.keys = status, hold, [], []  # type: ignore[var-annotated]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.hold is not None:
            self.hold.wait(10)
        body = json.loads(gzip.decompress(request.content))
        self.events.extend(body["events"])
        self.keys.append(request.headers["Idempotency-Key"])
        return httpx.Response(self.status, json=receipts(*["accepted"] * len(body["events"])))


def test_the_client_batches_in_the_background_and_flushes() -> None:
    server = Server()
    client = Client("AS_x", "http://ep", transport=httpx.MockTransport(server), linger=0.01)
    for i in range(1200):
        assert client.send("order_completed", email="jane@example.com", properties={"n": i})
    assert client.flush(10)
    assert sorted(e["eventProperties"]["n"] for e in server.events) == list(range(1200))
    assert len(server.keys) >= 3 and len(set(server.keys)) == len(server.keys)
    assert client.counters.sent == 1200
    client.close()
    assert not client.send("order_completed", email="jane@example.com")
    assert client.counters.dropped == 1


def test_a_full_queue_drops_and_counts_or_blocks() -> None:
    hold = threading.Event()
    server = Server(hold=hold)
    dropping = Client(
        "AS_x",
        "http://ep",
        max_queue=10,
        block=False,
        threads=1,
        linger=0.001,
        transport=httpx.MockTransport(server),
    )
    results = [dropping.send("e", email="a@b.co") for _ in range(1000)]
    hold.set()
    assert dropping.flush(10)
    snap = dropping.counters.snapshot()
    assert snap["dropped"] == results.count(False) > 0
    assert snap["sent"] == results.count(True) == len(server.events)
    dropping.close()
    blocking = Client(
        "AS_x",
        "http://ep",
        max_queue=10,
        threads=1,
        linger=0.001,
        transport=httpx.MockTransport(Server()),
    )
    assert all(blocking.send("e", email="a@b.co") for _ in range(1000))
    assert blocking.flush(10) and blocking.counters.sent == 1000
    blocking.close()


def test_sync_mode_delivers_before_send_returns() -> None:
    server = Server()
    with Client("AS_x", "http://ep", sync=True, transport=httpx.MockTransport(server)) as client:
        client.send("order_completed", contact_id="6b07ce1917312a624726013a")
        assert len(server.events) == 1 and client.counters.sent == 1


def test_send_one_sends_prefer_wait_and_raises_refusals() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx.Response(
                201, json={"success": True, "data": {"id": "x", "contactId": "c"}}
            )
        error = {"code": "CONTACT_NOT_FOUND_FOR_EVENT", "message": "Contact not found"}
        return httpx.Response(404, json={"success": False, "error": error})

    with Client("AS_x", "http://ep", transport=httpx.MockTransport(handler)) as client:
        assert client.send_one("e", email="a@b.co", wait=5) == {"id": "x", "contactId": "c"}
        assert seen[0].headers["Prefer"] == "wait=5" and seen[0].headers["Idempotency-Key"]
        with pytest.raises(EventpipeError) as refused:
            client.send_one("e", email="ghost@b.co", wait=5)
    assert refused.value.status == 404 and refused.value.code == "CONTACT_NOT_FOUND_FOR_EVENT"


def test_send_needs_a_contact() -> None:
    with Client("AS_x", "http://ep", transport=httpx.MockTransport(Server())) as client:
        with pytest.raises(ValueError):
            client.send("e")


async def test_the_async_client_batches_and_flushes() -> None:
    server = Server()

    async def handler(request: httpx.Request) -> httpx.Response:
        await request.aread()
        return server(request)

    client = AsyncClient("AS_x", "http://ep", transport=httpx.MockTransport(handler), linger=0.01)
    for i in range(1100):
        assert await client.send("order_completed", email="jane@example.com", properties={"n": i})
    assert await client.flush(10)
    assert sorted(e["eventProperties"]["n"] for e in server.events) == list(range(1100))
    assert client.counters.sent == 1100
    await client.close()


# --- eventpipe-send ----------------------------------------------------------------------


def test_blocks_are_aligned_on_line_numbers_so_a_resume_repeats_whole_blocks() -> None:
    lines = [(n, "", {"n": n}, "") for n in range(1, 12) if n != 5]  # line 5 is blank
    got = [(end, [line[0] for line in block]) for end, block in cli.blocks(iter(lines), 4, 0)]
    assert got == [(4, [1, 2, 3, 4]), (8, [6, 7, 8]), (12, [9, 10, 11])]
    resumed = [end for end, _ in cli.blocks(iter(lines), 4, 8)]
    assert resumed == [12]


def test_csv_rows_map_to_send_bodies(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("Email,Total,ignored\njane@example.com,12.5,x\n,,\nbob@example.com,,y\n")
    maps = ["email=Email", "eventProperties.order_total=Total"]
    with path.open(newline="") as f:
        rows = list(cli.csv_lines(f, maps, "order_completed"))
    assert [(n, body) for n, _, body, _ in rows] == [
        (
            1,
            {
                "eventName": "order_completed",
                "email": "jane@example.com",
                "eventProperties": {"order_total": "12.5"},
            },
        ),
        (3, {"eventName": "order_completed", "email": "bob@example.com"}),
    ]
    with path.open(newline="") as f, pytest.raises(SystemExit):
        list(cli.csv_lines(f, ["email=Nope"], None))


def test_ndjson_lines_that_are_not_objects_are_refused_locally() -> None:
    import io

    got = list(cli.ndjson_lines(io.StringIO('{"a": 1}\n\n[1]\nnot json\n')))
    assert [(n, body is None) for n, _, body, _ in got] == [(1, False), (3, True), (4, True)]


def test_a_backfill_writes_rejected_lines_and_resumes_from_its_progress(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_text("".join(json.dumps({**EVENT, "n": n}) + "\n" for n in range(1, 8)) + "oops\n")
    seen: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        events = json.loads(gzip.decompress(request.content))["events"]
        seen.extend(e["n"] for e in events)
        statuses = ["rejected" if e["n"] == 2 else "accepted" for e in events]
        return httpx.Response(202, json=receipts(*statuses))

    argv = ["--file", str(path), "--api-key", "AS_x", "--base-url", "http://ep", "--block", "3"]
    args = cli.parse_args(argv)
    run = cli.Backfill(args)
    run.client = Client("AS_x", "http://ep", transport=httpx.MockTransport(handler))
    assert run.run() == 0
    assert sorted(seen) == list(range(1, 8))
    rejected = (tmp_path / "events.rejected.ndjson").read_text().splitlines()
    assert [line if line == "oops" else json.loads(line)["n"] for line in rejected] == [2, "oops"]
    progress = json.loads((tmp_path / "events.ndjson.progress").read_text())
    assert progress["line"] == 8 and progress["totals"] == {
        "accepted": 6,
        "duplicate": 0,
        "rejected": 2,
    }
    # Run again: nothing left after line 8; the rejected file is not written twice.
    again = cli.Backfill(cli.parse_args(argv))
    again.client = Client("AS_x", "http://ep", transport=httpx.MockTransport(handler))
    assert again.run() == 0 and sorted(seen) == list(range(1, 8))
    assert len((tmp_path / "events.rejected.ndjson").read_text().splitlines()) == 2


FORK_AT_ONCE = """
import os, sys, time
from eventpipe_client import Client, Policy

# Nothing listens there: the sender fails fast and gives up after its short budget.
client = Client("AS_x_y_z", sys.argv[1], linger=0, policy=Policy(retry_seconds=0.2))
client.send("order_completed", email="jane@example.com")  # starts the sender threads
time.sleep(float(sys.argv[2]))
pid = os.fork()  # the senders are busy delivering that event: (were) making their pool
if pid == 0:
    client.send("order_completed", email="jane@example.com")
    os._exit(0 if client.close(10) is not None else 1)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_fork_just_after_the_first_send_leaves_a_child_that_can_send(tmp_path: Path) -> None:
    """A fresh interpreter each time: the hang came from a fork during httpx2's first, lazy
    import of its transport, which only a new process has (one run in three hung)."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed once the block ends
    script = tmp_path / "fork.py"
    script.write_text(FORK_AT_ONCE)
    for pause in ("0.002", "0.005", "0.01", "0.02", "0.04"):
        argv = [sys.executable, str(script), base, pause]
        # Its own session: on a timeout the whole group goes, the forked child with it.
        with subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        ) as proc:
            try:
                _, stderr = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # all gone already
                proc.wait()
                raise
        assert proc.returncode == 0, stderr.decode()[-2000:]
