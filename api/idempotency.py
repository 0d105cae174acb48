"""Idempotency-Key: a producer's retry answers the first request's answer, never a second event.

A key lives in Redis as one string, `eventpipe:idem:{project id}:{digest of the key}`:

- claimed: written by the first request that uses the key, only if nothing holds it (one Lua
  call that also answers what holds it), for `IDEMPOTENCY_CLAIM_SECONDS`;
- answered: overwritten with the answer in the same atomic write that puts the event on the
  queue (GroupCommitter records), for `IDEMPOTENCY_TTL_SECONDS`.

So a key never points to an event that is not in Redis, and one key never queues two events:
a process that dies between the two steps leaves only the claim, which expires (the event
never reached Redis, so a retry after that makes the one event). The claim outlives any
enqueue: an enqueue that fails answers 503 and frees the key at once.

A record holds the body's fingerprint, the event id, its acceptance time, the status answered
and the contact id (for a synchronous answer): about a hundred bytes, not the body. A repeat
rebuilds the answer from its own body, which has the same fingerprint.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import zlib
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared import errors, jsonio
from shared.errors import EventpipeError, QueueUnavailable, ValidationFailed
from shared.queue import Event, Record

HEADER = "idempotency-key"
KEY_PREFIX = "eventpipe:idem:"
# A batch's request-level key: its own namespace (a batch body is never a send body).
BATCH_KEY_PREFIX = "eventpipe:idem-batch:"
_PRINTABLE = re.compile(r"[\x20-\x7e]{1,255}")
IN_FLIGHT = 0

# Claim each key that is free; answer what holds the others (one round trip, atomic; a
# batch claims all its keys at once). ARGV: one claim per key, then the claim's TTL.
_CLAIM = """
local held = {}
for i, key in ipairs(KEYS) do
  held[i] = redis.call('GET', key)
  if not held[i] then redis.call('SET', key, ARGV[i], 'EX', ARGV[#ARGV]) end
end
return held
"""
# Free the key only if it still holds our claim (after expiry another request may own it).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Answer:
    fingerprint: str
    event_id: str
    created_at: str
    status: int  # IN_FLIGHT while the first request has not answered
    contact_id: str | None = None

    def encode(self) -> bytes:
        return jsonio.dumps(
            [self.fingerprint, self.event_id, self.created_at, self.status, self.contact_id]
        )

    @classmethod
    def decode(cls, raw: bytes) -> Answer:
        fingerprint, event_id, created_at, status, contact_id = jsonio.loads(raw)
        return cls(fingerprint, event_id, created_at, status, contact_id)


@dataclass(frozen=True)
class Claim:
    """A key this request holds: what to write with its event, or to free on failure."""

    redis_key: str
    held: Answer

    def answered(self, status: int, ttl: int, contact_id: str | None = None) -> Record:
        answer = Answer(
            self.held.fingerprint, self.held.event_id, self.held.created_at, status, contact_id
        )
        return (self.redis_key, answer.encode(), ttl)


def check_key(value: Any, field: str = "Idempotency-Key") -> str:
    if not isinstance(value, str) or not _PRINTABLE.fullmatch(value):
        message = f"{field} must be 1 to 255 printable ASCII characters"
        raise ValidationFailed(message, details=[{"field": field, "message": message}])
    return value


def fingerprint(body: Any) -> str:
    """The body as parsed JSON (key order and spacing do not count), hashed: 128 bits.

    A body the API parsed nests at most jsonio.MAX_DEPTH deep, which the encoding takes; a
    body it cannot encode is refused (400) rather than failing the request."""
    try:
        text = jsonio.canonical(body)
    except ValueError as exc:
        raise ValidationFailed("Request body cannot be fingerprinted for its key") from exc
    digest = hashlib.sha256(text).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def redis_key(project_id: str, key: str, prefix: str = KEY_PREFIX) -> str:
    digest = hashlib.sha256(key.encode()).digest()[:16]
    return f"{prefix}{project_id}:{base64.urlsafe_b64encode(digest).decode().rstrip('=')}"


Receipt = dict[str, Any]


@dataclass(frozen=True)
class BatchClaim:
    """A batch's Idempotency-Key this request holds: the receipts are written with its job.

    The record is the body's fingerprint and the receipts, compact (an accepted or duplicate
    item is its status letter and id, a rejected one its code and message) and deflated: a
    batch's ids share their time and process bytes, so 500 receipts take about 1.2 kB."""

    redis_key: str
    fingerprint: str

    def held(self) -> bytes:
        return _encode_batch(self.fingerprint, None)

    def answered(self, receipts: list[Receipt], ttl: int) -> Record:
        return (self.redis_key, _encode_batch(self.fingerprint, receipts), ttl)


def _encode_batch(print_: str, receipts: list[Receipt] | None) -> bytes:
    compact = None
    if receipts is not None:
        compact = [
            [r["error"]["code"], r["error"]["message"]]
            if r["status"] == "rejected"
            else r["status"][0] + r["id"]
            for r in receipts
        ]
    return zlib.compress(jsonio.dumps([print_, compact]), 6)


def _decode_batch(raw: bytes) -> tuple[str, list[Receipt] | None]:
    print_, compact = jsonio.loads(zlib.decompress(raw))
    if compact is None:
        return print_, None
    receipts: list[Receipt] = []
    for index, item in enumerate(compact):
        if isinstance(item, list):
            error = {"code": item[0], "message": item[1]}
            receipts.append({"index": index, "status": "rejected", "id": None, "error": error})
        else:
            status = "accepted" if item[0] == "a" else "duplicate"
            receipts.append({"index": index, "status": status, "id": item[1:]})
    return print_, receipts


def _outcome(name: str, ours: Answer, held: bytes | None) -> Claim | Answer | EventpipeError:
    if held is None:
        return Claim(name, ours)
    answer = Answer.decode(held)
    if answer.fingerprint != ours.fingerprint:
        return errors.idempotency_key_mismatch()
    if answer.status == IN_FLIGHT:
        return errors.idempotency_key_in_use()
    return answer


class Idempotency:
    def __init__(self, redis: aioredis.Redis, claim_seconds: int, ttl_seconds: int) -> None:
        self._redis = redis
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)
        self.claim_seconds = claim_seconds
        self.ttl_seconds = ttl_seconds

    async def claim(self, project_id: str, key: str, body: Any, event: Event) -> Claim | Answer:
        """This request's claim on `key`, or the answer of the request that made the event
        (raises 409 while that one is in flight, 422 if its body differs)."""
        (outcome,) = await self.claim_many(project_id, [(check_key(key), fingerprint(body), event)])
        if isinstance(outcome, EventpipeError):
            raise outcome
        return outcome

    async def claim_many(
        self, project_id: str, items: list[tuple[str, str, Event]]
    ) -> list[Claim | Answer | EventpipeError]:
        """`claim` for (key, body fingerprint, event) items with distinct keys, in one round
        trip; each refusal is returned, not raised."""
        ours = [Answer(print_, e["id"], e["createdAt"], IN_FLIGHT) for _, print_, e in items]
        names = [redis_key(project_id, key) for key, _, _ in items]
        try:
            held = await self._claim(
                keys=names, args=[a.encode() for a in ours] + [self.claim_seconds]
            )
        except RedisError as exc:
            raise QueueUnavailable() from exc
        return [_outcome(n, a, h) for n, a, h in zip(names, ours, held, strict=True)]

    async def claim_batch(self, project_id: str, key: str, body: Any) -> BatchClaim | list[Receipt]:
        """This batch's claim on its request-level `key`, or the receipts of the batch that
        used it first (raises 409 while that one is in flight, 422 if its body differs)."""
        name = redis_key(project_id, check_key(key), BATCH_KEY_PREFIX)
        claim = BatchClaim(name, fingerprint(body))
        try:
            (held,) = await self._claim(keys=[name], args=[claim.held(), self.claim_seconds])
        except RedisError as exc:
            raise QueueUnavailable() from exc
        if held is None:
            return claim
        print_, receipts = _decode_batch(held)
        if print_ != claim.fingerprint:
            raise errors.idempotency_key_mismatch()
        if receipts is None:
            raise errors.idempotency_key_in_use()
        return receipts

    async def answer_batch(self, claim: BatchClaim, receipts: list[Receipt]) -> None:
        """Write the receipts of a batch that queued nothing (all duplicates): no job to write
        them with. Best effort: if it fails, the claim expires and a retry is answered anew
        (its items' own keys still make it no second event)."""
        record_key, value, ttl = claim.answered(receipts, self.ttl_seconds)
        with contextlib.suppress(RedisError):
            await self._redis.set(record_key, value, ex=ttl)

    async def release_batch(self, claim: BatchClaim) -> None:
        try:
            await self._release(keys=[claim.redis_key], args=[claim.held()])
        except RedisError:
            pass  # it expires after claim_seconds

    async def settle(self, claim: Claim, status: int, contact_id: str | None) -> None:
        """Replace the enqueue's answer (202) by the one the request finally gave (201 after
        a wait). Best effort: a repeat would otherwise answer the 202, also true."""
        record_key, value, _ = claim.answered(status, self.ttl_seconds, contact_id)
        with contextlib.suppress(RedisError):
            await self._redis.set(record_key, value, xx=True, keepttl=True)

    async def forget(self, claim: Claim) -> None:
        """The request answered that nothing was recorded (404 after a wait): the key is free
        again, as after a refused request."""
        with contextlib.suppress(RedisError):
            await self._redis.delete(claim.redis_key)

    async def release(self, claim: Claim) -> None:
        """Free a claim whose request failed, so that a retry need not wait for its expiry."""
        try:
            await self._release(keys=[claim.redis_key], args=[claim.held.encode()])
        except RedisError:
            pass  # it expires after claim_seconds
