"""A pass the runtime runs in the background now and then (the sweeps): when it runs, and
that it never overlaps itself or outlives the manager.

Each pass is scheduled on the runtime's clock (a :class:`~jidoka.FakeClock` in tests), runs as
one background task, and schedules the next when it ends, so a slow pass delays the next rather
than piling up behind it. A pass that fails because the store is unreachable (or the runtime is
closing) is logged and the next one tries again; anything else is a bug the task reports.
"""

from __future__ import annotations

import logging
from typing import Final

from ..clock import Clock
from ..errors import RuntimeClosed, StoreError
from .background import BackgroundTasks
from .timers import TimerQueue

__all__ = ["PeriodicPass"]

logger = logging.getLogger("jidoka.manager")

_KEY: Final = "pass"


class PeriodicPass:
    """Runs :meth:`sweep` ``first_delay`` after the start, then every ``interval`` seconds
    after the previous pass ended; a subclass says whether it is ``enabled``."""

    #: What the log calls a failed pass (a subclass names itself).
    WHAT = "a periodic pass"

    enabled: bool

    def __init__(
        self, clock: Clock, tasks: BackgroundTasks, *, name: str, first_delay: float,
        interval: float,
    ) -> None:  # fmt: skip
        self._clock = clock
        self._tasks = tasks
        self._name = name
        self._first_delay = first_delay
        self._interval = interval
        self._timers = TimerQueue(clock, self._on_due)
        self._running = False
        self._closed = False

    def start(self, started_at: float) -> None:
        """Schedule the first pass ``first_delay`` after ``started_at`` (monotonic)."""
        if self.enabled and not self._closed:
            self._timers.schedule(_KEY, started_at + self._first_delay)
            self._timers.start()

    async def aclose(self) -> None:
        self._closed = True
        await self._timers.aclose()

    async def sweep(self) -> object:
        """One pass (a subclass's; what it returns is for its own callers)."""
        raise NotImplementedError

    def _on_due(self, key: str, when: float) -> None:
        if self._running or self._closed:
            return
        self._running = True
        self._tasks.spawn(self._pass(), self._name)

    async def _pass(self) -> None:
        try:
            await self.sweep()
        except (StoreError, RuntimeClosed) as exc:
            logger.warning("%s failed (tried again later): %s", self.WHAT, exc)
        finally:
            self._running = False
            if not self._closed:
                self._timers.schedule(_KEY, self._clock.monotonic() + self._interval)
