"""api.keys: key format, splitting, and the stored hash."""

from __future__ import annotations

import hashlib
import re

import pytest

from api.keys import generate_key, hash_secret, secret_matches, split_key

KEY_RE = re.compile(r"AS_([0-9a-f]{24})_([A-Za-z0-9_-]{43})")
KEY_ID = "60d5ec49f1b2c72d9c8b9999"
SECRET = "a" * 20 + "_-" + "Z9" * 10 + "q"  # 43 urlsafe characters


def test_generated_key_format() -> None:
    key = generate_key()
    match = KEY_RE.fullmatch(key.api_key)
    assert match is not None
    assert match.group(1) == key.key_id


def test_generated_key_splits_back() -> None:
    key = generate_key()
    parts = split_key(key.api_key)
    assert parts is not None
    key_id, secret = parts
    assert key_id == key.key_id
    assert key.api_key == f"AS_{key_id}_{secret}"
    assert secret_matches(secret, key.secret_hash)


def test_only_the_hash_is_kept() -> None:
    key = generate_key()
    parts = split_key(key.api_key)
    assert parts is not None
    secret = parts[1]
    assert key.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", key.secret_hash)
    assert key.secret_hash != secret
    assert secret not in key.secret_hash
    assert secret not in repr(key).replace(key.api_key, "")


def test_two_keys_differ() -> None:
    keys = [generate_key() for _ in range(20)]
    assert len({k.api_key for k in keys}) == 20
    assert len({k.key_id for k in keys}) == 20
    assert len({k.secret_hash for k in keys}) == 20
    secrets = set()
    for k in keys:
        parts = split_key(k.api_key)
        assert parts is not None
        secrets.add(parts[1])
    assert len(secrets) == 20


def test_split_good_key() -> None:
    assert len(SECRET) == 43
    assert split_key(f"AS_{KEY_ID}_{SECRET}") == (KEY_ID, SECRET)


def test_split_secret_may_start_with_underscore() -> None:
    secret = "_" + SECRET[1:]
    assert split_key(f"AS_{KEY_ID}_{secret}") == (KEY_ID, secret)


@pytest.mark.parametrize(
    "api_key",
    [
        "",
        "AS_",
        f"as_{KEY_ID}_{SECRET}",
        f"AK_{KEY_ID}_{SECRET}",
        f"{KEY_ID}_{SECRET}",
        f"Bearer AS_{KEY_ID}_{SECRET}",
        f"AS_{KEY_ID}{SECRET}",
        f"AS_{KEY_ID}-{SECRET}",
        f"AS_{KEY_ID[:-1]}_{SECRET}",
        f"AS_{KEY_ID}0_{SECRET}",
        f"AS_{KEY_ID}_{SECRET[:-1]}",
        f"AS_{KEY_ID}_{SECRET}x",
        f"AS_{KEY_ID}_{SECRET} ",
        f" AS_{KEY_ID}_{SECRET}",
        f"AS_{KEY_ID}_{SECRET}\n",
        f"AS_{KEY_ID.upper()}_{SECRET}",
        f"AS_{'g' + KEY_ID[1:]}_{SECRET}",
        f"AS_{KEY_ID}_{SECRET[:-1]}=",
        f"AS_{KEY_ID}_{SECRET[:-1]}+",
        f"AS_{KEY_ID}_{SECRET[:-1]}/",
        f"AS_{KEY_ID}_{SECRET[:-1]}é",
    ],
)
def test_split_bad_key(api_key: str) -> None:
    assert split_key(api_key) is None


def test_secret_matches() -> None:
    stored = hash_secret(SECRET)
    assert secret_matches(SECRET, stored)
    assert not secret_matches(SECRET[:-1] + "r", stored)
    assert not secret_matches("", stored)
    assert not secret_matches(SECRET, hash_secret(SECRET + "x"))
    assert not secret_matches(SECRET, stored.upper())
    assert not secret_matches(stored, stored)


def test_hash_secret_is_sha256_hex() -> None:
    assert hash_secret("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
