"""Project API key authentication against the in-process snapshot (no I/O per request)."""

from __future__ import annotations

from starlette.requests import Request

from api.config_cache import ConfigCache
from api.keys import secret_matches, split_key
from shared.errors import Unauthorized


def authenticate(request: Request, cache: ConfigCache) -> str:
    """The project id of the request's key, or Unauthorized."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    parts = split_key(token.strip()) if scheme.lower() == "bearer" else None
    if parts is None:
        raise Unauthorized()
    key_id, secret = parts
    record = cache.snapshot.keys.get(key_id)
    if record is None or not secret_matches(secret, record[1]):
        raise Unauthorized()
    request.scope["eventpipe.project_id"] = record[0]  # for the request's log line
    return record[0]
