"""The published OpenAPI document against the app as built: routes, examples, real answers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from starlette.routing import Route
from starlette.testclient import TestClient

from api.app import ROUTES
from api.openapi import DOCUMENT
from tests.factories import SEND
from tests.unit.conftest import SEED_DEFINITION, auth
from tests.unit.test_api import run_queued_jobs
from worker.context import WorkerContext

Project = tuple[str, str, str]


def _shape(path: str) -> str:
    """`/v1/contacts/{contact_id}` and `/v1/contacts/{contactId}` are the same route."""
    return re.sub(r"\{[^}]+\}", "{}", path)


def _validator(schema: dict[str, Any]) -> OAS31Validator:
    # The document's components ride along so that `#/components/...` references resolve.
    return OAS31Validator({**schema, "components": DOCUMENT["components"]})


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(DOCUMENT)
    assert DOCUMENT["openapi"].startswith("3.1")


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    built = {
        (_shape(r.path), method.lower())
        for r in ROUTES
        if isinstance(r, Route) and r.include_in_schema
        for method in (r.methods or set()) - {"HEAD"}
    }
    documented = {
        (_shape(path), method)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert built == documented


def _json_media() -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            bodies = [operation.get("requestBody", {})] + list(operation["responses"].values())
            for b in bodies:
                media = b.get("content", {}).get("application/json")
                if media is not None:
                    yield f"{method.upper()} {path}", media


def test_every_json_body_has_a_schema() -> None:
    assert [where for where, media in _json_media() if "schema" not in media] == []


def _examples() -> Iterator[tuple[str, dict[str, Any], Any]]:
    for where, m in _json_media():
        schema = m.get("schema", {})
        if "example" in m:
            yield where, schema, m["example"]
        for name, example in m.get("examples", {}).items():
            yield f"{where} ({name})", schema, example["value"]


@pytest.mark.parametrize(("where", "schema", "example"), list(_examples()))
def test_every_example_is_valid_against_its_schema(
    where: str, schema: dict[str, Any], example: Any
) -> None:
    errors = [e.message for e in _validator(schema).iter_errors(example)]
    assert errors == [], where


def _documented_schema(path: str, method: str, status: int) -> dict[str, Any]:
    # A literal path wins over a template that also matches it, as in the router.
    paths = sorted(DOCUMENT["paths"].items(), key=lambda pair: "{" in pair[0])
    for doc_path, item in paths:
        if re.fullmatch(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(doc_path)), path):
            response = item[method.lower()]["responses"][str(status)]
            schema: dict[str, Any] = response["content"]["application/json"]["schema"]
            return schema
    raise AssertionError(f"{method} {path} is not documented")


def test_real_answers_conform_to_the_document(
    client: TestClient, project: Project, worker_ctx: WorkerContext
) -> None:
    """One call of every endpoint, good and bad, each answer checked against the document."""
    h = auth(project[1])
    answers = []

    def call(method: str, path: str, **kwargs: Any) -> Any:
        r = client.request(method, path, headers=h, **kwargs)
        answers.append((method, path.split("?")[0], r))
        return r

    call("POST", "/v1/events", json=SEED_DEFINITION)
    call("POST", "/v1/events", json=SEED_DEFINITION)
    call("POST", "/v1/events", json={"eventName": "x-y"})
    call("GET", "/v1/events")
    call("GET", "/v1/events/eventName/order_completed")
    call("PATCH", "/v1/events/eventName/order_completed", json={"description": "d"})
    call("PATCH", "/v1/events/eventName/order_completed", json={})
    jane = call("POST", "/v1/contacts", json={"email": "jane@example.com", "firstName": "J"})
    cid = jane.json()["data"]["id"]
    call("POST", "/v1/contacts", json={"email": "jane@example.com"})
    call("POST", "/v1/contacts/email", json={"email": "bob@example.com", "userId": "u1"})
    call("POST", "/v1/contacts/bulk-update", json={"contacts": [{"email": "a@b.co"}, {}]})
    call("POST", "/v1/contacts/search/emails", json={"emails": ["jane@example.com"]})
    sent = call("POST", "/v1/events/send", json=SEND)
    call("POST", "/v1/events/send", json={**SEND, "eventProperties": {"nope": 1}})
    call("POST", "/v1/events/send", content=b"x" * 40_000)
    call("POST", "/v1/events/batch", json={"events": [SEND, {"eventName": 1}]})
    call("POST", "/v1/events/batch", json={"events": [{"eventName": 1}]})
    call("POST", "/v1/events/batch", json={"events": []})
    call("GET", f"/v1/events/{sent.json()['data']['id']}")
    run_queued_jobs(worker_ctx)
    call("GET", f"/v1/events/{sent.json()['data']['id']}")
    call("GET", f"/v1/contacts/{cid}")
    call("GET", f"/v1/contacts/{cid}/events?limit=1")
    call("GET", f"/v1/contacts/{cid}/events?limit=0")
    call("DELETE", "/v1/contacts/email/userId/u1")
    call("POST", "/v1/contacts/remove", json={"emails": ["a@b.co"]})
    call("DELETE", f"/v1/contacts/{cid}")
    call("GET", f"/v1/contacts/{cid}")
    call("DELETE", "/v1/events/eventName/order_completed")
    call("GET", "/v1/events/eventName/order_completed")

    statuses = {r.status_code for _, _, r in answers}
    assert {200, 201, 202, 400, 404, 409, 413} <= statuses
    for method, path, r in answers:
        schema = _documented_schema(path, method, r.status_code)
        errors = [e.message for e in _validator(schema).iter_errors(r.json())]
        assert errors == [], (method, path, r.status_code, r.text)


def test_docs_page_renders_from_files_served_here(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    # Everything the page loads comes from this server: no outside network.
    assert not re.search(r"(src|href)=\"https?://", page.text)
    for asset in re.findall(r"(?:src|href)=\"(/[^\"]+)\"", page.text):
        assert client.get(asset).status_code == 200, asset
    assert client.get("/openapi.json").json() == DOCUMENT
