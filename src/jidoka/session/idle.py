"""Idle transitions and time-outs: the timer-driven half of the session manager.

A mixin of :class:`~jidoka.session.manager.SessionManager`, kept apart because it is one
concern: each live session has at most one timer entry (its next deadline); when it comes due,
an active session that saw no activity for ``idle_after_seconds`` goes idle, and an idle one
past ``timeout_minutes`` is saved (if persistence is on) and terminated with reason ``timeout``.
Work that can be done on the spot is; work that must wait runs as bounded background tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

from ..errors import (
    InvalidTransition,
    RuntimeClosed,
    SessionNotFound,
    SessionTerminated,
    StoreError,
)
from .session import Session
from .state import Status

if TYPE_CHECKING:
    import asyncio
    from collections import deque

    from ..clock import Clock
    from ..store.base import SavedSession, StoredSession
    from .timers import TimerQueue

__all__ = ["IdleTimers"]

logger = logging.getLogger("jidoka.manager")


class IdleTimers:
    """The manager's timer methods; what they use of the manager is declared here."""

    if TYPE_CHECKING:
        _clock: Clock
        _closed: bool
        _dormant: dict[str, StoredSession]
        _due: deque[tuple[Callable[[], Coroutine[Any, Any, Any]], str]]
        _due_running: int
        _live: dict[str, Session]
        _timers: TimerQueue

        def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]: ...
        async def _load_quietly(self, session_id: str) -> None: ...
        async def save(self, session_id: object) -> SavedSession: ...
        async def _terminate_quietly(
            self, session_id: str, reason: str, error: str | None
        ) -> None: ...

    def _schedule(self, session: Session, when: float) -> None:
        if session.timer_at is None or when < session.timer_at:
            session.timer_at = when
            self._timers.schedule(session.session_id, when)

    def _timer_wanted(self, session_id: str, when: float) -> bool:
        session = self._live.get(session_id)
        if session is not None:
            return session.timer_at == when
        return session_id in self._dormant

    def touch(self, session: Session) -> None:
        """After a command: the session's next look is at its idle deadline, unless an earlier
        one is set. An idle session that became active needs this: it may have no timer at all
        (one that never times out has none once idle)."""
        self._schedule(session, session.last_activity + session.state.config.idle_after_seconds)

    def rearm(self, session: Session) -> None:
        """Repair a session whose timer step failed after a commit: the timer looks at it at
        once, and :meth:`_on_due` sets its real deadline from its status and last activity.

        Without this, a session whose timer was not re-armed would never go idle nor time
        out, and would stay in memory until terminated.
        """
        now = self._clock.monotonic()
        session.timer_at = now
        self._timers.schedule(session.session_id, now)

    def _on_due(self, session_id: str, when: float) -> None:
        session = self._live.get(session_id)
        if session is None and session_id in self._dormant:
            # A recovered session: load it; loading schedules its real deadline.
            self._enqueue(lambda: self._load_quietly(session_id), f"jidoka:{session_id}:load")
            return
        if session is None or session.timer_at != when or session.terminating:
            return
        session.timer_at = None
        now = self._clock.monotonic()
        config = session.state.config
        status = session.state.status
        if status is Status.ACTIVE:
            deadline = session.last_activity + config.idle_after_seconds
            if now < deadline:
                self._schedule(session, deadline)
            else:
                if not self._go_idle_now(session):
                    self._enqueue(lambda: self._go_idle(session), f"jidoka:{session_id}:idle")
        elif status is Status.IDLE and config.timeout_minutes > 0:
            deadline = session.idle_since + config.timeout_minutes * 60
            if now < deadline:
                self._schedule(session, deadline)
            else:
                self._enqueue(lambda: self._time_out(session), f"jidoka:{session_id}:timeout")

    async def _time_out(self, session: Session) -> None:
        """Save the session first (when persistence is on), then terminate it: ``timeout``."""
        sid = session.session_id
        if session.state.config.persistence_enabled:
            try:
                await self.save(sid)
            except (SessionTerminated, SessionNotFound, InvalidTransition, RuntimeClosed):
                return
            except StoreError:
                logger.exception("session %s: not saved; its time-out is postponed", sid)
                self._schedule(session, self._clock.monotonic() + 60.0)
                return
        from .manager import REASON_TIMEOUT

        await self._terminate_quietly(sid, REASON_TIMEOUT, None)

    def _go_idle_now(self, session: Session) -> bool:
        """The idle transition done on the spot, when it needs no waiting: the store and bus
        never wait and nobody holds the session's lock. Sessions created together go idle
        together; doing it here costs them no task each (and no memory spike)."""
        if not session.can_commit_nowait():
            return False
        session.idle_since = self._clock.monotonic()
        session.transition_nowait(Status.IDLE)
        self._schedule_timeout(session)
        return True

    async def _go_idle(self, session: Session) -> None:
        async with session.lock:
            if session.terminating or session.state.status is not Status.ACTIVE:
                return
            config = session.state.config
            deadline = session.last_activity + config.idle_after_seconds
            now = self._clock.monotonic()
            if now < deadline:  # activity while we waited for the lock
                self._schedule(session, deadline)
                return
            session.idle_since = now  # the time-out counts from the decision, not the commit
            await session.transition(Status.IDLE)
            self._schedule_timeout(session)

    def _schedule_timeout(self, session: Session) -> None:
        timeout = session.state.config.timeout_minutes
        if timeout > 0:
            self._schedule(session, session.idle_since + timeout * 60)

    # Timer-driven work that must wait (a durable commit, a load, a time-out) runs as tasks,
    # at most this many at once: 100k sessions coming due together queue up instead of
    # becoming 100k tasks.
    MAX_DUE_TASKS: Final = 64

    def _enqueue(self, make: Callable[[], Coroutine[Any, Any, Any]], name: str) -> None:
        self._due.append((make, name))
        self._pump()

    def _pump(self) -> None:
        while self._due and self._due_running < self.MAX_DUE_TASKS and not self._closed:
            make, name = self._due.popleft()
            self._due_running += 1
            self._spawn(self._bounded(make), name)

    async def _bounded(self, make: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        try:
            await make()
        finally:
            self._due_running -= 1
            self._pump()
