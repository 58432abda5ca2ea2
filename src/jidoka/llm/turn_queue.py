"""A session's queue of turns, and what a new turn does to the one under way.

The part of the agent (:class:`~.orchestrator.Agent`, which subclasses it) that clients touch
synchronously: accepting a turn under the session's policy (``reject``, ``queue``/``enqueue``,
``interrupt``), taking a queued run's turn back out (``cancel_run``), stopping the running one.
Everything here runs without a suspension point between a check and what it decides, so two
callers can never both find the session free.
"""

from __future__ import annotations

import asyncio
from collections import deque

from ..errors import LimitExceeded, SessionBusy, SessionTerminated
from ..events import Event
from .turns import Turn, TurnQueueLimit

__all__ = ["TurnQueue"]


class TurnQueue:
    """The queue and the turn under way (see the module's docstring)."""

    def __init__(self, session_id: str, queue_limit: TurnQueueLimit | None) -> None:
        self.session_id = session_id
        self._queue_limit = queue_limit
        self._queue: deque[Turn] = deque()
        self._wakeup: asyncio.Event = asyncio.Event()
        self._current: Turn | None = None
        #: A compaction asked for by a client, while it runs (turns wait for it).
        self._compacting: asyncio.Task[Event] | None = None
        self.closed = False

    @property
    def busy(self) -> bool:
        current = self._current
        return (
            (current is not None and not current.finishing)
            or bool(self._queue)
            or self._compacting is not None
        )

    def submit(
        self,
        text: str,
        policy: str,
        max_queued: int,
        *,
        run_id: str | None = None,
        webhook: bool = False,
    ) -> Turn:
        """Queue a turn under ``policy``; its future resolves with its result. A run's turn
        (``run_id``) waits in the queue until it is admitted (:class:`~.turns.Turn`).

        At most ``max_queued`` turns of this session (and the runtime's ``TurnQueueLimit`` of
        all sessions) wait to run; one more is refused with ``LimitExceeded`` before anything
        of it is kept or logged. Checked before ``interrupt`` cancels anything, so a refused
        turn changes nothing.
        """
        if self.closed:
            raise SessionTerminated(self.session_id)
        if self.busy and policy == "reject":
            raise SessionBusy(self.session_id)
        if len(self._queue) >= max_queued:
            raise LimitExceeded(
                "max_queued_turns",
                max_queued,
                session_id=self.session_id,
                actual=len(self._queue) + 1,
            )
        if self._queue_limit is not None:
            self._queue_limit.acquire(self.session_id)
        if self.busy and policy == "interrupt":
            self.cancel(stopped_as="interrupted", reason="multitask")
        turn = Turn(text, asyncio.get_running_loop(), run_id, webhook=webhook)
        self._queue.append(turn)
        self._wakeup.set()
        return turn

    def withdraw(self, turn: Turn, error: BaseException) -> None:
        """A run's turn whose ``run_queued`` could not be committed: it never happened."""
        if turn in self._queue:
            self._queue.remove(turn)
            if self._queue_limit is not None:
                self._queue_limit.release()
        for future in (turn.admitted, turn.future):
            if future is not None and not future.done():
                future.set_exception(error)
                future.exception()

    def drop(self, run_id: str) -> Turn | None:
        """Take a run's turn out of the queue before it started (``cancel_run``); its caller
        gets :class:`~jidoka.SessionBusy`. ``None`` if no queued turn has that run."""
        for turn in self._queue:
            if turn.run_id == run_id:
                self._queue.remove(turn)
                if self._queue_limit is not None:
                    self._queue_limit.release()
                if not turn.future.done():
                    turn.future.set_exception(SessionBusy(self.session_id))
                    turn.future.exception()
                return turn
        return None

    def has_run(self, run_id: str) -> bool:
        """Whether this run's turn is queued or under way here."""
        return self.running(run_id) or any(turn.run_id == run_id for turn in self._queue)

    def running(self, run_id: str) -> bool:
        """Whether the turn under way is this run's."""
        return self._current is not None and self._current.run_id == run_id

    @property
    def queued(self) -> int:
        """Turns waiting to run (not counting the one running)."""
        return len(self._queue)

    def _next_turn(self) -> Turn:
        turn = self._queue.popleft()
        if self._queue_limit is not None:
            self._queue_limit.release()
        return turn

    async def wait_idle(self, policy: str) -> None:
        """Apply ``policy`` for a plain user message arriving while a turn runs."""
        if not self.busy:
            return
        if policy == "reject":
            raise SessionBusy(self.session_id)
        if policy == "interrupt":
            self.cancel()
        while self.busy:
            current = self._current.future if self._current else self._compacting
            await asyncio.wait({current or self._queue[-1].future})

    def cancel(self, *, stopped_as: str = "cancelled", reason: str | None = None) -> bool:
        """Stop the running turn (its partial answer is kept); ``False`` if none runs. Its run
        ends ``stopped_as`` (``cancelled``, or ``interrupted`` by another run)."""
        turn = self._current
        if turn is None or turn.task is None or turn.task.done() or turn.finishing:
            return False
        turn.user_cancelled = True
        turn.stopped_as, turn.stop_reason = stopped_as, reason
        turn.task.cancel()
        return True
