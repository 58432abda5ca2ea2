"""The official MCP SDK's side of ``/v1/mcp``: its low-level server and session manager.

Imported only when the endpoint starts (:class:`~jidoka.server.mcp.McpEndpoint`, in a thread):
the SDK and its pydantic models take about a second to import, which ``jidoka serve`` should not
spend before it answers its first request, nor an app whose lifespan never runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from .._version import __version__
from .mcp_tools import Answer, McpTool

__all__ = ["Call", "session_manager"]

#: Answers a tool call: ``(tool name, arguments, the HTTP request it came in) -> Answer``.
Call = Callable[[str, Mapping[str, Any] | None, object], Awaitable[Answer]]

_INSTRUCTIONS = (
    "Jidoka runs AI coding-assistant sessions. create_session gives a session_id; chat runs "
    "an agent turn and answers the reply; send_message, get_history, cancel, approve and "
    "terminate_session act on one session; list_sessions lists yours."
)


def session_manager(
    tools: Sequence[McpTool], call: Call, *, max_body_bytes: int
) -> StreamableHTTPSessionManager:
    """A stateless manager with JSON answers over a server that lists ``tools`` and answers
    their calls with ``call`` (see :mod:`jidoka.server.mcp` for why stateless)."""
    listing = types.ListToolsResult(
        tools=[
            types.Tool(
                name=entry.name, description=entry.description, input_schema=entry.input_schema()
            )
            for entry in tools
        ]
    )

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return listing

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        answer = await call(params.name, params.arguments, ctx.request)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=answer.text)],
            structured_content=answer.structured,
            is_error=answer.is_error,
        )

    server: Server[Any] = Server(
        "jidoka",
        version=__version__,
        instructions=_INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )
    return StreamableHTTPSessionManager(
        server,
        json_response=True,
        stateless=True,
        security_settings=None,  # the app's BrowserGuard checks Host and Origin
        max_request_body_size=max_body_bytes,
    )
