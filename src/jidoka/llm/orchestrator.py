"""The agent of one session: its turn loop, and how turns share the session.

A *turn* is what ``chat(sid, text)`` asks for: the user's message is appended, the model is
called with the session's context and the tools, its tool calls are run and their results fed
back, until it answers without tools (or ``max_iterations`` model calls have been made). Every
step is an event in the session's log, so a turn can be watched live and replayed later::

    conversation_added(user) · agent_status(thinking) · llm_stream_chunk* · tool_call ·
    [approval_requested · approval_decided] · tool_result · ... · conversation_added(assistant) ·
    llm_response(usage) · agent_status(idle)

Turns of one session run one at a time, in a supervised worker task (``agent``) that takes them
from a queue; each turn is a child task of it, so :meth:`Agent.cancel` stops the turn and not the
worker. What a chat (or a user message) does while a turn runs is the session's
``concurrent_turn_policy``: ``queue`` (wait), ``reject`` (``SessionBusy``) or ``interrupt``
(cancel the running turn, then go). A cancelled turn keeps what the model had said so far, as an
assistant message, and says ``interrupted`` in its ``llm_response``.

Failures stay inside the session: a provider error ends the turn with an ``error`` event and an
``LLMError``; a tool error goes back to the model as the tool's result; the session stays usable.

The parts of a turn live beside it: what a queued turn is and the runtime's cap on them in
:mod:`.turns`, running the model's tool calls and asking about writes in :mod:`.tool_calls`,
fitting every request into ``context_window - max_tokens`` in :mod:`.window`, streaming one
model call into the log in :mod:`.streaming`, counting (or estimating) the tokens used in
:mod:`.usage`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..errors import (
    JidokaError,
    LimitExceeded,
    LLMError,
    SessionBusy,
    SessionTerminated,
)
from ..events import Event, EventType
from ..payloads import (
    AgentStatusData,
    LLMResponseData,
    event_item,
)
from ..session.context import CONTEXT_PARTS, TokenCounter
from ..session.session import Session
from ..session.state import Message
from ..tools.registry import ToolRegistry
from . import run_events
from .compaction import auto_compact, compact_now, owned
from .mcp_client import MCPClients
from .outcomes import choice_for, failure_data
from .prompt import DEFAULT_INSTRUCTIONS, budget_for, prompt_messages, request_limit, tools_tokens
from .provider_slot import ProviderSlot
from .providers import ClientCache
from .streaming import stream_call
from .tool_calls import ToolCaller, bounded
from .turn_queue import TurnQueue
from .turns import ChatResult, Turn, TurnQueueLimit
from .types import ChatMessage, ChatRequest, Usage
from .usage import estimate, token_usage, usage_data, usage_of
from .window import TurnWindow

__all__ = ["Agent", "ChatResult", "TurnQueueLimit"]

logger = logging.getLogger("jidoka.agent")


class Agent(TurnQueue):
    """One session's agent. Made (and its worker started) on the session's first chat."""

    def __init__(
        self,
        session_id: str,
        *,
        get_session: Callable[[str], Awaitable[Session]],
        send_message: Callable[..., Awaitable[Message]],
        update_index: Callable[[str, str], Awaitable[object]],
        environ: Mapping[str, str],
        llm_defaults: Mapping[str, Any],
        token_counter: TokenCounter,
        record_usage: Callable[[Usage, str], None] | None = None,
        on_exit: Callable[[Agent], None] | None = None,
        clients: ClientCache | None = None,
        queue_limit: TurnQueueLimit | None = None,
        drop_chunks: Callable[[str, int, int], None] | None = None,
        run_ended: Callable[[str], None] | None = None,
        mcp_allow_stdio: bool = False,
    ) -> None:
        super().__init__(session_id, queue_limit)
        self._get_session = get_session
        self._send_message = send_message
        self._update_index = update_index
        self._defaults = dict(llm_defaults)
        self._counter = token_counter
        self._record_usage = record_usage
        self._on_exit = on_exit
        #: Given the seq range of an ended turn's chunks its ``llm_response`` holds, drops them
        #: from the store in the background (``Settings.keep_stream_chunks`` off); else None.
        self._drop_chunks = drop_chunks
        #: Told the id of each run whose ``run_completed`` this agent committed.
        self._run_ended = run_ended
        #: The session as last looked up (a turn's end may need it once lookups refuse it).
        self._live: Session | None = None
        mcp = MCPClients(session_id, environ, allow_stdio=mcp_allow_stdio)
        self._tools = ToolCaller(
            session_id, emit=self._emit, update_index=update_index, counter=token_counter, mcp=mcp
        )
        self._providers = ProviderSlot(session_id, environ, clients)
        self._partial: list[str] = []
        #: Seqs of the chunks stored for the model call under way (``_partial``'s events).
        self._chunks: list[int] = []
        #: The model call under way (its usage is estimated if the turn stops during it).
        self._in_flight: ChatRequest | None = None
        #: What a compaction needs of the agent (:mod:`.compaction`).
        self._llm = (self._providers.get, token_counter, self._emit)

    # --- what clients call ----------------------------------------------------------------------

    async def stop_all(self) -> None:
        """Cancel the running turn and drop the queued ones, and wait until none runs: what a
        rewind with ``cancel`` does first. A dropped turn never started (nothing of it is in
        the log); its caller gets :class:`~jidoka.SessionBusy`."""
        dropped = list(self._queue)
        for turn in dropped:
            if not turn.future.done():
                turn.future.set_exception(SessionBusy(self.session_id))
                turn.future.exception()  # its caller may have gone
        if self._queue_limit is not None:
            self._queue_limit.release(len(self._queue))
        self._queue.clear()
        await self._end_dropped(dropped, "rewound")
        current = self._current
        if current is not None:
            self.cancel()
            with contextlib.suppress(JidokaError, asyncio.CancelledError):
                await asyncio.shield(current.future)

    async def compact(self, keep_last: int, instructions: str | None) -> Event:
        """Compact the conversation now (``compact_session``): ``SessionBusy`` while a turn
        runs or waits; turns that come meanwhile wait for it. It belongs to the session, not
        to the caller: a caller that goes away does not stop it."""
        if self.closed:
            raise SessionTerminated(self.session_id)
        if self.busy:
            raise SessionBusy(self.session_id)
        work = compact_now(self._session, self._defaults, keep_last, instructions, *self._llm)
        name = f"jidoka:{self.session_id}:compact"
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._compacting = task  # busy from now on: no suspension since the check
        task.add_done_callback(self._compacted)
        return await owned(task, self.session_id)

    def _compacted(self, task: asyncio.Task[Event]) -> None:
        if self._compacting is task:
            self._compacting = None
        if not task.cancelled():
            task.exception()  # the caller may have gone: not "never retrieved"
        self._wakeup.set()  # a turn queued meanwhile may go

    def approve(self, call_id: object, allow: object) -> None:
        """The user's answer about the write waiting under ``call_id``."""
        self._tools.approve(call_id, allow)

    # --- the worker -----------------------------------------------------------------------------

    async def run(self) -> None:
        """The supervised worker: run queued turns one at a time until the session ends."""
        try:
            while True:
                while not self._queue or self._compacting is not None:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                turn = self._next_turn()
                if turn.future.done():
                    continue
                self._current = turn
                turn.task = asyncio.get_running_loop().create_task(
                    self._run_turn(turn), name=f"jidoka:{self.session_id}:turn"
                )
                try:
                    result = await asyncio.shield(turn.task)
                except asyncio.CancelledError:
                    if turn.task.done():  # the turn itself ended cancelled: a stop, not ours
                        if not turn.future.done():
                            turn.future.set_exception(SessionTerminated(self.session_id))
                        continue
                    turn.task.cancel()  # the worker is being stopped: stop the turn too
                    with contextlib.suppress(BaseException):
                        await turn.task
                    if not turn.future.done():
                        turn.future.set_exception(SessionTerminated(self.session_id))
                        turn.future.exception()
                    raise
                except BaseException as exc:
                    if not turn.future.done():
                        turn.future.set_exception(exc)
                        turn.future.exception()  # the caller may have gone: not "never retrieved"
                else:
                    if not turn.future.done():
                        turn.future.set_result(result)
                finally:
                    self._current = None
                    if turn.ended:
                        self._tell_ended(turn)
        finally:
            # Stopped (the session ends) or crashed (the supervisor restarts ``run``): either
            # way no turn is running any more, so nobody may wait for one.
            await self._abandon()
            if self._on_exit is not None:
                self._on_exit(self)

    async def aclose(self) -> None:
        """No more turns: fail the waiting ones and close the provider."""
        self.closed = True
        await self._abandon()

    async def _abandon(self) -> None:
        dropped = list(self._queue)
        for turn in (*self._queue, *([self._current] if self._current else [])):
            if not turn.future.done():
                turn.future.set_exception(SessionTerminated(self.session_id))
                turn.future.exception()
        if self._queue_limit is not None:
            self._queue_limit.release(len(self._queue))
        self._queue.clear()
        await self._end_dropped(dropped, "terminated", only_if_ending=True)
        if self._compacting is not None:
            self._compacting.cancel()
        self._tools.deny_all()
        await self._tools.mcp.aclose()  # the MCP servers see their sessions end
        await self._providers.aclose()

    # --- one turn -------------------------------------------------------------------------------

    async def _session(self) -> Session:
        self._live = await self._get_session(self.session_id)
        return self._live

    async def _ending_session(self) -> Session | None:
        """The session, if it is ending: found once it no longer answers lookups (its workers
        stop while it terminates), so the runs it ends can still be told in its log."""
        session = self._live
        if session is None:
            try:
                session = await self._session()
            except JidokaError:
                return None
        return session if session.terminating and not session.stopping else None

    async def _end_dropped(
        self, turns: list[Turn], reason: str, *, only_if_ending: bool = False
    ) -> None:
        """End the runs of turns taken out of the queue before they ran (``cancelled``). When
        the worker stops, only if the session is ending: a runtime that shuts down leaves them
        queued in the log, for the next start to run."""
        runs = [turn for turn in turns if turn.run_id is not None]
        if not runs:
            return
        with contextlib.suppress(JidokaError):
            ending = await self._ending_session()
            session = ending if ending is not None else await self._session()
            if only_if_ending and ending is None:
                return
            for turn in runs:
                if turn.admitted is not None:
                    with contextlib.suppress(BaseException):
                        await asyncio.shield(turn.admitted)
                    if turn.admitted.cancelled() or turn.admitted.exception() is not None:
                        continue  # never queued in the log
                item = run_events.dropped(turn, reason)
                if ending is not None:
                    await ending.record_ending([item])
                else:
                    await session.append_event(*item)
                self._ended(turn)

    async def _run_turn(self, turn: Turn) -> ChatResult:
        """A turn between its run's ``run_started`` and ``run_completed`` (see
        :mod:`.run_events`)."""
        if turn.run_id is None:
            return await self._turn(turn)
        if turn.admitted is not None:
            await turn.admitted
        await self._emit(*run_events.started(turn.run_id))
        try:
            result = await self._turn(turn)
        except asyncio.CancelledError:
            # Not a user's cancel (that returns): the worker stops. The run ends here only if
            # the session is ending; a runtime shutting down leaves it to the next start.
            with contextlib.suppress(Exception):
                ending = await self._ending_session()
                if ending is not None:
                    await ending.record_ending([run_events.dropped(turn, "terminated")])
                    self._ended(turn)
            raise
        except BaseException as exc:
            turn.finishing = True
            with contextlib.suppress(JidokaError):
                await self._emit(*run_events.failed(turn, exc))
                self._ended(turn)
            raise
        turn.finishing = True  # the run has ended: only its record is left to commit
        await self._emit(*run_events.completed(turn, result))
        self._ended(turn)
        return result

    def _ended(self, turn: Turn) -> None:
        """Its run ended: told once the worker is free of it (``_current`` cleared), so a
        caller woken by it finds the session free for the next ``reject`` run."""
        turn.ended = True
        if self._current is not turn:
            self._tell_ended(turn)

    def _tell_ended(self, turn: Turn) -> None:
        if self._run_ended is not None and turn.run_id is not None:
            self._run_ended(turn.run_id)

    async def _emit(self, type_: str, data: dict[str, Any]) -> None:
        session = await self._session()
        current = self._current
        if current is not None and current.run_id is not None and type_ in run_events.RUN_TAGGED:
            data = {**data, "run_id": current.run_id}
        event = await session.append_event(type_, data)
        if event.type == EventType.LLM_STREAM_CHUNK:
            self._chunks.append(event.seq)

    async def _turn(self, turn: Turn) -> ChatResult:
        session = await self._session()
        llm_config = {**self._defaults, **session.state.llm_config}
        config = session.state.config
        await self._send_message(self.session_id, turn.text)
        await self._emit(*event_item(AgentStatusData(status="thinking")))
        usage = Usage()
        iterations = 0
        self._partial, self._chunks = [], []
        self._in_flight = None
        try:
            provider = await self._providers.get(llm_config)
            registry = ToolRegistry.default(allow_write=config.allow_write is not False)
            tools = registry.specs() + await self._tools.mcp_specs(config)
            instructions = str(llm_config.get("system_prompt") or DEFAULT_INSTRUCTIONS)
            await auto_compact(session, llm_config, tools, instructions, *self._llm)
            budget = budget_for(llm_config, tools, instructions, self._counter)
            bundle = await session.build_context(CONTEXT_PARTS, budget)
            window = TurnWindow(
                prompt_messages(bundle, instructions),
                limit=request_limit(llm_config),
                fixed=tools_tokens(tools, self._counter),
                counter=self._counter,
                session_id=self.session_id,
            )
            model = str(llm_config.get("model") or "default")
            tool_choice = llm_config.get("tool_choice")
            while True:
                if iterations >= config.max_iterations:
                    raise LimitExceeded(
                        "max_iterations", config.max_iterations, session_id=self.session_id
                    )
                iterations += 1
                request = ChatRequest(
                    model=model,
                    messages=window.fit(),
                    tools=tools,
                    temperature=llm_config.get("temperature"),
                    max_tokens=llm_config.get("max_tokens"),
                    tool_choice=choice_for(tool_choice, iterations, config.max_iterations),
                )
                self._partial, self._chunks = [], []
                self._in_flight = request
                completion = await stream_call(
                    provider, request, iterations, emit=self._emit, partial=self._partial
                )
                self._in_flight = None
                usage = usage + usage_of(completion, request, self._counter)
                if not completion.tool_calls:
                    return await self._finish(
                        completion.text, usage, iterations, completion.finish_reason
                    )
                window.add(
                    ChatMessage(
                        role="assistant",
                        content=completion.text or None,
                        tool_calls=completion.tool_calls,
                    )
                )
                await self._emit(*event_item(AgentStatusData(status="calling_tool")))
                cut = completion.finish_reason == "length"
                cut_off = completion.tool_calls[-1] if cut else None
                for call in completion.tool_calls:
                    if call is cut_off:  # its arguments may be cut: never run it
                        content = await self._tools.refuse_cut(call, iterations)
                        window.add_result(call.id, content, content)
                        continue
                    result, for_model = await self._tools.run(
                        session, registry, call, iterations, room=window.room()
                    )
                    window.add_result(call.id, result.content, for_model)
                await self._emit(*event_item(AgentStatusData(status="thinking")))
        except asyncio.CancelledError:
            if not turn.user_cancelled:
                raise
            return await self._interrupted(usage + self._stopped_call(None), iterations)
        except JidokaError as exc:
            # A provider failure, a bound, a bad llm_config (a missing key variable ...): the
            # turn ends in the log too, so nobody watching is left at "thinking".
            await self._fail(exc, usage + self._stopped_call(exc), iterations)
            if isinstance(exc, LLMError) and exc.session_id is None:
                exc.session_id = self.session_id
            raise
        except Exception as exc:
            logger.exception("session %s: the turn failed", self.session_id)
            await self._fail(exc, usage + self._stopped_call(exc), iterations)
            raise

    def _stopped_call(self, exc: BaseException | None) -> Usage:
        """The estimated usage of the model call a cancel or a failure stopped: the server had
        the prompt (and made what streamed of the answer) unless it refused the request with an
        HTTP error."""
        request, self._in_flight = self._in_flight, None
        if request is None or (isinstance(exc, LLMError) and exc.status is not None):
            return Usage()
        return estimate(request, "".join(self._partial), self._counter)

    async def _finish(
        self, text: str, usage: Usage, iterations: int, finish_reason: str | None
    ) -> ChatResult:
        message = await self._send_message(self.session_id, text, "assistant")
        await self._respond(message, usage, iterations, finish_reason, interrupted=False)
        return ChatResult(
            message=message,
            usage=token_usage(usage),
            iterations=iterations,
            finish_reason=finish_reason,
        )

    async def _interrupted(self, usage: Usage, iterations: int) -> ChatResult:
        partial = "".join(self._partial)
        message = await self._send_message(self.session_id, partial, "assistant")
        await self._respond(message, usage, iterations, "cancelled", interrupted=True)
        return ChatResult(
            message=message,
            usage=token_usage(usage),
            interrupted=True,
            iterations=iterations,
            finish_reason="cancelled",
        )

    async def _respond(
        self,
        message: Message,
        usage: Usage,
        iterations: int,
        finish_reason: str | None,
        *,
        interrupted: bool,
    ) -> None:
        response = LLMResponseData(
            message_id=message.id,
            seq=message.seq,
            content=bounded(message.content),
            usage=usage_data(usage),
            iterations=iterations,
            finish_reason=finish_reason,
            interrupted=interrupted,
        )
        await self._emit(*event_item(response))
        if self._record_usage is not None:
            self._record_usage(usage, "interrupted" if interrupted else "completed")
        status = "cancelled" if interrupted else "idle"
        await self._emit(*event_item(AgentStatusData(status=status)))
        # The turn has ended: its last model call's chunks are in the response, whole (unless
        # ``bounded`` cut it), so they may go. Earlier calls' text is in no other event.
        if (
            self._drop_chunks is not None
            and self._chunks
            and message.content == "".join(self._partial)
        ):
            self._drop_chunks(self.session_id, self._chunks[0], self._chunks[-1])

    async def _fail(self, exc: Exception, usage: Usage, iterations: int) -> None:
        if self._record_usage is not None:
            self._record_usage(usage, "failed")
        with contextlib.suppress(SessionTerminated):
            await self._emit(*event_item(failure_data(exc, usage, iterations)))
            await self._emit(*event_item(AgentStatusData(status="failed")))
