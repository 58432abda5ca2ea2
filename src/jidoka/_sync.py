"""A small FIFO lock, cheap enough to give every session one.

``asyncio.Lock`` would do, but it carries an instance ``__dict__`` (a few hundred bytes); with
100k sessions in one process that adds up, and only the first waiter ever needs a queue.
Ownership passes to waiters in arrival order, which is what keeps one session's commands in
the order they were sent.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["CommitLock", "FifoLock"]


class FifoLock:
    __slots__ = ("_locked", "_waiters")

    def __init__(self) -> None:
        self._locked = False
        self._waiters: deque[asyncio.Future[None]] | None = None

    def locked(self) -> bool:
        return self._locked

    async def acquire(self) -> None:
        if not self._locked and not self._waiters:
            self._locked = True
            return
        if self._waiters is None:
            self._waiters = deque()
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # it was handed to us just as we were cancelled: pass it on
            raise
        finally:
            if self._waiters is not None and not self._waiters:
                self._waiters = None

    def release(self) -> None:
        waiters = self._waiters
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(None)  # ownership moves to the next waiter
                return
        self._locked = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


class CommitLock(FifoLock):
    """A session's lock, aware of the session's commits still in flight.

    ``async with lock`` (:meth:`acquire`) is exclusive: it returns once the lock is held *and*
    no commit is in flight, so the holder sees every earlier command applied to the
    projection — what a command that validates against it needs. :meth:`acquire_to_append`
    returns once the lock is held, commits may still be in flight: for an append whose checks
    do not read what those commits change (a message to an active session), which can then be
    queued right behind them and share their transaction (see ``SessionCore.queue_command``).

    The session counts its commits with :meth:`begin` and :meth:`end`; a waiter for them
    shares one future, made only when someone waits.
    """

    __slots__ = ("_doubt", "_drained", "_pending")

    def __init__(self) -> None:
        super().__init__()
        self._pending = 0
        self._drained: asyncio.Future[None] | None = None
        # Why the commits in flight may not settle soon (see doubt), or None.
        self._doubt: BaseException | None = None

    @property
    def pending(self) -> int:
        """Commits handed to the store and not settled yet."""
        return self._pending

    def begin(self) -> None:
        self._pending += 1

    def end(self) -> None:
        self._pending -= 1
        if not self._pending:
            self._doubt = None
            if self._drained is not None:
                drained, self._drained = self._drained, None
                if not drained.done():
                    drained.set_result(None)

    def doubt(self, error: BaseException) -> None:
        """A commit in flight has an outcome nobody knows yet (the store lost its connection
        mid-commit and cannot reach its server to find out): until it settles, whoever needs
        the commits settled fails at once with ``error`` instead of waiting for the outage to
        end, so that every call is answered in bounded time."""
        if not self._pending:
            return
        self._doubt = error
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_exception(error)

    async def settled(self) -> None:
        """Wait until no commit is in flight (each settled and, if committed, applied); raise
        the :meth:`doubt` if one was cast on them."""
        while self._pending:
            if self._doubt is not None:
                raise self._doubt
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            # Shielded: one waiter's cancellation must not cancel the future others share.
            await asyncio.shield(self._drained)

    async def acquire(self) -> None:
        if self._locked or self._waiters:
            await FifoLock.acquire(self)
        else:
            self._locked = True
        if self._pending:
            try:
                await self.settled()
            except BaseException:
                self.release()
                raise

    async def __aenter__(self) -> None:
        await self.acquire()

    def try_acquire_to_append(self) -> bool:
        """Take the lock if it is free and nobody waits (commits may still be in flight):
        the uncontended case of :meth:`acquire_to_append`, without a coroutine."""
        if self._locked or self._waiters:
            return False
        self._locked = True
        return True

    async def acquire_to_append(self) -> None:
        """Hold the lock; commits may still be in flight."""
        if not self.try_acquire_to_append():
            await FifoLock.acquire(self)
