"""The agent's Model Context Protocol client: the tools of the MCP servers a session's config
lists (``config.mcp_servers``), for its model to call as ``mcp__{server}__{tool}``.

One :class:`MCPClients` per agent holds one connection per server, opened lazily when a turn
first needs the server's tools and kept for the turns after; it is closed when the agent closes
(the session ends), or when the server's entry in the config changes. A server that cannot be
reached (or whose handshake fails) is reported to the turn, which goes on without its tools;
the next turn tries again.

Each connection is owned by a task of its own (:meth:`_Connection._own`): the official SDK
builds on anyio, whose task groups and cancel scopes must be entered and left in one task, and a
turn's task ends with the turn while the connection lives on. Calls run in the turn's task (a
request is entered and left there). The ``mcp`` package is imported only here, and only when a
connection is opened, so a runtime whose sessions list no servers never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .._mcp_config import MCPServerConfig, mcp_tool_name
from ..tools.registry import ToolResult
from ..tools.spec import ToolCall, ToolSpec
from .mcp_results import describe_failure, result_text

if TYPE_CHECKING:
    from mcp import Client

__all__ = ["MCPClients", "MCPTool"]

logger = logging.getLogger("jidoka.mcp")

#: Tools one server may offer the model (more are left out, and logged); pages of its listing.
MAX_TOOLS_PER_SERVER: Final = 128
MAX_LIST_PAGES: Final = 16
#: Largest JSON schema (encoded) and description a tool may bring into every request.
MAX_SCHEMA_BYTES: Final = 16_384
MAX_DESCRIPTION: Final = 2_048
#: Largest arguments (JSON text) a call may send to a server.
MAX_ARGUMENTS: Final = 1_048_576
#: Seconds a connection's handshake and tool listing may take at most (a session's
#: ``tool_timeout_seconds`` if lower); seconds a connection gets to close.
CONNECT_SECONDS: Final = 10.0
CLOSE_SECONDS: Final = 2.0  # within the default shutdown grace of a worker (5 s)


class MCPTool(msgspec.Struct, frozen=True, kw_only=True):
    """One tool of one server: the name the model calls, the server's own name for it, and
    what the model is told about it."""

    name: str
    server: MCPServerConfig
    tool: str
    spec: ToolSpec


class MCPUnavailable(Exception):
    """A server could not be connected to (the message says why, never a header's value)."""


class _Connection:
    """One open connection to one server, entered and left by a task of its own."""

    def __init__(self, server: MCPServerConfig, session_id: str) -> None:
        self.server = server
        self.session_id = session_id
        self.tools: list[MCPTool] = []
        self.client: Client | None = None
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._close = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: The last HTTP error status the server answered with, if any.
        self.http_status: int | None = None

    def heard(self, status: int) -> None:
        self.http_status = status

    @property
    def alive(self) -> bool:
        return self.client is not None and self._task is not None and not self._task.done()

    async def open(
        self,
        parts: list[AbstractAsyncContextManager[Any]],
        timeout: float,  # noqa: ASYNC109
    ) -> None:
        """Enter ``parts`` (from :func:`_client`), hand shake and list the tools, within
        ``timeout`` seconds; else :class:`MCPUnavailable` (and nothing is left open)."""
        name = f"jidoka:{self.session_id}:mcp:{self.server.name}"
        self._task = asyncio.get_running_loop().create_task(self._own(parts), name=name)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._ready)
        except TimeoutError:
            await self.aclose()
            raise MCPUnavailable(f"no answer within {timeout:g}s") from None
        except asyncio.CancelledError:
            await self.aclose()
            raise
        except MCPUnavailable:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Leave the connection (the SDK ends the server's session); its task gets
        :data:`CLOSE_SECONDS`, then it is cancelled. One still connecting is cancelled at
        once (a server that does not answer would not answer its goodbye either)."""
        self._close.set()
        task = self._task
        if task is None or task.done():
            return
        connected = self._ready.done() and self._ready.exception() is None
        done: set[asyncio.Task[None]] = set()
        if connected:
            done, _ = await asyncio.wait({task}, timeout=CLOSE_SECONDS)
        if not done:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _own(self, parts: list[AbstractAsyncContextManager[Any]]) -> None:
        try:
            async with AsyncExitStack() as stack:
                for part in parts:
                    client = await stack.enter_async_context(part)
                self.tools = await _list_tools(client, self.server)
                self.client = client
                self._ready.set_result(None)
                await self._close.wait()
        except asyncio.CancelledError:
            if not self._ready.done():
                self._ready.set_exception(MCPUnavailable("cancelled while connecting"))
            raise
        except BaseException as exc:  # the SDK raises groups; nothing may escape this task
            why = describe_failure(exc)
            if self.http_status is not None:
                why += f" (HTTP {self.http_status})"
            if not self._ready.done():
                self._ready.set_exception(MCPUnavailable(why))
            else:
                logger.warning(
                    "session %s: MCP server %r closed: %s",
                    self.session_id,
                    self.server.name,
                    why,
                )
        finally:
            self.client = None
            if not self._ready.done():
                self._ready.set_exception(MCPUnavailable("closed while connecting"))
            if self._ready.done() and not self._ready.cancelled():
                self._ready.exception()  # retrieved: nobody may be waiting any more


class MCPClients:
    """The connections of one session's agent, one per server of its config."""

    def __init__(self, session_id: str, environ: Mapping[str, str], *, allow_stdio: bool) -> None:
        self.session_id = session_id
        self._environ = environ
        self._allow_stdio = allow_stdio
        self._connections: dict[str, _Connection] = {}
        #: The tools of the last :meth:`tools` call, by the name the model calls.
        self._tools: dict[str, MCPTool] = {}
        #: Counts :meth:`aclose` calls: a connection that was opening across one is closed.
        self._closes = 0

    @property
    def open_servers(self) -> list[str]:
        return [name for name, conn in self._connections.items() if conn.alive]

    async def tools(
        self,
        servers: Sequence[MCPServerConfig],
        timeout: float = CONNECT_SECONDS,  # noqa: ASYNC109
    ) -> tuple[list[ToolSpec], list[tuple[str, str]]]:
        """The specs of every listed server's allowed tools, connecting to the servers not
        connected yet (all at once, each within ``timeout`` seconds, :data:`CONNECT_SECONDS`
        at most); and ``(server, why)`` for each that is unavailable."""
        wanted = {server.name: server for server in servers}
        for name, conn in list(self._connections.items()):
            if wanted.get(name) != conn.server or not conn.alive:
                del self._connections[name]
                await conn.aclose()
        missing = [server for server in servers if server.name not in self._connections]
        failures: list[tuple[str, str]] = []
        if missing:
            wait = min(timeout, CONNECT_SECONDS)
            outcomes = await asyncio.gather(*(self._connect(s, wait) for s in missing))
            failures = [(s.name, why) for s, why in zip(missing, outcomes, strict=True) if why]
        self._tools = {}
        for server in servers:
            known = self._connections.get(server.name)
            for tool in known.tools if known is not None else ():
                if tool.name in self._tools:
                    logger.warning(
                        "session %s: MCP tool %r of %r left out: its name is taken",
                        self.session_id,
                        tool.tool,
                        server.name,
                    )
                    continue
                self._tools[tool.name] = tool
        return [tool.spec for tool in self._tools.values()], failures

    def find(self, name: str) -> MCPTool | None:
        """The MCP tool the model calls ``name`` (offered in this turn), else ``None``."""
        return self._tools.get(name)

    async def call(self, tool: MCPTool, call: ToolCall, timeout: float) -> ToolResult:  # noqa: ASYNC109
        """Run ``call`` on its server within ``timeout`` seconds. Every failure becomes an
        error result for the model; a connection that broke is dropped (the next turn
        reconnects)."""
        arguments = _arguments(call)
        if isinstance(arguments, str):
            return _error(call, arguments)
        conn = self._connections.get(tool.server.name)
        client = conn.client if conn is not None and conn.server == tool.server else None
        if conn is None or client is None:
            return _error(call, f"MCP server {tool.server.name!r} is not connected; try again")
        try:
            async with asyncio.timeout(timeout):
                result = await client.call_tool(tool.tool, arguments)
        except TimeoutError:
            return _error(call, f"{call.name} timed out after {timeout:g}s")
        except Exception as exc:
            why = describe_failure(exc)
            if not _answered(exc):  # the connection itself failed: reconnect later
                self._connections.pop(tool.server.name, None)
                await conn.aclose()
            return _error(call, f"MCP server {tool.server.name!r}: {why}")
        text = result_text(result.content, result.structured_content)
        return ToolResult(call_id=call.id, name=call.name, content=text, is_error=result.is_error)

    async def aclose(self) -> None:
        """Close every connection (the session ends, or its agent stops)."""
        connections, self._connections = list(self._connections.values()), {}
        self._tools = {}
        self._closes += 1
        await asyncio.gather(*(conn.aclose() for conn in connections), return_exceptions=True)

    async def _connect(self, server: MCPServerConfig, timeout: float) -> str | None:  # noqa: ASYNC109
        """Open ``server``'s connection; ``None``, or why it is unavailable."""
        closes = self._closes
        if server.stdio and not self._allow_stdio:
            return "stdio MCP servers are not allowed by this server (--mcp-allow-stdio)"
        headers: dict[str, str] = {}
        for header, variable in server.headers.items():
            value = self._environ.get(variable)
            if not value:
                return f"header {header!r} needs the environment variable {variable}, not set"
            headers[header] = value
        try:
            # In a thread: the first one imports the SDK, and every one loads TLS certificates.
            conn = _Connection(server, self.session_id)
            parts = await asyncio.to_thread(_client, server, headers, conn.heard)
        except ImportError:
            return "MCP servers need the mcp extra: pip install 'jidoka-core[mcp]'"
        try:
            await conn.open(parts, timeout)
        except MCPUnavailable as exc:
            return str(exc)
        if self._closes != closes:
            await conn.aclose()
            return "the session's agent has stopped"
        self._connections[server.name] = conn
        return None


def _client(
    server: MCPServerConfig, headers: dict[str, str], on_status: Callable[[int], None]
) -> list[AbstractAsyncContextManager[Any]]:
    """What to enter, in order, to connect to ``server``, the SDK's client last: an HTTP
    client with ``headers`` on every request (the SDK leaves closing one it was given to its
    owner) and a streamable-HTTP client; or a stdio process's client. ``on_status`` hears of
    each HTTP error status (the SDK's own error does not say it: a 401 should)."""
    import httpx2

    # The SDK imports jsonschema on the first result it checks: here, not on the loop.
    importlib.import_module("jsonschema")
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client
    from mcp.client.streamable_http import streamable_http_client

    if server.command is not None:
        params = StdioServerParameters(command=server.command, args=list(server.args))
        return [Client(stdio_client(params), cache=None)]
    assert server.url is not None  # MCPServerConfig has one of the two

    async def status(response: httpx2.Response) -> None:
        if response.status_code >= 400:
            on_status(response.status_code)

    http = httpx2.AsyncClient(
        headers=headers,
        timeout=httpx2.Timeout(30.0, read=300.0),
        event_hooks={"response": [status]},
    )
    return [http, Client(streamable_http_client(server.url, http_client=http), cache=None)]


async def _list_tools(client: Client, server: MCPServerConfig) -> list[MCPTool]:
    """The server's tools that its config allows, as the model will see them (bounded)."""
    tools: list[MCPTool] = []
    names: set[str] = set()
    cursor: str | None = None
    for _ in range(MAX_LIST_PAGES):
        page = await client.list_tools(cursor=cursor)
        for tool in page.tools:
            if not server.allows(tool.name):
                continue
            made = _tool(server, tool.name, tool.description or tool.title, tool.input_schema)
            if made is None or made.name in names or len(tools) >= MAX_TOOLS_PER_SERVER:
                logger.warning("MCP server %r: tool %r left out", server.name, tool.name)
                continue
            names.add(made.name)
            tools.append(made)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _tool(
    server: MCPServerConfig, tool: str, description: str | None, schema: dict[str, Any]
) -> MCPTool | None:
    name = mcp_tool_name(server.name, tool)
    if name is None:
        return None
    schema = {key: value for key, value in schema.items() if key != "title"}
    schema.setdefault("type", "object")
    schema.setdefault("properties", {})
    if len(msgspec.json.encode(schema)) > MAX_SCHEMA_BYTES:
        return None
    text = (description or tool).strip()[:MAX_DESCRIPTION]
    spec = ToolSpec(name=name, description=text, parameters=schema)
    return MCPTool(name=name, server=server, tool=tool, spec=spec)


def _arguments(call: ToolCall) -> dict[str, Any] | str:
    """The call's arguments as the object the server takes, or what is wrong with them."""
    if len(call.arguments) > MAX_ARGUMENTS:
        return f"arguments for {call.name} are longer than {MAX_ARGUMENTS} chars"
    text = call.arguments if call.arguments.strip() else "{}"
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        return f"arguments for {call.name} are not valid JSON: {exc}"
    if not isinstance(value, dict):
        return f"arguments for {call.name} must be a JSON object"
    return value


def _answered(exc: BaseException) -> bool:
    """An error the server answered with, or an answer the SDK refused (the connection is
    fine), not a connection that broke."""
    from mcp.shared.exceptions import MCPError
    from pydantic import ValidationError

    return isinstance(exc, MCPError | ValidationError)


def _error(call: ToolCall, message: str) -> ToolResult:
    return ToolResult(call_id=call.id, name=call.name, content=f"error: {message}", is_error=True)
