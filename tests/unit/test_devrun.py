"""cli.devrun: what `eventpipe run` prints."""

from __future__ import annotations

import pytest

from cli.devrun import _banner, masked_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+psycopg://app:s3cret@db:5432/eventpipe",
            "postgresql+psycopg://app:***@db:5432/eventpipe",
        ),
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://user:p@ss:w0rd@redis/0", "rediss://user:***@redis/0"),
        ("redis://redis:6379/0?password=s3cret&db=1", "redis://redis:6379/0?password=***&db=1"),
        ("postgresql://app@db/eventpipe", "postgresql://app@db/eventpipe"),
        ("sqlite:///var/eventpipe.db", "sqlite:///var/eventpipe.db"),
    ],
)
def test_masked_url_hides_passwords(url: str, shown: str) -> None:
    assert masked_url(url) == shown


def test_the_banner_prints_no_password(capsys: pytest.CaptureFixture[str]) -> None:
    env = {
        "DATABASE_URL": "postgresql+psycopg://app:db-s3cret@db:5432/eventpipe",
        "REDIS_URL": "redis://:redis-s3cret@redis:6379/0",
    }
    _banner("127.0.0.1", 8000, 1, env, None, None)
    out = capsys.readouterr().out
    assert "s3cret" not in out
    assert "app:***@db" in out and ":***@redis" in out
