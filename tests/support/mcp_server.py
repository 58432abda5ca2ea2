"""A real MCP server for tests, built with the official SDK (``MCPServer``), served over
streamable HTTP by uvicorn on loopback, in the test's own event loop::

    async with calc_server(token="s3cret") as server:
        ...  # a session's config: {"mcp_servers": [{"name": "calc", "url": server.url, ...}]}
        assert server.calls == [("add", {"a": 2, "b": 3})]

Its tools: ``add(a, b)``, ``shout(text)`` and ``slow()`` (sets ``server.slow_called``, then
waits until the test sets ``server.release``). With ``token``, a request without
``Authorization: Bearer <token>`` gets a 401, so a test sees the header the client sent.
``server.requests`` records each request's method and ``authorization`` header;
``server.closed`` is set when the client's last TCP connection has gone (how a test sees the
session end: the SDK's client closes its connections when it leaves, and ends an MCP session
with a DELETE where the protocol has one).

The stdio variant of the same tools is ``tests/support/mcp_stdio_calc.py``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp.server.mcpserver import MCPServer
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from . import loopback

__all__ = ["CalcServer", "calc_server", "free_url"]


def make_calc(
    calls: list[tuple[str, dict[str, Any]]], called: asyncio.Event, release: asyncio.Event
) -> MCPServer:
    server = MCPServer("calc")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        calls.append(("add", {"a": a, "b": b}))
        return a + b

    @server.tool()
    def shout(text: str) -> str:
        """The text in capitals."""
        calls.append(("shout", {"text": text}))
        return text.upper()

    @server.tool()
    async def slow() -> str:
        """Answers when the test lets it."""
        calls.append(("slow", {}))
        called.set()
        await release.wait()
        return "finally"

    return server


class CalcServer:
    def __init__(self, token: str | None) -> None:
        self.token = token
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.requests: list[tuple[str, str | None]] = []
        self.release = asyncio.Event()
        self.slow_called = asyncio.Event()
        self.closed = asyncio.Event()
        self.connections = 0
        self.mcp = make_calc(self.calls, self.slow_called, self.release)
        self._app = self.mcp.streamable_http_app()
        self.url = ""
        self._served: loopback.Served | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            auth = headers.get("authorization")
            self.requests.append((scope["method"], auth))
            if self.token is not None and auth != f"Bearer {self.token}":
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"unauthorized"})
                return
        await self._app(scope, receive, send)

    def _protocol(self) -> type[asyncio.Protocol]:
        owner = self

        class Counted(H11Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                owner.connections += 1
                owner.closed.clear()
                super().connection_made(transport)  # type: ignore[arg-type]

            def connection_lost(self, exc: Exception | None) -> None:
                owner.connections -= 1
                if owner.connections == 0:
                    owner.closed.set()
                super().connection_lost(exc)

        return Counted

    async def start(self) -> None:
        self._served = await loopback.start(
            self,
            http=self._protocol(),
            # An idle connection stays open until its client closes it (uvicorn closes it
            # after 5 s by default, which would pass for a client that went).
            timeout_keep_alive=3600,
        )
        self.url = f"http://127.0.0.1:{self._served.port}/mcp"

    async def stop(self) -> None:
        served, self._served = self._served, None
        if served is None:
            return
        self.release.set()
        await loopback.stop(served)


@asynccontextmanager
async def calc_server(token: str | None = None) -> AsyncIterator[CalcServer]:
    """A running :class:`CalcServer`. It runs in a task of its own: the SDK's session manager
    is an anyio task group, entered and left in one task, and a fixture's setup and teardown
    may run in two."""
    server = CalcServer(token)
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    async def serve() -> None:
        async with server.mcp.session_manager.run():
            try:
                await server.start()
                started.set_result(None)
                await stop.wait()
            finally:
                await server.stop()

    task = asyncio.create_task(serve(), name="mcp-calc-server")
    await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # it failed to start: say why
    try:
        yield server
    finally:
        stop.set()
        await task


def free_url() -> str:
    """An MCP URL on a loopback port where nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mcp"
