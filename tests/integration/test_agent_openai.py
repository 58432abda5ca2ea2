"""The agent's turn loop through the real ``openai`` SDK against a real local OpenAI-compatible
server (tests/support/openai_server.py): streaming into events, tool calls, retries, failures,
cancellation, turn policies, iteration limits, write approvals, isolation of a hanging
endpoint, and the API key never leaving the HTTP request.

The same behaviours against the scripted provider are in test_agent.py. Nothing here sleeps:
tests wait for events, for the server to receive a request, or for a disconnect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

import jidoka
from jidoka.bus.base import Subscription
from jidoka.llm.prompt import message_tokens, tools_tokens
from jidoka.llm.types import ChatMessage, ToolCall, ToolSpec
from jidoka.session.context import estimate_tokens
from jidoka.store.postgres import is_postgres_dsn

from ..helpers import PROMPTLY, settle, until
from ..support.openai_server import (
    Arrivals,
    Cut,
    Empty,
    Hang,
    Malformed,
    OpenAIServer,
    Recorded,
    Slow,
    Status,
    Text,
    ToolCalls,
    arrived,
    openai_server,
    rate_limited,
)
from ..support.openai_server import (
    llm_config as llm,
)
from ..support.postgres import schema_contents

#: A distinctive key: it must reach the server's Authorization header and nothing else.
KEY = "sk-test-SECRET-1234567890"
KEY_VARIABLE = "JIDOKA_TEST_OPENAI_KEY"
FINISHED = ("idle", "failed", "cancelled")


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    async with openai_server() as running:
        running.requests = Arrivals()
        yield running


async def disconnected(server: OpenAIServer) -> None:
    async with asyncio.timeout(PROMPTLY):
        await server.disconnected.wait()


def read_call(call_id: str, path: str) -> tuple[str, str, str]:
    return (call_id, "read_file", json.dumps({"path": path}))


def write_call(path: str, content: str, call_id: str = "w1") -> tuple[str, str, str]:
    return (call_id, "write_file", json.dumps({"path": path, "content": content}))


async def until_idle(events: Subscription) -> list[jidoka.Event]:
    """Every event up to and including the ``agent_status`` that ends the turn."""
    seen = []
    async with asyncio.timeout(PROMPTLY):
        async for event in events:
            seen.append(event)
            if event.type == "agent_status" and event.data["status"] in FINISHED:
                return seen
    raise AssertionError("the stream ended before the turn did")


def streamed(events: list[jidoka.Event]) -> str:
    return "".join(e.data["text"] for e in events if e.type == "llm_stream_chunk")


def of_type(events: list[jidoka.Event], type_: str) -> list[jidoka.Event]:
    return [e for e in events if e.type == type_]


def history(messages: list[jidoka.Message]) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in messages]


# --- the turn loop --------------------------------------------------------------------------------


async def test_text_streams_into_events_then_the_answer_with_usage(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    server.queue(Text(["Hel", "lo", ", wor", "ld."], prompt_tokens=21, completion_tokens=4))
    sid = await client.create_session(llm_config=llm(server))
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        result = await client.chat(sid, "say hello")
        seen = await until_idle(events)

    assert result.message.role == "assistant"
    assert result.message.content == "Hello, world."
    assert (result.iterations, result.finish_reason, result.interrupted) == (1, "stop", False)
    assert result.usage == jidoka.TokenUsage(21, 4, 25)  # the server's usage chunk
    chunks = of_type(seen, "llm_stream_chunk")
    assert chunks, "no llm_stream_chunk event"
    assert all(c.data["iteration"] == 1 and c.data["text"] for c in chunks)
    assert streamed(seen) == "Hello, world."
    turn = seen[next(i for i, e in enumerate(seen) if e.type == "conversation_added") :]
    kinds = [e.type for e in turn if e.type != "llm_stream_chunk"]
    assert kinds == [
        "conversation_added", "agent_status", "conversation_added", "llm_response", "agent_status",
    ]  # fmt: skip
    [response] = of_type(seen, "llm_response")
    assert response.data["content"] == "Hello, world."
    assert response.data["usage"] == {
        "prompt_tokens": 21,
        "completion_tokens": 4,
        "total_tokens": 25,
    }
    assert response.data["finish_reason"] == "stop"
    assert response.data["interrupted"] is False
    assert response.data["seq"] == result.message.seq
    assert seen[-1].data["status"] == "idle"
    assert history(await client.get_conversation_history(sid)) == [
        ("user", "say hello"),
        ("assistant", "Hello, world."),
    ]
    assert (await client.get_session_info(sid)).usage == result.usage

    [request] = server.requests
    body = request.body
    assert body["model"] == "test-model"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"][0]["role"] == "system"
    assert body["messages"][-1] == {"role": "user", "content": "say hello"}
    offered = {tool["function"]["name"] for tool in body["tools"]}
    assert offered == {"read_file", "list_files", "search_code"}
    assert request.authorization == "Bearer not-needed"  # api_key_env: null


async def test_a_turn_with_tool_calls_then_the_answer(
    server: OpenAIServer, client: jidoka.Client, project: Path
) -> None:
    arguments = json.dumps({"path": "src/app.py", "start_line": 1})
    server.queue(
        ToolCalls([("call_a", "read_file", arguments)], text=["Let me ", "look."], pieces=5),
        Text(["main returns ", "42."]),
    )
    sid = await client.create_session(project_root=str(project), llm_config=llm(server))
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        result = await client.chat(sid, "what does main return?")
        seen = await until_idle(events)

    assert result.message.content == "main returns 42."
    assert (result.iterations, result.finish_reason) == (2, "stop")
    assert result.usage == jidoka.TokenUsage(11 + 7, 5 + 2, 16 + 9)  # both calls' usage chunks
    [call] = of_type(seen, "tool_call")
    assert call.data == {
        "call_id": "call_a",
        "name": "read_file",
        "arguments": arguments,  # reassembled from 5 argument deltas
        "iteration": 1,
        "run_id": call.data["run_id"],  # the chat's run
    }
    assert call.data["run_id"].startswith("run_")
    [answer] = of_type(seen, "tool_result")
    assert answer.data["call_id"] == "call_a"
    assert answer.data["is_error"] is False
    assert "return 42" in answer.data["content"]
    chunks = of_type(seen, "llm_stream_chunk")
    assert "".join(c.data["text"] for c in chunks if c.data["iteration"] == 1) == "Let me look."
    assert "".join(c.data["text"] for c in chunks if c.data["iteration"] == 2) == (
        "main returns 42."
    )
    statuses = [e.data["status"] for e in of_type(seen, "agent_status")]
    assert statuses == ["thinking", "calling_tool", "thinking", "idle"]
    assert "src/app.py" in {entry.path for entry in await client.get_file_index(sid)}

    assert len(server.requests) == 2
    first, second = (r.body["messages"] for r in server.requests)
    assert second[: len(first)] == first  # the prompt grows, nothing is rewritten
    assistant, tool = second[len(first) :]
    assert assistant == {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "read_file", "arguments": arguments},
            }
        ],
    }
    assert tool["role"] == "tool"
    assert tool["tool_call_id"] == "call_a"
    assert "def main():" in tool["content"]
    assert "return 42" in tool["content"]


# --- failures -------------------------------------------------------------------------------------


async def test_a_rate_limit_is_retried_and_the_turn_succeeds(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    server.queue(rate_limited(), Text(["fine ", "now"]))
    sid = await client.create_session(llm_config=llm(server, max_retries=2))
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        result = await client.chat(sid, "hi")
        seen = await until_idle(events)
    assert result.message.content == "fine now"
    assert len(server.requests) == 2
    assert server.requests[0].body == server.requests[1].body  # the same request, again
    assert not of_type(seen, "error")
    assert seen[-1].data["status"] == "idle"


async def test_a_server_error_fails_the_turn_not_the_session(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    server.queue(Status(500, "the model is on fire"), Text(["back"]))
    sid = await client.create_session(llm_config=llm(server, max_retries=0))
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        with pytest.raises(jidoka.LLMError) as caught:
            await client.chat(sid, "hi")
        seen = await until_idle(events)

    error = caught.value
    assert error.session_id == sid
    assert sid in str(error)
    assert (error.provider, error.status, error.retryable) == ("openai", 500, True)
    assert "the model is on fire" in str(error)
    assert len(server.requests) == 1  # max_retries 0: no retry
    [event] = of_type(seen, "error")
    assert event.data["code"] == "llm_error"
    assert (event.data["provider"], event.data["status"]) == ("openai", 500)
    assert event.data["retryable"] is True
    assert seen[-1].data == {"status": "failed"}
    assert not of_type(seen, "llm_response")

    assert (await client.chat(sid, "again")).message.content == "back"
    assert history(await client.get_conversation_history(sid)) == [
        ("user", "hi"),
        ("user", "again"),
        ("assistant", "back"),
    ]
    assert (await client.get_session_info(sid)).status == "active"


@pytest.mark.parametrize(
    ("broken", "why", "retryable"),
    [
        (Cut(["half of ", "an answer"]), "stream ended before the answer was complete", True),
        (Cut(["half of ", "an answer"], abrupt=False), "without a finish_reason", False),
        (Malformed(["half of ", "an answer"]), "malformed stream chunk", True),
    ],
    ids=["cut-broken-body", "cut-clean-end", "malformed-chunk"],
)
async def test_a_stream_broken_mid_answer_is_an_error_not_a_short_answer(
    server: OpenAIServer, client: jidoka.Client, broken: Cut | Malformed, why: str, retryable: bool
) -> None:
    server.queue(broken, Text(["whole"]))
    sid = await client.create_session(llm_config=llm(server))
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        with pytest.raises(jidoka.LLMError) as caught:
            await client.chat(sid, "hi")
        seen = await until_idle(events)
    assert caught.value.retryable is retryable
    assert caught.value.session_id == sid
    assert why in str(caught.value)
    assert streamed(seen) == "half of an answer"  # what streamed was shown live...
    [error] = of_type(seen, "error")
    assert (error.data["code"], error.data["retryable"]) == ("llm_error", retryable)
    assert why in error.data["message"]
    assert seen[-1].data["status"] == "failed"
    # ... but it is not the answer: no assistant message
    assert history(await client.get_conversation_history(sid)) == [("user", "hi")]
    assert (await client.chat(sid, "again")).message.content == "whole"


async def test_a_silent_server_times_out(server: OpenAIServer, client: jidoka.Client) -> None:
    server.queue(Hang(), Text(["awake"]))
    sid = await client.create_session(llm_config=llm(server, timeout=0.2))
    with pytest.raises(jidoka.LLMError) as caught:
        await client.chat(sid, "hello?")
    assert caught.value.retryable
    assert "timed out before answering" in str(caught.value)
    await disconnected(server)  # the SDK gave up on the request
    assert (await client.chat(sid, "again")).message.content == "awake"


# --- cancellation and policies --------------------------------------------------------------------


async def test_cancel_mid_stream_keeps_the_partial_answer_and_closes_the_request(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    slow = Slow(["half an ", "answer"], before=1)
    server.queue(slow, Text(["whole"]))
    sid = await client.create_session(llm_config=llm(server))
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        turn = asyncio.create_task(client.chat(sid, "go"))
        await until(events, "llm_stream_chunk")
        assert await client.cancel(sid)
        result = await turn
        seen = await until_idle(events)
        await disconnected(server)  # the HTTP request was closed, not left streaming
    assert result.interrupted
    assert result.finish_reason == "cancelled"
    assert result.message.content == "half an "
    [response] = of_type(seen, "llm_response")
    assert response.data["interrupted"] is True
    assert seen[-1].data["status"] == "cancelled"
    assert server.disconnects == 1
    assert not await client.cancel(sid)
    assert (await client.chat(sid, "again")).message.content == "whole"


async def test_cancel_before_the_server_answers(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    server.queue(Hang(), Text(["whole"]))
    sid = await client.create_session(llm_config=llm(server))
    turn = asyncio.create_task(client.chat(sid, "go"))
    await arrived(server, 1)
    assert await client.cancel(sid)
    result = await turn
    await disconnected(server)
    assert result.interrupted
    assert result.message.content == ""
    assert (await client.chat(sid, "again")).message.content == "whole"


async def test_queue_policy_runs_the_second_turn_after_the_first(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    slow = Slow(["first ", "answer"], before=1)
    server.queue(slow, Text(["second"]))
    sid = await client.create_session(llm_config=llm(server))
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        first = asyncio.create_task(client.chat(sid, "one"))
        await until(events, "llm_stream_chunk")
        second = asyncio.create_task(client.chat(sid, "two"))
        await settle()
        assert not second.done()
        assert len(server.requests) == 1  # the second turn waits; it has not called the model
        slow.release.set()
        results = await asyncio.gather(first, second)
    assert [r.message.content for r in results] == ["first answer", "second"]
    assert not any(r.interrupted for r in results)
    assert history(await client.get_conversation_history(sid)) == [
        ("user", "one"),
        ("assistant", "first answer"),
        ("user", "two"),
        ("assistant", "second"),
    ]
    seen_by_model = server.requests[1].body["messages"]
    assert {"role": "assistant", "content": "first answer"} in seen_by_model


async def test_reject_policy_refuses_a_second_turn(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    server.queue(Slow(["x", "y"], before=1))
    sid = await client.create_session(
        config={"concurrent_turn_policy": "reject"}, llm_config=llm(server)
    )
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        turn = asyncio.create_task(client.chat(sid, "go"))
        await until(events, "llm_stream_chunk")
        with pytest.raises(jidoka.SessionBusy) as caught:
            await client.chat(sid, "me too")
        assert caught.value.session_id == sid
        with pytest.raises(jidoka.SessionBusy):
            await client.send_message(sid, "user", "and me")
        assert len(server.requests) == 1
        assert await client.cancel(sid)
        result = await turn
    assert result.interrupted
    assert result.message.content == "x"
    await disconnected(server)


async def test_interrupt_policy_cancels_the_running_turn(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    server.queue(Slow(["x", "y"], before=1), Text(["new ", "answer"]))
    sid = await client.create_session(
        config={"concurrent_turn_policy": "interrupt"}, llm_config=llm(server)
    )
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        turn = asyncio.create_task(client.chat(sid, "go"))
        await until(events, "llm_stream_chunk")
        second = await client.chat(sid, "instead")
    first = await turn
    assert first.interrupted
    assert first.message.content == "x"
    assert second.message.content == "new answer"
    await disconnected(server)
    assert history(await client.get_conversation_history(sid)) == [
        ("user", "go"),
        ("assistant", "x"),
        ("user", "instead"),
        ("assistant", "new answer"),
    ]


async def test_terminating_the_session_ends_the_turn_and_the_request(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    server.queue(Slow(["x", "y"], before=1))
    sid = await client.create_session(llm_config=llm(server))
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        turn = asyncio.create_task(client.chat(sid, "go"))
        await until(events, "llm_stream_chunk")
        await client.terminate_session(sid)
    with pytest.raises(jidoka.SessionTerminated):
        await turn
    await disconnected(server)
    with pytest.raises(jidoka.SessionTerminated):
        await client.chat(sid, "again")


async def test_max_iterations_stops_a_model_that_keeps_calling_tools(
    server: OpenAIServer, client: jidoka.Client, project: Path
) -> None:
    server.queue(*(ToolCalls([read_call(f"c{n}", "README.md")]) for n in range(3)), Text(["ok"]))
    sid = await client.create_session(
        project_root=str(project), config={"max_iterations": 3}, llm_config=llm(server)
    )
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        with pytest.raises(jidoka.LimitExceeded) as caught:
            await client.chat(sid, "loop")
        seen = await until_idle(events)
    assert caught.value.limit == "max_iterations"
    assert caught.value.session_id == sid
    assert len(server.requests) == 3
    # The last call asked for an answer; a server that calls tools anyway still ends the turn.
    assert [r.body.get("tool_choice") for r in server.requests] == [None, None, "none"]
    assert len(of_type(seen, "tool_result")) == 3
    [error] = of_type(seen, "error")
    assert error.data["code"] == "max_iterations"
    assert error.data["iterations"] == 3
    assert seen[-1].data["status"] == "failed"
    assert (await client.chat(sid, "stop it")).message.content == "ok"  # still usable


async def test_the_last_allowed_call_asks_for_an_answer(
    server: OpenAIServer, client: jidoka.Client, project: Path
) -> None:
    # A small local model keeps calling tools after their results; on the turn's last allowed
    # call Jidoka sends tool_choice "none", so the turn ends with an answer, not LimitExceeded.
    server.queue(ToolCalls([read_call("c1", "README.md")]), Text(["It is a readme."]))
    config = llm(server, tool_choice="required")
    sid = await client.create_session(
        project_root=str(project), config={"max_iterations": 2}, llm_config=config
    )
    result = await client.chat(sid, "what is in the readme?")
    assert result.message.content == "It is a readme."
    assert result.iterations == 2
    assert [r.body.get("tool_choice") for r in server.requests] == ["required", "none"]
    assert server.requests[1].body["tools"]  # still offered: the template keeps its shape


# --- writes ---------------------------------------------------------------------------------------


async def test_writes_are_refused_when_not_allowed(
    server: OpenAIServer, client: jidoka.Client, project: Path
) -> None:
    server.queue(ToolCalls([write_call("src/app.py", "changed\n")]), Text(["ok"]))
    sid = await client.create_session(project_root=str(project), llm_config=llm(server))
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        await client.chat(sid, "change it")
        seen = await until_idle(events)
    [result] = of_type(seen, "tool_result")
    assert result.data["is_error"] is True
    assert (project / "src" / "app.py").read_text() == "def main():\n    return 42\n"
    offered = {tool["function"]["name"] for tool in server.requests[0].body["tools"]}
    assert "write_file" not in offered
    tool_message = server.requests[1].body["messages"][-1]
    assert tool_message["role"] == "tool"
    assert tool_message["content"].startswith("error:")


async def test_allowed_writes_happen(
    server: OpenAIServer, client: jidoka.Client, project: Path
) -> None:
    server.queue(ToolCalls([write_call("new.py", "x = 1\n")]), Text(["ok"]))
    sid = await client.create_session(
        project_root=str(project), config={"allow_write": True}, llm_config=llm(server)
    )
    await client.chat(sid, "write it")
    assert (project / "new.py").read_text() == "x = 1\n"
    offered = {tool["function"]["name"] for tool in server.requests[0].body["tools"]}
    assert {"write_file", "edit_file"} <= offered
    assert "new.py" in {entry.path for entry in await client.get_file_index(sid)}


@pytest.mark.parametrize("decision", ["allow", "deny", "timeout"])
async def test_ask_mode_writes_only_what_is_approved(
    server: OpenAIServer, client: jidoka.Client, project: Path, decision: str
) -> None:
    server.queue(ToolCalls([write_call("src/app.py", "changed\n")]), Text(["ok"]))
    wait = 0.2 if decision == "timeout" else PROMPTLY
    sid = await client.create_session(
        project_root=str(project),
        config={"allow_write": "ask", "approval_timeout_seconds": wait},
        llm_config=llm(server),
    )
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        turn = asyncio.create_task(client.chat(sid, "change it"))
        asked = await until(events, "approval_requested")
        assert (asked.data["call_id"], asked.data["path"]) == ("w1", "src/app.py")
        assert "+changed" in asked.data["diff"]
        assert len(server.requests) == 1  # the model waits for the answer too
        if decision != "timeout":
            await client.approve(sid, "w1", allow=decision == "allow")
        decided = await until(events, "approval_decided")
        result = await turn
    assert result.message.content == "ok"
    assert decided.data["allow"] is (decision == "allow")
    assert decided.data["reason"] == ("timeout" if decision == "timeout" else "user")
    text = (project / "src" / "app.py").read_text()
    assert text == ("changed\n" if decision == "allow" else "def main():\n    return 42\n")
    tool_message = server.requests[1].body["messages"][-1]
    assert tool_message["tool_call_id"] == "w1"
    assert tool_message["content"].startswith("error:") is (decision != "allow")


# --- isolation ------------------------------------------------------------------------------------


async def test_a_hanging_request_touches_no_other_session(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    stuck = await client.create_session(llm_config=llm(server))
    others = [await client.create_session(llm_config=llm(server)) for _ in range(19)]
    server.queue(Hang())
    hanging = asyncio.create_task(client.chat(stuck, "go"))
    await arrived(server, 1)  # the hang is taken: every later request gets an answer
    server.queue(*(Text(["an ", "answer"]) for _ in others))
    async with asyncio.timeout(PROMPTLY):
        results = await asyncio.gather(*(client.chat(sid, "go") for sid in others))
    assert [r.message.content for r in results] == ["an answer"] * 19
    assert len(server.requests) == 20
    assert not hanging.done()
    assert server.disconnects == 0
    assert await client.cancel(stuck)
    assert (await hanging).interrupted
    await disconnected(server)


# --- the API key ----------------------------------------------------------------------------------


@pytest.mark.stores("sqlite", "postgres")  # where the key could be written down
async def test_the_api_key_appears_nowhere_but_the_request(
    server: OpenAIServer, project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("jidoka", "openai", "httpx", "httpx2", "httpcore", "httpcore2"):
        caplog.set_level(logging.DEBUG, logger=name)
    data_dir = tmp_path / "keydata"
    config = llm(server, api_key_env=KEY_VARIABLE)
    server.queue(
        ToolCalls([read_call("c1", "src/app.py")]),
        Text(["main returns 42"]),
        Status(401, f"Incorrect API key provided: {KEY}. Find your key elsewhere."),
        Cut(["half"]),
    )
    environ = {KEY_VARIABLE: KEY}
    async with jidoka.Runtime(
        data_dir=data_dir, environ=environ
    ) as runtime:  # the store under test
        client = runtime.client
        sid = await client.create_session(project_root=str(project), llm_config=config)
        assert (await client.chat(sid, "what does main return?")).iterations == 2
        errors: list[jidoka.LLMError] = []
        for text in ("again", "and again"):
            with pytest.raises(jidoka.LLMError) as caught:
                await client.chat(sid, text)
            errors.append(caught.value)
        assert errors[0].status == 401
        assert "[redacted]" in str(errors[0])  # the server echoed the key; it was removed
        await client.save_session(sid)
        events = await runtime.read_events(sid)
        info = await client.get_session_info(sid)
        saved = await client.list_saved_sessions()

    assert [r.authorization for r in server.requests] == [f"Bearer {KEY}"] * 4  # it was used
    assert {"tool_call", "tool_result", "error", "llm_response"} <= {e.type for e in events}
    for event in events:
        assert KEY not in msgspec.json.encode(event).decode(), event
    assert KEY not in msgspec.json.encode(info).decode()
    assert KEY not in msgspec.json.encode(saved).decode()
    for error in errors:
        rendered = "".join(traceback.format_exception(error))
        assert KEY not in rendered
        assert KEY not in repr(error.__cause__)
        assert KEY not in repr(error.__context__)
    assert any(r.name.startswith("openai") for r in caplog.records), "SDK logs not captured"
    for record in caplog.records:
        assert KEY not in record.getMessage(), (record.name, record.getMessage())
    assert KEY not in caplog.text
    store = os.environ["JIDOKA_STORE"]
    if is_postgres_dsn(store):
        rows = await schema_contents(store, os.environ["JIDOKA_POSTGRES_SCHEMA"])
        assert "tool_result" in rows  # the rows were read (bytea in hex: the type is text)
        assert KEY not in rows
        assert KEY.encode().hex() not in rows
        return
    files = sorted(p for p in data_dir.rglob("*") if p.is_file())
    assert any(p.name.startswith("jidoka.sqlite3") for p in files), files
    for path in files:
        assert KEY.encode() not in path.read_bytes(), path


# --- a turn always ends in the log ---------------------------------------------------------------


async def test_a_missing_key_variable_fails_the_turn_in_the_log(
    server: OpenAIServer, runtime: jidoka.Runtime
) -> None:
    client = runtime.client
    config = llm(server, api_key_env="JIDOKA_TEST_UNSET_KEY")  # JIDOKA_* are cleared in tests
    sid = await client.create_session(llm_config=config)
    with pytest.raises(jidoka.InvalidConfig) as caught:
        await client.chat(sid, "hi")
    assert caught.value.field == "llm_config.api_key_env"
    assert not server.requests
    events = await runtime.read_events(sid)
    statuses = [e.data["status"] for e in events if e.type == "agent_status"]
    assert statuses[-1] == "failed", statuses
    assert [e.data["code"] for e in events if e.type == "error"]


async def test_cancelling_a_turn_that_waits_for_approval_closes_the_approval(
    server: OpenAIServer, runtime: jidoka.Runtime, project: Path
) -> None:
    client = runtime.client
    server.queue(ToolCalls([write_call("src/app.py", "changed\n")]))
    sid = await client.create_session(
        project_root=str(project), config={"allow_write": "ask"}, llm_config=llm(server)
    )
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        turn = asyncio.create_task(client.chat(sid, "change it"))
        await until(events, "approval_requested")
        assert await client.cancel(sid)
        assert (await turn).interrupted
    assert (project / "src" / "app.py").read_text() == "def main():\n    return 42\n"
    with pytest.raises(jidoka.InvalidArgument):
        await client.approve(sid, "w1")
    decided = [e for e in await runtime.read_events(sid) if e.type == "approval_decided"]
    assert [(e.data["call_id"], e.data["allow"]) for e in decided] == [("w1", False)]


async def test_an_answer_over_the_message_limit_is_not_called_max_iterations(
    server: OpenAIServer, runtime: jidoka.Runtime
) -> None:
    client = runtime.client
    server.queue(Text(["x" * 50, "x" * 50]))
    sid = await client.create_session(config={"max_message_bytes": 64}, llm_config=llm(server))
    with pytest.raises(jidoka.LimitExceeded) as caught:
        await client.chat(sid, "hi")
    assert caught.value.limit == "max_message_bytes"
    [error] = [e for e in await runtime.read_events(sid) if e.type == "error"]
    assert error.data["code"] != "max_iterations", error.data


async def test_sessions_on_one_endpoint_share_one_sdk_client(
    server: OpenAIServer, runtime: jidoka.Runtime
) -> None:
    client = runtime.client
    server.queue(Text(["one"]), Text(["two"]), Text(["three"]))
    first = await client.create_session(llm_config=llm(server))
    second = await client.create_session(llm_config=llm(server))
    other = await client.create_session(llm_config=llm(server, timeout=PROMPTLY + 1))
    for sid in (first, second, other):
        await client.chat(sid, "hi")
    pool = runtime._agents
    assert pool is not None
    clients = pool._clients
    assert len(clients) == 2  # one per (endpoint, key, timeout, retries), not one per session
    await client.terminate_session(first)  # a session's end leaves the shared client open
    server.queue(Text(["still"]))
    assert (await client.chat(second, "again")).message.content == "still"


# --- real servers' ways (issue 12): usage, windows, cut calls, settings ---------------------------


def request_tokens(body: dict[str, Any]) -> int:
    """A request's size as the turn loop counts it (the runtime's default token counter)."""
    messages = [
        ChatMessage(
            role=m["role"],
            content=m.get("content"),
            tool_calls=[
                ToolCall(
                    id=c["id"], name=c["function"]["name"], arguments=c["function"]["arguments"]
                )
                for c in m.get("tool_calls", [])
            ]
            or None,
        )
        for m in body["messages"]
    ]
    tools = [
        ToolSpec(
            name=t["function"]["name"],
            description=t["function"]["description"],
            parameters=t["function"]["parameters"],
        )
        for t in body.get("tools", [])
    ]
    return tools_tokens(tools, estimate_tokens) + sum(
        message_tokens(m, estimate_tokens) for m in messages
    )


async def test_usage_a_server_does_not_send_is_estimated_and_says_so(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    server.queue(Text(["Hel", "lo."], usage=False), Text(["Again."], prompt_tokens=5))
    sid = await client.create_session(llm_config=llm(server))
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        result = await client.chat(sid, "say hello")
        seen = await until_idle(events)

    prompt = request_tokens(server.requests[0].body)
    assert prompt > 50  # the system message and the tools' schemas, not zero
    answer = estimate_tokens("Hello.")
    assert result.usage == jidoka.TokenUsage(prompt, answer, prompt + answer, estimated=True)
    [response] = of_type(seen, "llm_response")
    assert response.data["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": answer,
        "total_tokens": prompt + answer,
        "estimated": True,
    }
    assert (await client.get_session_info(sid)).usage == result.usage
    # A measured turn after it adds up; the sum stays marked as partly estimated.
    after = await client.chat(sid, "again")
    assert after.usage == jidoka.TokenUsage(5, 1, 6)
    info = (await client.get_session_info(sid)).usage
    assert info == jidoka.TokenUsage(prompt + 5, answer + 1, prompt + answer + 6, estimated=True)


async def test_a_cancelled_turn_counts_the_prompt_the_server_had(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    server.queue(Slow(["half an ", "answer"], before=1))
    sid = await client.create_session(llm_config=llm(server))
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        turn = asyncio.create_task(client.chat(sid, "go"))
        await until(events, "llm_stream_chunk")
        assert await client.cancel(sid)
        result = await turn
        seen = await until_idle(events)

    prompt = request_tokens(server.requests[0].body)
    answer = estimate_tokens("half an ")
    assert result.interrupted
    assert result.usage == jidoka.TokenUsage(prompt, answer, prompt + answer, estimated=True)
    [response] = of_type(seen, "llm_response")
    assert response.data["usage"]["estimated"] is True
    assert (await client.get_session_info(sid)).usage == result.usage


async def test_a_failed_turn_records_its_usage(server: OpenAIServer, client: jidoka.Client) -> None:
    # The first call is measured, the second fails mid-answer (the server had its prompt).
    server.queue(
        ToolCalls([("c1", "list_files", "{}")], prompt_tokens=30, completion_tokens=3),
        Cut(["half"]),
    )
    sid = await client.create_session(llm_config=llm(server))
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        with pytest.raises(jidoka.LLMError):
            await client.chat(sid, "hi")
        seen = await until_idle(events)

    second = request_tokens(server.requests[1].body)
    half = estimate_tokens("half")
    [error] = of_type(seen, "error")
    assert error.data["usage"] == {
        "prompt_tokens": 30 + second,
        "completion_tokens": 3 + half,
        "total_tokens": 33 + second + half,
        "estimated": True,
    }
    usage = (await client.get_session_info(sid)).usage
    assert usage == jidoka.TokenUsage(30 + second, 3 + half, 33 + second + half, estimated=True)


async def test_a_call_the_server_refused_counts_nothing(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    server.queue(Status(400, "the request exceeds the available context size"))
    sid = await client.create_session(llm_config=llm(server))
    with pytest.raises(jidoka.LLMError):
        await client.chat(sid, "hi")
    assert (await client.get_session_info(sid)).usage == jidoka.TokenUsage()


async def test_a_large_tool_result_is_cut_to_the_window_and_kept_whole_in_the_log(
    server: OpenAIServer, client: jidoka.Client, project: Path
) -> None:
    # 38 KB of code against a 2,048-token window: one read_file made the next request 7,629
    # tokens and the server answered 400.
    big = "".join(f"def function_{n}(value):\n    return value * {n} + 1\n\n" for n in range(800))
    (project / "big.py").write_text(big)
    assert len(big) > 38_000
    server.queue(
        ToolCalls([("c1", "read_file", json.dumps({"path": "big.py"}))]),
        Text(["It defines functions."]),
    )
    config = llm(server, context_window=2048, max_tokens=256)
    sid = await client.create_session(project_root=str(project), llm_config=config)
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        result = await client.chat(sid, "what is in big.py?")
        seen = await until_idle(events)

    assert result.message.content == "It defines functions."
    for request in server.requests:
        assert request_tokens(request.body) <= 2048 - 256
    tool = server.requests[1].body["messages"][-1]
    assert tool["role"] == "tool"
    assert tool["content"].startswith("    1| def function_0(value):")
    assert "[cut to fit the context window:" in tool["content"]
    assert "call read_file with start_line=" in tool["content"]
    assert "search_code" in tool["content"]
    [logged] = of_type(seen, "tool_result")
    assert logged.data["cut_for_model"] is True
    assert len(logged.data["content"]) > 16_384  # the whole result, not the model's part
    assert logged.data["content"].startswith(tool["content"].split("[cut to fit")[0])


async def test_older_tool_results_are_cut_further_to_keep_later_requests_in_the_window(
    server: OpenAIServer, client: jidoka.Client, project: Path
) -> None:
    (project / "a.txt").write_text("".join(f"alpha line {n}\n" for n in range(400)))
    (project / "b.txt").write_text("".join(f"beta line {n}\n" for n in range(400)))
    # a.txt fits when it comes in; the long thought before the second call does not leave
    # room for both, so the next request cuts a.txt's result further.
    thought = "Now the other file, which matters as much. " * 50
    server.queue(
        ToolCalls([("c1", "read_file", json.dumps({"path": "a.txt"}))]),
        ToolCalls([("c2", "read_file", json.dumps({"path": "b.txt"}))], text=[thought]),
        Text(["Both read."]),
    )
    config = llm(server, context_window=3000, max_tokens=200)
    sid = await client.create_session(project_root=str(project), llm_config=config)
    result = await client.chat(sid, "read both")

    assert result.message.content == "Both read."
    assert all(request_tokens(r.body) <= 3000 - 200 for r in server.requests)
    last = server.requests[-1].body["messages"]
    a_result, b_result = (m["content"] for m in last if m["role"] == "tool")
    first = server.requests[1].body["messages"][-1]["content"]
    assert "[cut to fit" not in first  # it was sent whole once
    assert a_result.startswith("    1| alpha line 0")
    assert "[cut to fit" in a_result
    assert len(a_result) < len(first)
    assert "[cut to fit" in b_result


async def test_a_request_that_cannot_fit_is_not_sent(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    # The window is smaller than the instructions and the tools' schemas alone.
    config = llm(server, context_window=300, max_tokens=100)
    sid = await client.create_session(llm_config=config)
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        with pytest.raises(jidoka.LimitExceeded) as caught:
            await client.chat(sid, "hi")
        seen = await until_idle(events)
    assert caught.value.limit == "context_window - max_tokens"
    assert caught.value.maximum == 200
    assert server.requests == []
    [error] = of_type(seen, "error")
    assert error.data["code"] == "limit_exceeded"


async def test_a_tool_call_cut_by_max_tokens_is_not_run_and_the_model_retries(
    server: OpenAIServer, client: jidoka.Client, project: Path
) -> None:
    whole = json.dumps({"path": "notes.md", "content": "first line\nsecond line\n"})
    server.queue(
        ToolCalls([("w1", "write_file", whole[:30])], finish_reason="length"),
        ToolCalls([("w2", "write_file", whole)]),
        Text(["Written."]),
    )
    config = llm(server, max_tokens=64)
    sid = await client.create_session(
        project_root=str(project), config={"allow_write": True}, llm_config=config
    )
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        result = await client.chat(sid, "write notes.md")
        seen = await until_idle(events)

    assert result.message.content == "Written."
    assert result.iterations == 3
    first, second = of_type(seen, "tool_result")
    assert first.data["call_id"] == "w1"
    assert first.data["is_error"] is True
    assert first.data["cut_off"] is True
    assert "cut off" in first.data["content"]
    assert second.data == {
        "call_id": "w2",
        "name": "write_file",
        "run_id": second.data["run_id"],
        "content": second.data["content"],
        "is_error": False,
    }
    assert (project / "notes.md").read_text() == "first line\nsecond line\n"
    told = server.requests[1].body["messages"][-1]
    assert told["role"] == "tool"
    assert told["tool_call_id"] == "w1"
    assert "was not run" in told["content"]


async def test_a_cut_call_is_never_run_even_when_its_arguments_parse(
    server: OpenAIServer, client: jidoka.Client, project: Path
) -> None:
    # Cut at a point where the JSON still parses: the file would be written half.
    server.queue(
        ToolCalls(
            [("w1", "write_file", json.dumps({"path": "half.md", "content": "the first"}))],
            finish_reason="length",
        ),
        Text(["Stopped."]),
    )
    sid = await client.create_session(
        project_root=str(project), config={"allow_write": True}, llm_config=llm(server)
    )
    await client.chat(sid, "write half.md")
    assert not (project / "half.md").exists()


async def test_system_prompt_replaces_the_default_instructions(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    server.queue(Text(["ok"]))
    config = llm(server, system_prompt="You only answer in haiku.")
    sid = await client.create_session(llm_config=config)
    await client.chat(sid, "hi")
    system = server.requests[0].body["messages"][0]
    assert system["role"] == "system"
    assert system["content"].startswith("You only answer in haiku.")
    assert "You are a coding assistant" not in system["content"]


async def test_tool_choice_names_a_tool_for_the_first_call_of_each_turn(
    server: OpenAIServer, client: jidoka.Client, project: Path
) -> None:
    # llama-cpp-python acts on tools only when tool_choice names one; naming it on every call
    # would leave the model no way to answer.
    server.queue(
        ToolCalls([("c1", "read_file", json.dumps({"path": "src/app.py"}))]),
        Text(["42."]),
        Text(["Hello."]),
    )
    config = llm(server, tool_choice="read_file")
    sid = await client.create_session(project_root=str(project), llm_config=config)
    await client.chat(sid, "what does main return?")
    await client.chat(sid, "thanks")

    named = {"type": "function", "function": {"name": "read_file"}}
    sent = [r.body.get("tool_choice") for r in server.requests]
    assert sent == [named, None, named]


async def test_an_assistant_message_with_only_tool_calls_has_empty_content(
    server: OpenAIServer, client: jidoka.Client, project: Path
) -> None:
    server.queue(
        ToolCalls([("c1", "read_file", json.dumps({"path": "src/app.py"}))]),
        Text(["42."]),
    )
    sid = await client.create_session(project_root=str(project), llm_config=llm(server))
    await client.chat(sid, "what does main return?")
    assistant = server.requests[1].body["messages"][-2]
    assert assistant["role"] == "assistant"
    assert assistant["content"] == ""


async def test_an_empty_200_stream_fails_the_turn_as_not_retryable(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    server.queue(Empty())
    sid = await client.create_session(llm_config=llm(server))
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        with pytest.raises(jidoka.LLMError) as caught:
            await client.chat(sid, "hi")
        seen = await until_idle(events)
    assert not caught.value.retryable
    [error] = of_type(seen, "error")
    assert error.data["retryable"] is False
    assert "sent no data" in error.data["message"]


LLAMA_SERVER_CUT_CALLS = Path(__file__).parents[1] / "fixtures/llm_streams/llama-server/no_content"


async def test_a_recorded_llama_server_answer_cut_by_length_runs_no_cut_call(
    server: OpenAIServer, client: jidoka.Client, project: Path
) -> None:
    # llama-server's real stream: two read_file calls, then finish_reason "length".
    server.queue(Recorded(LLAMA_SERVER_CUT_CALLS), Text(["Done."]))
    sid = await client.create_session(project_root=str(project), llm_config=llm(server))
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        result = await client.chat(sid, "read it")
        seen = await until_idle(events)
    assert result.message.content == "Done."
    first, last = of_type(seen, "tool_result")
    assert "cut_off" not in first.data  # complete before the cut: it ran
    assert last.data["cut_off"] is True
    assert "was not run" in last.data["content"]
