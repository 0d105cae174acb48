"""The hostile-input corpus: requests a hostile or broken client sends, and the 4xx each must
get. Every bug of this kind found adds its request here (issue 14 started it from a
black-box run of 149 cases against the API).

The cases are data, run twice: in-process against the app (tests/unit/test_hostile.py) and
against a real uvicorn server (tests/integration/test_hostile.py), which also runs the raw
socket cases (headers and request lines that only the HTTP server sees). Each answer must be
a 4xx in the contract's envelope, one of the statuses the case names, and never carry the
store's or the driver's own words.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.jsonio import MAX_DEPTH
from tests.factories import CONTACT, DEFINITION, SEND

KEY = "key"  # the project's API key
OPERATOR = "operator"  # OPERATOR_TOKEN
OPERATOR_TOKEN = "hostile-operator-token-0123456789"
# Words of PostgreSQL, psycopg or SQLAlchemy that must never reach a client.
LEAKS = (
    "postgres",
    "psycopg",
    "sqlalchemy",
    "bigint",
    "out of range for type",
    "detail:",
    "traceback",
)


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str  # may hold {contact}: the id of CONTACT
    want: frozenset[int]
    body: bytes | None = None
    headers: dict[bytes, bytes] = field(default_factory=dict)
    auth: str | None = KEY
    code: str | None = None  # the error code, when the case pins it


def case(
    name: str,
    method: str,
    path: str,
    want: int | tuple[int, ...],
    body: Any = None,
    *,
    headers: Mapping[str, str | bytes] | None = None,
    auth: str | None = KEY,
    code: str | None = None,
) -> Case:
    raw = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    wanted = frozenset(want if isinstance(want, tuple) else (want,))
    raw_headers = {
        k.encode(): v if isinstance(v, bytes) else v.encode("latin-1")
        for k, v in (headers or {}).items()
    }
    return Case(name, method, path, wanted, raw, raw_headers, auth, code)


def send(**extra: Any) -> dict[str, Any]:
    return {**SEND, **extra}


def nested(depth: int, leaf: str = "0") -> str:
    return "[" * depth + leaf + "]" * depth


def send_with_ignored(depth: int, leaf: str = "0") -> bytes:
    """A send whose ignored field nests `depth` arrays: the body nests depth + 1."""
    return json.dumps(send())[:-1].encode() + f', "ignored": {nested(depth, leaf)}}}'.encode()


def gzip_cut_before_trailer(data: bytes) -> bytes:
    return gzip.compress(data)[:-8]


def gzip_empty_blocks(data: bytes, blocks: int) -> bytes:
    """A gzip member whose deflate stream starts with `blocks` empty stored blocks: megabytes
    on the wire that inflate to nothing."""
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    payload = deflate.compress(data) + deflate.flush()
    trailer = zlib.crc32(data).to_bytes(4, "little") + len(data).to_bytes(4, "little")
    return header + b"\x00\x00\x00\xff\xff" * blocks + payload + trailer


BODY = json.dumps(send()).encode()
GZIP: dict[str, str | bytes] = {"Content-Encoding": "gzip"}
MB = 1024 * 1024


def _sends() -> list[Case]:
    at_limit = send_with_ignored(MAX_DEPTH - 1)
    return [
        case("send at the nesting limit", "POST", "/v1/events/send", 202, at_limit),
        case(
            "send one level over the nesting limit",
            "POST",
            "/v1/events/send",
            400,
            send_with_ignored(MAX_DEPTH),
            code="VALIDATION_FAILED",
        ),
        case(
            "send nested 260 deep with a key (the fingerprint's encoder stops at 254)",
            "POST",
            "/v1/events/send",
            400,
            send_with_ignored(260),
            headers={"Idempotency-Key": "hostile-deep-1"},
        ),
        case(
            "the same key with a good body: the refused request freed it",
            "POST",
            "/v1/events/send",
            202,
            BODY,
            headers={"Idempotency-Key": "hostile-deep-1"},
        ),
        case("send 450 deep", "POST", "/v1/events/send", 400, send_with_ignored(450)),
        case(
            "send 1030 deep (past orjson's own limit)",
            "POST",
            "/v1/events/send",
            400,
            send_with_ignored(1030),
        ),
        case("NUL 600 deep", "POST", "/v1/events/send", 400, send_with_ignored(600, '"\\u0000"')),
        case(
            "NUL in a key",
            "POST",
            "/v1/events/send",
            400,
            b'{"eventName": "order_completed", "email": "jane@example.com", "a\\u0000": 1}',
        ),
        case(
            "Prefer: wait= 5000 digits, with a key",
            "POST",
            "/v1/events/send",
            202,
            BODY,
            headers={"Prefer": "wait=" + "9" * 5000, "Idempotency-Key": "hostile-wait-1"},
        ),
        case(
            "the same key again: replayed, not 409 for a minute",
            "POST",
            "/v1/events/send",
            202,
            BODY,
            headers={"Idempotency-Key": "hostile-wait-1"},
        ),
        case(
            "Prefer: wait=¹ (latin-1)",
            "POST",
            "/v1/events/send",
            202,
            BODY,
            headers={"Prefer": b"wait=\xb9"},
        ),
        case(
            "Prefer: wait=1e3", "POST", "/v1/events/send", 202, BODY, headers={"Prefer": "wait=1e3"}
        ),
        case(
            "an undeclared property with a 30 KB name",
            "POST",
            "/v1/events/send",
            400,
            send(eventProperties={"p" * 30_000: 1}),
            code="UNKNOWN_PROPERTY",
        ),
    ]


def _gzip() -> list[Case]:
    trailing = gzip.compress(BODY) + b"GARBAGE" * 100
    forty = gzip.compress(BODY) + b"\x00" * (40 * MB)
    return [
        case(
            "gzip, then a second member",
            "POST",
            "/v1/events/send",
            400,
            gzip.compress(BODY) + gzip.compress(b"garbage"),
            headers=GZIP,
        ),
        case("gzip, then raw bytes", "POST", "/v1/events/send", 400, trailing, headers=GZIP),
        case(
            "gzip cut before its trailer",
            "POST",
            "/v1/events/send",
            400,
            gzip_cut_before_trailer(BODY),
            headers=GZIP,
        ),
        case(
            "gzip cut before its trailer, batch",
            "POST",
            "/v1/events/batch",
            400,
            gzip_cut_before_trailer(json.dumps({"events": [send()]}).encode()),
            headers=GZIP,
        ),
        case(
            "gzip, then 40 MB",
            "POST",
            "/v1/events/send",
            413,
            forty,
            headers=GZIP,
            code="PAYLOAD_TOO_LARGE",
        ),
        case(
            "gzip, then 40 MB, no key: 413 before the key",
            "POST",
            "/v1/events/send",
            413,
            forty,
            headers=GZIP,
            auth=None,
        ),
        case(
            "gzip of 40 MB of empty deflate blocks",
            "POST",
            "/v1/events/send",
            413,
            gzip_empty_blocks(BODY, 8 * MB),
            headers=GZIP,
        ),
        case(
            "a 10 MB gzip bomb",
            "POST",
            "/v1/events/send",
            413,
            gzip.compress(b'{"eventName": "' + b"a" * (10 * MB) + b'"}'),
            headers=GZIP,
        ),
        case("gzip declared, plain body", "POST", "/v1/events/send", 400, BODY, headers=GZIP),
        case(
            "Content-Encoding: gzip, gzip",
            "POST",
            "/v1/events/send",
            400,
            BODY,
            headers={"Content-Encoding": "gzip, gzip"},
        ),
    ]


def _batches() -> list[Case]:
    deep_item = json.loads(send_with_ignored(3))
    deep_item["ignored"] = "DEEP"
    body = json.dumps({"events": [{**deep_item, "idempotencyKey": "hostile-batch-1"}]})
    return [
        case(
            "batch item nested 260 deep, with its key",
            "POST",
            "/v1/events/batch",
            400,
            body.replace('"DEEP"', nested(260)).encode(),
        ),
        case(
            "batch, gzip then a second member",
            "POST",
            "/v1/events/batch",
            400,
            gzip.compress(json.dumps({"events": [send()]}).encode()) + gzip.compress(b"x"),
            headers=GZIP,
        ),
        case("batch of 501", "POST", "/v1/events/batch", 400, {"events": [send()] * 501}),
    ]


def _event_log() -> list[Case]:
    path = "/v1/contacts/{contact}/events"
    queries = {
        "limit=²": "limit=%C2%B2",
        "limit of 5000 digits": "limit=" + "9" * 5000,
        "limit=٣ (Arabic-Indic)": "limit=%D9%A3",
        "limit=５ (full-width)": "limit=%EF%BC%95",
        "cursor of s:²": "cursor=czrCsg",
        "cursor of s:٣": "cursor=czrZow",
        "cursor with junk characters": "cursor=c!z!o!x",
        "cursor past a bigint": "cursor=czo5OTk5OTk5OTk5OTk5OTk5OTk5",
        "cursor of 1 KB": "cursor=" + "A" * 1024,
        "since=99999999999d": "since=99999999999d",
        "since year 0000": "since=0000-01-01",
        "eventName with NUL": "eventName=a%00b",
    }
    return [case(f"event log {n}", "GET", f"{path}?{q}", 400) for n, q in queries.items()]


def _admin() -> list[Case]:
    queries = {
        "limit=²": "limit=%C2%B2",
        "limit of 5000 digits": "limit=" + "9" * 5000,
        "limit=٣": "limit=%D9%A3",
        "since=99999999999d": "since=99999999999d",
        "since=999999d": "since=999999d",
        "until of 5000-digit days": "until=" + "9" * 5000 + "d",
        "since=٣h": "since=%D9%A3h",
        "code with NUL": "code=a%00b",
        "projectId with NUL": "projectId=%00",
        "eventName of 1 KB": "eventName=" + "e" * 1024,
        "cursor junk": "cursor=zzz",
    }
    gets = [
        case(f"admin failed {n}", "GET", f"/v1/admin/failed?{q}", 400, auth=OPERATOR)
        for n, q in queries.items()
    ]
    bodies = {
        "since=99999999999d": {"since": "99999999999d", "dryRun": True},
        "limit=²": {"all": True, "limit": "²", "dryRun": True},
        "code with NUL": {"code": "a\u0000b", "dryRun": True},
        "eventName with NUL": {"eventName": "\u0000", "dryRun": True},
        "limit as digits": {"all": True, "limit": "5", "dryRun": True},  # a JSON integer, or none
        "dryRun of 0": {"all": True, "dryRun": 0},  # 0 == False in Python: not a boolean here
        "all of 1": {"all": 1, "dryRun": True},
        "ids of {}": {"ids": {}, "code": "X", "dryRun": True},  # falsy, still not an array
    }
    posts = [
        case(f"admin replay {n}", "POST", "/v1/admin/replay", 400, b, auth=OPERATOR)
        for n, b in bodies.items()
    ]
    return gets + posts


def _definitions() -> list[Case]:
    def prop(**extra: Any) -> dict[str, Any]:
        return {"propertyName": "v", "type": "string", **extra}

    def definition(name: str, **extra: Any) -> dict[str, Any]:
        return {"eventName": name, "properties": [prop(**extra)]}

    return [
        case(
            "definition with 50,000 suggested values",
            "POST",
            "/v1/events",
            400,
            definition("h50k", suggestedValues=[f"v{i}" for i in range(50_000)]),
        ),
        case(
            "definition with 101 suggested values",
            "POST",
            "/v1/events",
            400,
            definition("h101", suggestedValues=[str(i) for i in range(101)]),
        ),
        case(
            "definition with 100 short suggested values",
            "POST",
            "/v1/events",
            201,
            definition("h100", suggestedValues=[str(i) for i in range(100)]),
        ),
        case(
            "definition with suggested values over 4 KB",
            "POST",
            "/v1/events",
            400,
            definition("h4k", suggestedValues=["x" * 1000] * 5),
        ),
        case(
            "definition with 300k comma-separated booleans",
            "POST",
            "/v1/events",
            400,
            {
                "eventName": "hbool",
                "properties": [
                    {
                        "propertyName": "b",
                        "type": "boolean",
                        "suggestedValues": ",".join("1" * 300_000),
                    }
                ],
            },
        ),
        case(
            "definition description of 1001 characters",
            "POST",
            "/v1/events",
            400,
            {"eventName": "hdesc", "description": "d" * 1001},
        ),
        case(
            "property description of 1001 characters",
            "POST",
            "/v1/events",
            400,
            definition("hpdesc", description="d" * 1001),
        ),
    ]


def _contacts() -> list[Case]:
    def upsert(fields: dict[str, Any], email: str = "hostile@example.com") -> dict[str, Any]:
        return {"email": email, "customFields": fields}

    merge = "merge@example.com"
    return [
        case(
            "custom field name of 101 characters",
            "POST",
            "/v1/contacts/email",
            400,
            upsert({"k" * 101: 1}),
        ),
        case(
            "custom field value of 1001 characters",
            "POST",
            "/v1/contacts/email",
            400,
            upsert({"k": "v" * 1001}),
        ),
        case("custom field name of 1 MB", "POST", "/v1/contacts/email", 413, upsert({"k" * MB: 1})),
        case(
            "merge 1 of 3: 40 fields",
            "POST",
            "/v1/contacts/email",
            200,
            upsert({f"a{i}": i for i in range(40)}, merge),
        ),
        case(
            "merge 2 of 3: 80 fields",
            "POST",
            "/v1/contacts/email",
            200,
            upsert({f"b{i}": i for i in range(40)}, merge),
        ),
        case(
            "merge 3 of 3: 120 fields, refused",
            "POST",
            "/v1/contacts/email",
            400,
            upsert({f"c{i}": i for i in range(40)}, merge),
            code="VALIDATION_FAILED",
        ),
        case(
            "contact body 600 deep",
            "POST",
            "/v1/contacts/email",
            400,
            f'{{"email": "{CONTACT}", "x": {nested(600)}}}'.encode(),
        ),
    ]


def _paths() -> list[Case]:
    return [
        case("definition path with NUL", "GET", "/v1/events/eventName/a%00b", 404),
        case("contact path with a slash", "GET", "/v1/contacts/a%2Fb", 404),
        case("userId path of overlong UTF-8", "DELETE", "/v1/contacts/email/userId/%C0%AF", 404),
    ]


CORPUS: list[Case] = [
    *_sends(),
    *_gzip(),
    *_batches(),
    *_event_log(),
    *_admin(),
    *_definitions(),
    *_contacts(),
    *_paths(),
]


def check_answer(item: Case, status: int, text: str) -> None:
    """What every answer in the corpus must be: one of the case's statuses, a 4xx (a 2xx
    where the case says so) in the envelope, and no internal words."""
    assert status < 500, (item.name, status, text[:300])
    assert status in item.want, (item.name, status, text[:300])
    body = json.loads(text)
    if status >= 400:
        assert body["success"] is False and body["error"]["code"], (item.name, text[:300])
        if item.code is not None:
            assert body["error"]["code"] == item.code, (item.name, text[:300])
        assert len(body["error"]["message"]) <= 300, (item.name, text[:300])
    lowered = text.lower()
    assert not any(word.lower() in lowered for word in LEAKS), (item.name, text[:300])


def run_corpus(http: Any, key: str) -> int:
    """Declare DEFINITION and create CONTACT in the key's project, then send every case in
    order (some follow on from the one before) with `http` (an httpx client on a real server,
    or the app's TestClient: two client libraries, hence Any) and check each answer; the
    number of cases run."""
    assert http.post("/v1/events", json=DEFINITION, headers=_auth(key)).status_code == 201
    made = http.post("/v1/contacts", json={"email": CONTACT}, headers=_auth(key))
    contact_id = made.json()["data"]["id"]
    tokens = {KEY: f"Bearer {key}", OPERATOR: f"Bearer {OPERATOR_TOKEN}"}
    for item in CORPUS:
        headers = dict(item.headers)
        if item.auth is not None:
            headers[b"Authorization"] = tokens[item.auth].encode()
        path = item.path.format(contact=contact_id)
        r = http.request(item.method, path, content=item.body, headers=headers)
        check_answer(item, r.status_code, r.text)
    return len(CORPUS)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
