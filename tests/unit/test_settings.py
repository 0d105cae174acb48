"""shared.settings: defaults and environment overrides."""

from __future__ import annotations

from dataclasses import fields

import pytest

from shared.settings import ENV_NAMES, Settings, load_settings


def test_defaults() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.database_url == "sqlite:///var/eventpipe.db"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.queue_name == "eventpipe"
    assert settings.group_linger_ms == 1.0
    assert settings.group_max_events == 500
    assert settings.group_max_bytes == 512 * 1024
    assert settings.job_retries == 3
    assert settings.failure_ttl == 30 * 24 * 3600
    assert settings.log_level == "INFO"


def test_every_env_name_maps_to_a_field() -> None:
    names = {f.name for f in fields(Settings)}
    assert set(ENV_NAMES.values()) <= names
    assert len(set(ENV_NAMES.values())) == len(ENV_NAMES)


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ("GROUP_MAX_EVENTS", "group_max_events", 42),
        ("JOB_RETRIES", "job_retries", 0),
        ("DB_POOL_SIZE", "db_pool_size", 12),
        ("GROUP_LINGER_MS", "group_linger_ms", 2.5),
        ("CONFIG_POLL_SECONDS", "config_poll_seconds", 0.25),
        ("REDIS_TIMEOUT_SECONDS", "redis_timeout_seconds", 3.0),
        ("LOG_LEVEL", "log_level", "DEBUG"),
        ("DATABASE_URL", "database_url", "postgresql+psycopg://u:p@db/eventpipe"),
        ("REDIS_URL", "redis_url", "redis://cache:6379/2"),
        ("EVENTPIPE_QUEUE", "queue_name", "events-blue"),
    ],
)
def test_env_override(env: str, field: str, value: object) -> None:
    settings = load_settings({env: str(value)})
    assert getattr(settings, field) == value
    assert type(getattr(settings, field)) is type(value)
    # REDIS_URL also records that it was given (eventpipe run embeds a Redis otherwise).
    untouched = {f.name for f in fields(Settings)} - {field, "redis_url_configured"}
    assert all(getattr(settings, n) == getattr(Settings(), n) for n in untouched)
    assert settings.redis_url_configured == (env == "REDIS_URL")


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgres://u:p@db:5432/ep", "postgresql+psycopg://u:p@db:5432/ep"),
        ("postgresql://u@db/ep", "postgresql+psycopg://u@db/ep"),
        ("postgresql+psycopg://u@db/ep", "postgresql+psycopg://u@db/ep"),
        ("sqlite:///var/x.db", "sqlite:///var/x.db"),
    ],
)
def test_platform_database_urls_get_the_driver(given: str, used: str) -> None:
    assert load_settings({"DATABASE_URL": given}).database_url == used


def test_int_text_forms() -> None:
    assert load_settings({"GROUP_MAX_EVENTS": " 7 "}).group_max_events == 7
    assert load_settings({"GROUP_LINGER_MS": "3"}).group_linger_ms == 3.0
    assert isinstance(load_settings({"GROUP_LINGER_MS": "3"}).group_linger_ms, float)


@pytest.mark.parametrize("env", ["GROUP_MAX_EVENTS", "GROUP_LINGER_MS", "LOG_LEVEL", "REDIS_URL"])
def test_empty_string_means_default(env: str) -> None:
    assert load_settings({env: ""}) == Settings()


def test_unknown_and_field_names_ignored() -> None:
    assert load_settings({"NOPE": "1", "group_max_events": "9", "log_level": "DEBUG"}) == Settings()


@pytest.mark.parametrize(
    ("env", "raw"),
    [
        ("GROUP_MAX_EVENTS", "abc"),
        ("GROUP_MAX_EVENTS", "1.5"),
        ("JOB_TIMEOUT", "60s"),
        ("GROUP_LINGER_MS", "fast"),
        ("CONFIG_POLL_SECONDS", "0,5"),
    ],
)
def test_bad_number_names_the_variable(env: str, raw: str) -> None:
    with pytest.raises(ValueError) as info:
        load_settings({env: raw})
    assert env in str(info.value)
    assert repr(raw) in str(info.value)


def test_several_overrides_together() -> None:
    settings = load_settings(
        {"GROUP_MAX_EVENTS": "10", "GROUP_LINGER_MS": "0.5", "LOG_LEVEL": "WARNING"}
    )
    assert (settings.group_max_events, settings.group_linger_ms, settings.log_level) == (
        10,
        0.5,
        "WARNING",
    )
