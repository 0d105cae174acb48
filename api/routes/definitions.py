"""Event definitions: /v1/events and /v1/events/eventName/{eventName}.

Every change is announced (Redis counter + a reload here) so that sends on every API process
see it within `config_poll_seconds`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from api import store
from api.apidoc import (
    DEFINITION_EXAMPLE,
    DEFINITION_INPUT,
    DEFINITION_INPUT_EXAMPLE,
    DEFINITION_OK,
    DEFINITION_PATCH,
    DEFINITIONS,
    EVENT_NAME_PARAM,
    NO_EVENT,
    Schema,
    body,
    common,
    deleted,
    error_doc,
    obj,
    ok_doc,
    op,
    ref,
    with_body,
)
from api.definitions import (
    MAX_NAME_LENGTH,
    NAME_CHARS,
    check_definition,
    check_definition_patch,
)
from api.http import (
    announce_config_change,
    authenticated,
    done,
    in_transaction,
    json_object,
    ok,
    read_authenticated,
    route,
)
from shared.errors import event_not_found
from shared.settings import MAX_BODY_BYTES


def _event_name(request: Request) -> str:
    name: str = request.path_params["event_name"]
    if len(name) > MAX_NAME_LENGTH or not NAME_CHARS.fullmatch(name):
        raise event_not_found()  # no definition can have this name
    return name


async def list_definitions(request: Request) -> Response:
    project_id = authenticated(request)
    found = await in_transaction(
        request, lambda conn: store.list_definitions(project_id, conn=conn)
    )
    return ok({"events": [store.definition_json(d) for d in found]})


async def get_definition(request: Request) -> Response:
    project_id = authenticated(request)
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
    project_id = authenticated(request)
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


OPENAPI_PATHS: dict[str, Schema] = {
    "/v1/events": {
        "get": op(
            "List the active definitions, newest first",
            DEFINITIONS,
            common(
                (
                    200,
                    ok_doc(
                        "The definitions",
                        obj({"events": {"type": "array", "items": ref("Definition")}}, ["events"]),
                        {"events": [DEFINITION_EXAMPLE]},
                    ),
                )
            ),
        ),
        "post": op(
            "Create a definition",
            DEFINITIONS,
            with_body(
                (201, ok_doc("Created", ref("Definition"), DEFINITION_EXAMPLE)),
                (
                    400,
                    error_doc(
                        400,
                        "VALIDATION_FAILED",
                        "INVALID_EVENT_NAME_CHARACTERS",
                        "MAX_EVENTS_REACHED",
                    ),
                ),
                (409, error_doc(409, "EVENT_ALREADY_EXISTS")),
            ),
            requestBody=body(DEFINITION_INPUT, DEFINITION_INPUT_EXAMPLE),
        ),
    },
    "/v1/events/eventName/{eventName}": {
        "parameters": [EVENT_NAME_PARAM],
        "get": op("Get a definition", DEFINITIONS, common((200, DEFINITION_OK), NO_EVENT)),
        "patch": op(
            "Update a definition: `properties`, when given, replaces the whole schema",
            DEFINITIONS,
            with_body(
                (200, DEFINITION_OK),
                (400, error_doc(400, "VALIDATION_FAILED", "NO_DATA_TO_UPDATE")),
                NO_EVENT,
            ),
            requestBody=body(DEFINITION_PATCH, {"description": "Any completed order"}),
        ),
        "delete": op(
            "Delete a definition (soft: stored events stay; the name may be created again)",
            DEFINITIONS,
            common((200, deleted("Event deleted successfully")), NO_EVENT),
        ),
    },
}
