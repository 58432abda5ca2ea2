"""A small FIFO lock, cheap enough to give every session one.

``asyncio.Lock`` would do, but it carries an instance ``__dict__`` (a few hundred bytes); with
100k sessions in one process that adds up, and only the first waiter ever needs a queue.
Ownership passes to waiters in arrival order, which is what keeps one session's commands in
the order they were sent.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["FifoLock"]


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
