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
started once the runtime runs, stopped (its calls still running cancelled) before the runtime
closes; a fresh manager per lifespan, as the SDK runs each one once. It starts on the first
``/v1/mcp`` request, in a task of its own, which imports the SDK (:mod:`jidoka.server.mcp_sdk`)
in a thread first: the SDK and its models take about a second and some 25 MB to load, which a
server that is never asked for MCP does not spend (nor its startup); the first call waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from starlette.requests import Request
from starlette.types import ASGIApp

from ..errors import InvalidArgument, RuntimeClosed, Unauthorized
from .mcp_routing import OwnerRouting
from .mcp_tools import MCP_TOOLS, Answer, McpTool, error_answer
from .middleware import PRINCIPAL_KEY
from .routes import Scopes

if TYPE_CHECKING:
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

__all__ = ["MCP_PATH", "McpEndpoint"]

logger = logging.getLogger("jidoka.server")

MCP_PATH: Final = "/v1/mcp"
#: How long a request waits for the endpoint to start (the SDK's import) before a 503.
START_TIMEOUT: Final = 30.0


class McpEndpoint:
    """The ``/v1/mcp`` route's endpoint and the SDK's session manager behind it (see the
    module).

    ``scopes`` (the principals' scoped clients) is set once the app's routes are built, which
    for ``jidoka serve`` is after the runtime started."""

    def __init__(self, *, max_body_bytes: int, tools: Sequence[McpTool] = MCP_TOOLS) -> None:
        self.scopes: Scopes | None = None
        #: Where a tool's verb runs: on a node of a cluster, on its session's owner.
        self.routing = OwnerRouting()
        self.max_body_bytes = max_body_bytes
        self.tools = {entry.name: entry for entry in tools}
        self._manager: StreamableHTTPSessionManager | None = None
        #: While the lifespan runs: set once the manager runs (or failed to start).
        self._ready: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """While inside (the app's lifespan), the SDK's session manager may run: started by the
        first request, in a task of its own; leaving cancels it, and the calls it serves."""
        self._ready = asyncio.Event()
        try:
            yield
        finally:
            self._ready = None
            task, self._task = self._task, None
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _start(self, ready: asyncio.Event) -> None:
        """Start the manager's task, once per lifespan; in a context of its own, not the first
        request's (its request id would be on every log line of the SDK)."""
        if self._task is None:
            run = self._run(ready)
            self._task = asyncio.create_task(run, name="jidoka-mcp", context=contextvars.Context())

    async def _run(self, ready: asyncio.Event) -> None:
        try:
            sdk = await asyncio.to_thread(importlib.import_module, "jidoka.server.mcp_sdk")
            manager = sdk.session_manager(
                tuple(self.tools.values()), self.call, max_body_bytes=self.max_body_bytes
            )
            async with manager.run():
                self._manager = manager
                ready.set()
                await asyncio.Event().wait()  # until cancelled (the lifespan ends)
        except Exception:
            logger.exception("the MCP endpoint (/v1/mcp) failed to start")
        finally:
            self._manager = None
            ready.set()  # a request waiting for it answers 503 now

    async def endpoint(self, request: Request) -> ASGIApp:
        """The route's endpoint: the SDK's transport answers the request."""
        ready = self._ready
        if ready is not None and not ready.is_set():
            self._start(ready)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(START_TIMEOUT):
                    await ready.wait()
        manager = self._manager
        if manager is None:
            raise RuntimeClosed(
                "the MCP endpoint is not running (the server is starting or stopping)"
            )
        return manager.handle_request

    async def call(self, name: str, arguments: Mapping[str, Any] | None, request: object) -> Answer:
        """Answer a call of tool ``name`` made in ``request`` (its principal's)."""
        entry = self.tools.get(name)
        if entry is None:
            known = ", ".join(self.tools)
            return error_answer(
                InvalidArgument(f"no tool {name!r} (the tools: {known})", argument="name")
            )
        scopes = self.scopes
        if not isinstance(request, Request) or scopes is None:
            return error_answer(Unauthorized("an MCP tool is called over HTTP only"))
        principal: str | None = request.scope.get(PRINCIPAL_KEY)
        return await entry.call(scopes(principal), arguments, self.routing)
