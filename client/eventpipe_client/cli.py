"""eventpipe-send: backfill an NDJSON or CSV file through the library, resumable.

Lines go in blocks of `--block` lines aligned on line numbers (lines 1-500, 501-1000, ...),
each block one batch whose Idempotency-Key is derived from the file's identity and the
block's line range. Blocks are acknowledged in file order in `<file>.progress`; a run resumes
after the last acknowledged block, and a block that was in flight at the interruption is sent
again with the same key and body, so the server answers it with its first receipts
(duplicates), never with second events.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO

from eventpipe_client._wire import Event, Outcome, batches_of
from eventpipe_client.client import Client

Line = tuple[int, str, Event | None, str]  # number, raw text, body (None: refused), why


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="eventpipe-send",
        description="Send every line of an NDJSON file (each a /v1/events/send body) or of a "
        "CSV file to eventpipe; run again to resume after the last acknowledged line.",
    )
    p.add_argument("--file", required=True, help="events.ndjson, or a .csv file")
    p.add_argument("--api-key", default=os.environ.get("EVENTPIPE_API_KEY"))
    p.add_argument("--base-url", default=os.environ.get("EVENTPIPE_BASE_URL"))
    p.add_argument("--csv", action="store_true", help="read CSV (implied by a .csv name)")
    p.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="CSV: FIELD is eventName, email, contactId or eventProperties.NAME "
        "(columns named eventName, email, contactId are mapped without it)",
    )
    p.add_argument("--event-name", help="CSV: the eventName of every row")
    p.add_argument("--rate", type=float, default=0, help="at most this many lines a second")
    p.add_argument("--concurrency", type=int, default=4, help="batches in flight (4)")
    p.add_argument("--block", type=int, default=500, help="lines per batch (1..500)")
    p.add_argument("--restart", action="store_true", help="ignore the progress; start over")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    args = p.parse_args(argv)
    if not args.api_key or not args.base_url:
        p.error("give --api-key and --base-url, or EVENTPIPE_API_KEY and EVENTPIPE_BASE_URL")
    if not 1 <= args.block <= 500:
        p.error("--block must be 1 to 500")
    args.csv = args.csv or args.file.lower().endswith(".csv")
    return args


def file_identity(path: str) -> str:
    """The first MiB of content, hashed: the same file (moved, copied, or grown at its end)
    keeps its keys; another file gets others."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(1 << 20)).hexdigest()[:24]


# --- reading lines -----------------------------------------------------------------------


def ndjson_lines(f: IO[str]) -> Iterator[Line]:
    for number, raw in enumerate(f, 1):
        text = raw.rstrip("\r\n")
        if not text.strip():
            continue
        try:
            body = json.loads(text)
        except ValueError as exc:
            yield number, text, None, f"INVALID_JSON: {exc}"
            continue
        if not isinstance(body, dict):
            yield number, text, None, "INVALID_JSON: a line must be a JSON object"
        else:
            yield number, text, body, ""


def csv_mapping(header: list[str], maps: list[str]) -> dict[str, str]:
    mapping: dict[str, str] = {n: n for n in ("eventName", "email", "contactId") if n in header}
    for item in maps:
        target, _, column = item.partition("=")
        if column not in header:
            raise SystemExit(f"eventpipe-send: --map {item}: no column {column!r}")
        mapping[target] = column
    return mapping


def csv_lines(f: IO[str], maps: list[str], event_name: str | None) -> Iterator[Line]:
    reader = csv.reader(f)
    header = next(reader, [])
    mapping = csv_mapping(header, maps)
    where = {target: header.index(column) for target, column in mapping.items()}
    for number, row in enumerate(reader, 1):
        if not any(cell.strip() for cell in row):
            continue
        out = io.StringIO()
        csv.writer(out).writerow(row)
        yield number, out.getvalue().rstrip("\r\n"), csv_body(row, where, event_name), ""


def csv_body(row: list[str], where: dict[str, int], event_name: str | None) -> Event:
    body: Event = {"eventName": event_name} if event_name else {}
    properties: dict[str, str] = {}
    for target, index in where.items():
        value = row[index] if index < len(row) else ""
        if value == "":
            continue  # an empty cell is an absent field
        if target.startswith("eventProperties."):
            properties[target.partition(".")[2]] = value  # the server coerces the text
        else:
            body[target] = value
    if properties:
        body["eventProperties"] = properties
    return body


