"""The session manager's own tasks: background work, and work that must not stop halfway.

Several parts of the manager start work that nobody awaits (an idle transition, a time-out, a
load, a crash report, a snapshot, a rebuild) or that must run to its end whatever its caller
does (a creation or termination made of several commits). They all go through one
:class:`BackgroundTasks`, so that one set holds strong references to them, a failure nobody
awaits is logged, tests can wait for all of it, and shutdown cancels all of it. It also keeps
the workers that ignored their cancellation past the grace period, so they can be listed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["BackgroundTasks"]

logger = logging.getLogger("jidoka.manager")

_T = TypeVar("_T")


class BackgroundTasks:
    """The tasks one session manager started and tracks (never across two runtimes)."""

    __slots__ = ("abandoned", "running")

    def __init__(self) -> None:
        self.running: set[asyncio.Task[Any]] = set()
        # Worker tasks that ignored cancellation past the grace period and still run.
        self.abandoned: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task nobody awaits; a failure is logged."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.running.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def to_completion(self, work: Coroutine[Any, Any, _T], name: str, *, inline: bool) -> _T:
        """Await ``work`` (several commits and what follows them) so that it runs to its end
        even if the caller is cancelled: stopped halfway, it would leave a session between
        states (created and never live, terminating and never terminated) and its subscribers
        without the events that say so.

        It runs as a task of its own, awaited through a shield; a failure it meets after its
        caller has gone is logged. ``inline`` runs it in the caller's task instead, when
        nothing can cancel it halfway (no suspension point, or a caller nobody cancels but the
        runtime's shutdown) or when the caller's identity matters (a worker ending its own
        session is the one task its supervisor spares).
        """
        if inline:
            return await work
        task = asyncio.get_running_loop().create_task(work, name=name)
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                task.add_done_callback(self._done)  # nobody else will look
            raise

    def abandon(self, tasks: list[asyncio.Task[None]]) -> None:
        """Keep track of workers that outlived their cancellation, until they end."""
        for task in tasks:
            self.abandoned.add(task)
            task.add_done_callback(self.abandoned.discard)

    def owns(self, task: asyncio.Task[Any] | None) -> bool:
        """Whether ``task`` is one of the background tasks (only shutdown cancels those)."""
        return task in self.running

    def all(self) -> list[asyncio.Task[Any]]:
        return [*self.running, *self.abandoned]

    async def wait(self) -> None:
        """Wait until the work started so far has finished, including work it started."""
        while self.running:
            await asyncio.wait(set(self.running))

    async def aclose(self) -> None:
        """Cancel the background work and wait for it to end (abandoned workers are left)."""
        for task in list(self.running):
            task.cancel()
        if self.running:
            await asyncio.wait(self.running)
