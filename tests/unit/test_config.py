"""Settings: defaults, JIDOKA_* environment variables, overrides, validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import jidoka
from jidoka.config import STORES, SessionConfig, Settings
from jidoka.errors import InvalidConfig

DEFAULTS: dict[str, Any] = {
    "data_dir": ".jidoka",
    "store": "sqlite",
    "postgres_schema": "jidoka",
    "postgres_pool_size": 8,
    "postgres_connect_timeout": 5.0,
    "durability": "full",
    "snapshot_interval": 500,
    "max_sessions": 100_000,
    "max_tombstones": 10_000,
    "subscriber_queue_size": 1_000,
    "subscriber_page_bytes": 262_144,
    "max_queued_turns_total": 1_000,
    "cache_max_bytes": 64 * 1024 * 1024,
    "cache_session_max_bytes": 8 * 1024 * 1024,
    "shutdown_grace_seconds": 5.0,
    "max_metadata_bytes": 16_384,
    "max_llm_config_bytes": 16_384,
    "memory_max_events_per_session": 100_000,
    "bus": "memory",
    "bus_prefix": "jidoka",
    "lease_ttl": 10.0,
    "keep_stream_chunks": True,
    "retention_sweep_seconds": 60.0,
    "retention_batch": 100,
    "run_sweep_seconds": 30.0,
    "mcp_allow_stdio": False,
}
INT_FIELDS = [name for name, value in DEFAULTS.items() if type(value) is int]


def test_exported() -> None:
    assert jidoka.Settings is Settings
    assert "memory" in STORES
    assert Settings().store in STORES


def test_defaults() -> None:
    settings = Settings()
    for name, value in DEFAULTS.items():
        assert getattr(settings, name) == value, name
    assert settings.session_defaults == SessionConfig()
    assert settings.max_database_bytes is None
    llm = {name for name in Settings.__struct_fields__ if name.startswith("llm_")}
    assert all(getattr(settings, name) is None for name in llm)
    assert set(Settings.__struct_fields__) == {
        *DEFAULTS,
        *llm,
        "session_defaults",
        "session_ceilings",
        "max_database_bytes",
        "node_id",
        "advertise_url",
        "terminated_ttl",
        "saved_ttl",
        "webhook_allow",
        "webhook_secret",
    }
    assert (settings.webhook_allow, settings.webhook_secret) == ((), None)  # no webhooks
    assert settings.terminated_ttl is None  # retention is off unless asked for
    assert settings.saved_ttl is None


def test_retention_settings_from_the_environment_and_their_bounds() -> None:
    env = {
        "JIDOKA_TERMINATED_TTL": "86400",
        "JIDOKA_SAVED_TTL": "2592000.5",
        "JIDOKA_RETENTION_SWEEP_SECONDS": "30",
        "JIDOKA_RETENTION_BATCH": "500",
    }
    settings = Settings.from_env(env)
    assert (settings.terminated_ttl, settings.saved_ttl) == (86400.0, 2592000.5)
    assert (settings.retention_sweep_seconds, settings.retention_batch) == (30.0, 500)
    for name, bad in [("terminated_ttl", 0), ("saved_ttl", -1.0),
                      ("retention_sweep_seconds", 0), ("retention_batch", 0),
                      ("retention_batch", 10_001)]:  # fmt: skip
        with pytest.raises(InvalidConfig) as caught:
            Settings.build({name: bad})
        assert caught.value.field == name
    with pytest.raises(InvalidConfig) as caught:
        Settings.from_env({"JIDOKA_TERMINATED_TTL": "a week"})
    assert caught.value.field == "terminated_ttl"
    assert "JIDOKA_TERMINATED_TTL" in caught.value.message


def test_llm_defaults_from_the_environment() -> None:
    from jidoka.config import llm_defaults

    env = {
        "JIDOKA_LLM_PROVIDER": "openai",
        "JIDOKA_LLM_MODEL": "m",
        "JIDOKA_LLM_TEMPERATURE": "0.5",
    }
    settings = Settings.from_env(env)
    assert llm_defaults(settings) == {"provider": "openai", "model": "m", "temperature": 0.5}
    assert llm_defaults(Settings()) == {}
    no_key = Settings.from_env({"JIDOKA_LLM_PROVIDER": "openai", "JIDOKA_LLM_API_KEY_ENV": ""})
    assert llm_defaults(no_key) == {"provider": "openai", "api_key_env": None}
    with pytest.raises(InvalidConfig) as caught:
        Settings.from_env({"JIDOKA_LLM_TEMPERATURE": "3"})
    assert caught.value.field == "llm_temperature"


def test_from_empty_env_is_the_defaults() -> None:
    assert Settings.from_env({}) == Settings()
    assert Settings.build({}) == Settings()


def test_from_env_ignores_unrelated_variables() -> None:
    env = {"PATH": "/bin", "JIDOKA_NOT_A_SETTING": "1", "jidoka_max_sessions": "5"}
    assert Settings.from_env(env) == Settings()


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JIDOKA_MAX_SESSIONS", "12")
    assert Settings.from_env().max_sessions == 12


def test_explicit_environ_replaces_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JIDOKA_MAX_SESSIONS", "12")
    assert Settings.from_env({}).max_sessions == 100_000


@pytest.mark.parametrize("name", INT_FIELDS)
def test_every_int_field_from_env(name: str) -> None:
    settings = Settings.from_env({f"JIDOKA_{name.upper()}": "7"})
    assert getattr(settings, name) == 7


@pytest.mark.parametrize(("raw", "keep"), [("false", False), ("0", False), ("true", True)])
def test_keep_stream_chunks_from_env(raw: str, keep: bool) -> None:
    assert Settings.from_env({"JIDOKA_KEEP_STREAM_CHUNKS": raw}).keep_stream_chunks is keep


def test_string_and_float_fields_from_env() -> None:
    settings = Settings.from_env(
        {
            "JIDOKA_DATA_DIR": "/var/lib/jidoka",
            "JIDOKA_STORE": "memory",
            "JIDOKA_SHUTDOWN_GRACE_SECONDS": "2.5",
        }
    )
    assert settings.data_dir == "/var/lib/jidoka"
    assert settings.store == "memory"
    assert settings.shutdown_grace_seconds == 2.5
    assert Settings.from_env({"JIDOKA_SHUTDOWN_GRACE_SECONDS": "0"}).shutdown_grace_seconds == 0


@pytest.mark.parametrize("store", STORES)
def test_every_store_can_be_chosen(store: str) -> None:
    assert Settings.from_env({"JIDOKA_STORE": store}).store == store
    assert Settings.build({"store": store}).store == store


@pytest.mark.parametrize("durability", ["full", "normal"])
def test_durability_from_env(durability: str) -> None:
    assert Settings.from_env({"JIDOKA_DURABILITY": durability}).durability == durability


@pytest.mark.parametrize("durability", ["", "FULL", "off", "fast"])
def test_bad_durability_is_refused(durability: str) -> None:
    with pytest.raises(jidoka.InvalidConfig) as info:
        Settings.from_env({"JIDOKA_DURABILITY": durability})
    assert info.value.field == "durability"
    with pytest.raises(jidoka.InvalidConfig) as info:
        Settings.build({"durability": durability})
    assert info.value.field == "durability"


def test_several_variables_at_once() -> None:
    settings = Settings.from_env(
        {"JIDOKA_MAX_SESSIONS": "10", "JIDOKA_MAX_TOMBSTONES": "3", "JIDOKA_CACHE_MAX_BYTES": "99"}
    )
    assert (settings.max_sessions, settings.max_tombstones, settings.cache_max_bytes) == (10, 3, 99)


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("JIDOKA_MAX_SESSIONS", "lots", "max_sessions"),
        ("JIDOKA_SNAPSHOT_INTERVAL", "0", "snapshot_interval"),
        ("JIDOKA_MAX_SESSIONS", "0", "max_sessions"),
        ("JIDOKA_MAX_SESSIONS", "-3", "max_sessions"),
        ("JIDOKA_MAX_SESSIONS", "1.5", "max_sessions"),
        ("JIDOKA_MAX_SESSIONS", "", "max_sessions"),
        ("JIDOKA_MAX_TOMBSTONES", "x", "max_tombstones"),
        ("JIDOKA_SUBSCRIBER_QUEUE_SIZE", "0", "subscriber_queue_size"),
        ("JIDOKA_CACHE_MAX_BYTES", "0", "cache_max_bytes"),
        ("JIDOKA_CACHE_SESSION_MAX_BYTES", "big", "cache_session_max_bytes"),
        ("JIDOKA_SHUTDOWN_GRACE_SECONDS", "-1", "shutdown_grace_seconds"),
        ("JIDOKA_SHUTDOWN_GRACE_SECONDS", "soon", "shutdown_grace_seconds"),
        ("JIDOKA_SHUTDOWN_GRACE_SECONDS", "nan", "shutdown_grace_seconds"),
        ("JIDOKA_MAX_METADATA_BYTES", "0", "max_metadata_bytes"),
        ("JIDOKA_MAX_LLM_CONFIG_BYTES", "0", "max_llm_config_bytes"),
        ("JIDOKA_MEMORY_MAX_EVENTS_PER_SESSION", "0", "memory_max_events_per_session"),
    ],
)
def test_bad_env_value_names_field_and_variable(variable: str, value: str, field: str) -> None:
    with pytest.raises(jidoka.InvalidConfig) as info:
        Settings.from_env({variable: value})
    assert info.value.field == field
    assert variable in str(info.value)
    assert isinstance(info.value, jidoka.InvalidArgument)


@pytest.mark.parametrize("store", ["no-such-store", "redis", "", "MEMORY", " memory"])
def test_unknown_store_is_refused(store: str) -> None:
    with pytest.raises(jidoka.InvalidConfig) as info:
        Settings.from_env({"JIDOKA_STORE": store})
    assert info.value.field == "store"
    assert all(name in str(info.value) for name in STORES)  # says what is available
    with pytest.raises(jidoka.InvalidConfig) as info:
        Settings.build({"store": store})
    assert info.value.field == "store"


def test_unknown_store_from_env_names_the_variable() -> None:
    with pytest.raises(jidoka.InvalidConfig) as info:
        Settings.from_env({"JIDOKA_STORE": "no-such-store"})
    assert "JIDOKA_STORE" in str(info.value)


# --- JIDOKA_SESSION_DEFAULTS ---------------------------------------------------------------------


def test_session_defaults_from_env() -> None:
    raw = json.dumps({"max_history": 5, "features": {"beta": True}})
    settings = Settings.from_env({"JIDOKA_SESSION_DEFAULTS": raw})
    assert settings.session_defaults.max_history == 5
    assert settings.session_defaults.features == {"beta": True}
    assert settings.session_defaults.max_files == 50  # the rest stays default


def test_session_defaults_accepts_to_dict_output() -> None:
    config = SessionConfig.from_dict({"max_files": 4, "timeout_minutes": 0})
    settings = Settings.from_env({"JIDOKA_SESSION_DEFAULTS": json.dumps(config.to_dict())})
    assert settings.session_defaults == config


@pytest.mark.parametrize("raw", ["{", "not json", "", "{'max_history': 5}"])
def test_session_defaults_not_json(raw: str) -> None:
    with pytest.raises(jidoka.InvalidConfig) as info:
        Settings.from_env({"JIDOKA_SESSION_DEFAULTS": raw})
    assert info.value.field == "session_defaults"
    assert "JIDOKA_SESSION_DEFAULTS" in str(info.value)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"max_history": 0}', "max_history"),
        ('{"bogus": 1}', "bogus"),
        ('{"schema_version": 2}', "schema_version"),
    ],
)
def test_session_defaults_bad_field(raw: str, field: str) -> None:
    with pytest.raises(jidoka.InvalidConfig) as info:
        Settings.from_env({"JIDOKA_SESSION_DEFAULTS": raw})
    assert field in info.value.field


@pytest.mark.parametrize("raw", ['{"max_history": 0}', '{"bogus": 1}', "[1, 2]"])
def test_session_defaults_bad_content_names_the_variable(raw: str) -> None:
    with pytest.raises(jidoka.InvalidConfig) as info:
        Settings.from_env({"JIDOKA_SESSION_DEFAULTS": raw})
    assert "JIDOKA_SESSION_DEFAULTS" in str(info.value)


# --- overrides and build -------------------------------------------------------------------------


def test_overrides_win_over_env() -> None:
    env = {"JIDOKA_MAX_SESSIONS": "10", "JIDOKA_MAX_TOMBSTONES": "3"}
    settings = Settings.from_env(env, max_sessions=20)
    assert settings.max_sessions == 20
    assert settings.max_tombstones == 3  # not overridden: env still applies


def test_session_defaults_override_wins_over_env() -> None:
    env = {"JIDOKA_SESSION_DEFAULTS": '{"max_history": 5}'}
    settings = Settings.from_env(env, session_defaults={"max_files": 2})
    assert settings.session_defaults.max_files == 2
    assert settings.session_defaults.max_history == 100
    config = SessionConfig.from_dict({"max_history": 9})
    assert Settings.from_env(env, session_defaults=config).session_defaults is config


def test_override_without_env() -> None:
    settings = Settings.from_env({}, shutdown_grace_seconds=0.5, data_dir="/tmp/j")
    assert settings.shutdown_grace_seconds == 0.5
    assert settings.data_dir == "/tmp/j"


def test_unknown_override_is_refused() -> None:
    with pytest.raises(jidoka.InvalidConfig) as info:
        Settings.from_env({}, max_sesions=5)
    assert info.value.field == "max_sesions"


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"max_sessions": 0}, "max_sessions"),
        ({"max_sessions": "10"}, "max_sessions"),  # overrides are typed: no string coercion
        ({"max_sessions": 1.5}, "max_sessions"),
        ({"shutdown_grace_seconds": -1}, "shutdown_grace_seconds"),
        ({"data_dir": 5}, "data_dir"),
        ({"store": None}, "store"),
        ({"session_defaults": {"max_history": 0}}, "max_history"),
        ({"zzz": 1, "aaa": 2}, "aaa"),
    ],
)
def test_build_validates(values: dict[str, Any], field: str) -> None:
    with pytest.raises(jidoka.InvalidConfig) as info:
        Settings.build(values)
    assert info.value.field == field


def test_build_accepts_session_defaults_dict_and_pathlike(tmp_path: Path) -> None:
    settings = Settings.build({"session_defaults": {"max_files": 3}, "data_dir": tmp_path})
    assert settings.session_defaults.max_files == 3
    assert settings.data_dir == str(tmp_path)
    assert isinstance(settings.data_dir, str)


def test_build_session_defaults_none_keeps_default() -> None:
    assert Settings.build({"session_defaults": None}).session_defaults == SessionConfig()


def test_settings_are_immutable() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.max_sessions = 1  # type: ignore[misc]


# --- session ceilings and queued turns ----------------------------------------------------------


def test_session_ceilings_default_and_from_env() -> None:
    from jidoka.config import SessionCeilings

    assert Settings().session_ceilings == SessionCeilings()
    settings = Settings.from_env({"JIDOKA_SESSION_CEILINGS": '{"max_history": 500}'})
    assert settings.session_ceilings.max_history == 500
    assert settings.session_ceilings.max_files == SessionCeilings().max_files


def test_session_defaults_must_lie_within_the_ceilings() -> None:
    env = {"JIDOKA_SESSION_CEILINGS": '{"max_files": 10}'}
    with pytest.raises(jidoka.InvalidConfig) as info:
        Settings.from_env(env)  # the default max_files (50) is above 10
    assert info.value.field == "session_defaults.max_files"
    settings = Settings.from_env({**env, "JIDOKA_SESSION_DEFAULTS": '{"max_files": 10}'})
    assert settings.session_defaults.max_files == 10


def test_queued_turn_limit_from_env() -> None:
    assert Settings.from_env({"JIDOKA_MAX_QUEUED_TURNS_TOTAL": "12"}).max_queued_turns_total == 12
    with pytest.raises(jidoka.InvalidConfig) as info:
        Settings.from_env({"JIDOKA_MAX_QUEUED_TURNS_TOTAL": "0"})
    assert info.value.field == "max_queued_turns_total"


# --- the PostgreSQL store's settings ------------------------------------------------------------


@pytest.mark.parametrize(
    "dsn",
    ["postgresql://u@db.example/prod", "postgres://u:secret@10.0.0.5:5433/jidoka?sslmode=require"],
)
def test_a_postgres_url_is_a_store(dsn: str) -> None:
    assert Settings.from_env({"JIDOKA_STORE": dsn}).store == dsn
    assert Settings.build({"store": dsn}).store == dsn


def test_postgres_settings_from_env() -> None:
    settings = Settings.from_env(
        {
            "JIDOKA_STORE": "postgresql://u@h/db",
            "JIDOKA_POSTGRES_SCHEMA": "team_a",
            "JIDOKA_POSTGRES_POOL_SIZE": "3",
            "JIDOKA_POSTGRES_CONNECT_TIMEOUT": "1.5",
        }
    )
    assert (settings.postgres_schema, settings.postgres_pool_size) == ("team_a", 3)
    assert settings.postgres_connect_timeout == 1.5


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("JIDOKA_POSTGRES_SCHEMA", "Team", "postgres_schema"),  # quoted into statements
        ("JIDOKA_POSTGRES_SCHEMA", 'a"; DROP TABLE x; --', "postgres_schema"),
        ("JIDOKA_POSTGRES_SCHEMA", "1abc", "postgres_schema"),
        ("JIDOKA_POSTGRES_SCHEMA", "x" * 64, "postgres_schema"),
        ("JIDOKA_POSTGRES_POOL_SIZE", "0", "postgres_pool_size"),
        ("JIDOKA_POSTGRES_CONNECT_TIMEOUT", "0", "postgres_connect_timeout"),
    ],
)
def test_bad_postgres_settings_are_refused(variable: str, value: str, field: str) -> None:
    with pytest.raises(jidoka.InvalidConfig) as info:
        Settings.from_env({variable: value})
    assert info.value.field == field


@pytest.mark.parametrize("store", ["mysql://u:hunter2@h/db", "redis://:hunter2@h:6379"])
def test_an_unknown_url_store_is_refused_without_echoing_it(store: str) -> None:
    for build in (
        lambda: Settings.from_env({"JIDOKA_STORE": store}),
        lambda: Settings.build({"store": store}),
    ):
        with pytest.raises(jidoka.InvalidConfig) as info:
            build()
        assert info.value.field == "store"
        assert "hunter2" not in str(info.value)
        assert "postgresql://" in str(info.value)  # says what would be accepted


def test_describe_store_never_shows_credentials() -> None:
    from jidoka.config import describe_store

    settings = Settings.build(
        {
            "store": "postgresql://app:hunter2@db.internal:5432/prod?sslmode=require",
            "postgres_schema": "j1",
        }
    )
    text = describe_store(settings)
    assert "hunter2" not in text
    assert "app" not in text
    assert "db.internal:5432/prod" in text
    assert "j1" in text
    assert describe_store(Settings.build({"store": "memory"})) == "memory"
    assert "hunter2" not in repr(jidoka.Runtime(settings=settings))
