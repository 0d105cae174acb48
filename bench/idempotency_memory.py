"""Redis memory per Idempotency-Key: a script that prints figures; it asserts nothing.

    .venv/bin/python bench/idempotency_memory.py [N]      # N keys, default 100000

Starts a private redis-server (from PATH) with no persistence, writes N keys exactly as the
send path leaves them (the claim script, then the answer record with its TTL, as the group
commit writes it), and prints the growth of `used_memory` per key and what a day of keyed
requests needs at a few rates.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as aioredis  # noqa: E402

from api.idempotency import Claim, Idempotency  # noqa: E402
from bench.world import SEED as SEED_EVENT  # noqa: E402
from shared.clock import iso_ms, utcnow  # noqa: E402
from shared.ids import new_id  # noqa: E402
from shared.settings import Settings  # noqa: E402

BATCH = 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def fill(url: str, n: int, project_id: str) -> float:
    """Write n keys; returns the growth of used_memory in bytes."""
    client = aioredis.Redis.from_url(url)
    settings = Settings()
    idem = Idempotency(client, settings.idempotency_claim_seconds, settings.idempotency_ttl_seconds)
    before = (await client.info("memory"))["used_memory"]
    for start in range(0, n, BATCH):
        records = []
        for i in range(start, min(n, start + BATCH)):
            event = {"id": new_id(), "createdAt": iso_ms(utcnow())}
            body = {**SEED_EVENT, "eventProperties": {"order_total": i}}
            claim = await idem.claim(project_id, f"order-{i}-completed", body, event)
            assert isinstance(claim, Claim), "every key is new"
            records.append(claim.answered(202, idem.ttl_seconds))
        async with client.pipeline(transaction=True) as pipe:
            for key, value, ttl in records:
                pipe.set(key, value, ex=ttl)
            await pipe.execute()
    after = (await client.info("memory"))["used_memory"]
    await client.aclose()
    return float(after - before)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not on PATH (Debian: apt-get install redis-server)")
    port = free_port()
    data = tempfile.mkdtemp(prefix="eventpipe-idem-")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", data],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        grown = asyncio.run(fill(f"redis://127.0.0.1:{port}/0", n, new_id()))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(data, ignore_errors=True)
    per_key = grown / n
    print(f"{n} keys: used_memory grew {grown / 1e6:.1f} MB, {per_key:.0f} bytes per key")
    print()
    print("| keyed requests/s | keys held at 24 h TTL | Redis memory |")
    print("|---|---|---|")
    for rate in (100, 1_000, 10_000):
        keys = rate * 86_400
        print(f"| {rate:,} | {keys / 1e6:,.1f} M | {keys * per_key / 1e9:,.1f} GB |")


if __name__ == "__main__":
    main()
