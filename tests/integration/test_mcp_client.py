"""The agent as an MCP client: a session's ``mcp_servers`` give its model the tools of real MCP
servers (the official SDK's ``MCPServer`` on uvicorn, on loopback: tests/support/mcp_server.py),
called by the scripted model through the same tool path as the built-in tools.

The behaviour is the agent's, not the store's: these run on the memory store only.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import jidoka
from jidoka.bus.base import Subscription
from jidoka.events import Event
from jidoka.llm.mcp_client import CLOSE_SECONDS

from ..conftest import close_on_fake_clock
from ..helpers import PROMPTLY, until
from ..support.mcp_server import CalcServer, calc_server, free_url

pytestmark = pytest.mark.stores("memory")

STDIO_SERVER = Path(__file__).parent.parent / "support" / "mcp_stdio_calc.py"


def scripted(*turns: dict[str, Any]) -> dict[str, Any]:
    return {"provider": "scripted", "script": list(turns)}


def add(a: int, b: int, call_id: str = "m1") -> dict[str, Any]:
    return {"id": call_id, "name": "mcp__calc__add", "arguments": {"a": a, "b": b}}


def calc(url: str, **fields: Any) -> dict[str, Any]:
    return {"mcp_servers": [{"name": "calc", "url": url, **fields}]}


async def turn_events(events: Subscription) -> list[Event]:
    """Every event up to the ``agent_status`` that ends the turn."""
    seen: list[Event] = []
    async with asyncio.timeout(PROMPTLY):
        async for event in events:
            seen.append(event)
            if event.type == "agent_status" and event.data["status"] in ("idle", "failed"):
                return seen
    return seen


@pytest.fixture
async def server() -> AsyncIterator[CalcServer]:
    async with calc_server() as running:
        yield running


async def test_the_model_calls_an_mcp_tool(client: jidoka.Client, server: CalcServer) -> None:
    sid = await client.create_session(
        config=calc(server.url), llm_config=scripted({"tool_calls": [add(2, 3)]}, {"text": "5"})
    )
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        result = await client.chat(sid, "2 + 3?")
        seen = await turn_events(events)
    assert result.message.content == "5"
    call = next(e for e in seen if e.type == "tool_call")
    assert call.data["name"] == "mcp__calc__add"
    (tool_result,) = [e for e in seen if e.type == "tool_result"]
    assert tool_result.data["content"] == "5"
    assert tool_result.data["is_error"] is False
    assert server.calls == [("add", {"a": 2, "b": 3})]
    assert not [e for e in seen if e.type == "error"]


async def test_the_model_sees_the_servers_tools_with_their_schemas(
    runtime: jidoka.Runtime, server: CalcServer, project: Path
) -> None:
    client = runtime.client
    sid = await client.create_session(
        project_root=str(project),
        config=calc(server.url, allowed_tools=["add"]),
        llm_config=scripted(
            {"tool_calls": [add(1, 1), {"id": "m2", "name": "mcp__calc__shout", "arguments": {}}]},
            {"text": "done"},
            {"text": "again"},
        ),
    )
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        await client.chat(sid, "go")
        seen = await turn_events(events)
        await client.chat(sid, "once more")  # the connection is kept between turns
    agent = runtime._agents.get(sid)  # type: ignore[union-attr]
    assert agent is not None
    request = agent._providers.current.requests[0]  # type: ignore[union-attr]
    tools = {tool.name: tool for tool in request.tools}
    assert {"read_file", "list_files", "search_code", "mcp__calc__add"} == set(tools)
    assert tools["mcp__calc__add"].description == "Add two integers."
    schema = tools["mcp__calc__add"].parameters
    assert schema["properties"]["a"]["type"] == "integer"
    assert sorted(schema["required"]) == ["a", "b"]
    results = [e.data for e in seen if e.type == "tool_result"]
    assert [r["is_error"] for r in results] == [False, True]
    assert "unknown tool 'mcp__calc__shout'" in results[1]["content"]
    assert server.calls == [("add", {"a": 1, "b": 1})]  # shout never reached the server
    assert agent._tools.mcp.open_servers == ["calc"]
    handshakes = [method for method, _ in server.requests if method == "POST"]
    assert len(handshakes) <= 4  # discover (or initialize), list, call: once, not per turn


async def test_a_server_that_is_down_leaves_the_turn_going(client: jidoka.Client) -> None:
    sid = await client.create_session(
        config=calc(free_url()), llm_config=scripted({"text": "no tools today"})
    )
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        result = await client.chat(sid, "go")
        seen = await turn_events(events)
    assert result.message.content == "no tools today"
    (error,) = [e.data for e in seen if e.type == "error"]
    assert error["code"] == "mcp_unavailable"
    assert error["server"] == "calc"
    assert "'calc'" in error["message"]
    assert "ConnectError" in error["message"]
    assert seen[-1].data["status"] == "idle"


async def test_headers_come_from_environment_variables_and_a_later_turn_retries(
    clock: jidoka.FakeClock,
) -> None:
    environ: dict[str, str] = {}
    runtime = jidoka.Runtime(clock=clock, environ=environ, shutdown_grace_seconds=2.0)
    await runtime.start()
    try:
        async with calc_server(token="s3cret") as server:
            client = runtime.client
            sid = await client.create_session(
                config=calc(server.url, headers={"Authorization": "CALC_AUTH"}),
                llm_config=scripted(
                    {"text": "without"}, {"tool_calls": [add(4, 5)]}, {"text": "9"}
                ),
            )
            async with client.subscribe_to_session(sid, after_seq=0) as events:
                await client.chat(sid, "first")
                first = await turn_events(events)
                assert not server.requests  # nothing was sent without the header
                environ["CALC_AUTH"] = "Bearer s3cret"
                await client.chat(sid, "second")
                second = await turn_events(events)
            (error,) = [e.data for e in first if e.type == "error"]
            assert error["code"] == "mcp_unavailable"
            assert "CALC_AUTH" in error["message"]
            assert not [e for e in second if e.type == "error"]
            (result,) = [e.data for e in second if e.type == "tool_result"]
            assert result["content"] == "9"
            assert {auth for _, auth in server.requests} == {"Bearer s3cret"}
            info = await client.get_session_info(sid)
            stored = str(info.config.to_dict()) + str([e.data for e in first + second])
            assert "s3cret" not in stored
            assert info.config.mcp_servers[0].headers == {"Authorization": "CALC_AUTH"}
    finally:
        await close_on_fake_clock(runtime, clock)


async def test_a_wrong_secret_is_an_unavailable_server(clock: jidoka.FakeClock) -> None:
    runtime = jidoka.Runtime(clock=clock, environ={"CALC_AUTH": "Bearer wrong"})
    await runtime.start()
    try:
        async with calc_server(token="s3cret") as server:
            sid = await runtime.client.create_session(
                config=calc(server.url, headers={"Authorization": "CALC_AUTH"}),
                llm_config=scripted({"text": "ok"}),
            )
            async with runtime.client.subscribe_to_session(sid, after_seq=0) as events:
                await runtime.client.chat(sid, "go")
                seen = await turn_events(events)
            (error,) = [e.data for e in seen if e.type == "error"]
            assert "(HTTP 401)" in error["message"]
            assert "wrong" not in error["message"]
    finally:
        await close_on_fake_clock(runtime, clock)


@pytest.mark.parametrize("decision", ["allow", "deny", "timeout"])
async def test_require_approval_asks_before_the_call(
    client: jidoka.Client, server: CalcServer, decision: str
) -> None:
    sid = await client.create_session(
        config={
            "approval_timeout_seconds": 0.2,
            **calc(server.url, require_approval=["add"]),
        },
        llm_config=scripted({"tool_calls": [add(20, 22)]}, {"text": "ok"}),
    )
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        turn = asyncio.create_task(client.chat(sid, "add them"))
        asked = await until(events, "approval_requested")
        assert asked.data["call_id"] == "m1"
        assert asked.data["tool"] == "mcp__calc__add"
        assert "'calc'" in asked.data["summary"]
        assert '"a":20' in asked.data["diff"]
        assert not server.calls  # nothing ran before the answer
        if decision != "timeout":
            await client.approve(sid, "m1", allow=decision == "allow")
        decided = await until(events, "approval_decided")
        result = await until(events, "tool_result")
        await turn
    assert decided.data["allow"] is (decision == "allow")
    assert decided.data["reason"] == ("timeout" if decision == "timeout" else "user")
    if decision == "allow":
        assert result.data["content"] == "42"
        assert server.calls == [("add", {"a": 20, "b": 22})]
    else:
        assert result.data["is_error"] is True
        assert "it was not made" in result.data["content"]
        assert not server.calls


async def test_require_approval_names_the_tools_it_covers(
    client: jidoka.Client, server: CalcServer
) -> None:
    shout = {"id": "m2", "name": "mcp__calc__shout", "arguments": {"text": "hi"}}
    sid = await client.create_session(
        config=calc(server.url, require_approval=["add"]),
        llm_config=scripted({"tool_calls": [shout]}, {"text": "ok"}),
    )
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        await client.chat(sid, "shout")
        seen = await turn_events(events)
    assert "approval_requested" not in {e.type for e in seen}
    assert [e.data["content"] for e in seen if e.type == "tool_result"] == ["HI"]


async def test_a_slow_tool_times_out(client: jidoka.Client, server: CalcServer) -> None:
    slow = {"id": "m3", "name": "mcp__calc__slow", "arguments": {}}
    sid = await client.create_session(
        config={"tool_timeout_seconds": 0.3, **calc(server.url)},
        llm_config=scripted(
            {"tool_calls": [slow]}, {"tool_calls": [add(1, 2, "m4")]}, {"text": "ok"}
        ),
    )
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        await client.chat(sid, "wait")
        seen = await turn_events(events)
    results = [e.data for e in seen if e.type == "tool_result"]
    assert results[0]["is_error"] is True
    assert "timed out after 0.3s" in results[0]["content"]
    assert results[1]["content"] == "3"  # the connection still works


async def test_the_connection_closes_when_the_session_ends(
    client: jidoka.Client, server: CalcServer
) -> None:
    sid = await client.create_session(
        config=calc(server.url), llm_config=scripted({"tool_calls": [add(1, 2)]}, {"text": "3"})
    )
    await client.chat(sid, "go")
    assert server.connections > 0
    assert not server.closed.is_set()
    await client.terminate_session(sid)
    async with asyncio.timeout(PROMPTLY):
        await server.closed.wait()  # the server saw its client go
    assert server.connections == 0


async def test_stdio_servers_are_refused_unless_allowed(client: jidoka.Client) -> None:
    stdio = {"mcp_servers": [{"name": "calc", "command": sys.executable, "args": ["x.py"]}]}
    with pytest.raises(jidoka.InvalidConfig) as caught:
        await client.create_session(config=stdio)
    assert caught.value.field == "mcp_servers[0].command"
    assert "--mcp-allow-stdio" in caught.value.message


async def test_a_stdio_server_where_the_operator_allows_it(clock: jidoka.FakeClock) -> None:
    runtime = jidoka.Runtime(clock=clock, mcp_allow_stdio=True, shutdown_grace_seconds=2.0)
    await runtime.start()
    try:
        config = {
            "mcp_servers": [
                {"name": "calc", "command": sys.executable, "args": [str(STDIO_SERVER)]}
            ]
        }
        sid = await runtime.client.create_session(
            config=config, llm_config=scripted({"tool_calls": [add(6, 7)]}, {"text": "13"})
        )
        async with runtime.client.subscribe_to_session(sid, after_seq=0) as events:
            await runtime.client.chat(sid, "go")
            seen = await turn_events(events)
        assert [e.data["content"] for e in seen if e.type == "tool_result"] == ["13"]
        await runtime.client.terminate_session(sid)
    finally:
        await close_on_fake_clock(runtime, clock)


@pytest.mark.parametrize(
    ("servers", "field"),
    [
        ([{"name": "Calc", "url": "http://127.0.0.1:1/mcp"}], "mcp_servers[0].name"),
        ([{"name": "a__b", "url": "http://127.0.0.1:1/mcp"}], "mcp_servers[0]"),
        ([{"name": "calc", "url": "file:///etc/passwd"}], "mcp_servers[0]"),
        ([{"name": "calc"}], "mcp_servers[0]"),
        ([{"name": "calc", "url": "http://h/mcp", "headers": {"X": "no-env!"}}], "mcp_servers[0]"),
        ([{"name": "calc", "url": "http://h/mcp", "token": "s"}], "mcp_servers[0].token"),
        ([{"name": "c", "url": "http://h/"}, {"name": "c", "url": "http://i/"}], "mcp_servers[1]"),
        ([{"name": f"s{n}", "url": "http://h/"} for n in range(17)], "mcp_servers"),
    ],
)
async def test_bad_mcp_configs_are_refused_naming_the_field(
    client: jidoka.Client, servers: list[dict[str, Any]], field: str
) -> None:
    with pytest.raises(jidoka.InvalidConfig) as caught:
        await client.create_session(config={"mcp_servers": servers})
    assert caught.value.field.startswith(field)


async def test_a_server_that_goes_away_mid_session(client: jidoka.Client) -> None:
    async with calc_server() as server:
        sid = await client.create_session(
            config=calc(server.url),
            llm_config=scripted(
                {"tool_calls": [add(1, 2)]},
                {"text": "3"},
                {"tool_calls": [add(3, 4, "m2")]},
                {"text": "gone?"},
                {"text": "still here"},
            ),
        )
        await client.chat(sid, "first")
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        second = await client.chat(sid, "second")
        third = await client.chat(sid, "third")
        seen = [e for _ in range(3) for e in await turn_events(events)]  # turns 1, 2, 3
    assert second.message.content == "gone?"
    assert third.message.content == "still here"
    results = [e.data for e in seen if e.type == "tool_result"]
    assert results[0]["content"] == "3"
    assert results[-1]["is_error"] is True  # the call after the server went
    errors = [e.data for e in seen if e.type == "error"]
    assert errors
    assert {e["code"] for e in errors} == {"mcp_unavailable"}
    assert {e["server"] for e in errors} == {"calc"}


async def test_cancelling_a_turn_in_an_mcp_call_keeps_the_connection(
    client: jidoka.Client, server: CalcServer
) -> None:
    slow = {"id": "m1", "name": "mcp__calc__slow", "arguments": {}}
    sid = await client.create_session(
        config=calc(server.url),
        llm_config=scripted(
            {"tool_calls": [slow]}, {"tool_calls": [add(2, 2, "m2")]}, {"text": "4"}
        ),
    )
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        turn = asyncio.create_task(client.chat(sid, "wait"))
        await until(events, "tool_call", name="mcp__calc__slow")
        async with asyncio.timeout(PROMPTLY):
            await server.slow_called.wait()  # the call reached the server
        await client.cancel(sid)
        assert (await turn).interrupted
        result = await client.chat(sid, "add")
        seen = await turn_events(events)
    assert result.message.content == "4"
    assert [e.data["content"] for e in seen if e.type == "tool_result"][-1] == "4"


async def test_a_server_that_never_answers_costs_a_turn_its_tool_timeout(
    client: jidoka.Client,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the backlog; nothing ever answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/mcp"
        sid = await client.create_session(
            config={"tool_timeout_seconds": 0.5, **calc(url)},
            llm_config=scripted({"text": "went on"}),
        )
        async with client.subscribe_to_session(sid, after_seq=0) as events:
            started = time.monotonic()
            result = await client.chat(sid, "go")
            took = time.monotonic() - started
            seen = await turn_events(events)
    assert result.message.content == "went on"
    (error,) = [e.data for e in seen if e.type == "error"]
    assert error["server"] == "calc"
    assert "no answer within 0.5s" in error["message"]
    # The timeout, not also the time a connected server gets to say goodbye: the connection
    # still opening is cancelled at once.
    assert took < 0.5 + CLOSE_SECONDS


async def test_a_changed_entry_gets_a_new_connection_and_a_removed_one_is_closed(
    server: CalcServer,
) -> None:
    from jidoka.config import MCPServerConfig
    from jidoka.llm.mcp_client import MCPClients

    clients = MCPClients("s-1", {}, allow_stdio=False)
    every = MCPServerConfig(name="calc", url=server.url)
    only_add = MCPServerConfig(name="calc", url=server.url, allowed_tools=["add"])
    try:
        specs, failures = await clients.tools([every])
        assert not failures
        assert {s.name for s in specs} == {"mcp__calc__add", "mcp__calc__shout", "mcp__calc__slow"}
        first = clients._connections["calc"]
        specs, _ = await clients.tools([only_add])
        assert [s.name for s in specs] == ["mcp__calc__add"]
        assert clients._connections["calc"] is not first
        assert not first.alive
        await clients.tools([])
        assert clients.open_servers == []
        assert clients.find("mcp__calc__add") is None
        async with asyncio.timeout(PROMPTLY):
            await server.closed.wait()
    finally:
        await clients.aclose()


async def test_a_stored_stdio_entry_is_not_run_by_a_runtime_that_does_not_allow_it() -> None:
    """A session created where stdio was allowed, loaded by a runtime that does not allow it
    (its config is stored as it was): the agent refuses to start the process."""
    from jidoka.config import MCPServerConfig
    from jidoka.llm.mcp_client import MCPClients

    clients = MCPClients("s-1", {}, allow_stdio=False)
    entry = MCPServerConfig(name="calc", command=sys.executable, args=[str(STDIO_SERVER)])
    specs, failures = await clients.tools([entry])
    assert specs == []
    assert failures == [
        ("calc", "stdio MCP servers are not allowed by this server (--mcp-allow-stdio)")
    ]
    assert clients.open_servers == []
