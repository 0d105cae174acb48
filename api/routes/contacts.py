"""Contacts (/v1/contacts...) and a contact's event log (/v1/contacts/{id}/events)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import eventlog, store
from api.apidoc import (
    BULK_RESULT,
    CONTACT_EXAMPLE,
    CONTACT_ID_PARAM,
    CONTACT_INPUT_EXAMPLE,
    CONTACT_OK,
    CONTACTS,
    INVALID,
    LOG_PAGE,
    NO_CONTACT,
    STORED_EXAMPLE,
    Schema,
    body,
    common,
    deleted,
    error_doc,
    obj,
    ok_doc,
    op,
    path_param,
    query_param,
    ref,
    with_body,
)
from api.contacts import (
    MAX_BULK_CONTACTS,
    MAX_TEXT,
    check_bulk_contacts,
    check_contact,
    check_email_list,
)
from api.eventlog import DEFAULT_LIMIT, MAX_LIMIT
from api.http import authenticated, done, in_transaction, json_object, ok, read_authenticated, route
from shared.errors import EventpipeError, contact_not_found
from shared.ids import is_id
from shared.models import contacts
from shared.settings import MAX_BODY_BYTES


class AnyText(Convertor[str]):
    """A path parameter that may hold anything, slashes and newlines too (a userId is free
    text; Starlette's `path` convertor stops at a newline)."""

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anytext", AnyText())


def _contact_id(request: Request) -> str:
    contact_id: str = request.path_params["contact_id"]
    if not is_id(contact_id):  # not an id we could have given out: no need to ask the store
        raise contact_not_found()
    return contact_id


async def create_contact(request: Request) -> Response:
    project_id, body = await read_authenticated(request, MAX_BODY_BYTES)
    email, changes = check_contact(json_object(body))
    row = await in_transaction(
        request, lambda conn: store.create_contact(project_id, email, changes, conn=conn)
    )
    return ok(store.contact_json(row), 201)


async def upsert_contact(request: Request) -> Response:
    project_id, body = await read_authenticated(request, MAX_BODY_BYTES)
    email, changes = check_contact(json_object(body))
    row = await in_transaction(
        request, lambda conn: store.upsert_contact(project_id, email, changes, conn=conn)
    )
    return ok(store.contact_json(row))


async def bulk_update(request: Request) -> Response:
    """Upsert each item by email. A bad item is counted (and listed in `errors`, an eventpipe
    addition) without refusing the others; all good items commit together."""
    project_id, body = await read_authenticated(request, MAX_BODY_BYTES)
    items = check_bulk_contacts(json_object(body))
    good: list[tuple[int, str, dict[str, Any]]] = []
    failures: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            good.append((index, *check_contact(item)))
        except EventpipeError as exc:
            failures.append(_bulk_failure(index, exc))

    def upsert_all(conn: Connection) -> list[dict[str, Any]]:
        refused = []
        for index, email, changes in good:
            try:  # refused by the store (custom fields over the cap once merged): no write
                store.upsert_contact(project_id, email, changes, conn=conn)
            except EventpipeError as exc:
                refused.append(_bulk_failure(index, exc))
        return refused

    if good:
        failures = sorted(
            failures + await in_transaction(request, upsert_all), key=lambda f: f["index"]
        )
    return ok(
        {
            "successCount": len(items) - len(failures),
            "failedCount": len(failures),
            "totalCount": len(items),
            "errors": failures,
        }
    )


def _bulk_failure(index: int, exc: EventpipeError) -> dict[str, Any]:
    return {"index": index, "code": exc.code, "message": exc.message}


async def get_contact(request: Request) -> Response:
    project_id = authenticated(request)
    contact_id = _contact_id(request)
    row = await in_transaction(
        request, lambda conn: store.get_contact(project_id, contact_id, conn=conn)
    )
    return ok(store.contact_json(row))


async def search_by_emails(request: Request) -> Response:
    project_id, body = await read_authenticated(request, MAX_BODY_BYTES)
    emails = check_email_list(json_object(body))
    rows = await in_transaction(
        request, lambda conn: store.find_contacts_by_email(project_id, emails, conn=conn)
    )
    return ok({"contacts": [store.contact_json(r) for r in rows]})


async def remove_by_emails(request: Request) -> Response:
    """Emails with no contact are not an error: the caller wants them gone, and they are."""
    project_id, body = await read_authenticated(request, MAX_BODY_BYTES)
    emails = check_email_list(json_object(body))
    await in_transaction(
        request,
        lambda conn: store.delete_contacts(project_id, contacts.c.email.in_(emails), conn=conn),
    )
    return done()


async def delete_contact(request: Request) -> Response:
    project_id = authenticated(request)
    contact_id = _contact_id(request)
    await _delete_where(request, project_id, contacts.c.id == contact_id)
    return done("Contact deleted successfully")


async def delete_by_user_id(request: Request) -> Response:
    project_id = authenticated(request)
    user_id: str = request.path_params["user_id"]
    if len(user_id) > MAX_TEXT or "\x00" in user_id:
        raise contact_not_found()  # no contact can hold this userId
    await _delete_where(request, project_id, contacts.c.user_id == user_id)
    return done("Contact deleted successfully")


async def _delete_where(request: Request, project_id: str, condition: Any) -> None:
    deleted = await in_transaction(
        request, lambda conn: store.delete_contacts(project_id, condition, conn=conn)
    )
    if deleted == 0:
        raise contact_not_found()


async def contact_events(request: Request) -> Response:
    project_id = authenticated(request)
    contact_id = _contact_id(request)
    query = eventlog.parse_query(request.query_params)

    def read(conn: Connection) -> dict[str, Any]:
        store.get_contact(project_id, contact_id, conn=conn)  # 404 for another project's id
        return eventlog.read_page(project_id, contact_id, query, conn=conn)

    return ok(await in_transaction(request, read))


ROUTES = [
    Route("/v1/contacts", create_contact, methods=["POST"]),
    Route("/v1/contacts/email", upsert_contact, methods=["POST"]),
    Route("/v1/contacts/bulk-update", bulk_update, methods=["POST"]),
    Route("/v1/contacts/search/emails", search_by_emails, methods=["POST"]),
    Route("/v1/contacts/remove", remove_by_emails, methods=["POST"]),
    Route("/v1/contacts/email/userId/{user_id:anytext}", delete_by_user_id, methods=["DELETE"]),
    route("/v1/contacts/{contact_id}", GET=get_contact, DELETE=delete_contact),
    Route("/v1/contacts/{contact_id}/events", contact_events, methods=["GET"]),
]


OPENAPI_PATHS: dict[str, Schema] = {
    "/v1/contacts": {
        "post": op(
            "Create a contact",
            CONTACTS,
            with_body(
                (201, ok_doc("Created", ref("Contact"), CONTACT_EXAMPLE)),
                INVALID,
                (409, error_doc(409, "CONTACT_ALREADY_EXISTS")),
            ),
            requestBody=body(ref("ContactInput"), CONTACT_INPUT_EXAMPLE),
        )
    },
    "/v1/contacts/email": {
        "post": op(
            'Upsert a contact by email ("" clears a text field; customFields are merged)',
            CONTACTS,
            with_body((200, CONTACT_OK), INVALID),
            requestBody=body(ref("ContactInput"), CONTACT_INPUT_EXAMPLE),
        )
    },
    "/v1/contacts/bulk-update": {
        "post": op(
            f"Upsert 1..{MAX_BULK_CONTACTS} contacts by email; bad items are counted, not fatal",
            CONTACTS,
            with_body(
                (
                    200,
                    ok_doc(
                        "Counts",
                        BULK_RESULT,
                        {"successCount": 1, "failedCount": 0, "totalCount": 1, "errors": []},
                    ),
                ),
                INVALID,
            ),
            requestBody=body(
                obj(
                    {
                        "contacts": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_BULK_CONTACTS,
                            "items": {
                                "description": "A ContactInput; an item that is not valid is "
                                "counted in failedCount and listed in errors, not refused",
                            },
                        }
                    },
                    ["contacts"],
                ),
                {"contacts": [CONTACT_INPUT_EXAMPLE]},
            ),
        )
    },
    "/v1/contacts/search/emails": {
        "post": op(
            "The contacts of these emails (unknown ones left out)",
            CONTACTS,
            with_body(
                (
                    200,
                    ok_doc(
                        "The contacts found",
                        obj({"contacts": {"type": "array", "items": ref("Contact")}}, ["contacts"]),
                        {"contacts": [CONTACT_EXAMPLE]},
                    ),
                ),
                INVALID,
            ),
            requestBody=body(ref("Emails"), {"emails": ["jane@example.com"]}),
        )
    },
    "/v1/contacts/remove": {
        "post": op(
            "Delete the contacts of these emails, with their event logs",
            CONTACTS,
            with_body((200, deleted(None)), INVALID),
            requestBody=body(ref("Emails"), {"emails": ["jane@example.com"]}),
        )
    },
    "/v1/contacts/{contactId}": {
        "parameters": [CONTACT_ID_PARAM],
        "get": op("Get a contact", CONTACTS, common((200, CONTACT_OK), NO_CONTACT)),
        "delete": op(
            "Delete a contact, with its event log",
            CONTACTS,
            common((200, deleted("Contact deleted successfully")), NO_CONTACT),
        ),
    },
    "/v1/contacts/email/userId/{userId}": {
        "parameters": [
            path_param("userId", {"type": "string", "minLength": 1}, "The contacts' userId")
        ],
        "delete": op(
            "Delete every contact with this userId, with their event logs",
            CONTACTS,
            common((200, deleted("Contact deleted successfully")), NO_CONTACT),
        ),
    },
    "/v1/contacts/{contactId}/events": {
        "parameters": [CONTACT_ID_PARAM],
        "get": op(
            "A contact's event log, newest first, cursor paginated",
            CONTACTS,
            common(
                (
                    200,
                    ok_doc(
                        "One page",
                        LOG_PAGE,
                        {"events": [STORED_EXAMPLE], "nextCursor": "czoxMjM0"},
                    ),
                ),
                INVALID,
                NO_CONTACT,
            ),
            parameters=[
                query_param(
                    "limit",
                    {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_LIMIT,
                        "default": DEFAULT_LIMIT,
                    },
                    "Events per page",
                ),
                query_param(
                    "cursor",
                    {"type": "string", "pattern": "^[A-Za-z0-9_-]*$"},
                    "The previous page's nextCursor (empty: the first page; anything else is 400)",
                ),
                query_param(
                    "eventName",
                    {"type": "string", "pattern": "^[A-Za-z0-9_]{0,64}$"},
                    "Only events of this name (empty: every name)",
                ),
                query_param("since", {"type": "string"}, "RFC 3339; createdAt at or after"),
                query_param("until", {"type": "string"}, "RFC 3339; createdAt before"),
            ],
        ),
    },
}
