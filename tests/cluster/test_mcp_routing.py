"""``/v1/mcp`` on a cluster: any node serves any session's tool call.

A session created through n1's ``/v1/mcp`` is driven through n2's and n3's (which do not own
it): the call goes to its owner, as an HTTP command would, and answers the same; another
principal still finds nothing through any node. Real nodes on Postgres and Redis
(tests/support/cluster.py), the official SDK's client.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.e2e.conftest import ALICE_TOKEN, BOB_TOKEN, bearer
from tests.support.cluster import Cluster, ClusterNode

_WRITE = {"path": "app.py", "content": "x = 2\n"}


@contextlib.asynccontextmanager
async def mcp_on(node: ClusterNode, token: str) -> AsyncIterator[ClientSession]:
    async with (
        httpx2.AsyncClient(headers=bearer(token), timeout=30.0) as http,
        streamable_http_client(node.advertise_url + "/v1/mcp", http_client=http) as streams,
        ClientSession(*streams) as session,
    ):
        await session.initialize()
        yield session


async def ok(session: ClientSession, name: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(name, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def test_tool_calls_reach_the_sessions_owner_through_any_node(cluster: Cluster) -> None:
    model = {"provider": "scripted", "script": [
        {"text": "First.", "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
        {"text": "Second."},
    ]}  # fmt: skip
    async with (
        mcp_on(cluster["n1"], ALICE_TOKEN) as n1,
        mcp_on(cluster["n2"], ALICE_TOKEN) as n2,
        mcp_on(cluster["n3"], ALICE_TOKEN) as n3,
    ):
        sid = (await ok(n1, "create_session", llm_config=model))["session_id"]
        sent = await ok(n2, "send_message", session_id=sid, content="from n2")
        assert sent["content"] == "from n2"
        first = await ok(n3, "chat", session_id=sid, text="one")
        assert (first["text"], first["usage"]["prompt_tokens"]) == ("First.", 3)
        second = await ok(n2, "chat", session_id=sid, text="two")
        assert second["text"] == "Second."
        history = await ok(n3, "get_history", session_id=sid)
        assert [m["content"] for m in history["messages"]] == [
            "from n2", "one", "First.", "two", "Second."
        ]  # fmt: skip
        assert await ok(n2, "cancel", session_id=sid) == {"cancelled": False}
        async with mcp_on(cluster["n2"], BOB_TOKEN) as bob:
            result = await bob.call_tool("get_history", {"session_id": sid})
            assert result.is_error
            assert result.structured_content is not None
            assert result.structured_content["type"].endswith("/session-not-found")
            assert result.structured_content["session_id"] == sid
            text = result.content[0]
            assert isinstance(text, types.TextContent)
            assert sid in text.text
        ended = await ok(n3, "terminate_session", session_id=sid)
        assert ended["status"] == "terminated"
