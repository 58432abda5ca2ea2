"""jidoka.payloads: one Struct per event type, a tagged union, and docs/events.md agreeing."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import msgspec
import pytest

from jidoka.events import Event, EventType
from jidoka.payloads import (
    PAYLOADS,
    AnyEventData,
    ErrorData,
    EventData,
    EventsDroppedData,
    SessionStatusData,
    ToolResultData,
    WorkingContextUpdatedData,
    data_of,
    event_item,
    payload_of,
)

from .test_events import SID, T0

EVENTS_MD = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def test_every_event_type_has_one_struct_tagged_with_its_name() -> None:
    assert set(PAYLOADS) == set(EventType)
    assert len(set(PAYLOADS.values())) == len(PAYLOADS)
    assert set(get_args(AnyEventData)) == set(PAYLOADS.values())
    for kind, struct in PAYLOADS.items():
        assert struct.__struct_config__.tag == kind.value
        assert struct.event_type is kind
        assert issubclass(struct, EventData)


@pytest.mark.parametrize("kind", list(EventType))
def test_the_union_is_tagged_by_the_event_type(kind: EventType) -> None:
    struct = PAYLOADS[kind]
    required = {f.name: _sample(f.type) for f in msgspec.structs.fields(struct) if f.required}
    decoded = msgspec.convert({"type": kind.value, **required}, AnyEventData)
    assert type(decoded) is struct


def _sample(annotation: object) -> object:
    candidates: tuple[object, ...] = ("x", 1, 1.5, True, {}, [], None)
    for candidate in candidates:
        try:
            return msgspec.convert(candidate, annotation)
        except msgspec.ValidationError:
            continue
    raise AssertionError(annotation)  # pragma: no cover


def test_unset_fields_are_left_out_and_none_is_kept() -> None:
    assert data_of(SessionStatusData(status="idle", previous="active")) == {
        "status": "idle",
        "previous": "active",
    }
    data = data_of(ErrorData(code="llm_error", iterations=1, message="m", status=None))
    assert list(data) == ["code", "iterations", "message", "status"]
    assert data["status"] is None
    deleted = data_of(WorkingContextUpdatedData(key="k", value=None, deleted=True))
    assert list(deleted) == ["key", "value", "deleted"]


def test_the_two_shapes_of_error_keep_their_key_order() -> None:
    crash = ErrorData(worker="indexer", message="boom", restarts=2)
    assert list(data_of(crash)) == ["worker", "message", "restarts"]
    turn = ErrorData(code="limit_exceeded", iterations=3, message="m", limit="x", maximum=2)
    assert list(data_of(turn)) == ["code", "iterations", "message", "limit", "maximum"]


def test_event_item_is_the_type_and_data_of() -> None:
    result = ToolResultData(call_id="c", name="read_file", content="x", is_error=False)
    assert event_item(result) == (EventType.TOOL_RESULT, data_of(result))
    assert event_item(result)[1] == {
        "call_id": "c",
        "name": "read_file",
        "content": "x",
        "is_error": False,
    }
    assert event_item(EventsDroppedData(count=3)) == (EventType.EVENTS_DROPPED, {"count": 3})


def test_data_of_keeps_values_as_given() -> None:
    value = {"nested": [1, 2]}
    data = data_of(WorkingContextUpdatedData(key="k", value=value))
    assert data["value"] is value


def test_payload_of_reads_data_back_and_refuses_another_shape() -> None:
    event = Event(EventType.SESSION_TERMINATED, SID, 9, T0, {"reason": "timeout", "error": None})
    payload = payload_of(event)
    assert payload == PAYLOADS[EventType.SESSION_TERMINATED](reason="timeout", error=None)
    with pytest.raises(msgspec.ValidationError):
        payload_of(Event(EventType.SESSION_TERMINATED, SID, 9, T0, {"error": None}))


# --- docs/events.md --------------------------------------------------------------------------


def documented() -> dict[str, tuple[list[str], str]]:
    """docs/events.md's table: type -> (fields, ``?`` marking an optional one; meaning)."""
    rows = {}
    for line in EVENTS_MD.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `"):
            continue
        type_cell, fields_cell, meaning = (cell.strip() for cell in line.strip("|").split(" | "))
        fields = [field.strip().strip("`") for field in fields_cell.split(",")]
        rows[type_cell.strip("`")] = (fields, meaning)
    return rows


def test_docs_events_md_lists_every_type_with_its_structs_fields_in_order() -> None:
    rows = documented()
    assert list(rows) == [kind.value for kind in EventType]
    for kind, struct in PAYLOADS.items():
        fields, meaning = rows[kind.value]
        expected = [f.name if f.required else f"{f.name}?" for f in msgspec.structs.fields(struct)]
        assert fields == expected, kind
        assert meaning.startswith(f"`{struct.__name__}`."), kind
        optional = [f for f in msgspec.structs.fields(struct) if not f.required]
        assert all(f.default is msgspec.UNSET for f in optional), kind