def blocks(lines: Iterator[Line], size: int, after: int) -> Iterator[tuple[int, list[Line]]]:
    """(last line number of the block, its lines), blocks aligned on multiples of `size`."""
    current: list[Line] = []
    block_end = 0
    for line in lines:
        number = line[0]
        if number <= after:
            continue
        if number > block_end:
            if current:
                yield block_end, current
            current = []
            block_end = ((number - 1) // size + 1) * size
        current.append(line)
    if current:
        yield block_end, current


# --- progress ----------------------------------------------------------------------------


@dataclass
class Progress:
    """`<file>.progress`: the last acknowledged line, the size of the rejected file then,
    and the totals so far. Written atomically (a rename) after every acknowledged block."""

    path: str
    file_id: str
    line: int = 0
    rejected_bytes: int = 0
    totals: dict[str, int] = field(
        default_factory=lambda: {"accepted": 0, "duplicate": 0, "rejected": 0}
    )

    @classmethod
    def load(cls, path: str, file_id: str, restart: bool) -> Progress:
        if restart or not os.path.exists(path):
            return cls(path, file_id)
        with open(path) as f:
            saved = json.load(f)
        if saved["fileId"] != file_id:
            raise SystemExit(
                f"eventpipe-send: {path} is the progress of another file; --restart to start over"
            )
        return cls(path, file_id, saved["line"], saved["rejectedBytes"], saved["totals"])

    def save(self) -> None:
        data = {
            "fileId": self.file_id,
            "line": self.line,
            "rejectedBytes": self.rejected_bytes,
            "totals": self.totals,
        }
        with open(self.path + ".tmp", "w") as f:
            json.dump(data, f)
        os.replace(self.path + ".tmp", self.path)


class Pace:
    """At most `rate` lines a second (0: no limit)."""

    def __init__(self, rate: float) -> None:
        self.rate, self.started, self.count = rate, time.monotonic(), 0

    def take(self, n: int) -> None:
        self.count += n
        if self.rate > 0:
            ahead = self.started + self.count / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)


# --- the run -----------------------------------------------------------------------------


@dataclass
class Block:
    end: int
    lines: list[Line]
    outcomes: Future[list[Outcome]]


