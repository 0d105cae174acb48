"""Event definitions: /v1/events and /v1/events/eventName/{eventName}.

Every change is announced (Redis counter + a reload here) so that sends on every API process
see it within `config_poll_seconds`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from api.auth import authenticate
from api.http import done, ok
from api.routes import (
    announce_config_change,
    in_transaction,
    json_object,
    read_authenticated,
    route,
)
from shared import store
from shared.definitions import (
    MAX_NAME_LENGTH,
    NAME_CHARS,
    check_definition,
    check_definition_patch,
)
from shared.errors import event_not_found
from shared.settings import MAX_BODY_BYTES


def _event_name(request: Request) -> str:
    name: str = request.path_params["event_name"]
    if len(name) > MAX_NAME_LENGTH or not NAME_CHARS.fullmatch(name):
        raise event_not_found()  # no definition can have this name
    return name


async def list_definitions(request: Request) -> Response:
    project_id = authenticate(request, request.app.state.cache)
    found = await in_transaction(
        request, lambda conn: store.list_definitions(project_id, conn=conn)
    )
    return ok({"events": [store.definition_json(d) for d in found]})


async def get_definition(request: Request) -> Response:
    project_id = authenticate(request, request.app.state.cache)
    name = _event_name(request)
    found = await in_transaction(
        request, lambda conn: store.get_definition(project_id, name, conn=conn)
    )
    return ok(store.definition_json(found))


async def create_definition(request: Request) -> Response:
    project_id, body = await read_authenticated(request, MAX_BODY_BYTES)
    spec = check_definition(json_object(body))
    created = await in_transaction(
        request, lambda conn: store.create_definition(project_id, spec, conn=conn)
    )
    await announce_config_change(request)
    return ok(store.definition_json(created), 201)


async def update_definition(request: Request) -> Response:
    project_id, body = await read_authenticated(request, MAX_BODY_BYTES)
    name = _event_name(request)
    changes = check_definition_patch(name, json_object(body))
    updated = await in_transaction(
        request, lambda conn: store.update_definition(project_id, name, changes, conn=conn)
    )
    await announce_config_change(request)
    return ok(store.definition_json(updated))


async def delete_definition(request: Request) -> Response:
    project_id = authenticate(request, request.app.state.cache)
    name = _event_name(request)
    await in_transaction(request, lambda conn: store.delete_definition(project_id, name, conn=conn))
    await announce_config_change(request)
    return done("Event deleted successfully")


ROUTES = [
    route("/v1/events", GET=list_definitions, POST=create_definition),
    route(
        "/v1/events/eventName/{event_name}",
        GET=get_definition,
        PATCH=update_definition,
        DELETE=delete_definition,
    ),
]
