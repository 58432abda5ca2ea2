"""One session's workers, supervised one-for-one with restart intensity.

A *worker* is a named coroutine function that runs for the session in the background (the LLM
orchestrator, or anything an extension or a test starts). Each run is its own task, watched by a
done-callback rather than wrapped in a loop, so cancellation is never swallowed:

- a worker that returns normally is finished and not restarted;
- a worker that raises, or is cancelled by anyone but its supervisor, has crashed: it is restarted
  at once, alone (one-for-one), and an ``on_crash`` callback reports it;
- more than ``max_restarts`` restarts within ``max_restart_seconds`` (OTP's restart intensity):
  the supervisor gives up and calls ``on_give_up``, and the manager terminates the session with
  ``error`` set. Nothing outside the session is touched.

No asyncio ``TaskGroup`` is used: in a task group one failing child cancels its siblings, which is
exactly the fate-sharing a session must not have. A session that never starts a worker never
creates a supervisor, so idle sessions cost no task.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple

from ..clock import Clock
from ..errors import InvalidArgument, SessionTerminated

__all__ = ["Supervisor", "WorkerCrash", "WorkerFactory"]

logger = logging.getLogger("jidoka.supervisor")

#: A coroutine function with no arguments; it is called again for every restart.
WorkerFactory = Callable[[], Coroutine[Any, Any, None]]


class WorkerCrash(NamedTuple):
    """What the supervisor reports about one crash."""

    session_id: str
    worker: str
    error: BaseException
    restarts: int  # restarts within the current window, this one included
    gave_up: bool


class Supervisor:
    """Supervises the workers of one session."""

    __slots__ = (
        "_clock",
        "_closing",
        "_factories",
        "_on_crash",
        "_restart_times",
        "_tasks",
        "max_restart_seconds",
        "max_restarts",
        "session_id",
    )

    def __init__(
        self,
        session_id: str,
        *,
        max_restarts: int,
        max_restart_seconds: float,
        clock: Clock,
        on_crash: Callable[[WorkerCrash], None],
    ) -> None:
        self.session_id = session_id
        self.max_restarts = max_restarts
        self.max_restart_seconds = max_restart_seconds
        self._clock = clock
        self._on_crash = on_crash
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._factories: dict[str, WorkerFactory] = {}
        self._restart_times: deque[float] = deque()
        self._closing = False

    def start(self, name: str, factory: WorkerFactory) -> asyncio.Task[None]:
        """Start a worker called ``name`` (unique among this session's running workers)."""
        if self._closing:
            raise SessionTerminated(self.session_id)
        if not isinstance(name, str) or not name:
            raise InvalidArgument(
                "worker name must be a non-empty string",
                argument="name",
                session_id=self.session_id,
            )
        if name in self._tasks:
            raise InvalidArgument(
                f"a worker named {name!r} is already running",
                argument="name",
                session_id=self.session_id,
            )
        self._factories[name] = factory
        return self._spawn(name)

    def _spawn(self, name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(
            self._factories[name](), name=f"jidoka:{self.session_id}:{name}"
        )
        self._tasks[name] = task
        task.add_done_callback(lambda t: self._on_done(name, t))
        return task

    def _on_done(self, name: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(name) is task:
            del self._tasks[name]
        error: BaseException | None
        if task.cancelled():
            error = None if self._closing else asyncio.CancelledError("worker was cancelled")
        else:
            error = task.exception()  # also marks it retrieved
        if error is None or self._closing:
            self._factories.pop(name, None)
            return
        now = self._clock.monotonic()
        window = self._restart_times
        while window and window[0] <= now - self.max_restart_seconds:
            window.popleft()
        gave_up = len(window) >= self.max_restarts
        if not gave_up:
            window.append(now)
        logger.warning(
            "session %s: worker %r crashed (%r)%s",
            self.session_id,
            name,
            error,
            "; restart intensity exceeded" if gave_up else "; restarting",
            extra={"session_id": self.session_id, "worker": name},
        )
        crash = WorkerCrash(self.session_id, name, error, len(window), gave_up)
        if gave_up:
            self._closing = True
            self._factories.pop(name, None)
        else:
            self._spawn(name)
        self._on_crash(crash)

    @property
    def workers(self) -> frozenset[str]:
        """Names of the running workers."""
        return frozenset(self._tasks)

    def tasks(self) -> list[asyncio.Task[None]]:
        return list(self._tasks.values())

    async def aclose(self, grace: float) -> list[asyncio.Task[None]]:
        """Cancel every worker and wait for them, at most ``grace`` seconds on the clock.

        Returns the tasks that ignored cancellation and were abandoned (they are logged); the
        caller keeps a reference so they are not garbage-collected while still running.
        """
        self._closing = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks.values() if t is not current]
        for task in tasks:
            task.cancel()
        remaining = {t for t in tasks if not t.done()}
        if remaining:
            deadline = self._clock.monotonic() + grace
            sleeper = asyncio.get_running_loop().create_task(self._clock.sleep_until(deadline))
            try:
                while remaining:
                    done, _ = await asyncio.wait(
                        {*remaining, sleeper}, return_when=asyncio.FIRST_COMPLETED
                    )
                    remaining -= done
                    if sleeper in done:
                        break
            finally:
                sleeper.cancel()
                await asyncio.wait({sleeper})
        for task in remaining:
            logger.error(
                "session %s: worker task %s ignored cancellation for %.3gs and was abandoned",
                self.session_id,
                task.get_name(),
                grace,
                extra={"session_id": self.session_id},
            )
        self._tasks.clear()
        self._factories.clear()
        return sorted(remaining, key=lambda t: t.get_name())
