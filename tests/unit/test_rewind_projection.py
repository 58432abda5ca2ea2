"""The fold with rewinds: :func:`replay` and :func:`project` over synthetic logs, what a rewind
keeps and restores, and the paths a rewound range wrote."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jidoka.events import Event, EventType
from jidoka.session.history import project, touched_paths
from jidoka.session.projection import RewindTargetMissing, apply, replay
from jidoka.session.snapshot import encode_state
from jidoka.store.memory import MemoryStore

SID = "01HZZZZZZZZZZZZZZZZZZZZZZZ"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Log:
    """A session's log, built one event at a time."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.add(EventType.SESSION_CREATED, {"status": "initializing", "config": {}})
        self.add(EventType.SESSION_STATUS, {"status": "active", "previous": "initializing"})

    def add(self, kind: EventType, data: dict[str, Any]) -> int:
        seq = len(self.events) + 1
        self.events.append(Event(kind, SID, seq, T0 + timedelta(seconds=seq), data))
        return seq

    def say(self, content: str) -> int:
        return self.add(EventType.CONVERSATION_ADDED, {"role": "user", "content": content})

    def put(self, key: str, value: Any) -> int:
        return self.add(EventType.WORKING_CONTEXT_UPDATED, {"key": key, "value": value})

    def rewind(self, to_seq: int) -> int:
        last = len(self.events)
        return self.add(
            EventType.SESSION_REWOUND, {"to_seq": to_seq, "from_seq": last, "touched_paths": []}
        )


def said(events: list[Event], upto: int | None = None) -> list[str]:
    return [m.content for m in replay(SID, events, upto=upto).messages()]


def test_a_rewind_restores_the_projection_at_its_target() -> None:
    log = Log()
    log.say("one")
    log.put("k", 1)
    mark = log.say("two")
    log.say("three")
    log.put("k", 2)
    log.rewind(mark)
    state = replay(SID, log.events)
    assert [m.content for m in state.messages()] == ["one", "two"]
    assert state.working_context == {"k": 1}
    assert state.seq == len(log.events)
    assert state.status == "active"


def test_a_rewind_to_before_an_earlier_rewind_and_back_past_it() -> None:
    log = Log()
    a = log.say("a")
    b = log.say("b")
    log.rewind(a)
    c = log.say("c")
    assert said(log.events) == ["a", "c"]
    log.rewind(b)  # before the first rewind: "b" is back, "c" gone
    assert said(log.events) == ["a", "b"]
    log.rewind(c)  # a point after the first rewind
    assert said(log.events) == ["a", "c"]
    assert said(log.events, upto=b) == ["a", "b"]


def test_a_rewind_keeps_the_usage_and_the_agents_status() -> None:
    log = Log()
    mark = log.say("hi")
    log.add(EventType.AGENT_STATUS, {"status": "thinking"})
    log.add(
        EventType.LLM_RESPONSE,
        {"usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}},
    )
    log.add(EventType.AGENT_STATUS, {"status": "idle"})
    log.rewind(mark)
    state = replay(SID, log.events)
    assert state.usage == (5, 2, 7)
    assert state.agent_status == "idle"


def test_applying_a_rewind_without_its_target_is_refused_and_changes_nothing() -> None:
    log = Log()
    log.say("x")
    event = Event(
        EventType.SESSION_REWOUND,
        SID,
        len(log.events) + 1,
        T0,
        {"to_seq": 2, "from_seq": 3, "touched_paths": []},
    )
    state = replay(SID, log.events)
    with pytest.raises(RewindTargetMissing, match="seq 2"):
        apply(state, event)
    assert [m.content for m in state.messages()] == ["x"]
    assert state.seq == len(log.events)


async def test_project_folds_from_a_snapshot_before_the_target() -> None:
    log = Log()
    seqs = [log.say(str(i)) for i in range(10)]
    log.rewind(seqs[2])
    log.say("after")
    store = MemoryStore()
    await store.append(SID, log.events)
    at = seqs[6]
    await store.write_snapshot(SID, at, encode_state(replay(SID, log.events, upto=at)))
    for upto in (seqs[1], seqs[6], seqs[8], None):
        state, _ = await project(store, SID, upto=upto)
        assert [m.content for m in state.messages()] == said(log.events, upto=upto)
    with pytest.raises(ValueError, match="ends at seq"):
        await project(store, SID, upto=len(log.events) + 5)


def _call(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"call_id": call_id, "name": name, "arguments": text, "iteration": 1}


def _result(call_id: str, name: str, is_error: bool) -> dict[str, Any]:
    return {"call_id": call_id, "name": name, "content": "", "is_error": is_error}


def test_touched_paths_are_the_writes_that_ran() -> None:
    log = Log()
    log.add(EventType.TOOL_CALL, _call("1", "write_file", {"path": "b.py", "content": ""}))
    log.add(EventType.TOOL_RESULT, _result("1", "write_file", False))
    log.add(EventType.TOOL_CALL, _call("2", "edit_file", {"path": "a.py", "old": "", "new": ""}))
    log.add(EventType.TOOL_RESULT, _result("2", "edit_file", False))
    log.add(EventType.TOOL_CALL, _call("3", "write_file", {"path": "denied.py"}))
    log.add(EventType.TOOL_RESULT, _result("3", "write_file", True))  # refused: not written
    log.add(EventType.TOOL_CALL, _call("4", "read_file", {"path": "read.py"}))
    log.add(EventType.TOOL_RESULT, _result("4", "read_file", False))
    log.add(EventType.TOOL_CALL, _call("5", "write_file", '{"path": "cut'))  # never ran
    log.add(EventType.TOOL_CALL, _call("6", "write_file", {"path": "b.py", "content": "2"}))
    log.add(EventType.TOOL_RESULT, _result("6", "write_file", False))
    log.add(EventType.TOOL_CALL, _call("7", "write_file", ["not", "an", "object"]))
    assert touched_paths(log.events) == ["a.py", "b.py"]


async def test_a_seq_inside_a_gap_of_dropped_chunks_is_the_state_before_the_gap() -> None:
    """Chunks change nothing but the seq: the projection at a pruned seq is the one at the
    gap's start, with that seq; a fold of the whole log steps over the gap."""
    log = Log()
    log.say("question")
    first = log.add(EventType.LLM_STREAM_CHUNK, {"text": "an", "iteration": 1})
    last = log.add(EventType.LLM_STREAM_CHUNK, {"text": "swer", "iteration": 1})
    log.say("answer")
    store = MemoryStore()
    await store.append(SID, log.events)
    assert (
        await store.drop_events(SID, EventType.LLM_STREAM_CHUNK, first_seq=first, last_seq=last)
        == 2
    )
    inside, _ = await project(store, SID, upto=first + 1)
    assert (inside.seq, [m.content for m in inside.messages()]) == (first + 1, ["question"])
    whole, _ = await project(store, SID)
    assert [m.content for m in whole.messages()] == ["question", "answer"]
    stored = await store.read_events(SID)
    assert [m.content for m in replay(SID, stored, upto=last).messages()] == ["question"]
