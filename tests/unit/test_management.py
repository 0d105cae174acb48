"""The management API on SQLite and fakeredis: definitions, contacts, event logs."""

from __future__ import annotations

import base64
import time
from typing import Any

import fakeredis
import pytest
from sqlalchemy import Engine
from starlette.testclient import TestClient

from api.eventlog import decode_cursor, encode_cursor, parse_query
from shared.errors import ValidationFailed
from shared.settings import Settings
from tests.factories import SEND
from tests.unit.conftest import SEED_DEFINITION, auth, make_client, make_project
from tests.unit.test_api import run_queued_jobs, setup_seed
from worker.context import WorkerContext

Project = tuple[str, str, str]


def code_of(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


# --- definitions -------------------------------------------------------------------------


def test_definitions_list_get_patch_delete(client: TestClient, project: Project) -> None:
    h = auth(project[1])
    assert client.post("/v1/events", json=SEED_DEFINITION, headers=h).status_code == 201
    assert client.post("/v1/events", json={"eventName": "signup"}, headers=h).status_code == 201
    listed = client.get("/v1/events", headers=h).json()["data"]["events"]
    assert [d["eventName"] for d in listed] == ["signup", "order_completed"]  # newest first

    got = client.get("/v1/events/eventName/order_completed", headers=h)
    assert got.status_code == 200 and got.json()["data"] == listed[1]

    patched = client.patch(
        "/v1/events/eventName/order_completed",
        json={"properties": [{"propertyName": "sku", "type": "string", "suggestedValues": "a, b"}]},
        headers=h,
    ).json()["data"]
    # A given `properties` replaces the whole schema; the description is left alone.
    assert [p["propertyName"] for p in patched["properties"]] == ["sku"]
    assert patched["properties"][0]["suggestedValues"] == ["a", "b"]
    assert patched["description"] == SEED_DEFINITION["description"]
    assert patched["id"] == listed[1]["id"] and patched["updatedAt"] >= listed[1]["updatedAt"]

    cleared = client.patch(
        "/v1/events/eventName/order_completed", json={"description": None}, headers=h
    ).json()["data"]
    assert cleared["description"] is None and cleared["properties"] == patched["properties"]

    deleted = client.delete("/v1/events/eventName/order_completed", headers=h)
    assert deleted.json() == {"success": True, "message": "Event deleted successfully"}
    assert code_of(client.get("/v1/events/eventName/order_completed", headers=h)) == (
        404,
        "EVENT_NOT_FOUND",
    )
    assert [
        d["eventName"] for d in client.get("/v1/events", headers=h).json()["data"]["events"]
    ] == ["signup"]
    # The name is free again, with a new id.
    again = client.post("/v1/events", json=SEED_DEFINITION, headers=h).json()["data"]
    assert again["id"] != listed[1]["id"]


def test_definition_errors(client: TestClient, project: Project) -> None:
    h = auth(project[1])
    client.post("/v1/events", json=SEED_DEFINITION, headers=h)
    path = "/v1/events/eventName/order_completed"
    assert code_of(client.patch(path, json={}, headers=h)) == (400, "NO_DATA_TO_UPDATE")
    assert code_of(client.patch(path, json={"unknown": 1}, headers=h)) == (400, "NO_DATA_TO_UPDATE")
    assert code_of(client.patch(path, json={"eventName": "renamed"}, headers=h)) == (
        400,
        "VALIDATION_FAILED",
    )
    bad = client.patch(
        path, json={"properties": [{"propertyName": "a-b", "type": "number"}]}, headers=h
    )
    assert code_of(bad) == (400, "VALIDATION_FAILED")
    assert bad.json()["error"]["details"][0]["field"] == "properties[0].propertyName"
    too_many = [{"propertyName": f"p{i}", "type": "string"} for i in range(51)]
    assert code_of(client.patch(path, json={"properties": too_many}, headers=h)) == (
        400,
        "VALIDATION_FAILED",
    )
    missing = "/v1/events/eventName/nope"
    assert code_of(client.patch(missing, json={"description": "x"}, headers=h)) == (
        404,
        "EVENT_NOT_FOUND",
    )
    assert code_of(client.delete(missing, headers=h)) == (404, "EVENT_NOT_FOUND")
    assert code_of(client.get("/v1/events/eventName/" + "x" * 65, headers=h)) == (
        404,
        "EVENT_NOT_FOUND",
    )
    assert code_of(client.patch(path, content=b"{", headers=h)) == (400, "VALIDATION_FAILED")
    assert code_of(client.patch(path, json=[1], headers=h)) == (400, "VALIDATION_FAILED")
    big = b'{"description": "' + b"x" * 1_100_000 + b'"}'
    assert code_of(client.patch(path, content=big, headers=h)) == (413, "PAYLOAD_TOO_LARGE")


def test_definition_changes_reach_sends_at_once(
    client: TestClient, project: Project, worker_ctx: WorkerContext
) -> None:
    h = auth(project[1])
    setup_seed(client, project[1])
    assert client.post("/v1/events/send", json=SEND, headers=h).status_code == 202
    client.patch(
        "/v1/events/eventName/order_completed",
        json={"properties": [{"propertyName": "order_total", "type": "number"}]},
        headers=h,
    )
    r = client.post("/v1/events/send", json=SEND, headers=h)
    assert code_of(r) == (400, "UNKNOWN_PROPERTY")
    client.delete("/v1/events/eventName/order_completed", headers=h)
    r = client.post("/v1/events/send", json=SEND, headers=h)
    assert code_of(r) == (404, "EVENT_NOT_FOUND")
    # The event accepted before the delete is still stored, and its log still readable.
    run_queued_jobs(worker_ctx)
    contact = client.post(
        "/v1/contacts/search/emails", json={"emails": ["jane@example.com"]}, headers=h
    )
    contact_id = contact.json()["data"]["contacts"][0]["id"]
    log = client.get(f"/v1/contacts/{contact_id}/events", headers=h).json()["data"]
    assert [e["eventName"] for e in log["events"]] == ["order_completed"]


def test_every_definition_endpoint_is_scoped_to_the_project(
    client: TestClient, project: Project, engine: Engine, fake_redis: fakeredis.FakeRedis
) -> None:
    client.post("/v1/events", json=SEED_DEFINITION, headers=auth(project[1]))
    other = auth(make_project(engine, fake_redis, "other")[1])
    time.sleep(0.2)  # the other project's key reaches the app at its next config poll
    path = "/v1/events/eventName/order_completed"
    assert client.get("/v1/events", headers=other).json()["data"]["events"] == []
    assert code_of(client.get(path, headers=other)) == (404, "EVENT_NOT_FOUND")
    assert code_of(client.patch(path, json={"description": "x"}, headers=other)) == (
        404,
        "EVENT_NOT_FOUND",
    )
    assert code_of(client.delete(path, headers=other)) == (404, "EVENT_NOT_FOUND")
    # ...and the other project may declare the same name for itself.
    assert client.post("/v1/events", json=SEED_DEFINITION, headers=other).status_code == 201
    assert client.get(path, headers=auth(project[1])).status_code == 200


# --- contacts ----------------------------------------------------------------------------


def test_create_get_and_conflict(client: TestClient, project: Project) -> None:
    h = auth(project[1])
    r = client.post(
        "/v1/contacts",
        json={"email": " Jane@Example.com", "firstName": "Jane", "extra": "ignored"},
        headers=h,
    )
    assert r.status_code == 201
    created = r.json()["data"]
    assert created["email"] == "jane@example.com" and created["customFields"] == {}
    assert client.get(f"/v1/contacts/{created['id']}", headers=h).json()["data"] == created
    assert code_of(client.post("/v1/contacts", json={"email": "JANE@example.com"}, headers=h)) == (
        409,
        "CONTACT_ALREADY_EXISTS",
    )
    assert code_of(client.post("/v1/contacts", json={"email": "nope"}, headers=h)) == (
        400,
        "VALIDATION_FAILED",
    )
    assert code_of(
        client.post("/v1/contacts", json={"email": "a@b.co", "firstName": 3}, headers=h)
    ) == (
        400,
        "VALIDATION_FAILED",
    )
    assert code_of(client.get("/v1/contacts/60d5ec49f1b2c72d9c8b9999", headers=h)) == (
        404,
        "CONTACT_NOT_FOUND",
    )
    assert code_of(client.get("/v1/contacts/not-an-id", headers=h)) == (404, "CONTACT_NOT_FOUND")


def test_bulk_update_counts_bad_items_without_refusing_the_rest(
    client: TestClient, project: Project
) -> None:
    h = auth(project[1])
    client.post("/v1/contacts", json={"email": "jane@example.com", "lastName": "Doe"}, headers=h)
    r = client.post(
        "/v1/contacts/bulk-update",
        json={
            "contacts": [
                {"email": "JANE@example.com", "firstName": "Jane"},
                {"email": "not an email"},
                "not an object",
                {"email": "bob@example.com", "customFields": {"vip": True}},
            ]
        },
        headers=h,
    )
    data = r.json()["data"]
    assert r.status_code == 200
    assert (data["successCount"], data["failedCount"], data["totalCount"]) == (2, 2, 4)
    assert [e["index"] for e in data["errors"]] == [1, 2]
    found = client.post(
        "/v1/contacts/search/emails",
        json={"emails": ["bob@example.com", "jane@example.com", "ghost@example.com"]},
        headers=h,
    ).json()["data"]["contacts"]
    assert [(c["email"], c["firstName"], c["lastName"]) for c in found] == [
        ("bob@example.com", None, None),
        ("jane@example.com", "Jane", "Doe"),
    ]
    bad_bodies: list[dict[str, Any]] = [
        {},
        {"contacts": []},
        {"contacts": [{"email": "a@b.co"}] * 101},
    ]
    for bad in bad_bodies:
        assert code_of(client.post("/v1/contacts/bulk-update", json=bad, headers=h)) == (
            400,
            "VALIDATION_FAILED",
        )


def test_search_and_remove_check_their_email_lists(client: TestClient, project: Project) -> None:
    h = auth(project[1])
    bad_bodies: list[dict[str, Any]] = [
        {},
        {"emails": []},
        {"emails": "a@b.co"},
        {"emails": ["a@b.co"] * 1001},
    ]
    for bad in bad_bodies:
        for path in ("/v1/contacts/search/emails", "/v1/contacts/remove"):
            assert code_of(client.post(path, json=bad, headers=h)) == (400, "VALIDATION_FAILED")
    r = client.post("/v1/contacts/search/emails", json={"emails": ["ok@b.co", "bad"]}, headers=h)
    assert r.json()["error"]["details"] == [
        {"field": "emails[1]", "message": "must be a valid email"}
    ]


def test_deleting_contacts_forgets_their_events(
    client: TestClient, project: Project, worker_ctx: WorkerContext
) -> None:
    h = auth(project[1])
    setup_seed(client, project[1])
    bob = client.post("/v1/contacts", json={"email": "bob@example.com", "userId": "u1"}, headers=h)
    client.post("/v1/contacts", json={"email": "bo@example.com", "userId": "u1"}, headers=h)
    ann = client.post("/v1/contacts", json={"email": "ann@example.com"}, headers=h).json()["data"]
    for email in ("jane@example.com", "bob@example.com", "ann@example.com", "gone@example.com"):
        client.post("/v1/events/send", json={**SEND, "email": email}, headers=h)
    run_queued_jobs(worker_ctx)
    sent = client.post("/v1/events/send", json={**SEND, "email": "bob@example.com"}, headers=h)
    bob_event = sent.json()["data"]["id"]

    jane = client.post("/v1/contacts/email", json={"email": "jane@example.com"}, headers=h).json()[
        "data"
    ]
    jane_events = client.get(f"/v1/contacts/{jane['id']}/events", headers=h).json()["data"]
    assert len(jane_events["events"]) == 1
    assert client.delete(f"/v1/contacts/{jane['id']}", headers=h).json() == {
        "success": True,
        "message": "Contact deleted successfully",
    }
    assert code_of(client.get(f"/v1/contacts/{jane['id']}", headers=h)) == (
        404,
        "CONTACT_NOT_FOUND",
    )
    assert code_of(client.get(f"/v1/events/{jane_events['events'][0]['id']}", headers=h)) == (
        404,
        "NOT_FOUND",
    )
    assert code_of(client.delete(f"/v1/contacts/{jane['id']}", headers=h)) == (
        404,
        "CONTACT_NOT_FOUND",
    )

    # By userId: every contact holding it goes. Bob's event still queued then fails when its
    # job runs: the contact is gone (kept as failed, like any unresolvable event).
    assert client.delete("/v1/contacts/email/userId/u1", headers=h).status_code == 200
    assert code_of(client.get(f"/v1/contacts/{bob.json()['data']['id']}", headers=h)) == (
        404,
        "CONTACT_NOT_FOUND",
    )
    assert code_of(client.delete("/v1/contacts/email/userId/u1", headers=h)) == (
        404,
        "CONTACT_NOT_FOUND",
    )
    run_queued_jobs(worker_ctx)
    assert client.get(f"/v1/events/{bob_event}", headers=h).json()["data"]["status"] == "failed"

    # Remove by email: unknown emails are fine; ann's stored event goes too.
    r = client.post(
        "/v1/contacts/remove", json={"emails": ["ANN@example.com", "ghost@example.com"]}, headers=h
    )
    assert r.json() == {"success": True}
    assert code_of(client.get(f"/v1/contacts/{ann['id']}/events", headers=h)) == (
        404,
        "CONTACT_NOT_FOUND",
    )
    # The failed event of a never-created contact stays: no contact of that email was deleted.
    client.post("/v1/contacts/remove", json={"emails": ["bob@example.com"]}, headers=h)
    assert client.get(f"/v1/events/{bob_event}", headers=h).status_code == 200
    client.post("/v1/contacts", json={"email": "bob@example.com"}, headers=h)
    client.post("/v1/contacts/remove", json={"emails": ["bob@example.com"]}, headers=h)
    # Deleting a contact of that email forgets the failed event that named it.
    assert code_of(client.get(f"/v1/events/{bob_event}", headers=h)) == (404, "NOT_FOUND")


def test_contacts_are_scoped_to_the_project(
    client: TestClient, project: Project, engine: Engine, fake_redis: fakeredis.FakeRedis
) -> None:
    h = auth(project[1])
    jane = client.post(
        "/v1/contacts", json={"email": "jane@example.com", "userId": "u1"}, headers=h
    ).json()["data"]
    other = auth(make_project(engine, fake_redis, "other")[1])
    time.sleep(0.2)
    assert code_of(client.get(f"/v1/contacts/{jane['id']}", headers=other)) == (
        404,
        "CONTACT_NOT_FOUND",
    )
    assert code_of(client.get(f"/v1/contacts/{jane['id']}/events", headers=other)) == (
        404,
        "CONTACT_NOT_FOUND",
    )
    assert code_of(client.delete(f"/v1/contacts/{jane['id']}", headers=other)) == (
        404,
        "CONTACT_NOT_FOUND",
    )
    assert code_of(client.delete("/v1/contacts/email/userId/u1", headers=other)) == (
        404,
        "CONTACT_NOT_FOUND",
    )
    client.post("/v1/contacts/remove", json={"emails": ["jane@example.com"]}, headers=other)
    searched = client.post(
        "/v1/contacts/search/emails", json={"emails": ["jane@example.com"]}, headers=other
    )
    assert searched.json()["data"]["contacts"] == []
    # The other project's upsert makes its own contact; the first project's one is untouched.
    mine = client.post("/v1/contacts/email", json={"email": "jane@example.com"}, headers=other)
    assert mine.json()["data"]["id"] != jane["id"]
    assert client.get(f"/v1/contacts/{jane['id']}", headers=h).json()["data"] == jane


# --- the event log -----------------------------------------------------------------------


def _send_many(client: TestClient, key: str, names: list[str]) -> list[str]:
    ids = []
    for name in names:
        r = client.post("/v1/events/send", json={**SEND, "eventName": name}, headers=auth(key))
        assert r.status_code == 202, r.text
        ids.append(r.json()["data"]["id"])
    return ids


def test_event_log_pages_newest_first_with_filters(
    client: TestClient, project: Project, worker_ctx: WorkerContext
) -> None:
    h = auth(project[1])
    setup_seed(client, project[1])
    client.post("/v1/events", json={**SEED_DEFINITION, "eventName": "refund"}, headers=h)
    names = ["order_completed", "refund"] * 6
    ids = []
    for name in names:  # one job each, so the store's sequence follows the send order
        ids += _send_many(client, project[1], [name])
        run_queued_jobs(worker_ctx)
    contact = client.post("/v1/contacts/email", json={"email": "jane@example.com"}, headers=h)
    path = f"/v1/contacts/{contact.json()['data']['id']}/events"

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 5, **({"cursor": cursor} if cursor else {})}
        page = client.get(path, params=params, headers=h).json()["data"]
        seen += [e["id"] for e in page["events"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]

    refunds = client.get(path, params={"eventName": "refund", "limit": 1000}, headers=h).json()
    assert [e["id"] for e in refunds["data"]["events"]] == ids[1::2][::-1]
    assert refunds["data"]["nextCursor"] is None
    first = client.get(path, params={"limit": 1}, headers=h).json()["data"]["events"][0]
    assert first["status"] == "stored" and first["contactId"] == contact.json()["data"]["id"]

    future = client.get(path, params={"since": "2999-01-01"}, headers=h).json()["data"]
    assert future == {"events": [], "nextCursor": None}
    everything = client.get(
        path,
        params={"since": "2000-01-01", "until": "2999-01-01T00:00:00Z", "limit": 1000},
        headers=h,
    ).json()["data"]["events"]
    assert len(everything) == len(ids)
    assert (
        client.get(path, params={"until": "2000-01-01"}, headers=h).json()["data"]["events"] == []
    )


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"limit": "-1"},
        {"cursor": "garbage!"},
        {"cursor": encode_cursor(5)[:-2] + "zz"},
        {"since": "yesterday"},
        {"until": "2026-13-01"},
    ],
)
def test_event_log_refuses_bad_parameters(
    client: TestClient, project: Project, params: dict[str, str]
) -> None:
    h = auth(project[1])
    contact = client.post("/v1/contacts", json={"email": "jane@example.com"}, headers=h)
    r = client.get(f"/v1/contacts/{contact.json()['data']['id']}/events", params=params, headers=h)
    assert code_of(r) == (400, "VALIDATION_FAILED")


