"""``/v1/mcp``'s session manager lives in the app's lifespan: it serves only between startup
and shutdown (started by the first request), and a cancelled lifespan leaves it (its calls in
flight end) and the runtime."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

import jidoka
from jidoka.errors import RuntimeClosed
from jidoka.server.app import create_app
from jidoka.server.config import ServerConfig
from jidoka.server.lifespan import lifespan_of
from jidoka.server.mcp import McpEndpoint
from tests.unit.test_lifespan import Lifespan

_HEADERS = {"Accept": "application/json, text/event-stream"}
DEADLINE = 10.0


def _rpc(method: str, params: dict[str, Any] | None = None, ident: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": ident, "method": method, "params": params or {}}


def _endpoint(app: Any) -> McpEndpoint:
    (service,) = lifespan_of(app).services
    endpoint = getattr(service, "__self__", None)
    assert isinstance(endpoint, McpEndpoint)
    return endpoint


async def test_mcp_serves_only_while_the_lifespan_runs() -> None:
    runtime = jidoka.Runtime(settings=jidoka.Settings(), store="memory")
    app = create_app(runtime, ServerConfig(insecure_no_auth=True), owns_runtime=True)
    endpoint = _endpoint(app)
    lifespan = Lifespan(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        assert await lifespan.startup() == "lifespan.startup.complete"
        # Nothing of the SDK is loaded or run until the first MCP request.
        assert endpoint._task is None
        listed = await http.post("/v1/mcp", json=_rpc("tools/list"), headers=_HEADERS)
        assert listed.status_code == 200, listed.text
        assert "create_session" in {t["name"] for t in listed.json()["result"]["tools"]}
        assert await lifespan.shutdown() == "lifespan.shutdown.complete"
        after = await http.post("/v1/mcp", json=_rpc("tools/list"), headers=_HEADERS)
        assert after.status_code == 503
        assert after.json()["type"].endswith("/runtime-closed")
    with pytest.raises(RuntimeClosed):
        runtime.client  # noqa: B018 -- closed by the lifespan


async def test_a_cancelled_lifespan_leaves_the_manager_and_ends_its_calls() -> None:
    runtime = jidoka.Runtime(settings=jidoka.Settings(), store="memory")
    app = create_app(runtime, ServerConfig(insecure_no_auth=True), owns_runtime=True)
    endpoint = _endpoint(app)
    lifespan = Lifespan(app)
    assert await lifespan.startup() == "lifespan.startup.complete"
    model = {"provider": "scripted", "script": [{"chunks": ["..."], "hang": True}]}
    sid = await runtime.client.create_session(llm_config=model)
    transport = httpx.ASGITransport(app=app)
    async with (
        runtime.client.subscribe_to_session(sid, after_seq=0) as running,
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http,
    ):
        chat = _rpc("tools/call", {"name": "chat", "arguments": {"session_id": sid, "text": "x"}})
        call = asyncio.create_task(http.post("/v1/mcp", json=chat, headers=_HEADERS))
        async with asyncio.timeout(DEADLINE):
            async for event in running:
                if event.type == "llm_stream_chunk":
                    break
        assert not call.done()
        assert lifespan.task is not None
        lifespan.task.cancel()
        async with asyncio.timeout(DEADLINE):
            with pytest.raises(asyncio.CancelledError):
                await lifespan.task
            # The call in flight ends: nothing hangs on.
            answer = await asyncio.gather(call, return_exceptions=True)
    assert endpoint._manager is None
    # The SDK answers the call it could not finish with a JSON-RPC error.
    (response,) = answer
    assert isinstance(response, httpx.Response)
    assert response.json()["error"]["code"] == -32603, response.text
    with pytest.raises(RuntimeClosed):
        runtime.client  # noqa: B018 -- the cancelled lifespan closed it
