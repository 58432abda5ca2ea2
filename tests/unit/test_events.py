"""Event, EventType and the JSON (CloudEvents-shaped) wire form."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jidoka
from jidoka.events import (
    EVENT_TYPES,
    GLOBAL_EVENT_TYPES,
    Event,
    EventType,
    decode_event,
    encode_event,
)

SID = "01KDVDNA002TGFDYKMPAK7J69H"
T0 = datetime(2026, 1, 1, 12, 30, 15, 123456, tzinfo=UTC)

CONTRACT_TYPES = [
    "session_created",
    "session_status",
    "session_terminated",
    "session_rewound",
    "conversation_added",
    "conversation_cleared",
    "file_added",
    "file_removed",
    "file_index_updated",
    "working_context_updated",
    "llm_stream_chunk",
    "llm_response",
    "tool_call",
    "tool_result",
    "agent_status",
    "approval_requested",
    "approval_decided",
    "error",
    "context_compacted",
    "run_queued",
    "run_started",
    "run_completed",
    "session_purged",  # issue 17: not in a log, on the global stream
]


def _wire(**fields: Any) -> bytes:
    base: dict[str, Any] = {
        "type": "file_added",
        "session_id": SID,
        "seq": 1,
        "time": "2026-01-01T00:00:00Z",
        "data": {},
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


# --- EventType -----------------------------------------------------------------------------------


def test_event_types_match_the_contract() -> None:
    values = [t.value for t in EventType if t is not EventType.EVENTS_DROPPED]
    assert values == CONTRACT_TYPES
    assert EventType.EVENTS_DROPPED == "events_dropped"


@pytest.mark.parametrize("name", CONTRACT_TYPES)
def test_event_type_member_names(name: str) -> None:
    member = EventType[name.upper()]
    assert member == name  # a StrEnum: compares equal to its wire name
    assert EventType(name) is member
    assert str(member) == name


def test_global_event_types_are_the_lifecycle_ones() -> None:
    lifecycle = {
        EventType.SESSION_CREATED,
        EventType.SESSION_STATUS,
        EventType.SESSION_TERMINATED,
        EventType.SESSION_PURGED,
    }
    assert frozenset(lifecycle) == GLOBAL_EVENT_TYPES
    assert {"session_created", "session_status", "session_terminated", "session_purged"} == set(
        GLOBAL_EVENT_TYPES
    )
    assert isinstance(GLOBAL_EVENT_TYPES, frozenset)


def test_exported_from_package() -> None:
    assert jidoka.Event is Event
    assert jidoka.EventType is EventType
    assert jidoka.encode_event is encode_event
    assert jidoka.decode_event is decode_event


# --- Event -------------------------------------------------------------------------------------


def test_id_and_source_are_derived() -> None:
    event = Event(EventType.FILE_ADDED, SID, 42, T0, {"path": "a.py"})
    assert event.id == f"{SID}-42"
    assert event.source == f"/v1/sessions/{SID}"


def test_default_data_is_an_empty_object() -> None:
    assert Event(EventType.ERROR, SID, 1, T0).data == {}
    assert decode_event(encode_event(Event(EventType.ERROR, SID, 1, T0))).data == {}


def test_event_is_frozen() -> None:
    event = Event(EventType.ERROR, SID, 1, T0, {})
    with pytest.raises(AttributeError):
        event.seq = 2  # type: ignore[misc]


def test_to_dict() -> None:
    event = Event(EventType.TOOL_CALL, SID, 7, T0, {"tool": "grep"})
    assert event.to_dict() == {
        "specversion": "1.0",
        "id": f"{SID}-7",
        "type": "tool_call",
        "source": f"/v1/sessions/{SID}",
        "time": T0,
        "session_id": SID,
        "seq": 7,
        "data": {"tool": "grep"},
    }


# --- encode / decode -----------------------------------------------------------------------------


def test_json_has_cloudevents_fields() -> None:
    event = Event(EventType.CONVERSATION_ADDED, SID, 3, T0, {"role": "user", "content": "hé"})
    raw = encode_event(event)
    assert isinstance(raw, bytes)
    obj = json.loads(raw)
    assert set(obj) == {"specversion", "id", "type", "source", "time", "session_id", "seq", "data"}
    assert obj["specversion"] == "1.0"
    assert obj["id"] == f"{SID}-3"
    assert obj["type"] == "conversation_added"
    assert obj["source"] == f"/v1/sessions/{SID}"
    assert obj["session_id"] == SID
    assert obj["seq"] == 3
    assert obj["data"] == {"role": "user", "content": "hé"}
    assert isinstance(obj["time"], str)
    assert datetime.fromisoformat(obj["time"].replace("Z", "+00:00")) == T0


def test_encoding_is_one_line_utf8() -> None:
    raw = encode_event(Event(EventType.ERROR, SID, 1, T0, {"text": "line1\nline2 — é"}))
    assert b"\n" not in raw
    raw.decode("utf-8")


def test_round_trip() -> None:
    event = Event(EventType.FILE_ADDED, SID, 1, T0, {"path": "a.py", "n": [1, 2.5, None, True]})
    assert decode_event(encode_event(event)) == event


def test_round_trip_keeps_offset_time() -> None:
    when = datetime(2026, 6, 1, 8, 0, tzinfo=timezone(timedelta(hours=-5, minutes=-30)))
    decoded = decode_event(encode_event(Event(EventType.ERROR, SID, 9, when)))
    assert decoded.time == when
    assert decoded.time.utcoffset() == when.utcoffset()


def test_decode_accepts_str() -> None:
    event = Event(EventType.ERROR, SID, 5, T0, {"x": 1})
    assert decode_event(encode_event(event).decode()) == event


def test_decode_ignores_id_and_source_in_input() -> None:
    decoded = decode_event(_wire(id="forged-99", source="/elsewhere", seq=4))
    assert decoded.id == f"{SID}-4"
    assert decoded.source == f"/v1/sessions/{SID}"


def test_decode_without_optional_fields() -> None:
    decoded = decode_event(_wire(data=...))
    assert decoded.data == {}
    assert decoded.time == datetime(2026, 1, 1, tzinfo=UTC)
    assert decoded.time.tzinfo is not None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"{",
        b"[]",
        b"null",
        b"42",
        b'"event"',
        b"{}",
        _wire(type=...),
        _wire(session_id=...),
        _wire(seq=...),
        _wire(time=...),
        _wire(seq="1"),
        _wire(seq=1.5),
        _wire(seq=None),
        _wire(type=1),
        _wire(session_id=None),
        _wire(time="yesterday"),
        _wire(time=1767225600),
        _wire(data=None),
        _wire(data=[1, 2]),
        _wire(data="x"),
    ],
)
def test_malformed_raises_invalid_argument(raw: bytes) -> None:
    with pytest.raises(jidoka.InvalidArgument) as info:
        decode_event(raw)
    assert info.value.argument == "event"
    assert "malformed event" in str(info.value)


@pytest.mark.parametrize("name", ["x", "Error", "session-created", "custom_event", ""])
def test_a_type_this_version_does_not_know_is_malformed(name: str) -> None:
    with pytest.raises(jidoka.InvalidArgument, match="malformed event") as info:
        decode_event(_wire(type=name))
    assert info.value.argument == "event"


def test_decoded_type_is_the_enum_member() -> None:
    decoded = decode_event(_wire(type="tool_call"))
    assert decoded.type is EventType.TOOL_CALL
    assert EVENT_TYPES["tool_call"] is EventType.TOOL_CALL
    assert set(EVENT_TYPES.values()) == set(EventType)


@pytest.mark.parametrize("seq", [0, -1, -(2**40)])
def test_seq_below_one_is_refused(seq: int) -> None:
    with pytest.raises(jidoka.InvalidArgument, match="seq"):
        decode_event(_wire(seq=seq))


@pytest.mark.parametrize("time", ["2026-01-01T00:00:00", "2026-01-01T00:00:00.123456"])
def test_naive_time_is_refused(time: str) -> None:
    with pytest.raises(jidoka.InvalidArgument, match="timezone"):
        decode_event(_wire(time=time))


@pytest.mark.parametrize(
    "raw",
    [
        _wire(type="x").replace(b'"x"', b'"\xff"'),  # bytes that are not UTF-8
        _wire(type="x").decode().replace('"x"', '"\ud800"'),  # str with a lone surrogate
    ],
    ids=["invalid-utf8-bytes", "lone-surrogate-str"],
)
def test_undecodable_text_is_refused(raw: bytes | str) -> None:
    with pytest.raises(jidoka.InvalidArgument):
        decode_event(raw)


def test_escaped_lone_surrogate_is_refused() -> None:
    with pytest.raises(jidoka.InvalidArgument):
        decode_event(_wire(type="x").replace(b'"x"', b'"\\ud800"'))


# --- property: round trip ------------------------------------------------------------------------

_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
_OFFSETS = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
_TIMES = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(2200, 1, 1),
    timezones=st.just(UTC) | _OFFSETS,
)
_IDS = st.from_regex(r"[0-9A-HJKMNP-TV-Z]{26}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(
    type_=st.sampled_from(list(EventType)),
    session_id=_IDS,
    seq=st.integers(min_value=1, max_value=2**63 - 1),
    time=_TIMES,
    data=st.dictionaries(st.text(max_size=10), _JSON, max_size=6),
)
def test_round_trip_property(
    type_: EventType, session_id: str, seq: int, time: datetime, data: dict[str, Any]
) -> None:
    event = Event(type_, session_id, seq, time, data)
    raw = encode_event(event)
    decoded = decode_event(raw)
    assert decoded == event
    assert decoded.id == event.id == f"{session_id}-{seq}"
    assert decoded.time.utcoffset() == time.utcoffset()
    assert encode_event(decoded) == raw
    obj = json.loads(raw)
    assert obj["id"] == f"{session_id}-{seq}"
    assert obj["seq"] == seq
    assert obj["data"] == msgspec.json.decode(msgspec.json.encode(data))