def test_cursor_round_trip() -> None:
    for seq in (1, 123456789, 2**62, 2**63 - 1):
        assert decode_cursor(encode_cursor(seq)) == seq
    with pytest.raises(ValidationFailed):
        decode_cursor(encode_cursor(1).replace("cz", "eA"))


@pytest.mark.parametrize(
    "cursor",
    [
        "czrCsg",  # base64 of "s:²"
        "czrZow",  # "s:٣"
        "c!z!o!x",  # junk a lenient decoder drops
        encode_cursor(1) + "=",  # padding is not ours
        "czo5OTk5OTk5OTk5OTk5OTk5OTk5",  # s:9999999999999999999, past a bigint
        base64.urlsafe_b64encode(b"s:" + b"9" * 30).decode(),
        "A" * 1024,
        "",
    ],
)
def test_cursors_this_api_never_gave_out_are_400(cursor: str) -> None:
    with pytest.raises(ValidationFailed):
        decode_cursor(cursor)


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "\u00b2"},
        {"limit": "\u0663"},
        {"limit": "\uff15"},
        {"limit": "9" * 5000},
        {"limit": "0"},
        {"limit": "1001"},
        {"since": "99999999999d"},
        {"since": "0000-01-01"},
        {"until": "9" * 5000},
        {"eventName": "a\x00b"},
    ],
)
def test_event_log_queries_are_bounded(params: dict[str, str]) -> None:
    with pytest.raises(ValidationFailed):
        parse_query(params)
    assert parse_query({"limit": "1000"}).limit == 1000


