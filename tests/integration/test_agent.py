"""The agent's turn loop against the scripted provider: events, tools, limits, cancellation,
concurrency policies, write approvals, isolation and replay.

The provider is scripted (deterministic, offline); the OpenAI-compatible provider is tested
against a real local server in tests/unit/test_providers.py and tests/e2e.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import jidoka
from jidoka.bus.base import Subscription

from ..helpers import until


def scripted(*turns: dict[str, Any]) -> dict[str, Any]:
    return {"provider": "scripted", "script": list(turns)}


def read(path: str, call_id: str = "c1") -> dict[str, Any]:
    return {"id": call_id, "name": "read_file", "arguments": {"path": path}}


async def kinds(events: Subscription, stop: str = "agent_status") -> list[tuple[str, Any]]:
    """Event types (with a key datum) up to and including the first ``stop`` that ends a turn."""
    seen: list[tuple[str, Any]] = []
    async for event in events:
        datum = event.data.get("status") or event.data.get("role") or event.data.get("name")
        seen.append((event.type, datum))
        if event.type == stop and event.data.get("status") in ("idle", "failed", "cancelled"):
            return seen
    return seen


async def test_a_turn_with_a_tool_call(client: jidoka.Client, project: Path) -> None:
    sid = await client.create_session(
        project_root=str(project),
        llm_config=scripted(
            {"chunks": ["Let me ", "look."], "tool_calls": [read("src/app.py")]},
            {
                "chunks": ["main returns ", "42."],
                "usage": {"prompt_tokens": 50, "completion_tokens": 4},
            },
        ),
    )
    async with client.subscribe_to_session(sid, after_seq=2) as events:
        result = await client.chat(sid, "what does main return?")
        seen = await kinds(events)
    assert result.message.role == "assistant"
    assert result.message.content == "main returns 42."
    assert result.iterations == 2
    assert not result.interrupted
    assert result.finish_reason == "stop"
    assert [kind for kind, _ in seen] == [
        "run_queued", "run_started",  # a chat is a run
        "conversation_added", "agent_status", "llm_stream_chunk", "agent_status", "tool_call",
        "tool_result", "file_index_updated", "agent_status", "llm_stream_chunk",
        "conversation_added", "llm_response", "agent_status",
    ]  # fmt: skip
    history = await client.get_conversation_history(sid)
    assert [(m.role, m.content) for m in history] == [
        ("user", "what does main return?"),
        ("assistant", "main returns 42."),
    ]
    info = await client.get_session_info(sid)
    assert info.usage == result.usage
    assert info.usage.prompt_tokens >= 50
    assert info.usage.total_tokens == info.usage.prompt_tokens + info.usage.completion_tokens
    assert "src/app.py" in {entry.path for entry in await client.get_file_index(sid)}


async def test_the_model_sees_the_tool_result_and_the_context(
    client: jidoka.Client, runtime: jidoka.Runtime, project: Path
) -> None:
    sid = await client.create_session(
        project_root=str(project),
        llm_config=scripted({"tool_calls": [read("src/app.py")]}, {"text": "done"}),
    )
    await client.put_working_context(sid, "task", "fix main")
    await client.chat(sid, "go")
    agent = runtime._agents.get(sid)  # type: ignore[union-attr]
    assert agent is not None
    provider = agent._providers.current
    requests = provider.requests  # type: ignore[union-attr]
    assert len(requests) == 2
    first, second = requests
    assert first.messages[0].role == "system"
    assert "fix main" in (first.messages[0].content or "")
    assert first.messages[-1].content == "go"
    assert {tool.name for tool in first.tools} == {"read_file", "list_files", "search_code"}
    tool_message = second.messages[-1]
    assert tool_message.role == "tool"
    assert tool_message.tool_call_id == "c1"
    assert "return 42" in (tool_message.content or "")


async def test_tool_errors_go_back_to_the_model(client: jidoka.Client, project: Path) -> None:
    sid = await client.create_session(
        project_root=str(project),
        llm_config=scripted(
            {"tool_calls": [read("../secret.txt"), read("nope.py", "c2")]},
            {"tool_calls": [{"id": "c3", "name": "read_file", "arguments": "{not json"}]},
            {"text": "sorry"},
        ),
    )
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        result = await client.chat(sid, "read it")
        results = [e async for e in _until_idle(events) if e.type == "tool_result"]
    assert result.message.content == "sorry"
    assert [r.data["is_error"] for r in results] == [True, True, True]
    assert "secret" not in results[0].data["content"] or "not allowed" in results[0].data["content"]
    assert (await client.get_session_info(sid)).status == "active"


async def _until_idle(events: Subscription) -> Any:
    async for event in events:
        yield event
        if event.type == "agent_status" and event.data["status"] in ("idle", "failed", "cancelled"):
            return


async def test_max_iterations_stops_the_turn(client: jidoka.Client, project: Path) -> None:
    loop_forever = [{"tool_calls": [read("README.md", f"c{n}")]} for n in range(5)]
    sid = await client.create_session(
        project_root=str(project),
        config={"max_iterations": 3},
        llm_config=scripted(*loop_forever, {"text": "fine"}),
    )
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        with pytest.raises(jidoka.LimitExceeded) as caught:
            await client.chat(sid, "loop")
        errors = [e async for e in _until_idle(events) if e.type == "error"]
    assert caught.value.limit == "max_iterations"
    assert caught.value.session_id == sid
    assert errors[0].data["code"] == "max_iterations"
    result = await client.chat(sid, "again")  # still usable
    assert result.iterations >= 1


async def test_provider_errors_end_the_turn_not_the_session(client: jidoka.Client) -> None:
    sid = await client.create_session(
        llm_config=scripted(
            {
                "chunks": ["Hal"],
                "error": {"message": "overloaded", "status": 503, "retryable": True},
            },
            {"text": "back"},
        )
    )
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        with pytest.raises(jidoka.LLMError) as caught:
            await client.chat(sid, "hi")
        seen = [e async for e in _until_idle(events)]
    assert caught.value.session_id == sid
    assert caught.value.status == 503
    assert caught.value.retryable
    error = next(e for e in seen if e.type == "error")
    assert error.data["code"] == "llm_error"
    assert error.data["provider"] == "scripted"
    assert seen[-1].data["status"] == "failed"
    assert (await client.chat(sid, "again")).message.content == "back"


async def test_cancel_keeps_the_partial_answer(client: jidoka.Client) -> None:
    sid = await client.create_session(
        llm_config=scripted({"chunks": ["half an ", "answer"], "hang": True}, {"text": "whole"})
    )
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        turn = asyncio.create_task(client.chat(sid, "go"))
        await until(events, "llm_stream_chunk")
        assert await client.cancel(sid)
        result = await turn
        seen = [e async for e in _until_idle(events)]
    assert result.interrupted
    assert result.message.content == "half an answer"
    response = next(e for e in seen if e.type == "llm_response")
    assert response.data["interrupted"] is True
    assert seen[-1].data["status"] == "cancelled"
    assert not await client.cancel(sid)  # nothing runs now
    assert (await client.chat(sid, "again")).message.content == "whole"


async def test_queue_policy_runs_turns_in_order(client: jidoka.Client) -> None:
    sid = await client.create_session(
        llm_config=scripted({"text": "first", "delay": 0.01}, {"text": "second"})
    )
    first, second = await asyncio.gather(client.chat(sid, "one"), client.chat(sid, "two"))
    assert (first.message.content, second.message.content) == ("first", "second")
    history = [(m.role, m.content) for m in await client.get_conversation_history(sid)]
    assert history == [("user", "one"), ("assistant", "first"), ("user", "two"),
                       ("assistant", "second")]  # fmt: skip


async def test_reject_policy(client: jidoka.Client) -> None:
    sid = await client.create_session(
        config={"concurrent_turn_policy": "reject"},
        llm_config=scripted({"chunks": ["x"], "hang": True}),
    )
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        turn = asyncio.create_task(client.chat(sid, "go"))
        await until(events, "llm_stream_chunk")
        with pytest.raises(jidoka.SessionBusy) as caught:
            await client.chat(sid, "me too")
        assert caught.value.session_id == sid
        with pytest.raises(jidoka.SessionBusy):
            await client.send_message(sid, "user", "and me")
        await client.send_message(sid, "system", "system notes are not turns")
        await client.cancel(sid)
        assert (await turn).interrupted


async def test_interrupt_policy(client: jidoka.Client) -> None:
    sid = await client.create_session(
        config={"concurrent_turn_policy": "interrupt"},
        llm_config=scripted({"chunks": ["x"], "hang": True}, {"text": "new answer"}),
    )
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        turn = asyncio.create_task(client.chat(sid, "go"))
        await until(events, "llm_stream_chunk")
        second = await client.chat(sid, "instead")
    assert (await turn).interrupted
    assert second.message.content == "new answer"


def write(path: str, content: str, call_id: str = "w1") -> dict[str, Any]:
    args = {"path": path, "content": content}
    return {"id": call_id, "name": "write_file", "arguments": args}


async def test_writes_are_not_offered_by_default(client: jidoka.Client, project: Path) -> None:
    sid = await client.create_session(
        project_root=str(project),
        llm_config=scripted({"tool_calls": [write("new.py", "x = 1\n")]}, {"text": "ok"}),
    )
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        await client.chat(sid, "write it")
        results = [e async for e in _until_idle(events) if e.type == "tool_result"]
    assert results[0].data["is_error"]
    assert not (project / "new.py").exists()


async def test_allowed_writes_happen(client: jidoka.Client, project: Path) -> None:
    sid = await client.create_session(
        project_root=str(project),
        config={"allow_write": True},
        llm_config=scripted({"tool_calls": [write("new.py", "x = 1\n")]}, {"text": "ok"}),
    )
    await client.chat(sid, "write it")
    assert (project / "new.py").read_text() == "x = 1\n"
    assert "new.py" in {entry.path for entry in await client.get_file_index(sid)}


@pytest.mark.parametrize("decision", ["allow", "deny", "timeout"])
async def test_ask_mode_waits_for_approval(
    client: jidoka.Client, project: Path, decision: str
) -> None:
    sid = await client.create_session(
        project_root=str(project),
        config={"allow_write": "ask", "approval_timeout_seconds": 0.2},
        llm_config=scripted({"tool_calls": [write("src/app.py", "changed\n")]}, {"text": "ok"}),
    )
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        turn = asyncio.create_task(client.chat(sid, "change it"))
        asked = await until(events, "approval_requested")
        assert asked.data["call_id"] == "w1"
        assert asked.data["path"] == "src/app.py"
        assert "-    return 42" in asked.data["diff"]
        assert "+changed" in asked.data["diff"]
        if decision != "timeout":
            await client.approve(sid, "w1", allow=decision == "allow")
        decided = await until(events, "approval_decided")
        await turn
    assert decided.data["allow"] is (decision == "allow")
    assert decided.data["reason"] == ("timeout" if decision == "timeout" else "user")
    text = (project / "src" / "app.py").read_text()
    assert (text == "changed\n") is (decision == "allow")
    with pytest.raises(jidoka.InvalidArgument) as caught:
        await client.approve(sid, "w1", allow=True)  # nothing waits any more
    assert caught.value.argument == "call_id"


async def test_a_hanging_model_touches_no_other_session(client: jidoka.Client) -> None:
    stuck = await client.create_session(llm_config=scripted({"chunks": ["..."], "hang": True}))
    others = [
        await client.create_session(llm_config=scripted({"text": f"answer {n}"})) for n in range(19)
    ]
    async with client.subscribe_to_session(stuck, after_seq=0) as events:
        hanging = asyncio.create_task(client.chat(stuck, "go"))
        await until(events, "llm_stream_chunk")
        results = await asyncio.gather(*(client.chat(sid, "go") for sid in others))
        assert [r.message.content for r in results] == [f"answer {n}" for n in range(19)]
        assert not hanging.done()
        await client.cancel(stuck)
        assert (await hanging).interrupted


async def test_terminating_a_session_ends_its_turn(client: jidoka.Client) -> None:
    sid = await client.create_session(llm_config=scripted({"chunks": ["..."], "hang": True}))
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        turn = asyncio.create_task(client.chat(sid, "go"))
        await until(events, "llm_stream_chunk")
        await client.terminate_session(sid)
    with pytest.raises(jidoka.SessionTerminated):
        await turn
    with pytest.raises(jidoka.SessionTerminated):
        await client.chat(sid, "again")


async def test_bad_llm_config_is_refused_at_creation(client: jidoka.Client) -> None:
    with pytest.raises(jidoka.InvalidConfig) as caught:
        await client.create_session(llm_config={"provider": "nope"})
    assert caught.value.field.startswith("llm_config")
    with pytest.raises(jidoka.InvalidConfig):
        await client.create_session(llm_config={"provider": "openai", "api_key": "sk-secret"})
