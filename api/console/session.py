"""The console's session: a signed cookie with an expiry, its CSRF token, the sign-in check
and its throttle.

The cookie is `<session id>.<expiry, epoch s>.<HMAC-SHA256 of both>`, nothing else: no state
on the server, so every API process accepts it as long as they share the key. The key is
CONSOLE_SECRET, or else derived from OPERATOR_TOKEN; the operator token's digest is mixed in
either way, so changing the token signs every operator out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from shared.settings import Settings

COOKIE = "eventpipe_console"
PATH = "/console"
_LABEL = b"eventpipe console session v1"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def signing_key(settings: Settings) -> bytes:
    token_digest = hashlib.sha256(settings.operator_token.encode()).digest()
    root = (settings.console_secret or settings.operator_token).encode()
    return hmac.new(root, _LABEL + token_digest, hashlib.sha256).digest()


def _sign(key: bytes, text: str) -> str:
    return _b64(hmac.new(key, text.encode(), hashlib.sha256).digest())


@dataclass(frozen=True)
class Session:
    id: str
    expires: int

    def csrf_token(self, key: bytes) -> str:
        return _sign(key, f"csrf:{self.id}")


def new_cookie(settings: Settings, now: float | None = None) -> tuple[str, Session]:
    session = Session(
        secrets.token_urlsafe(18),
        int(time.time() if now is None else now) + settings.console_session_seconds,
    )
    body = f"{session.id}.{session.expires}"
    return f"{body}.{_sign(signing_key(settings), body)}", session


def read_cookie(settings: Settings, value: str | None, now: float | None = None) -> Session | None:
    """The session of a well-signed, unexpired cookie; None for anything else."""
    if not value or len(value) > 200:
        return None
    parts = value.split(".")
    if len(parts) != 3 or not parts[1].isascii() or not parts[1].isdigit():
        return None
    sid, expires, signature = parts
    wanted = _sign(signing_key(settings), f"{sid}.{expires}")
    if not hmac.compare_digest(wanted.encode(), signature.encode()):
        return None
    if len(expires) > 12 or int(expires) <= (time.time() if now is None else now):
        return None
    return Session(sid, int(expires))


def set_cookie(request: Request, response: Response, value: str, max_age: int) -> None:
    response.set_cookie(
        COOKIE,
        value,
        max_age=max_age,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(
        COOKIE, path=PATH, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )


def token_matches(settings: Settings, given: str) -> bool:
    """Digests of both sides: compare_digest is constant-time for equal lengths only."""
    wanted = hashlib.sha256(settings.operator_token.encode()).digest()
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), wanted)


def csrf_matches(settings: Settings, session: Session, given: str) -> bool:
    wanted = session.csrf_token(signing_key(settings))
    return hmac.compare_digest(wanted.encode(), given.encode())
