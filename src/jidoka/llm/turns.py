"""A turn as the queue holds it, what it returns, and the runtime-wide cap on waiting turns.

A chat becomes a :class:`Turn` that waits in its session's queue until the agent's worker runs
it, and resolves with a :class:`ChatResult`. A waiting turn holds its text, and a client that
does not wait for answers (HTTP 202, WebSocket) could queue them without end, so each session
caps its own queue and :class:`TurnQueueLimit` caps all of them together. These are plain
values with no I/O, apart from the agent in :mod:`.orchestrator` (which re-exports
``ChatResult`` and ``TurnQueueLimit``) so that the many modules that only name a turn's result
need not read the turn loop.
"""

from __future__ import annotations

import asyncio

import msgspec

from ..errors import LimitExceeded
from ..session.info import TokenUsage
from ..session.state import Message

__all__ = ["ChatResult", "Turn", "TurnQueueLimit"]


class ChatResult(msgspec.Struct, frozen=True, kw_only=True):
    """What ``chat`` returns: the assistant's message (with its seq), this turn's token usage,
    whether the turn was interrupted (then ``message`` holds the partial answer), how many model
    calls it took, and why the model stopped."""

    message: Message
    usage: TokenUsage
    interrupted: bool = False
    iterations: int = 0
    finish_reason: str | None = None


class Turn:
    """One chat waiting in (or taken from) a session's queue: its text, the future its caller
    waits on, the task that runs it, and whether a user's cancel (not a shutdown) stopped it.

    A run's turn (every turn the runtime queues is one) also has its ``run_id``, whether a
    webhook waits for its end, and ``admitted``: it holds its place in the queue (so the
    session is busy from the moment it was accepted) but does not start before its
    ``run_queued`` event is committed, which resolves ``admitted``. ``stopped_as`` is what a
    stop makes of the run: ``cancelled`` (a user's cancel) or ``interrupted`` (another run's
    ``multitask: interrupt``), with ``stop_reason``."""

    __slots__ = (
        "admitted",
        "ended",
        "finishing",
        "future",
        "run_id",
        "stop_reason",
        "stopped_as",
        "task",
        "text",
        "user_cancelled",
        "webhook",
    )

    def __init__(
        self,
        text: str,
        loop: asyncio.AbstractEventLoop,
        run_id: str | None = None,
        *,
        webhook: bool = False,
    ) -> None:
        self.text = text
        self.future: asyncio.Future[ChatResult] = loop.create_future()
        self.task: asyncio.Task[ChatResult] | None = None
        self.user_cancelled = False
        self.run_id = run_id
        self.webhook = webhook
        self.admitted: asyncio.Future[None] | None = (
            None if run_id is None else loop.create_future()
        )
        #: Its run's ``run_completed`` is committed (the worker says so once it is free).
        self.ended = False
        #: Its turn is over and its ``run_completed`` is being committed: the session no longer
        #: counts as busy with it, and nothing may cancel it any more.
        self.finishing = False
        self.stopped_as = "cancelled"
        self.stop_reason: str | None = None


class TurnQueueLimit:
    """How many turns may wait to run across all the runtime's sessions (each session also caps
    its own queue): a waiting turn holds its text, and a client that does not wait for answers
    (HTTP 202, WebSocket) could otherwise queue them without end. One per runtime, shared by
    its agents."""

    __slots__ = ("limit", "queued")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the turn queue limit must be at least 1")
        self.limit = limit
        self.queued = 0

    def acquire(self, session_id: str) -> None:
        if self.queued >= self.limit:
            raise LimitExceeded(
                "max_queued_turns_total", self.limit, session_id=session_id, actual=self.queued + 1
            )
        self.queued += 1

    def release(self, count: int = 1) -> None:
        self.queued -= count
        assert self.queued >= 0, "a queued turn was released twice"
