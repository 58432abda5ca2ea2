"""One timer structure for every session's idle and time-out deadlines.

A binary heap of ``(when, session_id)`` and a single task that sleeps until the earliest entry
(on the injected :class:`~jidoka.clock.Clock`). Sessions hold no task and no timer handle of
their own: what keeps 100k idle sessions cheap.

Entries are never removed or moved. Activity on a session only records its time; when the
session's entry comes due, the owner looks at the session and either acts or schedules the real
deadline. Each session therefore has at most one *live* entry; an entry superseded by an earlier
one (the owner keeps ``when`` per session and ignores mismatches) is skipped when it pops.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable

from ..clock import Clock
from ..errors import RuntimeClosed

__all__ = ["TimerQueue"]

logger = logging.getLogger("jidoka.timers")


class TimerQueue:
    """Calls ``on_due(key, when)`` (synchronously, on the loop) once ``when`` has passed."""

    def __init__(self, clock: Clock, on_due: Callable[[str, float], None]) -> None:
        self._clock = clock
        self._on_due = on_due
        self._heap: list[tuple[float, str]] = []
        self._wake = asyncio.Event()
        self._sleeping_until = float("inf")
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._heap)

    def start(self) -> None:
        if self._closed:
            raise RuntimeClosed("the timer queue is closed")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="jidoka:timers")

    def schedule(self, key: str, when: float) -> None:
        heapq.heappush(self._heap, (when, key))
        if when < self._sleeping_until:
            self._wake.set()

    def compact(self, keep: Callable[[str, float], bool]) -> int:
        """Drop the entries ``keep`` rejects (e.g. of sessions that have ended); returns how
        many went. Without this, every ended session's entry would stay until it came due."""
        before = len(self._heap)
        self._heap[:] = [entry for entry in self._heap if keep(entry[1], entry[0])]
        heapq.heapify(self._heap)
        self._wake.set()  # the entry being slept on may be gone
        return before - len(self._heap)

    async def _run(self) -> None:
        heap = self._heap
        while True:
            now = self._clock.monotonic()
            while heap and heap[0][0] <= now:
                when, key = heapq.heappop(heap)
                try:
                    self._on_due(key, when)
                except Exception:  # one session's bug must not stop every session's timers
                    logger.exception("timer callback failed for %s", key, extra={"session_id": key})
            self._wake.clear()
            if heap:
                self._sleeping_until = heap[0][0]
                await self._sleep(self._sleeping_until)
            else:
                self._sleeping_until = float("inf")
                await self._wake.wait()

    async def _sleep(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        sleeper = loop.create_task(self._clock.sleep_until(until))
        waker = loop.create_task(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()
            await asyncio.wait({sleeper, waker})  # let them finish: no stray tasks

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            current = asyncio.current_task()
            cancelling = current.cancelling() if current is not None else 0
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                # Re-raise only a cancellation of *our* caller that arrived meanwhile.
                if current is not None and current.cancelling() > cancelling:
                    raise
        self._heap.clear()
