"""Session lifecycle (statuses, the transition table) and SessionConfig validation."""

from __future__ import annotations

import itertools
import math
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jidoka
from jidoka.config import CONFIG_SCHEMA_VERSION, SessionConfig
from jidoka.session.state import TRANSITIONS, Status, check_transition

SID = "01KDVDNA002TGFDYKMPAK7J69H"

# The lifecycle of the blueprint, written out independently of the module's table.
ALLOWED = {
    ("initializing", "active"),
    ("initializing", "terminated"),
    ("active", "idle"),
    ("active", "terminating"),
    ("idle", "active"),
    ("idle", "terminating"),
    ("terminating", "terminated"),
}
STATUSES = ["initializing", "active", "idle", "terminating", "terminated"]
ALL_PAIRS = list(itertools.product(STATUSES, STATUSES))


# --- Status and transitions ----------------------------------------------------------------------


def test_status_values() -> None:
    assert [s.value for s in Status] == STATUSES
    assert jidoka.Status is Status
    assert Status.ACTIVE == "active"


def test_table_matches_the_lifecycle() -> None:
    assert set(TRANSITIONS) == set(Status)
    table = {(src.value, dst.value) for src, dsts in TRANSITIONS.items() for dst in dsts}
    assert table == ALLOWED


@pytest.mark.parametrize(("src", "dst"), sorted(ALLOWED))
def test_allowed_transition(src: str, dst: str) -> None:
    result = check_transition(SID, src, dst)
    assert result is Status(dst)
    assert check_transition(SID, Status(src), Status(dst)) is Status(dst)


@pytest.mark.parametrize(("src", "dst"), [pair for pair in ALL_PAIRS if pair not in ALLOWED])
def test_forbidden_transition(src: str, dst: str) -> None:
    with pytest.raises(jidoka.InvalidTransition) as info:
        check_transition(SID, src, dst)
    error = info.value
    assert isinstance(error, jidoka.JidokaError)
    assert error.session_id == SID
    assert error.from_status == src
    assert error.to_status == dst
    assert SID in str(error)
    assert src in str(error)
    assert dst in str(error)


def test_terminated_is_final() -> None:
    for dst in STATUSES:
        with pytest.raises(jidoka.InvalidTransition):
            check_transition(SID, "terminated", dst)


@pytest.mark.parametrize(
    ("src", "dst"), [("active", "bogus"), ("bogus", "active"), ("", ""), ("ACTIVE", "idle")]
)
def test_unknown_status_is_an_invalid_transition(src: str, dst: str) -> None:
    with pytest.raises(jidoka.InvalidTransition) as info:
        check_transition(SID, src, dst)
    assert (info.value.from_status, info.value.to_status) == (src, dst)
    assert info.value.session_id == SID


# --- SessionConfig defaults ----------------------------------------------------------------------


def test_defaults() -> None:
    config = SessionConfig()
    assert config.max_history == 100
    assert config.max_files == 50
    assert config.max_file_bytes == 1_048_576
    assert config.max_message_bytes == 262_144
    assert config.max_index_entries == 1_000
    assert config.max_working_context_bytes == 1_048_576
    assert config.idle_after_seconds == 300
    assert config.timeout_minutes == 30
    assert config.persistence_enabled is True
    assert config.max_restarts == 3
    assert config.max_restart_seconds == 5
    assert config.features == {}
    assert SessionConfig.from_dict({}) == config
    assert SessionConfig.from_dict(None) == config
    assert jidoka.SessionConfig is SessionConfig


def test_is_immutable_and_compares_by_value() -> None:
    config = SessionConfig.from_dict({"max_files": 3})
    with pytest.raises(AttributeError):
        config.max_files = 4  # type: ignore[misc]
    assert config == SessionConfig.from_dict({"max_files": 3})


def test_from_dict_sets_fields() -> None:
    config = SessionConfig.from_dict(
        {"max_history": 7, "idle_after_seconds": 1.5, "features": {"beta": True}}
    )
    assert config.max_history == 7
    assert config.idle_after_seconds == 1.5
    assert config.features == {"beta": True}
    assert config.max_files == 50


