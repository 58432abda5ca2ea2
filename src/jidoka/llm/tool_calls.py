"""How a turn runs the tool calls the model makes, and asks the user about writes.

This is the part of a turn that touches the project: a call is logged (``tool_call``), a write
under ``allow_write: ask`` waits for the user's answer (``approval_requested`` /
``approval_decided``), the tool runs, and its result is logged whole (``tool_result``) while
the model gets it cut to the room left in the window. Any failure of a tool, even a bug, becomes
an error result for the model, so the turn goes on. A call whose arguments ``max_tokens`` cut
off (``finish_reason: length``) is logged and refused without running. It lives apart from the
turn loop in :mod:`.orchestrator` because it is the one place that decides what a call may do.

A call of an MCP server's tool (``mcp__{server}__{tool}``, :mod:`.mcp_client`) takes the same
path: logged, asked about when the server's ``require_approval`` covers it (the same question,
answer and timeout as a write), run under ``tool_timeout_seconds``, its result logged and cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec

from ..config import SessionConfig
from ..errors import InvalidArgument, JidokaError
from ..payloads import (
    ApprovalDecidedData,
    ApprovalRequestedData,
    ErrorData,
    ToolCallData,
    ToolResultData,
    event_item,
)
from ..session.context import TokenCounter
from ..session.session import Session
from ..tools.files import ToolContext
from ..tools.registry import ToolRegistry, ToolResult, preview_write, quote_path
from ..tools.spec import ToolSpec
from .mcp_client import MCPClients, MCPTool
from .prompt import cut_to_fit
from .types import ToolCall

__all__ = ["CUT_CALL", "MAX_EVENT_TEXT", "MAX_TOOL_RESULT_TEXT", "ToolCaller", "bounded"]

logger = logging.getLogger("jidoka.agent")

#: Bounds on what one event carries (the log keeps events small; the model gets the full text).
MAX_EVENT_TEXT: Final = 16_384
#: A ``tool_result`` event keeps the whole result (the tools bound it themselves, to
#: ``max_output_chars``, 20,000 characters by default); this is only a ceiling behind that.
MAX_TOOL_RESULT_TEXT: Final = 262_144
#: What the model is told for a tool call its answer cut off (``finish_reason: length``).
CUT_CALL: Final = (
    "error: this call was cut off: your answer reached max_tokens while writing its arguments, "
    "so they are incomplete and the call was not run. Make the call again, complete (split a "
    "long write into smaller edits if needed)."
)


def bounded(text: str, limit: int = MAX_EVENT_TEXT) -> str:
    """``text`` cut to ``limit`` characters for an event, saying how much was left out."""
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit} more chars]"


class ToolCaller:
    """Runs one session's tool calls and holds the approvals they wait for.

    ``emit`` appends an event to the session's log; ``update_index`` tells the session's file
    index about a path a tool read or wrote; ``mcp`` holds the agent's MCP connections.
    """

    def __init__(
        self,
        session_id: str,
        *,
        emit: Callable[[str, dict[str, Any]], Awaitable[None]],
        update_index: Callable[[str, str], Awaitable[object]],
        counter: TokenCounter,
        mcp: MCPClients,
    ) -> None:
        self.session_id = session_id
        self._emit = emit
        self._update_index = update_index
        self._counter = counter
        self.mcp = mcp
        self._approvals: dict[str, asyncio.Future[bool]] = {}

    async def mcp_specs(self, config: SessionConfig) -> list[ToolSpec]:
        """The tools of the session's MCP servers for this turn; a server that is unavailable
        gets an ``error`` event (``mcp_unavailable``) and the turn goes on without it. A
        connection may take ``tool_timeout_seconds`` (10 at most) to open."""
        if not config.mcp_servers and not self.mcp.open_servers:
            return []
        specs, failures = await self.mcp.tools(config.mcp_servers, config.tool_timeout_seconds)
        for server, why in failures:
            logger.warning(
                "session %s: MCP server %r unavailable: %s", self.session_id, server, why
            )
            message = f"MCP server {server!r} is unavailable ({why}); this turn goes on without it"
            await self._emit(
                *event_item(ErrorData(code="mcp_unavailable", server=server, message=message))
            )
        return specs

    def approve(self, call_id: object, allow: object) -> None:
        """The user's answer about the write waiting under ``call_id``."""
        if not isinstance(allow, bool):
            raise InvalidArgument("allow must be true or false", argument="allow")
        future = self._approvals.get(call_id) if isinstance(call_id, str) else None
        if future is None or future.done():
            raise InvalidArgument(
                f"no write is waiting for approval under call id {call_id!r}",
                argument="call_id",
                session_id=self.session_id,
            )
        future.set_result(allow)

    def deny_all(self) -> None:
        """The agent stops: every write still waiting for an answer is not made."""
        for future in self._approvals.values():
            if not future.done():
                future.set_result(False)

    async def refuse_cut(self, call: ToolCall, iteration: int) -> str:
        """Log a call cut off by ``max_tokens`` and its refusal, as any call and result."""
        await self._emit(
            *event_item(
                ToolCallData(
                    call_id=call.id,
                    name=call.name,
                    arguments=bounded(call.arguments),
                    iteration=iteration,
                )
            )
        )
        await self._emit(
            *event_item(
                ToolResultData(
                    call_id=call.id, name=call.name, content=CUT_CALL, is_error=True, cut_off=True
                )
            )
        )
        return CUT_CALL

    async def run(
        self, session: Session, registry: ToolRegistry, call: ToolCall, iteration: int, room: int
    ) -> tuple[ToolResult, str]:
        """Run one call; return its result and what the model gets of it (cut to ``room``
        tokens, with a note on how to read the rest; the event keeps it whole)."""
        await self._emit(
            *event_item(
                ToolCallData(
                    call_id=call.id,
                    name=call.name,
                    arguments=bounded(call.arguments),
                    iteration=iteration,
                )
            )
        )
        config = session.state.config
        root = session.state.project_root
        mcp_tool = self.mcp.find(call.name)
        if mcp_tool is not None:
            result = await self._run_mcp(session, mcp_tool, call)
        elif root is None:
            result = ToolResult(
                call_id=call.id,
                name=call.name,
                content="error: this session has no project_root, so it has no files",
                is_error=True,
            )
        else:
            context = ToolContext(root=root, session_id=self.session_id)
            denied: str | None = None
            if registry.is_write(call.name) and config.allow_write == "ask":
                denied = await self._ask(call, context, config.approval_timeout_seconds)
            if denied is not None:
                result = ToolResult(call_id=call.id, name=call.name, content=denied, is_error=True)
            else:
                ownership = session.services.ownership
                if ownership is not None:
                    # A node of a cluster starts no tool once its lease is in doubt (an
                    # approval may have waited long): NotOwner ends the turn here.
                    ownership.guard(self.session_id)
                try:
                    result = await registry.run(call, context, timeout=config.tool_timeout_seconds)
                except Exception as exc:  # run() answers failures itself; this is a last guard
                    result = self._crashed(call, exc)
        cut = cut_to_fit(result.content, room, self._counter)
        data = ToolResultData(
            call_id=call.id,
            name=call.name,
            content=bounded(result.content, MAX_TOOL_RESULT_TEXT),
            is_error=result.is_error,
            # The model saw a part; this is the whole.
            cut_for_model=msgspec.UNSET if cut is None else True,
        )
        await self._emit(*event_item(data))
        for path in (*result.paths_read, *result.paths_written):
            try:
                await self._update_index(self.session_id, path)
            except JidokaError:
                pass  # the file changed or went away since the tool saw it: nothing to index
            except Exception:  # the tool's work is done; a failed bookkeeping step must not
                logger.exception(  # end the turn
                    "session %s: indexing %r after %s failed", self.session_id, path, call.name
                )
        return result, result.content if cut is None else cut

    async def _run_mcp(self, session: Session, tool: MCPTool, call: ToolCall) -> ToolResult:
        """Run a call of an MCP server's tool, after asking when its config requires it."""
        config = session.state.config
        if tool.server.needs_approval(tool.tool):
            request = ApprovalRequestedData(
                call_id=call.id,
                tool=call.name,
                path="",
                summary=f"{call.name} wants to run {tool.tool!r} on MCP server "
                f"{tool.server.name!r}",
                diff=bounded(call.arguments),
            )
            allow, reason = await self._decide(call, request, config.approval_timeout_seconds)
            if not allow:
                why = (
                    "was not approved in time" if reason == "timeout" else "was denied by the user"
                )
                content = f"error: the call of {call.name} {why}; it was not made"
                return ToolResult(call_id=call.id, name=call.name, content=content, is_error=True)
        ownership = session.services.ownership
        if ownership is not None:
            ownership.guard(self.session_id)  # as for a built-in tool: see run()
        try:
            return await self.mcp.call(tool, call, config.tool_timeout_seconds)
        except Exception as exc:  # call() answers failures itself; this is a last guard
            return self._crashed(call, exc)

    def _crashed(self, call: ToolCall, exc: Exception) -> ToolResult:
        """A tool failure that was not a refusal (a bug, or an error nothing translated):
        logged, and told to the model as an error result, so the turn goes on."""
        logger.error("session %s: tool %s failed", self.session_id, call.name, exc_info=exc)
        return ToolResult(
            call_id=call.id,
            name=call.name,
            content=f"error: internal error in {call.name}: {type(exc).__name__}",
            is_error=True,
        )

    async def _ask(self, call: ToolCall, context: ToolContext, wait: float) -> str | None:
        """Ask the user about a write; ``None`` if allowed, else what the model is told."""
        try:
            path, diff = await preview_write(call, context)
        except JidokaError as exc:
            return f"error: {exc.message}"
        except Exception as exc:  # preview_write translates failures; this is a last guard
            return self._crashed(call, exc).content
        shown = quote_path(path)  # a name with a newline or edge spaces must not mislead
        request = ApprovalRequestedData(
            call_id=call.id,
            tool=call.name,
            path=path,
            summary=f"{call.name} wants to change {shown}",
            diff=bounded(diff),
        )
        allow, reason = await self._decide(call, request, wait)
        if allow:
            return None
        if reason == "timeout":
            return f"error: the write to {shown} was not approved in time; it was not made"
        return f"error: the user denied the write to {shown}; it was not made"

    async def _decide(
        self, call: ToolCall, request: ApprovalRequestedData, wait: float
    ) -> tuple[bool, str]:
        """Ask ``request`` and wait up to ``wait`` seconds: ``(allow, reason)``, both logged
        (``approval_decided``); no answer in time denies."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._approvals[call.id] = future
        try:
            try:
                await self._emit(*event_item(request))
                async with asyncio.timeout(wait):
                    allow = await future
                reason = "user"
            except TimeoutError:
                allow, reason = False, "timeout"
            except asyncio.CancelledError:
                # The turn stops while the question is open (or still being committed: a
                # commit completes even when its caller is cancelled). Close it in the log;
                # nothing was written.
                with contextlib.suppress(JidokaError):
                    await self._emit(
                        *event_item(
                            ApprovalDecidedData(call_id=call.id, allow=False, reason="cancelled")
                        )
                    )
                raise
            await self._emit(
                *event_item(ApprovalDecidedData(call_id=call.id, allow=allow, reason=reason))
            )
        finally:
            self._approvals.pop(call.id, None)
        return allow, reason
