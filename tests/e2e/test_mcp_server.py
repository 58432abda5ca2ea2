"""``/v1/mcp`` against a real ``jidoka serve``, driven by the official MCP SDK's client.

A :class:`~mcp.client.session.ClientSession` over the SDK's streamable-HTTP transport, with the
principal's bearer token, lists the tools and drives sessions end to end with the scripted
model: create, send, chat, read the history, cancel a running turn, approve a write,
terminate. What it cannot do is checked too: another principal's session is not found, a
request without a token is a 401, a hostile page is refused (Origin, Host, a body that is not
JSON), a body over the limit is a 413. Waits are on the session's event stream, never sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import httpx2
import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.e2e.conftest import (
    ALICE_TOKEN,
    BOB_TOKEN,
    HTTP_TIMEOUT,
    ServerProcess,
    bearer,
    http_client,
    problem_of,
)

TOOLS = {
    "create_session", "send_message", "chat", "get_history", "list_sessions", "cancel",
    "approve", "terminate_session", "start_run", "get_run", "join_run", "list_runs", "cancel_run",
}  # fmt: skip
_WRITE = {"path": "app.py", "content": "x = 2\n"}
#: A JSON-RPC call of a tool, as a raw request (for the refusals, which come before the SDK).
_CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
         "params": {"name": "list_sessions", "arguments": {}}}  # fmt: skip
_MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


@contextlib.asynccontextmanager
async def mcp_session(server: ServerProcess, token: str) -> AsyncIterator[ClientSession]:
    """An initialized MCP client session on the server's ``/v1/mcp`` as ``token``'s principal."""
    async with (
        httpx2.AsyncClient(headers=bearer(token), timeout=HTTP_TIMEOUT) as http,
        streamable_http_client(server.url + "/v1/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def call(session: ClientSession, name: str, **arguments: Any) -> dict[str, Any]:
    """A tool call that must succeed: its structured answer."""
    result = await session.call_tool(name, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def refused(session: ClientSession, name: str, slug: str, **arguments: Any) -> dict[str, Any]:
    """A tool call that must be a tool error with the problem ``slug``: its problem document."""
    result = await session.call_tool(name, arguments)
    assert result.is_error, result
    problem = result.structured_content
    assert problem is not None
    assert problem["type"] == f"https://jidoka.dev/problems/{slug}", problem
    text = result.content[0]
    assert isinstance(text, types.TextContent)
    assert problem["detail"] in text.text
    return problem


async def first_event(
    server: ServerProcess, sid: str, wanted: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The session's first event (replayed from the start, then live) that is ``wanted``."""
    async with (
        httpx.AsyncClient(
            base_url=server.url, headers=bearer(ALICE_TOKEN), timeout=HTTP_TIMEOUT
        ) as client,  # fmt: skip
        client.stream("GET", f"/v1/sessions/{sid}/events?after_seq=0") as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                event: dict[str, Any] = json.loads(line[5:])
                if wanted(event):
                    return event
    raise AssertionError(f"the stream of {sid} ended before the event")


def scripted(*turns: dict[str, Any]) -> dict[str, Any]:
    return {"provider": "scripted", "script": list(turns)}


async def test_the_tools_are_listed_with_schemas_and_descriptions(server: ServerProcess) -> None:
    async with mcp_session(server, ALICE_TOKEN) as session:
        listed = await session.list_tools()
    assert {entry.name for entry in listed.tools} == TOOLS
    for entry in listed.tools:
        assert entry.description, entry.name
        assert entry.input_schema["type"] == "object", entry.name


async def test_a_session_driven_end_to_end(server: ServerProcess) -> None:
    model = scripted({"text": "Hello from the model.",
                      "usage": {"prompt_tokens": 7, "completion_tokens": 4}})  # fmt: skip
    async with mcp_session(server, ALICE_TOKEN) as session:
        created = await call(session, "create_session", metadata={"via": "mcp"}, llm_config=model)
        sid = created["session_id"]
        assert created["owner"] == "alice"
        assert created["metadata"] == {"via": "mcp"}
        sent = await call(session, "send_message", session_id=sid, content="a note")
        assert (sent["role"], sent["content"]) == ("user", "a note")
        answer = await session.call_tool("chat", {"session_id": sid, "text": "hi"})
        assert not answer.is_error, answer.content
        text = answer.content[0]
        assert isinstance(text, types.TextContent)
        assert text.text == "Hello from the model."
        assert answer.structured_content is not None
        assert answer.structured_content["usage"]["prompt_tokens"] == 7
        assert answer.structured_content["usage"]["completion_tokens"] == 4
        assert answer.structured_content["interrupted"] is False
        history = await call(session, "get_history", session_id=sid)
        contents = [(m["role"], m["content"]) for m in history["messages"]]
        assert contents == [
            ("user", "a note"), ("user", "hi"), ("assistant", "Hello from the model.")
        ]  # fmt: skip
        newest = await call(session, "get_history", session_id=sid, limit=1)
        assert [m["content"] for m in newest["messages"]] == ["Hello from the model."]
        # What MCP did is what HTTP sees.
        async with httpx.AsyncClient(base_url=server.url, headers=bearer(ALICE_TOKEN)) as http:
            over_http = (await http.get(f"/v1/sessions/{sid}/messages")).json()["messages"]
        assert over_http == history["messages"]
        listed = await call(session, "list_sessions", limit=1000)
        assert sid in {s["session_id"] for s in listed["sessions"]}
        ended = await call(session, "terminate_session", session_id=sid, reason="done")
        assert (ended["status"], ended["reason"]) == ("terminated", "done")
        problem = await refused(
            session, "send_message", "session-terminated", session_id=sid, content="late"
        )
        assert problem["session_id"] == sid


async def test_a_running_turn_is_cancelled(server: ServerProcess) -> None:
    model = scripted({"chunks": ["thinking..."], "hang": True})
    async with mcp_session(server, ALICE_TOKEN) as session:
        sid = (await call(session, "create_session", llm_config=model))["session_id"]
        turn = asyncio.create_task(session.call_tool("chat", {"session_id": sid, "text": "go"}))
        await first_event(server, sid, lambda e: e["type"] == "llm_stream_chunk")
        assert await call(session, "cancel", session_id=sid) == {"cancelled": True}
        result = await turn
        assert not result.is_error, result.content
        assert result.structured_content is not None
        assert result.structured_content["interrupted"] is True
        assert result.structured_content["text"] == "thinking..."
        assert await call(session, "cancel", session_id=sid) == {"cancelled": False}


async def test_a_write_is_approved_over_mcp(server: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("x = 1\n")
    model = scripted(
        {"chunks": ["Changing it."],
         "tool_calls": [{"id": "w1", "name": "write_file", "arguments": _WRITE}]},
        {"text": "Done.", "usage": {"prompt_tokens": 9, "completion_tokens": 2}},
    )  # fmt: skip
    async with mcp_session(server, ALICE_TOKEN) as session:
        created = await call(
            session, "create_session", project_root=str(tmp_path),
            config={"allow_write": "ask"}, llm_config=model,
        )  # fmt: skip
        sid = created["session_id"]
        turn = asyncio.create_task(session.call_tool("chat", {"session_id": sid, "text": "bump"}))
        asked = await first_event(server, sid, lambda e: e["type"] == "approval_requested")
        assert asked["data"]["call_id"] == "w1"
        problem = await refused(
            session, "approve", "invalid-argument", session_id=sid, call_id="nope", allow=True
        )
        assert problem["session_id"] == sid
        approved = await call(session, "approve", session_id=sid, call_id="w1", allow=True)
        assert approved == {"session_id": sid, "call_id": "w1", "allow": True}
        result = await turn
        assert not result.is_error, result.content
        assert result.structured_content is not None
        assert result.structured_content["text"] == "Done."
    assert (tmp_path / "app.py").read_text() == "x = 2\n"


async def test_another_principals_session_is_not_found(server: ServerProcess) -> None:
    async with mcp_session(server, ALICE_TOKEN) as alice:
        sid = (await call(alice, "create_session", metadata={"who": "alice"}))["session_id"]
        async with mcp_session(server, BOB_TOKEN) as bob:
            attempts: list[tuple[str, dict[str, Any]]] = [
                ("send_message", {"content": "hijack"}),
                ("chat", {"text": "hijack"}),
                ("get_history", {}),
                ("cancel", {}),
                ("approve", {"call_id": "w1", "allow": True}),
                ("terminate_session", {}),
            ]
            for name, arguments in attempts:
                problem = await refused(bob, name, "session-not-found", session_id=sid,
                                        **arguments)  # fmt: skip
                assert problem["session_id"] == sid, name
                assert problem["status"] == 404
            listed = await call(bob, "list_sessions", limit=1000)
            assert sid not in {s["session_id"] for s in listed["sessions"]}
            mine = (await call(bob, "create_session"))["session_id"]
        # Alice's session is untouched by all of it, and bob's is not hers.
        history = await call(alice, "get_history", session_id=sid)
        assert history["messages"] == []
        await refused(alice, "get_history", "session-not-found", session_id=mine)


async def test_bad_arguments_are_tool_errors_naming_them(server: ServerProcess) -> None:
    async with mcp_session(server, ALICE_TOKEN) as session:
        problem = await refused(session, "chat", "invalid-argument", text="no session named")
        assert problem["argument"] == "session_id"
        problem = await refused(session, "list_sessions", "invalid-argument", limit="ten")
        assert problem["argument"] == "limit"
        problem = await refused(session, "get_history", "invalid-argument",
                                session_id="x", limit=0)  # fmt: skip
        assert problem["argument"] == "limit"
        problem = await refused(session, "no_such_tool", "invalid-argument")
        assert problem["argument"] == "name"
        assert "create_session" in problem["detail"]


def test_no_token_is_a_401(server: ServerProcess) -> None:
    with http_client(server.url) as anonymous:
        response = anonymous.post("/v1/mcp", json=_CALL, headers=_MCP_HEADERS)
        problem_of(response, "unauthorized", 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
    with http_client(server.url, "not-a-token") as stranger:
        problem_of(stranger.post("/v1/mcp", json=_CALL, headers=_MCP_HEADERS),
                   "unauthorized", 401)  # fmt: skip


async def test_the_sdk_client_without_a_token_cannot_connect(server: ServerProcess) -> None:
    """The SDK reports the 401 as an error response (the raw 401 is checked above)."""
    with pytest.raises(BaseExceptionGroup) as raised:
        async with mcp_session(server, "not-a-token"):
            raise AssertionError("initialized without a token")
    assert raised.group_contains(MCPError), raised.value


def test_a_hostile_page_is_refused(server: ServerProcess) -> None:
    with http_client(server.url, ALICE_TOKEN) as alice:
        evil = {**_MCP_HEADERS, "Origin": "https://evil.example"}
        problem = problem_of(alice.post("/v1/mcp", json=_CALL, headers=evil),
                             "origin-not-allowed", 403)  # fmt: skip
        assert problem["origin"] == "https://evil.example"
        rebound = {**_MCP_HEADERS, "Host": "evil.example"}
        problem_of(alice.post("/v1/mcp", json=_CALL, headers=rebound), "host-not-allowed", 421)
        plain = {**_MCP_HEADERS, "Content-Type": "text/plain"}
        problem_of(alice.post("/v1/mcp", content=json.dumps(_CALL), headers=plain),
                   "unsupported-media-type", 415)  # fmt: skip
        # The server's own origin is a page it serves: allowed.
        own = {**_MCP_HEADERS, "Origin": server.url}
        response = alice.post("/v1/mcp", json=_CALL, headers=own)
        assert response.status_code == 200, response.text
        assert response.json()["result"]["isError"] is False


def test_get_is_405_and_a_query_is_refused(server: ServerProcess) -> None:
    with http_client(server.url, ALICE_TOKEN) as alice:
        response = alice.get("/v1/mcp", headers={"Accept": "text/event-stream"})
        problem_of(response, "method-not-allowed", 405)
        assert response.headers["allow"] == "POST"
        response = alice.post("/v1/mcp?x=1", json=_CALL, headers=_MCP_HEADERS)
        problem_of(response, "invalid-argument", 422)


def test_a_body_over_the_limit_is_a_413(make_server: Any) -> None:
    server = make_server(options={"max-body-bytes": 4096})
    arguments = {"session_id": "s", "content": "x" * 8000}
    big = {**_CALL, "params": {"name": "send_message", "arguments": arguments}}
    with http_client(server.url, ALICE_TOKEN) as alice:
        problem = problem_of(alice.post("/v1/mcp", json=big, headers=_MCP_HEADERS),
                             "limit-exceeded", 413)  # fmt: skip
        assert problem["limit"] == "max_request_bytes"

        def chunks() -> Any:  # no Content-Length: refused while it is read
            body = json.dumps(big).encode()
            for start in range(0, len(body), 1024):
                yield body[start : start + 1024]

        response = alice.post(
            "/v1/mcp", content=chunks(),
            headers={**_MCP_HEADERS, "Content-Type": "application/json"},
        )  # fmt: skip
        problem_of(response, "limit-exceeded", 413)
        # Under the limit, the same server serves the call.
        response = alice.post("/v1/mcp", json=_CALL, headers=_MCP_HEADERS)
        assert response.status_code == 200, response.text


async def test_a_run_started_joined_and_listed_over_mcp(server: ServerProcess) -> None:
    model = scripted({"text": "run answer"})
    async with mcp_session(server, ALICE_TOKEN) as session:
        sid = (await call(session, "create_session", llm_config=model))["session_id"]
        run = await call(session, "start_run", session_id=sid, text="go", idempotency_key="k")
        assert run["status"] in ("queued", "running")
        again = await call(session, "start_run", session_id=sid, text="go", idempotency_key="k")
        assert again["run_id"] == run["run_id"]
        done = await call(session, "join_run", session_id=sid, run_id=run["run_id"], timeout=30)
        assert done["status"] == "completed"
        assert done["message"]["content"] == "run answer"
        assert (await call(session, "get_run", session_id=sid, run_id=run["run_id"])) == done
        listed = await call(session, "list_runs", session_id=sid)
        assert [r["run_id"] for r in listed["runs"]] == [run["run_id"]]
        cancelled = await call(session, "cancel_run", session_id=sid, run_id=run["run_id"])
        assert cancelled["status"] == "completed"  # it had ended: answered as it is
    async with mcp_session(server, BOB_TOKEN) as other:
        answer = await other.call_tool("get_run", {"session_id": sid, "run_id": run["run_id"]})
        assert answer.is_error  # another principal's session is not found
