"""Idle transitions and time-outs: the timer-driven part of the session manager.

One concern, in one object with its own state (the shared :class:`~.timers.TimerQueue` and the
queue of due work), given what it needs explicitly: the registry to find sessions in, the
manager's background tasks to run waiting work on, and the two things it asks of the rest of
the manager (save a session, terminate one).

Each live session has at most one timer entry (its next deadline); when it comes due, an
active session that saw no activity for ``idle_after_seconds`` goes idle, and an idle one past
``timeout_minutes`` is saved (if persistence is on) and terminated with reason ``timeout``. Only
loaded sessions have entries; the stored sessions nobody has touched since the node started are
found by :mod:`.sweep`, which loads them (loading sets their deadline). Work that can be done on
the spot is; work that must wait runs as bounded background tasks.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

from ..clock import Clock
from ..errors import (
    InvalidTransition,
    RuntimeClosed,
    SessionNotFound,
    SessionTerminated,
    StoreError,
)
from .background import BackgroundTasks
from .registry import SessionRegistry
from .session import Session
from .state import REASON_TIMEOUT, Status
from .timers import TimerQueue

__all__ = ["IdleReaper"]

logger = logging.getLogger("jidoka.manager")


class IdleReaper:
    """Moves quiet sessions to ``idle`` and ends the ones idle too long."""

    # Timer-driven work that must wait (a durable commit, a load, a time-out) runs as tasks,
    # at most this many at once: 100k sessions coming due together queue up instead of
    # becoming 100k tasks.
    MAX_DUE_TASKS: Final = 64

    def __init__(
        self,
        clock: Clock,
        registry: SessionRegistry,
        tasks: BackgroundTasks,
        *,
        save: Callable[[str], Awaitable[object]],
        terminate: Callable[[str, str, str | None], Coroutine[Any, Any, None]],
    ) -> None:
        self._clock = clock
        self._registry = registry
        self._tasks = tasks
        self._save = save
        self._terminate = terminate  # quietly: someone else may have terminated it first
        self.timers = TimerQueue(clock, self._on_due)
        self._due: deque[tuple[Callable[[], Awaitable[Any]], str]] = deque()
        self._due_running = 0
        self._closed = False

    def start(self) -> None:
        self.timers.start()

    async def aclose(self) -> None:
        """Stop the timers; due work not started yet is dropped."""
        self._closed = True
        await self.timers.aclose()

    # --- deadlines --------------------------------------------------------------------------------

    def schedule(self, session: Session, when: float) -> None:
        """Look at ``session`` at ``when``, unless an earlier look is set."""
        if session.timer_at is None or when < session.timer_at:
            session.timer_at = when
            self.timers.schedule(session.session_id, when)

    def touch(self, session: Session) -> None:
        """After a command: the session's next look is at its idle deadline, unless an earlier
        one is set. An idle session that became active needs this: it may have no timer at all
        (one that never times out has none once idle)."""
        self.schedule(session, session.last_activity + session.state.config.idle_after_seconds)

    def rearm(self, session: Session) -> None:
        """Repair a session whose timer step failed after a commit: the timer looks at it at
        once, and :meth:`_on_due` sets its real deadline from its status and last activity.

        Without this, a session whose timer was not re-armed would never go idle nor time
        out, and would stay in memory until terminated.
        """
        now = self._clock.monotonic()
        session.timer_at = now
        self.timers.schedule(session.session_id, now)

    def schedule_timeout(self, session: Session) -> None:
        timeout = session.state.config.timeout_minutes
        if timeout > 0:
            self.schedule(session, session.idle_since + timeout * 60)

    def prune(self) -> None:
        """Drop the entries of ended sessions once they pile up (a session retires): without
        this, each would stay until it came due."""
        if len(self.timers) > 2 * self._registry.live_count() + 1024:
            self.timers.compact(self._wanted)

    def _wanted(self, session_id: str, when: float) -> bool:
        session = self._registry.live.get(session_id)
        return session is not None and session.timer_at == when

    # --- what comes due ---------------------------------------------------------------------------

    def _on_due(self, session_id: str, when: float) -> None:
        session = self._registry.live.get(session_id)
        if session is None or session.timer_at != when or session.terminating:
            return
        session.timer_at = None
        now = self._clock.monotonic()
        config = session.state.config
        status = session.state.status
        if status is Status.ACTIVE:
            deadline = session.last_activity + config.idle_after_seconds
            if now < deadline:
                self.schedule(session, deadline)
            else:
                if not self._go_idle_now(session):
                    self._enqueue(lambda: self._go_idle(session), f"jidoka:{session_id}:idle")
        elif status is Status.IDLE and config.timeout_minutes > 0:
            deadline = session.idle_since + config.timeout_minutes * 60
            if now < deadline:
                self.schedule(session, deadline)
            else:
                self._enqueue(lambda: self._time_out(session), f"jidoka:{session_id}:timeout")

    async def _time_out(self, session: Session) -> None:
        """Save the session first (when persistence is on), then terminate it: ``timeout``."""
        sid = session.session_id
        if session.state.config.persistence_enabled:
            try:
                await self._save(sid)
            except (SessionTerminated, SessionNotFound, InvalidTransition, RuntimeClosed):
                return
            except StoreError:
                logger.exception("session %s: not saved; its time-out is postponed", sid)
                self.schedule(session, self._clock.monotonic() + 60.0)
                return
        await self._terminate(sid, REASON_TIMEOUT, None)

    def _go_idle_now(self, session: Session) -> bool:
        """The idle transition done on the spot, when it needs no waiting: the store and bus
        never wait and nobody holds the session's lock. Sessions created together go idle
        together; doing it here costs them no task each (and no memory spike)."""
        if not session.can_commit_nowait():
            return False
        session.idle_since = self._clock.monotonic()
        session.transition_nowait(Status.IDLE)
        self.schedule_timeout(session)
        return True

    async def _go_idle(self, session: Session) -> None:
        async with session.lock:
            if session.terminating or session.state.status is not Status.ACTIVE:
                return
            config = session.state.config
            deadline = session.last_activity + config.idle_after_seconds
            now = self._clock.monotonic()
            if now < deadline:  # activity while we waited for the lock
                self.schedule(session, deadline)
                return
            session.idle_since = now  # the time-out counts from the decision, not the commit
            await session.transition(Status.IDLE)
            self.schedule_timeout(session)

    # --- bounded work -----------------------------------------------------------------------------

    def _enqueue(self, make: Callable[[], Awaitable[Any]], name: str) -> None:
        self._due.append((make, name))
        self._pump()

    def _pump(self) -> None:
        while self._due and self._due_running < self.MAX_DUE_TASKS and not self._closed:
            make, name = self._due.popleft()
            self._due_running += 1
            self._tasks.spawn(self._bounded(make), name)

    async def _bounded(self, make: Callable[[], Awaitable[Any]]) -> None:
        try:
            await make()
        finally:
            self._due_running -= 1
            self._pump()
