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
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

import jidoka
from jidoka.bus.base import Subscription

from ..helpers import PROMPTLY, settle, until
from ..support.openai_server import (
    Cut,
    Hang,
    Malformed,
    OpenAIServer,
    RecordedRequest,
    Slow,
    Status,
    Text,
    ToolCalls,
    openai_server,
    rate_limited,
)

#: A distinctive key: it must reach the server's Authorization header and nothing else.
KEY = "sk-test-SECRET-1234567890"
KEY_VARIABLE = "JIDOKA_TEST_OPENAI_KEY"
FINISHED = ("idle", "failed", "cancelled")


class _Arrivals(list[RecordedRequest]):
    """The server's request log, plus an event set at each arrival (so a test can wait for the
    server to have received a request instead of sleeping)."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def append(self, item: RecordedRequest) -> None:
        super().append(item)
        self.changed.set()


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    async with openai_server() as running:
        running.requests = _Arrivals()
        yield running


async def arrived(server: OpenAIServer, count: int) -> None:
    """Wait until the server has received ``count`` requests."""
    requests = server.requests
    assert isinstance(requests, _Arrivals)
    async with asyncio.timeout(PROMPTLY):
        while len(requests) < count:
            requests.changed.clear()
            await requests.changed.wait()


async def disconnected(server: OpenAIServer) -> None:
    async with asyncio.timeout(PROMPTLY):
        await server.disconnected.wait()


def llm(server: OpenAIServer, **extra: Any) -> dict[str, Any]:
    """An ``llm_config`` for the test server: no key needed, no SDK retries unless asked."""
    return {
        "provider": "openai",
        "model": "test-model",
        "base_url": server.base_url,
        "api_key_env": None,
        "max_retries": 0,
        "timeout": PROMPTLY,
        **extra,
    }


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
    }
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
    ("broken", "why"),
    [
        (Cut(["half of ", "an answer"]), "stream ended before the answer was complete"),
        (Cut(["half of ", "an answer"], abrupt=False), "no finish_reason before the end"),
        (Malformed(["half of ", "an answer"]), "malformed stream chunk"),
    ],
    ids=["cut-broken-body", "cut-clean-end", "malformed-chunk"],
)
async def test_a_stream_broken_mid_answer_is_an_error_not_a_short_answer(
    server: OpenAIServer, client: jidoka.Client, broken: Cut | Malformed, why: str
) -> None:
    server.queue(broken, Text(["whole"]))
    sid = await client.create_session(llm_config=llm(server))
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        with pytest.raises(jidoka.LLMError) as caught:
            await client.chat(sid, "hi")
        seen = await until_idle(events)
    assert caught.value.retryable
    assert caught.value.session_id == sid
    assert why in str(caught.value)
    assert streamed(seen) == "half of an answer"  # what streamed was shown live...
    [error] = of_type(seen, "error")
    assert (error.data["code"], error.data["retryable"]) == ("llm_error", True)
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
    assert len(of_type(seen, "tool_result")) == 3
    [error] = of_type(seen, "error")
    assert error.data["code"] == "max_iterations"
    assert error.data["iterations"] == 3
    assert seen[-1].data["status"] == "failed"
    assert (await client.chat(sid, "stop it")).message.content == "ok"  # still usable


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


@pytest.mark.stores("sqlite")
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
    async with jidoka.Runtime(data_dir=data_dir, store="sqlite", environ=environ) as runtime:
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
