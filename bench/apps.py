"""The two HTTP peers eventpipe is measured against, served by uvicorn.

`bare_app` is the ceiling: it reads and parses the body and answers, nothing else.
`naive_app` is the tutorial design: one RQ `Queue.enqueue` per request, in Starlette's thread
pool, one job per event.
"""

from __future__ import annotations

import functools
import hmac
import os
from typing import Any

import orjson
import redis
from rq import Queue
from rq.serializers import JSONSerializer
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.naive import QUEUE_NAME, make_event, store_one

SEND_PATH = "/v1/events/send"


def json_response(data: Any, status: int) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def error(status: int, code: str) -> Response:
    return json_response({"success": False, "error": {"code": code}}, status)


async def bare_send(request: Request) -> Response:
    orjson.loads(await request.body())
    return json_response({"success": True, "data": {"status": "queued"}}, 202)


@functools.cache
def naive_queue() -> Queue:
    connection = redis.Redis.from_url(os.environ["REDIS_URL"])
    return Queue(QUEUE_NAME, connection=connection, serializer=JSONSerializer)


@functools.cache
def expected_authorization() -> bytes:
    return f"Bearer {os.environ['NAIVE_API_KEY']}".encode()


def authorized(request: Request) -> bool:
    given = request.headers.get("authorization", "").encode()
    return hmac.compare_digest(given, expected_authorization())


async def naive_send(request: Request) -> Response:
    if not authorized(request):
        return error(401, "UNAUTHORIZED")
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return error(400, "VALIDATION_FAILED")
    if not isinstance(body, dict) or not isinstance(body.get("eventName"), str):
        return error(400, "VALIDATION_FAILED")
    event = make_event(os.environ["NAIVE_PROJECT_ID"], body)
    await run_in_threadpool(naive_queue().enqueue, store_one, event)
    return json_response({"success": True, "data": {**event, "status": "queued"}}, 202)


bare_app = Starlette(routes=[Route(SEND_PATH, bare_send, methods=["POST"])])
naive_app = Starlette(routes=[Route(SEND_PATH, naive_send, methods=["POST"])])
