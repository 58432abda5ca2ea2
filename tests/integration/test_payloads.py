"""Every event the runtime writes has exactly its type's Struct shape (jidoka.payloads).

A session goes through every kind of change a client and the agent can make (messages, files,
the file index, working context, tool calls, a write approval, a cut-off call, a failed turn,
termination), and each event of its log must have as ``data`` what
``data_of(payload_of(event))`` makes of it, byte for byte: the same keys, in the same order,
with nothing the Struct does not declare. With the remote client the events come over SSE.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

import jidoka
from jidoka.bus.base import Subscription
from jidoka.events import EVENT_TYPES, Event, EventType
from jidoka.payloads import PAYLOADS, data_of, payload_of

from ..helpers import PROMPTLY

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "v1.sqlite3"


def assert_conforms(event: Event) -> None:
    payload = payload_of(event)
    assert type(payload) is PAYLOADS[event.type]
    rebuilt = msgspec.json.encode(data_of(payload))
    assert rebuilt == msgspec.json.encode(event.data), (event.type, event.data)


def scripted(*turns: dict[str, Any]) -> dict[str, Any]:
    return {"provider": "scripted", "script": list(turns)}


def call(name: str, call_id: str, **arguments: Any) -> dict[str, Any]:
    return {"id": call_id, "name": name, "arguments": arguments}


async def test_every_event_of_a_busy_session_has_its_structs_shape(
    client: jidoka.Client, project: Path
) -> None:
    sid = await client.create_session(
        metadata={"team": "core"},
        project_root=str(project),
        config={"allow_write": "ask", "approval_timeout_seconds": 30},
        llm_config=scripted(
            {
                "chunks": ["Let me ", "look."],
                "tool_calls": [
                    call("read_file", "c1", path="src/app.py"),
                    call("write_file", "w1", path="src/app.py", content="changed\n"),
                ],
            },
            {"text": "done", "usage": {"prompt_tokens": 5, "completion_tokens": 1}},
            {"tool_calls": [call("read_file", "c2", path="README.md")], "finish_reason": "length"},
            {"text": "after the cut"},
            {"text": "what was said so far"},  # the summary of compact_session
            {"error": {"message": "overloaded", "status": 503, "retryable": True}},
        ),
    )
    logged: list[Event] = []
    asked = asyncio.Event()

    async def record(events: Subscription) -> None:
        async for event in events:  # the log from seq 1, then live until it ends
            logged.append(event)
            if event.type == EventType.APPROVAL_REQUESTED:
                asked.set()

    async with client.subscribe_to_session(sid, after_seq=0) as events:
        recording = asyncio.create_task(record(events))
        await client.send_message(sid, "user", "hello")
        await client.add_file(sid, "src/app.py")
        await client.update_file_index(sid, "src/app.py", {"summary": "entry point"})
        await client.remove_file(sid, "src/app.py")
        await client.put_working_context(sid, "plan", ["read", "write"])
        await client.delete_working_context(sid, "plan")
        await client.rewind_session(sid, to_seq=2)
        await client.clear_conversation(sid)
        turn = asyncio.create_task(client.chat(sid, "change it"))
        async with asyncio.timeout(PROMPTLY):
            await asked.wait()
        await client.approve(sid, "w1", allow=True)
        await turn
        await client.chat(sid, "read the readme")
        await client.compact_session(sid, keep_last=1)
        with pytest.raises(jidoka.LLMError):
            await client.chat(sid, "once more")
        await client.terminate_session(sid, reason="done")
        async with asyncio.timeout(PROMPTLY):
            await recording
    assert [e.seq for e in logged] == list(range(1, len(logged) + 1))
    # Every type a session's log can hold (events_dropped is a stream's and session_purged the
    # global stream's, never in a log).
    never_logged = {EventType.EVENTS_DROPPED, EventType.SESSION_PURGED}
    assert {event.type for event in logged} == set(EventType) - never_logged
    for event in logged:
        assert isinstance(event.type, EventType)
        assert_conforms(event)
    results = [e.data for e in logged if e.type == EventType.TOOL_RESULT]
    assert any(data.get("cut_off") for data in results)
    error = next(e.data for e in logged if e.type == EventType.ERROR)
    assert list(error) == ["code", "iterations", "message", "provider", "status", "retryable"]


async def test_a_restored_session_starts_with_a_session_created_of_the_struct_shape(
    client: jidoka.Client,
) -> None:
    sid = await client.create_session(metadata={"n": 1})
    await client.send_message(sid, "user", "kept")
    await client.save_session(sid)
    await client.terminate_session(sid)
    await client.restore_session(sid)
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        created = [e async for e in _until_active(events) if e.type == EventType.SESSION_CREATED]
    restored = created[-1]
    assert "restored_from" in restored.data
    assert "state" in restored.data
    for event in created:
        assert_conforms(event)


async def _until_active(events: Subscription) -> AsyncIterator[Event]:
    """The log up to the restored session's move to active (a durable store also replays the
    first life; the memory store let that go when the session ended)."""
    restored = False
    async with asyncio.timeout(PROMPTLY):
        async for event in events:
            yield event
            restored = restored or "restored_from" in event.data
            if restored and event.type == EventType.SESSION_STATUS:
                return


def test_the_stored_v1_log_has_the_structs_shapes() -> None:
    """The oldest stored data there is (schema version 1) still reads into the Structs."""
    with sqlite3.connect(FIXTURE) as conn:
        rows = conn.execute("SELECT session_id, seq, type, time, data FROM events").fetchall()
    assert rows
    for session_id, seq, type_, time, data in rows:
        event = Event(EVENT_TYPES[type_], session_id, seq, datetime.fromisoformat(time),
                      msgspec.json.decode(data))  # fmt: skip
        assert_conforms(event)


@pytest.mark.stores("sqlite")
async def test_what_a_restart_writes_has_the_structs_shapes(tmp_path: Path, project: Path) -> None:
    """The events recovery writes for a turn a restart interrupted (the write it waited on
    denied, the agent failed) are built from the Structs too."""
    data = tmp_path / "db"
    write = call("write_file", "w1", path="src/app.py", content="gone\n")
    async with jidoka.Runtime(data_dir=data, store="sqlite") as rt:
        sid = await rt.client.create_session(
            project_root=str(project),
            config={"allow_write": "ask"},
            llm_config=scripted({"tool_calls": [write]}),
        )
        async with rt.client.subscribe_to_session(sid, after_seq=0) as events:
            turn = asyncio.create_task(rt.client.chat(sid, "rewrite it"))
            async with asyncio.timeout(PROMPTLY):
                async for event in events:
                    if event.type == EventType.APPROVAL_REQUESTED:
                        break
    with pytest.raises(jidoka.SessionTerminated):
        await turn
    async with jidoka.Runtime(data_dir=data, store="sqlite") as rt:
        logged = await rt.read_events(sid)
    restart = [e for e in logged if e.data.get("reason") == "restart"]
    assert [e.type for e in restart] == [
        EventType.APPROVAL_DECIDED,
        EventType.AGENT_STATUS,
        EventType.RUN_COMPLETED,  # the chat's run: interrupted, never run again
    ]
    for event in logged:
        assert_conforms(event)
