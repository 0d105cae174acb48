"""POST /v1/events/batch on fakeredis and SQLite: receipts for every mix of items."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from sqlalchemy import Engine, select
from starlette.testclient import TestClient

from api.idempotency import BATCH_KEY_PREFIX, BatchClaim, fingerprint, redis_key
from shared.db import transaction
from shared.models import events
from shared.queue import queue_figures
from tests.factories import SEND
from tests.unit.conftest import auth
from tests.unit.test_api import run_queued_jobs, setup_seed
from worker.context import WorkerContext

Project = tuple[str, str, str]
BAD_VALUE = {**SEND, "eventProperties": {"order_total": "lots"}}


def batch(
    client: TestClient, key: str, items: list[Any], headers: dict[str, str] | None = None
) -> Any:
    headers = auth(key) | (headers or {})
    return client.post("/v1/events/batch", json={"events": items}, headers=headers)


def statuses(r: Any) -> list[str]:
    return [receipt["status"] for receipt in r.json()["data"]["receipts"]]


def stored_ids(engine: Engine) -> set[str]:
    with transaction(engine) as conn:
        return set(conn.execute(select(events.c.id)).scalars())


def test_all_good_items_are_one_job_and_stored_in_order(
    client: TestClient, project: Project, worker_ctx: WorkerContext, engine: Engine
) -> None:
    setup_seed(client, project[1])
    items = [{**SEND, "eventProperties": {"order_total": i}} for i in range(500)]
    r = batch(client, project[1], items)
    assert r.status_code == 202 and r.json()["success"] is True
    data = r.json()["data"]
    assert (data["accepted"], data["duplicates"], data["rejected"]) == (500, 0, 0)
    assert [x["index"] for x in data["receipts"]] == list(range(500))
    assert worker_ctx.queue.rq.count == 1
    payload_ids = [e["id"] for e in worker_ctx.queue.rq.jobs[0].args[0]["events"]]
    assert payload_ids == [x["id"] for x in data["receipts"]]
    run_queued_jobs(worker_ctx)
    assert stored_ids(engine) == set(payload_ids)


def test_mixed_items_each_get_their_own_receipt(
    client: TestClient, project: Project, worker_ctx: WorkerContext
) -> None:
    setup_seed(client, project[1])
    items = [
        SEND,
        BAD_VALUE,
        {**SEND, "eventName": "nope"},
        {"eventName": "order_completed"},
        "not an object",
        {**SEND, "eventProperties": {"foo": 1}},
        {**SEND, "idempotencyKey": ""},
        {**SEND, "idempotencyKey": 7},
    ]
    r = batch(client, project[1], items)
    assert r.status_code == 202
    receipts = r.json()["data"]["receipts"]
    assert statuses(r) == ["accepted"] + ["rejected"] * 7
    assert [x["error"]["code"] for x in receipts[1:]] == [
        "INVALID_PROPERTY_VALUE",
        "EVENT_NOT_FOUND",
        "EMAIL_OR_CONTACT_ID_REQUIRED",
        "VALIDATION_FAILED",
        "UNKNOWN_PROPERTY",
        "VALIDATION_FAILED",
        "VALIDATION_FAILED",
    ]
    # The same messages as the single send.
    single = client.post("/v1/events/send", json=BAD_VALUE, headers=auth(project[1]))
    assert receipts[1]["error"] == single.json()["error"]
    assert all(x["id"] is None for x in receipts[1:])
    assert worker_ctx.queue.rq.count == 1  # the batch's job; the refused single send queued nothing


def test_all_bad_is_400_with_the_receipts(
    client: TestClient, project: Project, worker_ctx: WorkerContext
) -> None:
    setup_seed(client, project[1])
    r = batch(client, project[1], [BAD_VALUE, {"eventName": 1}])
    body = r.json()
    assert r.status_code == 400 and body["success"] is False
    assert body["error"]["code"] == "VALIDATION_FAILED"
    assert statuses(r) == ["rejected", "rejected"] and body["data"]["rejected"] == 2
    assert worker_ctx.queue.rq.count == 0


def test_keys_within_a_batch_across_batches_and_with_single_sends(
    client: TestClient, project: Project, worker_ctx: WorkerContext, engine: Engine
) -> None:
    setup_seed(client, project[1])
    single = client.post(
        "/v1/events/send", json=SEND, headers=auth(project[1]) | {"Idempotency-Key": "a"}
    ).json()["data"]["id"]
    other = {**SEND, "eventProperties": {"order_total": 1}}
    items = [
        {**SEND, "idempotencyKey": "a"},  # the single send's key and body: duplicate
        {**other, "idempotencyKey": "a"},  # its key, another body: mismatch
        {**other, "idempotencyKey": "b"},  # new: accepted
        {**other, "idempotencyKey": "b"},  # the same again in this batch: duplicate of 2
        {**SEND, "idempotencyKey": "b"},  # key b, another body: mismatch
        {**BAD_VALUE, "idempotencyKey": "c"},  # refused: saves nothing
        {**SEND, "idempotencyKey": "c"},  # so c is free here: accepted
    ]
    r = batch(client, project[1], items)
    receipts = r.json()["data"]["receipts"]
    assert statuses(r) == [
        "duplicate",
        "rejected",
        "accepted",
        "duplicate",
        "rejected",
        "rejected",
        "accepted",
    ]
    assert receipts[0]["id"] == single
    assert receipts[1]["error"]["code"] == "IDEMPOTENCY_KEY_MISMATCH"
    assert receipts[3]["id"] == receipts[2]["id"]
    assert receipts[4]["error"]["code"] == "IDEMPOTENCY_KEY_MISMATCH"
    # Across batches, and a single send with an item's key.
    again = batch(client, project[1], [{**other, "idempotencyKey": "b"}])
    assert statuses(again) == ["duplicate"] and again.status_code == 202
    assert again.json()["data"]["receipts"][0]["id"] == receipts[2]["id"]
    repeat = client.post(
        "/v1/events/send", json=other, headers=auth(project[1]) | {"Idempotency-Key": "b"}
    )
    assert repeat.headers["Idempotent-Replayed"] == "true"
    assert repeat.json()["data"]["id"] == receipts[2]["id"]
    run_queued_jobs(worker_ctx)
    assert stored_ids(engine) == {single, receipts[2]["id"], receipts[6]["id"]}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"events": []},
        {"events": "x"},
        {"events": [SEND] * 501},
        [SEND],
    ],
)
def test_the_batch_itself_must_hold_1_to_500_items(
    client: TestClient, project: Project, body: Any, worker_ctx: WorkerContext
) -> None:
    setup_seed(client, project[1])
    r = client.post("/v1/events/batch", json=body, headers=auth(project[1]))
    assert r.status_code == 400 and r.json()["error"]["code"] == "VALIDATION_FAILED"
    assert worker_ctx.queue.rq.count == 0


def test_size_limits_gzip_and_a_bomb(client: TestClient, project: Project) -> None:
    setup_seed(client, project[1])
    h = auth(project[1])
    big = {**SEND, "eventProperties": {"currency": "x" * 3000}}
    over = {"events": [big] * 400}  # ~1.2 MB
    assert client.post("/v1/events/batch", json=over, headers=h).status_code == 413
    raw = json.dumps({"events": [SEND] * 500}).encode()
    r = client.post(
        "/v1/events/batch",
        content=gzip.compress(raw),
        headers=h | {"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert r.status_code == 202 and r.json()["data"]["accepted"] == 500
    bomb = gzip.compress(b"[" + b" " * (50 * 1024 * 1024) + b"]")
    r = client.post("/v1/events/batch", content=bomb, headers=h | {"Content-Encoding": "gzip"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_a_batch_key_replays_the_receipts_and_queues_nothing_again(
    client: TestClient, project: Project, worker_ctx: WorkerContext, engine: Engine
) -> None:
    setup_seed(client, project[1])
    items = [SEND, BAD_VALUE, {**SEND, "eventProperties": {"order_total": 2}}]
    key = {"Idempotency-Key": "batch-1"}
    first = batch(client, project[1], items, headers=key)
    assert statuses(first) == ["accepted", "rejected", "accepted"]
    # The same body, spelt differently (gzip, another key order): the first receipts.
    raw = gzip.compress(json.dumps({"events": items}, sort_keys=True).encode())
    gz = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    again = client.post("/v1/events/batch", content=raw, headers=auth(project[1]) | key | gz)
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert statuses(again) == ["duplicate", "rejected", "duplicate"]
    first_receipts = first.json()["data"]["receipts"]
    again_receipts = again.json()["data"]["receipts"]
    assert [x["id"] for x in again_receipts] == [x["id"] for x in first_receipts]
    assert again_receipts[1]["error"] == first_receipts[1]["error"]
    assert again.json()["data"]["duplicates"] == 2
    assert queue_figures(worker_ctx.queue).jobs == 1
    other = batch(client, project[1], items[:1], headers=key)
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "IDEMPOTENCY_KEY_MISMATCH"
    run_queued_jobs(worker_ctx)
    assert stored_ids(engine) == {first_receipts[0]["id"], first_receipts[2]["id"]}


def test_a_batch_key_is_in_use_while_claimed_and_free_after_a_refused_batch(
    client: TestClient, project: Project, worker_ctx: WorkerContext
) -> None:
    setup_seed(client, project[1])
    key = {"Idempotency-Key": "batch-2"}
    refused = batch(client, project[1], [BAD_VALUE], headers=key)
    assert refused.status_code == 400
    # Nothing was saved: the key takes another body now.
    ok = batch(client, project[1], [SEND], headers=key)
    assert ok.status_code == 202 and statuses(ok) == ["accepted"]
    # A first request of batch-3 still in flight: its claim, as claim_batch writes it.
    in_flight = {"Idempotency-Key": "batch-3"}
    redis = worker_ctx.queue.connection
    name = redis_key(project[0], "batch-3", BATCH_KEY_PREFIX)
    redis.set(name, BatchClaim(name, fingerprint({"events": [SEND]})).held())
    busy = batch(client, project[1], [SEND], headers=in_flight)
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "IDEMPOTENCY_KEY_IN_USE"