def test_every_management_endpoint_needs_a_key(
    settings: Settings, engine: Engine, fake_server: fakeredis.FakeServer, project: Project
) -> None:
    cid = "60d5ec49f1b2c72d9c8b9999"
    calls = [
        ("GET", "/v1/events"),
        ("GET", "/v1/events/eventName/x"),
        ("PATCH", "/v1/events/eventName/x"),
        ("DELETE", "/v1/events/eventName/x"),
        ("POST", "/v1/contacts"),
        ("POST", "/v1/contacts/bulk-update"),
        ("POST", "/v1/contacts/search/emails"),
        ("POST", "/v1/contacts/remove"),
        ("GET", f"/v1/contacts/{cid}"),
        ("DELETE", f"/v1/contacts/{cid}"),
        ("DELETE", "/v1/contacts/email/userId/u1"),
        ("GET", f"/v1/contacts/{cid}/events"),
    ]
    with make_client(settings, engine, fake_server) as client:
        for method, path in calls:
            r = client.request(method, path, json={}, headers={"Authorization": "Bearer AS_nope"})
            assert code_of(r) == (401, "UNAUTHORIZED"), (method, path)


def test_nul_characters_are_refused_before_anything_is_accepted(
    client: TestClient, project: Project, worker_ctx: WorkerContext
) -> None:
    """PostgreSQL holds no U+0000 in text or jsonb: an event carrying one would be accepted,
    then fail in the worker forever. Refused at the edge, wherever it hides."""
    h = auth(project[1])
    setup_seed(client, project[1])
    nul = "a\x00b"
    bodies: list[tuple[str, dict[str, Any]]] = [
        ("/v1/events/send", {**SEND, "eventProperties": {"currency": nul}}),
        ("/v1/events/send", {**SEND, "eventProperties": {nul: 1}}),
        ("/v1/events", {"eventName": "e", "description": nul}),
        ("/v1/contacts", {"email": "n@example.com", "customFields": {"k": [nul]}}),
    ]
    for path, body in bodies:
        r = client.post(path, json=body, headers=h)
        assert code_of(r) == (400, "VALIDATION_FAILED"), (path, r.text)
        assert "NUL" in r.json()["error"]["message"]
    assert worker_ctx.queue.rq.count == 0
    # The six characters \u0000 written out (an escaped backslash) are ordinary text.
    literal = client.post(
        "/v1/events/send",
        json={**SEND, "eventProperties": {"currency": "\\u0000"}},
        headers=h,
    )
    assert literal.status_code == 202
    assert literal.json()["data"]["properties"]["currency"] == "\\u0000"


