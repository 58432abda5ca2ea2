"""One append on its way through the Postgres writer, and the appends of one session that travel
together in a group (:mod:`.postgres_writer`).

An append is settled exactly once (``on_done``, then its caller), in its session's order: the
session applies committed events in the order it handed them over. Its caller may be answered
earlier than ``on_done`` (:meth:`PgAppend.answer`) when the store knows something the caller
must hear in bounded time, such as an outcome nobody knows yet.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from .base import CommitOutcomeUnknown, OnCommitted
from .heads import BatchHead

__all__ = ["Chain", "PgAppend"]

logger = logging.getLogger("jidoka.store.postgres")


class PgAppend:
    """One append: validated rows, and whom to tell once its outcome is known."""

    __slots__ = (
        "created",
        "data",
        "first",
        "future",
        "last",
        "on_done",
        "owner",
        "resent",
        "session_id",
        "settled",
        "status",
        "status_at",
        "times",
        "told",
        "types",
    )

    def __init__(
        self,
        session_id: str,
        first: int,
        types: list[str],
        times: list[datetime],
        data: list[bytes],
        head: BatchHead,
        on_done: OnCommitted | None,
        future: asyncio.Future[None],
    ) -> None:
        self.session_id = session_id
        self.first = first
        self.last = first + len(types) - 1
        self.types = types
        self.times = times
        self.data = data
        self.status = head.status
        #: The time of the last event that changed the status (the head's ``updated_at``).
        self.status_at = head.status_at
        self.created = head.created
        self.owner = head.owner
        self.on_done = on_done
        self.future = future
        self.resent = False
        self.settled = False
        #: The caller was answered before ``on_done`` (see :meth:`answer`).
        self.told = False

    def answer(self, error: BaseException) -> None:
        """Answer the caller now; ``on_done`` is told later, in this session's order (a
        session's appends are settled in the order they were taken, which its projection
        relies on)."""
        self.told = True
        if not self.future.done():
            self.future.set_exception(error)

    def answer_unknown(self) -> None:
        """Tell the caller now that the outcome is not known (``on_done`` waits for it)."""
        if self.told:
            return
        self.answer(
            CommitOutcomeUnknown(
                f"session {self.session_id!r}: the connection to the store broke while "
                f"this append (seq {self.first}) was being committed, and the store cannot "
                "be reached to find out whether it was stored; once it can, the session "
                "applies the append if it was (never twice)",
                session_id=self.session_id,
            )
        )

    def settle(self, error: BaseException | None) -> None:
        """Tell ``on_done`` and the caller, once (a second call is ignored: ``on_done`` is
        called exactly once, whatever path a bug's clean-up takes)."""
        if self.settled:
            return
        self.settled = True
        if self.on_done is not None:
            try:
                self.on_done(error)
            except Exception:
                logger.exception("a commit callback failed")
        if self.future.done():
            return  # a cancelled caller: the append is settled all the same
        if error is None:
            self.future.set_result(None)
        else:
            self.future.set_exception(error)


class Chain:
    """The appends of one session in one group, consecutive: they commit (or not) together."""

    __slots__ = ("appends", "fence", "first", "last", "session_id")

    def __init__(self, first: PgAppend, fence: int) -> None:
        self.session_id = first.session_id
        self.appends = [first]
        self.first = first.first
        self.last = first.last
        self.fence = fence  # 0: adopt whatever the head holds (see PostgresStore.held_fence)
