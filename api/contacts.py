"""Contacts (/v1/contacts...) and a contact's event log (/v1/contacts/{id}/events)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.auth import authenticate
from api.http import done, ok
from api.routes import in_transaction, json_object, read_authenticated, route
from shared import eventlog, store
from shared.contacts import (
    MAX_TEXT,
    check_bulk_contacts,
    check_contact,
    check_email_list,
)
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
    good: list[tuple[str, dict[str, Any]]] = []
    failures: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            good.append(check_contact(item))
        except EventpipeError as exc:
            failures.append({"index": index, "code": exc.code, "message": exc.message})

    def upsert_all(conn: Connection) -> None:
        for email, changes in good:
            store.upsert_contact(project_id, email, changes, conn=conn)

    if good:
        await in_transaction(request, upsert_all)
    return ok(
        {
            "successCount": len(good),
            "failedCount": len(failures),
            "totalCount": len(items),
            "errors": failures,
        }
    )


async def get_contact(request: Request) -> Response:
    project_id = authenticate(request, request.app.state.cache)
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
    project_id = authenticate(request, request.app.state.cache)
    contact_id = _contact_id(request)
    await _delete_where(request, project_id, contacts.c.id == contact_id)
    return done("Contact deleted successfully")


async def delete_by_user_id(request: Request) -> Response:
    project_id = authenticate(request, request.app.state.cache)
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
    project_id = authenticate(request, request.app.state.cache)
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