def test_huge_numbers_survive_the_store_round_trip(
    client: TestClient, project: Project, worker_ctx: WorkerContext
) -> None:
    h = auth(project[1])
    setup_seed(client, project[1])
    sent = client.post(
        "/v1/events/send",
        json={**SEND, "eventProperties": {"order_total": 5.09e52}},
        headers=h,
    ).json()["data"]
    contact = client.post(
        "/v1/contacts/email",
        json={"email": "jane@example.com", "customFields": {"big": 5.09e52}},
        headers=h,
    )
    assert contact.json()["data"]["customFields"] == {"big": 5.09e52}
    run_queued_jobs(worker_ctx)
    stored = client.get(f"/v1/events/{sent['id']}", headers=h).json()["data"]
    assert stored["status"] == "stored" and stored["properties"]["order_total"] == 5.09e52


def test_bulk_update_counts_a_merge_over_the_cap_as_failed(
    client: TestClient, project: Project
) -> None:
    h = auth(project[1])
    full = {f"k{i}": i for i in range(100)}
    assert (
        client.post(
            "/v1/contacts/email", json={"email": "a@b.co", "customFields": full}, headers=h
        ).status_code
        == 200
    )
    items = [
        {"email": "a@b.co", "customFields": {"one_more": 1}},
        {"email": "c@d.co", "customFields": {"fine": 1}},
    ]
    r = client.post("/v1/contacts/bulk-update", json={"contacts": items}, headers=h)
    data = r.json()["data"]
    assert (r.status_code, data["successCount"], data["failedCount"]) == (200, 1, 1)
    assert data["errors"][0]["index"] == 0
    found = client.post(
        "/v1/contacts/search/emails", json={"emails": ["a@b.co", "c@d.co"]}, headers=h
    )
    fields = [c["customFields"] for c in found.json()["data"]["contacts"]]
    assert fields == [full, {"fine": 1}]
