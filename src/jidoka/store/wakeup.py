"""Waking an event loop from a store's worker thread, as cheaply as the platform allows.

A durable store commits in a thread of its own and must then wake the callers' event loop: every
awaited append pays that hop, so it is on the hot path. ``loop.call_soon_threadsafe`` works
everywhere, but on asyncio's default loop it makes a ``Handle`` and writes to the loop's
self-pipe socket for every call. Where Linux's ``eventfd`` and the loop's ``add_reader`` are both
available, :class:`Wakers` gives each loop an eventfd of its own: the thread queues the call and
bumps the counter, and the loop runs every queued call when the fd turns readable. On this
project's 2-core VM that took an awaited round trip to a thread that does nothing from about
45 µs to 33 µs (``docs/performance.md``, *Hot path*); elsewhere it falls back to
``call_soon_threadsafe``, unchanged.

Thread-safety rests on two facts: ``collections.deque`` appends and pops are atomic, and the
counter is bumped *after* the call is queued, so a drain either sees the call or is followed by
another wake-up that does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from collections.abc import Callable
from typing import Any, Final, Protocol

__all__ = ["Waker", "Wakers"]

#: Whether this platform has ``eventfd`` (Linux).
_HAS_EVENTFD: Final = hasattr(os, "eventfd")


class Waker(Protocol):
    """Runs ``callback(argument)`` on one event loop; :meth:`post` may be called from any
    thread, never blocks, and is a no-op once that loop is closed."""

    def post(self, callback: Callable[[Any], object], argument: Any) -> None: ...


class _ThreadsafeWaker:
    """The portable one: ``loop.call_soon_threadsafe``."""

    __slots__ = ("_loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def post(self, callback: Callable[[Any], object], argument: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(callback, argument)

    def close(self) -> None:
        pass


class _EventfdWaker:
    """An eventfd the loop watches, and the calls queued for it."""

    __slots__ = ("_fd", "_loop", "_queued")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queued: collections.deque[tuple[Callable[[Any], object], Any]] = collections.deque()
        self._fd: int | None = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            loop.add_reader(self._fd, self._drain)
        except BaseException:
            os.close(self._fd)
            raise

    def post(self, callback: Callable[[Any], object], argument: Any) -> None:
        self._queued.append((callback, argument))
        fd = self._fd
        if fd is not None:
            with contextlib.suppress(OSError):  # closed meanwhile: the store is shutting down
                os.eventfd_write(fd, 1)

    def _drain(self) -> None:
        fd = self._fd
        if fd is not None:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(fd)
        queued = self._queued
        while queued:
            callback, argument = queued.popleft()
            callback(argument)

    def close(self) -> None:
        """Stop watching the fd and close it; calls still queued run first (on this loop)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.remove_reader(fd)
            self._drain()
        os.close(fd)


class Wakers:
    """One :class:`Waker` per event loop that uses a store (a test may run several loops over
    its life). Ask on the loop's own thread; close once the worker thread has stopped."""

    def __init__(self) -> None:
        self._by_loop: dict[asyncio.AbstractEventLoop, _EventfdWaker | _ThreadsafeWaker] = {}

    def for_loop(self, loop: asyncio.AbstractEventLoop) -> Waker:
        waker = self._by_loop.get(loop)
        if waker is None:
            waker = _ThreadsafeWaker(loop)
            if _HAS_EVENTFD:
                # A loop without add_reader (Windows' proactor) keeps the portable one.
                with contextlib.suppress(NotImplementedError, OSError):
                    waker = _EventfdWaker(loop)
            self._by_loop[loop] = waker
        return waker

    def close(self) -> None:
        """Close every waker: the running loop's at once, another loop's on that loop (or at
        once if it is closed)."""
        wakers, self._by_loop = self._by_loop, {}
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for loop, waker in wakers.items():
            if loop is running or loop.is_closed():
                waker.close()
            else:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(waker.close)
