"""The runtime's agents, one per session that has chatted, made on first use.

An idle session that never chats costs no agent, no task and no provider. The pool forgets an
agent when its session ends (its worker is stopped with the session's other workers).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import JidokaError
from ..events import Event
from ..session.context import TokenCounter
from ..session.manager import SessionManager
from ..session.session import Session
from ..session.state import Message
from ..telemetry import Telemetry
from .orchestrator import Agent, TurnQueueLimit
from .providers import ClientCache
from .types import Usage

__all__ = ["AgentPool"]

MAX_CHAT_CHARS = 1 << 20


class AgentPool:
    """Finds or makes the agent of a session and starts its supervised worker."""

    def __init__(
        self,
        manager: SessionManager,
        *,
        llm_defaults: Mapping[str, Any],
        token_counter: TokenCounter,
        telemetry: Telemetry,
        environ: Mapping[str, str] | None = None,
        max_queued_turns: int = 1_000,
    ) -> None:
        self._manager = manager
        self._defaults = dict(llm_defaults)
        self._counter = token_counter
        self._telemetry = telemetry
        self._environ = os.environ if environ is None else environ
        self._agents: dict[str, Agent] = {}
        #: SDK clients shared by the sessions' providers (one per endpoint and key).
        self._clients = ClientCache()
        #: Turns waiting to run across every session (``Settings.max_queued_turns_total``).
        self.queue_limit = TurnQueueLimit(max_queued_turns)
        #: Told each run that ended on this node (:meth:`jidoka.runs.service.Runs.ended`).
        self.run_ended: Callable[[str], None] | None = None

    def get(self, session_id: str) -> Agent | None:
        return self._agents.get(session_id)

    def __len__(self) -> int:
        return len(self._agents)

    async def agent(self, session: Session) -> Agent:
        sid = session.session_id
        agent = self._agents.get(sid)
        if agent is None:
            session.ensure_writable()
            agent = Agent(
                sid,
                get_session=self._manager.session,
                send_message=self._send_message,
                update_index=self._touch_file,
                environ=self._environ,
                llm_defaults=self._defaults,
                token_counter=self._counter,
                record_usage=self._record,
                on_exit=self._exited,
                clients=self._clients,
                queue_limit=self.queue_limit,
                drop_chunks=None
                if self._manager.settings.keep_stream_chunks
                else self._manager.chunks.drop,
                run_ended=self._run_ended,
                mcp_allow_stdio=self._manager.settings.mcp_allow_stdio,
            )
            self._agents[sid] = agent
            self._manager.start_worker(sid, "agent", agent.run)
        return agent

    async def compact(self, session: Session, keep_last: int, instructions: str | None) -> Event:
        """Compact the session's conversation with its own model (``compact_session``; the
        arguments are checked): the ``context_compacted`` event. ``SessionBusy`` while a turn
        runs; the agent (and its worker) is made if the session never chatted."""
        session.ensure_writable()
        agent = await self.agent(session)
        return await agent.compact(keep_last, instructions)

    async def before_user_message(self, session: Session) -> None:
        """Apply the session's policy to a user message that arrives during a turn."""
        agent = self._agents.get(session.session_id)
        if agent is not None:
            await agent.wait_idle(session.state.config.concurrent_turn_policy)

    async def _send_message(self, session_id: str, text: str, role: str = "user") -> Message:
        message: Message = await self._manager.run(
            session_id, "send_message", lambda s: s.send_message(role, text)
        )
        return message

    async def _touch_file(self, session_id: str, path: str) -> object:
        return await self._manager.run(
            session_id,
            "update_file_index",
            lambda s: s.update_file_index(path, {"last_accessed": s.services.clock.time()}),
        )

    def _run_ended(self, run_id: str) -> None:
        if self.run_ended is not None:
            self.run_ended(run_id)

    def _record(self, usage: Usage, outcome: str) -> None:
        self._telemetry.record_turn(usage.prompt_tokens, usage.completion_tokens, outcome)

    def _exited(self, agent: Agent) -> None:
        """The agent's worker ended. Called from the worker's own clean-up, so it never raises:
        an exception there would replace the worker's cancellation, and its supervisor would
        take a stop for a crash (the runtime closing is the case that did it)."""
        if not self._manager.is_live(agent.session_id) or agent.closed:
            self._agents.pop(agent.session_id, None)
            return
        try:
            session = self._manager.get(agent.session_id)
        except JidokaError:  # the runtime closed, or the session ended, meanwhile
            self._agents.pop(agent.session_id, None)
            return
        if session.terminating:
            self._agents.pop(agent.session_id, None)

    async def aclose(self) -> None:
        agents, self._agents = list(self._agents.values()), {}
        for agent in agents:
            await agent.aclose()
        await self._clients.aclose()
