"""Project API keys: `AS_<key id>_<secret>`.

The key id (24 hex) is public-ish and finds the record; only a SHA-256 of the secret is
stored, and the check compares digests in constant time. A key is 256 bits of randomness,
so a fast hash is the right tool (a slow password hash would only cost CPU per request).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from shared.ids import new_id

PREFIX = "AS_"
_KEY_RE = re.compile(r"AS_([0-9a-f]{24})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True)
class NewKey:
    key_id: str
    api_key: str
    secret_hash: str


def generate_key() -> NewKey:
    key_id = new_id()
    secret = secrets.token_urlsafe(32)
    return NewKey(key_id, f"{PREFIX}{key_id}_{secret}", hash_secret(secret))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(api_key: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    match = _KEY_RE.fullmatch(api_key)
    return (match.group(1), match.group(2)) if match else None


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
