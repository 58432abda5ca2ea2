"""``/v1/mcp``: Jidoka as a Model Context Protocol server (streamable HTTP), on the official SDK.

An MCP client (an IDE, another agent) drives sessions with the tools of
:data:`~jidoka.server.mcp_tools.MCP_TOOLS`; each runs one verb on the caller's
:class:`~jidoka.scoped.ScopedClient`, so what a principal can do and see is what it could over
HTTP. The route is one more ``/v1`` route of the app, behind the same middlewares: the bearer
token's principal (401 without one), the body limit (413), the browser guard (Host, Origin and
the JSON content type), the in-flight bound per principal (429) and problem documents for each
refusal. The SDK's own DNS-rebinding check stays off: the browser guard is the one check, with
the server's ``--allowed-host`` and ``--cors-origin`` settings.

**Stateless.** The SDK's session manager runs in stateless mode, with JSON answers: every
``POST`` is served on its own, there is no MCP session to remember, and the tools need none
(each names the Jidoka session it acts on). So nothing accumulates per client: what bounds the
work is the per-principal in-flight bound every ``/v1`` request counts against, and what bounds
a request is the body limit. Any node of a cluster serves any call (no sticky MCP session for a
balancer to honour; a tool on a session another node owns runs there, see
:mod:`jidoka.server.mcp_routing`), and a restart loses nothing a client holds. What stateless
gives up -- server-to-client requests and a ``GET`` stream of notifications -- no tool here
uses; ``GET`` is answered 405, as the transport's specification allows.

The manager runs inside the app's lifespan (:class:`~jidoka.server.lifespan.ServerLifespan`):
entered once the runtime runs, left (its calls still running cancelled) before the runtime
closes. A fresh manager per lifespan, as the SDK runs each one once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.requests import Request
from starlette.types import ASGIApp

from .._version import __version__
from ..errors import InvalidArgument, RuntimeClosed, Unauthorized
from .mcp_routing import OwnerRouting
from .mcp_tools import MCP_TOOLS, McpTool, error_answer
from .middleware import PRINCIPAL_KEY
from .routes import Scopes

__all__ = ["MCP_PATH", "McpEndpoint"]

logger = logging.getLogger("jidoka.server")

MCP_PATH = "/v1/mcp"
_INSTRUCTIONS = (
    "Jidoka runs AI coding-assistant sessions. create_session gives a session_id; chat runs "
    "an agent turn and answers the reply; send_message, get_history, cancel, approve and "
    "terminate_session act on one session; list_sessions lists yours."
)


class McpEndpoint:
    """The ``/v1/mcp`` route's endpoint and the SDK server behind it (see the module).

    ``scopes`` (the principals' scoped clients) is set once the app's routes are built, which
    for ``jidoka serve`` is after the runtime started."""

    def __init__(self, *, max_body_bytes: int, tools: Sequence[McpTool] = MCP_TOOLS) -> None:
        self.scopes: Scopes | None = None
        #: Where a tool's verb runs: on a node of a cluster, on its session's owner.
        self.routing = OwnerRouting()
        self.max_body_bytes = max_body_bytes
        self.tools = {entry.name: entry for entry in tools}
        self._listing = types.ListToolsResult(
            tools=[
                types.Tool(
                    name=entry.name,
                    description=entry.description,
                    input_schema=entry.input_schema(),
                )
                for entry in tools
            ]
        )
        self.server: Server[Any] = Server(
            "jidoka",
            version=__version__,
            instructions=_INSTRUCTIONS,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
        )
        self._manager: StreamableHTTPSessionManager | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The SDK's session manager, running while inside (the app's lifespan)."""
        manager = StreamableHTTPSessionManager(
            self.server,
            json_response=True,
            stateless=True,
            security_settings=None,  # the app's BrowserGuard checks Host and Origin
            max_request_body_size=self.max_body_bytes,
        )
        async with manager.run():
            self._manager = manager
            try:
                yield
            finally:
                self._manager = None

    async def endpoint(self, request: Request) -> ASGIApp:
        """The route's endpoint: the SDK's transport answers the request."""
        manager = self._manager
        if manager is None:
            raise RuntimeClosed(
                "the MCP endpoint is not running (the server is starting or stopping)"
            )
        return manager.handle_request

    async def _list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return self._listing

    async def _call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        entry = self.tools.get(params.name)
        if entry is None:
            known = ", ".join(self.tools)
            unknown = InvalidArgument(
                f"no tool {params.name!r} (the tools: {known})", argument="name"
            )
            answer = error_answer(unknown)
        else:
            request = ctx.request
            scopes = self.scopes
            if not isinstance(request, Request) or scopes is None:
                answer = error_answer(Unauthorized("an MCP tool is called over HTTP only"))
            else:
                principal: str | None = request.scope.get(PRINCIPAL_KEY)
                answer = await entry.call(scopes(principal), params.arguments, self.routing)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=answer.text)],
            structured_content=answer.structured,
            is_error=answer.is_error,
        )