class Backfill:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.file_id = file_identity(args.file)
        base, ext = os.path.splitext(args.file)
        self.rejected_path = f"{base}.rejected{ext}"
        self.progress = Progress.load(args.file + ".progress", self.file_id, args.restart)
        self.resumed_after = self.progress.line
        self.client = Client(args.api_key, args.base_url, threads=args.concurrency)
        self.run_counts = {"accepted": 0, "duplicate": 0, "rejected": 0}
        self.codes: dict[str, int] = {}
        self.show = sys.stderr.isatty() if args.progress is None else args.progress
        self.size = max(1, os.path.getsize(args.file))
        self.started = time.monotonic()
        self.shown = 0.0
        self.failure: str | None = None

    def key(self, lines: list[Line]) -> str:
        return f"eventpipe-send:{self.file_id}:{lines[0][0]}-{lines[-1][0]}"

    def send_block(self, lines: list[Line]) -> list[Outcome]:
        bodies = [line[2] for line in lines if line[2] is not None]
        if not bodies:
            return []
        sendable = [line for line in lines if line[2] is not None]
        outcomes = []
        start = 0
        for batch in batches_of(bodies):  # split only when a block is over 1 MB
            part = sendable[start : start + len(batch.events)]
            start += len(batch.events)
            batch.key = self.key(part)
            outcomes.append(self.client.deliver(batch))
        return outcomes

    def run(self) -> int:
        opener = open(self.args.file, newline="" if self.args.csv else None, encoding="utf-8")
        with opener as f, open(self.rejected_path, "a+b") as rejected:
            rejected.truncate(self.progress.rejected_bytes)
            rejected.seek(0, os.SEEK_END)
            lines = (
                csv_lines(f, self.args.map, self.args.event_name)
                if self.args.csv
                else ndjson_lines(f)
            )
            try:
                self.pump(f, lines, rejected)
            except KeyboardInterrupt:
                self.failure = "interrupted"
        return self.summary()

    def pump(self, f: IO[str], lines: Iterator[Line], rejected: IO[bytes]) -> None:
        pace = Pace(self.args.rate)
        window: deque[Block] = deque()
        with ThreadPoolExecutor(self.args.concurrency) as pool:
            try:
                for end, block in blocks(lines, self.args.block, self.progress.line):
                    pace.take(len(block))
                    window.append(Block(end, block, pool.submit(self.send_block, block)))
                    while len(window) > 2 * self.args.concurrency or (
                        window and window[0].outcomes.done()
                    ):
                        if not self.acknowledge(window.popleft(), rejected):
                            return
                    self.show_progress(f)
                while window:
                    if not self.acknowledge(window.popleft(), rejected):
                        return
            finally:
                for pending in window:
                    pending.outcomes.cancel()

    def acknowledge(self, block: Block, rejected: IO[bytes]) -> bool:
        """Record a finished block, in file order; False (stop) if it could not be sent."""
        outcomes = block.outcomes.result()
        failed = next((o.failed for o in outcomes if o.failed), None)
        if failed:
            self.failure = f"lines {block.lines[0][0]}-{block.end} not sent: {failed}"
            return False
        refused = {id(body): code for o in outcomes for body, code, _ in o.rejected}
        counts = {"accepted": 0, "duplicate": 0, "rejected": 0}
        for _, raw, body, local in block.lines:
            code = local.partition(":")[0] if body is None else refused.get(id(body))
            if code:
                rejected.write(raw.encode() + b"\n")
                counts["rejected"] += 1
                self.codes[code] = self.codes.get(code, 0) + 1
        counts["accepted"] = sum(o.sent for o in outcomes)
        counts["duplicate"] = sum(o.duplicate for o in outcomes)
        rejected.flush()
        # The block's last line, not its end: a file that grows later goes on from there.
        self.progress.line = block.lines[-1][0]
        self.progress.rejected_bytes = rejected.tell()
        self.progress.totals = {k: self.progress.totals[k] + v for k, v in counts.items()}
        self.progress.save()
        self.run_counts = {k: self.run_counts[k] + v for k, v in counts.items()}
        return True

    def show_progress(self, f: IO[str]) -> None:
        now = time.monotonic()
        if not self.show or now - self.shown < 0.5:
            return
        self.shown = now
        try:
            done = f.buffer.tell() / self.size  # type: ignore[attr-defined]
        except (AttributeError, OSError, ValueError):
            done = 0.0
        bar = "#" * int(done * 30)
        rate = (self.progress.line - self.resumed_after) / max(now - self.started, 1e-9)
        sys.stderr.write(
            f"\r[{bar:<30}] {done:6.1%} line {self.progress.line:,} ({rate:,.0f} lines/s)"
        )
        sys.stderr.flush()

    def summary(self) -> int:
        self.client.close()
        if self.show:
            sys.stderr.write("\n")
        run = self.run_counts
        seconds = time.monotonic() - self.started
        print(
            f"eventpipe-send: {self.args.file}: lines {self.resumed_after + 1}-"
            f"{self.progress.line} in {seconds:.1f} s: {run['accepted']:,} accepted, "
            f"{run['duplicate']:,} duplicate, {run['rejected']:,} rejected"
            + (f" (written to {self.rejected_path})" if run["rejected"] else "")
        )
        if self.codes:
            codes = ", ".join(f"{code} {n:,}" for code, n in sorted(self.codes.items()))
            print(f"eventpipe-send: rejected by code: {codes}")
        totals = self.progress.totals
        print(
            f"eventpipe-send: the whole file so far: {totals['accepted']:,} accepted, "
            f"{totals['duplicate']:,} duplicate, {totals['rejected']:,} rejected"
        )
        if self.failure:
            print(
                f"eventpipe-send: stopped: {self.failure}; run again to resume after line "
                f"{self.progress.line}",
                file=sys.stderr,
            )
            return 1
        return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return Backfill(args).run()


if __name__ == "__main__":
    sys.exit(main())