def test_int_accepted_for_float_fields() -> None:
    config = SessionConfig.from_dict({"idle_after_seconds": 10, "timeout_minutes": 0})
    assert config.idle_after_seconds == 10.0
    assert config.timeout_minutes == 0.0


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"timeout_minutes": 0}, ("timeout_minutes", 0)),
        ({"max_restarts": 0}, ("max_restarts", 0)),
        ({"max_history": 1}, ("max_history", 1)),
        ({"persistence_enabled": False}, ("persistence_enabled", False)),
    ],
)
def test_boundary_values_accepted(fields: dict[str, Any], expected: tuple[str, Any]) -> None:
    config = SessionConfig.from_dict(fields)
    assert getattr(config, expected[0]) == expected[1]


# --- SessionConfig validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"max_history": 0}, "max_history"),
        ({"max_history": -5}, "max_history"),
        ({"max_files": 0}, "max_files"),
        ({"max_file_bytes": 0}, "max_file_bytes"),
        ({"max_message_bytes": -1}, "max_message_bytes"),
        ({"max_index_entries": 0}, "max_index_entries"),
        ({"max_working_context_bytes": 0}, "max_working_context_bytes"),
        ({"idle_after_seconds": 0}, "idle_after_seconds"),
        ({"idle_after_seconds": -1}, "idle_after_seconds"),
        ({"idle_after_seconds": math.nan}, "idle_after_seconds"),
        ({"timeout_minutes": -0.5}, "timeout_minutes"),
        ({"max_restarts": -1}, "max_restarts"),
        ({"max_restart_seconds": 0}, "max_restart_seconds"),
        # Wrong types (validation is strict: no coercion from strings or bools).
        ({"max_history": "5"}, "max_history"),
        ({"max_history": 5.0}, "max_history"),
        ({"max_history": True}, "max_history"),
        ({"max_history": None}, "max_history"),
        ({"idle_after_seconds": "300"}, "idle_after_seconds"),
        ({"persistence_enabled": "yes"}, "persistence_enabled"),
        ({"persistence_enabled": 1}, "persistence_enabled"),
        ({"features": []}, "features"),
        ({"features": "beta"}, "features"),
        # Unknown fields.
        ({"bogus": 1}, "bogus"),
        ({"max_history": 5, "maxHistory": 5}, "maxHistory"),
    ],
)
def test_invalid_field_is_named(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(jidoka.InvalidConfig) as info:
        SessionConfig.from_dict(fields, session_id=SID)
    error = info.value
    assert error.field == field
    assert error.argument == field
    assert error.session_id == SID
    assert field in str(error)
    assert SID in str(error)
    assert isinstance(error, jidoka.InvalidArgument)


@pytest.mark.parametrize("features", [{"beta": 1}, {"beta": "true"}, {"a": True, "b": None}])
def test_feature_values_must_be_bool(features: dict[str, Any]) -> None:
    with pytest.raises(jidoka.InvalidConfig) as info:
        SessionConfig.from_dict({"features": features})
    assert info.value.field.startswith("features")


def test_feature_names_must_be_strings() -> None:
    with pytest.raises(jidoka.InvalidConfig) as info:
        SessionConfig.from_dict({"features": {1: True}})
    assert info.value.field.startswith("features")


@pytest.mark.parametrize("data", [[("max_history", 5)], "max_history=5", 5, ("a",)])
def test_config_must_be_a_mapping(data: object) -> None:
    with pytest.raises(jidoka.InvalidConfig) as info:
        SessionConfig.from_dict(data, session_id=SID)
    assert info.value.field == "config"
    assert info.value.session_id == SID


def test_no_session_id_means_no_session_in_message() -> None:
    with pytest.raises(jidoka.InvalidConfig) as info:
        SessionConfig.from_dict({"max_history": 0})
    assert info.value.session_id is None


def test_validated_method_from_docstring() -> None:
    assert SessionConfig(max_history=5).validated() == SessionConfig.from_dict({"max_history": 5})
    with pytest.raises(jidoka.InvalidConfig) as info:
        SessionConfig(max_history=0).validated()
    assert info.value.field == "max_history"


# --- schema_version ------------------------------------------------------------------------------


def test_schema_version_current_is_accepted() -> None:
    assert CONFIG_SCHEMA_VERSION == 1
    config = SessionConfig.from_dict({"schema_version": 1, "max_files": 2})
    assert config.max_files == 2


@pytest.mark.parametrize("version", [0, 2, 99, "1", None, [1]])
def test_wrong_schema_version_is_refused(version: object) -> None:
    with pytest.raises(jidoka.InvalidConfig) as info:
        SessionConfig.from_dict({"schema_version": version}, session_id=SID)
    assert info.value.field == "schema_version"
    assert info.value.session_id == SID


def test_wrong_schema_version_is_refused_even_with_base() -> None:
    with pytest.raises(jidoka.InvalidConfig):
        SessionConfig.from_dict({"schema_version": 2}, base=SessionConfig())


# --- base merge ----------------------------------------------------------------------------------


def test_base_supplies_missing_fields() -> None:
    base = SessionConfig.from_dict({"max_history": 7, "max_files": 3, "features": {"x": True}})
    merged = SessionConfig.from_dict({"max_files": 9}, base=base)
    assert merged.max_history == 7
    assert merged.max_files == 9
    assert merged.features == {"x": True}
    assert base.max_files == 3  # base untouched


def test_base_returned_when_nothing_to_merge() -> None:
    base = SessionConfig.from_dict({"max_history": 7})
    assert SessionConfig.from_dict(None, base=base) is base
    assert SessionConfig.from_dict({}, base=base) == base
    assert SessionConfig.from_dict({"schema_version": 1}, base=base) == base


def test_features_replace_not_merge() -> None:
    base = SessionConfig.from_dict({"features": {"x": True}})
    merged = SessionConfig.from_dict({"features": {"y": False}}, base=base)
    assert merged.features == {"y": False}


def test_merge_is_validated() -> None:
    base = SessionConfig.from_dict({"max_history": 7})
    with pytest.raises(jidoka.InvalidConfig) as info:
        SessionConfig.from_dict({"max_files": 0}, base=base)
    assert info.value.field == "max_files"
    with pytest.raises(jidoka.InvalidConfig) as info:
        SessionConfig.from_dict({"unknown": 0}, base=base)
    assert info.value.field == "unknown"


def test_config_instance_passes_through() -> None:
    config = SessionConfig.from_dict({"max_history": 3})
    assert SessionConfig.from_dict(config) is config
    assert SessionConfig.from_dict(config, base=SessionConfig()) is config


# --- to_dict / from_dict -------------------------------------------------------------------------


def test_to_dict() -> None:
    out = SessionConfig().to_dict()
    assert out["schema_version"] == CONFIG_SCHEMA_VERSION
    assert set(out) == {"schema_version", *SessionConfig.__struct_fields__}
    assert out["max_history"] == 100
    assert out["features"] == {}
    assert msgspec.json.decode(msgspec.json.encode(out)) == out  # JSON-ready


_CONFIGS = st.builds(
    SessionConfig,
    max_history=st.integers(1, 10**9),
    max_files=st.integers(1, 10**6),
    max_file_bytes=st.integers(1, 2**40),
    max_message_bytes=st.integers(1, 2**40),
    max_index_entries=st.integers(1, 10**9),
    max_working_context_bytes=st.integers(1, 2**40),
    idle_after_seconds=st.floats(min_value=1e-6, max_value=1e9, allow_nan=False),
    timeout_minutes=st.floats(min_value=0, max_value=1e9, allow_nan=False),
    persistence_enabled=st.booleans(),
    max_restarts=st.integers(0, 1000),
    max_restart_seconds=st.floats(min_value=1e-6, max_value=1e9, allow_nan=False),
    features=st.dictionaries(st.text(max_size=12), st.booleans(), max_size=5),
)


@settings(max_examples=200, deadline=None)
@given(config=_CONFIGS)
def test_round_trip_property(config: SessionConfig) -> None:
    data = config.to_dict()
    assert SessionConfig.from_dict(data) == config
    # Through JSON as well, as a store or an HTTP client would carry it.
    assert SessionConfig.from_dict(msgspec.json.decode(msgspec.json.encode(data))) == config
    # And as a base: an empty update gives the base back.
    assert SessionConfig.from_dict({}, base=config) == config
