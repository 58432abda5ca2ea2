"""A turn's events survive a restart unchanged, and a turn cut short by one is closed cleanly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import jidoka

from ..helpers import until

#: A restart keeps nothing of the memory store: only the durable stores are asked (each test's
#: runtimes use the store the environment names, the same data directory or Postgres schema).
pytestmark = pytest.mark.stores("sqlite", "postgres")

SCRIPT = {
    "provider": "scripted",
    "script": [
        {"chunks": ["Reading ", "it."], "tool_calls": [
            {"id": "c1", "name": "read_file", "arguments": {"path": "src/app.py"}}]},
        {"chunks": ["It returns ", "42."], "usage": {"prompt_tokens": 7, "completion_tokens": 3}},
    ],
}  # fmt: skip


async def test_turn_events_replay_identically(tmp_path: Path, project: Path) -> None:
    data = tmp_path / "db"
    async with jidoka.Runtime(data_dir=data) as rt:
        sid = await rt.client.create_session(project_root=str(project), llm_config=SCRIPT)
        result = await rt.client.chat(sid, "what does main return?")
        before = await rt.read_events(sid)
        info_before = await rt.client.get_session_info(sid)
    async with jidoka.Runtime(data_dir=data) as rt:
        after = await rt.read_events(sid)
        info_after = await rt.client.get_session_info(sid)
        history = await rt.client.get_conversation_history(sid)
    assert [(e.seq, e.type, e.time, e.data) for e in after[: len(before)]] == [
        (e.seq, e.type, e.time, e.data) for e in before
    ]
    assert {"llm_stream_chunk", "tool_call", "tool_result", "llm_response"} <= {
        e.type for e in before
    }
    assert info_after.usage == info_before.usage == result.usage
    assert history[-1].content == "It returns 42."


async def test_a_restart_while_waiting_for_approval_denies(tmp_path: Path, project: Path) -> None:
    data = tmp_path / "db"
    ask = {
        "provider": "scripted",
        "script": [{"tool_calls": [
            {"id": "w1", "name": "write_file",
             "arguments": {"path": "src/app.py", "content": "gone\n"}}]}],
    }  # fmt: skip
    async with jidoka.Runtime(data_dir=data) as rt:
        sid = await rt.client.create_session(
            project_root=str(project), config={"allow_write": "ask"}, llm_config=ask
        )
        async with rt.client.subscribe_to_session(sid, after_seq=0) as events:
            turn = asyncio.create_task(rt.client.chat(sid, "rewrite it"))
            await until(events, "approval_requested")
    # The runtime closed under the waiting turn (as a crash would leave it: nothing decided).
    assert turn.done()
    assert isinstance(turn.exception(), jidoka.SessionTerminated)
    async with jidoka.Runtime(data_dir=data) as rt:
        info = await rt.client.get_session_info(sid)
        stored = await rt.read_events(sid)
    decided = [e for e in stored if e.type == "approval_decided"]
    assert [(e.data["call_id"], e.data["allow"], e.data["reason"]) for e in decided] == [
        ("w1", False, "restart")
    ]
    statuses = [e.data for e in stored if e.type == "agent_status"]
    assert statuses[-1] == {"status": "failed", "reason": "restart"}
    assert (project / "src" / "app.py").read_text() == "def main():\n    return 42\n"
    assert info.status == "idle"
