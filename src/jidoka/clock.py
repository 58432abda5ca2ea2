"""Clocks, passed in rather than read from ``time`` directly, so timed behaviour is testable.

Everything in Jidoka that waits for time to pass (idle detection, time-outs, restart intensity,
shutdown grace periods) asks a :class:`Clock`. :class:`SystemClock` is the real one;
:class:`FakeClock` only moves when told to, so tests (ours, and those of code built on Jidoka)
advance time by an hour in a microsecond and never sleep.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """What Jidoka needs to know about time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences mean anything."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the Unix epoch (for timestamps)."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once :meth:`monotonic` has reached ``deadline`` (at once if it has)."""
        ...


class SystemClock:
    """The machine's clocks: ``time.monotonic`` (the event loop's clock) and ``time.time``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def __repr__(self) -> str:
        return "SystemClock()"


class FakeClock:
    """A clock that moves only when :meth:`advance` is called.

    Sleepers whose deadline has been reached are woken by :meth:`advance`; they then run at the
    event loop's next turns, so a test advances the clock and then awaits the *event* it expects
    (an ``idle`` status, say), never a sleep.
    """

    def __init__(self, *, monotonic: float = 0.0, wall: float = 1_767_225_600.0) -> None:
        self._monotonic = monotonic
        self._wall_offset = wall - monotonic
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._counter = itertools.count()

    def monotonic(self) -> float:
        return self._monotonic

    def time(self) -> float:
        return self._monotonic + self._wall_offset

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._monotonic:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._counter), future))
        await future

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake every sleeper that is now due."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back (advance by {seconds})")
        self._monotonic += seconds
        while self._sleepers and self._sleepers[0][0] <= self._monotonic:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    @property
    def sleepers(self) -> int:
        """How many sleepers are waiting (cancelled ones included until they would be due)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def __repr__(self) -> str:
        return f"FakeClock(monotonic={self._monotonic})"
