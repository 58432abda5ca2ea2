"""The session registry: creates, finds, lists, times out and retires sessions.

Live sessions are in one dict keyed by id; terminated ones leave a bounded, ordered set of
tombstones. Idle detection and time-outs run on one shared :class:`~.timers.TimerQueue`. Worker
crashes come in from each session's :class:`~.supervisor.Supervisor`; a session over its restart
intensity is terminated with ``error`` set, on a task of its own — nothing spans two sessions.

Termination is awaited, never timed: the session's workers are cancelled and awaited (bounded by
the grace period), its subscriptions ended, its cache entries and store log released, and only
then is it replaced by its tombstone.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any, Final

import msgspec

from ..config import Settings
from ..errors import (
    InvalidArgument,
    InvalidTransition,
    LimitExceeded,
    RuntimeClosed,
    SessionNotFound,
    SessionTerminated,
)
from ..events import EventType
from ..ids import IdGenerator
from ..telemetry import SESSION_ID_ATTRIBUTE, Telemetry
from ..tools.sandbox import resolve_project_root
from .context import SessionState, json_size
from .info import SessionInfo, Tombstone
from .session import Session, SessionServices
from .state import SessionConfig, Status, check_transition
from .supervisor import Supervisor, WorkerCrash, WorkerFactory
from .timers import TimerQueue

__all__ = ["SessionManager"]

logger = logging.getLogger("jidoka.manager")

#: Termination reasons the runtime itself uses (clients may give their own).
REASON_REQUESTED: Final = "requested"
REASON_TIMEOUT: Final = "timeout"
REASON_ERROR: Final = "error"


class SessionManager:
    """Owns every session of one runtime."""

    def __init__(self, settings: Settings, services: SessionServices, telemetry: Telemetry) -> None:
        self.settings = settings
        self.services = services
        self.telemetry = telemetry
        self._clock = services.clock
        self._ids = IdGenerator(services.clock)
        self._live: dict[str, Session] = {}
        self._tombstones: OrderedDict[str, Tombstone] = OrderedDict()
        self._creating = 0
        self._timers = TimerQueue(services.clock, self._on_due)
        self._background: set[asyncio.Task[Any]] = set()
        self._abandoned: set[asyncio.Task[None]] = set()
        self._default_config = settings.session_defaults
        self._default_config_dict = self._default_config.to_dict()
        self._started = False
        self._closed = False

    # --- lifecycle of the manager -----------------------------------------------------------------

    def start(self) -> None:
        if self._closed:
            raise RuntimeClosed("the session manager is closed")
        self._timers.start()
        self._started = True

    async def aclose(self) -> None:
        """Stop every live session (no events: a durable store keeps them for the next start),
        then the timers and background tasks. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._timers.aclose()
        for session in list(self._live.values()):
            session.terminating = True
            await self._release(session)
        self._live.clear()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(self._background)

    def check_open(self) -> None:
        if self._closed or not self._started:
            raise RuntimeClosed("the runtime is not running (use `async with Runtime()`)")

    # --- create -----------------------------------------------------------------------------------

    async def create(
        self,
        *,
        metadata: object = None,
        config: object = None,
        llm_config: object = None,
        project_root: object = None,
    ) -> str:
        self.check_open()
        with self.telemetry.span("create_session") as span:
            started = self._clock.monotonic()
            meta = self._json_object(metadata, "metadata", self.settings.max_metadata_bytes)
            llm = self._json_object(llm_config, "llm_config", self.settings.max_llm_config_bytes)
            cfg = SessionConfig.from_dict(config, base=self._default_config)
            self._reserve()
            try:
                root = None
                if project_root is not None:
                    root = await self.services.blocking(resolve_project_root, project_root)
                self.check_open()
                session_id = self._ids.new()
                if span is not None:
                    span.set_attribute(SESSION_ID_ATTRIBUTE, session_id)
                state = SessionState(session_id)
                session = Session(state, self.services)
                created = {
                    "status": Status.INITIALIZING.value,
                    "metadata": meta,
                    "config": (
                        self._default_config_dict if cfg is self._default_config else cfg.to_dict()
                    ),
                    "llm_config": llm,
                    "project_root": root,
                }
                async with session.lock:
                    await session.commit([(EventType.SESSION_CREATED, created)])
                    if state.config == self._default_config:
                        state.config = self._default_config  # share one instance
                    await session.transition(Status.ACTIVE)
                self._live[session_id] = session
            finally:
                self._creating -= 1
            self._schedule(session, session.last_activity + state.config.idle_after_seconds)
            self.telemetry.sessions_created.add(1)
            self.telemetry.create_duration.record(self._clock.monotonic() - started)
            return session_id

    def _reserve(self) -> None:
        limit = self.settings.max_sessions
        if len(self._live) + self._creating >= limit:
            raise LimitExceeded("max_sessions", limit, actual=len(self._live) + self._creating)
        self._creating += 1

    def _json_object(self, value: object, argument: str, limit: int) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise InvalidArgument(
                f"{argument} must be a JSON object, got {type(value).__name__}", argument=argument
            )
        try:
            size = json_size(value)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"{argument} is not JSON: {exc}", argument=argument) from None
        if size > limit:
            raise LimitExceeded(f"max_{argument}_bytes", limit, actual=size)
        copy: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(value))
        return copy

    # --- lookup -----------------------------------------------------------------------------------

    def get(self, session_id: object) -> Session:
        """The live session, or :class:`SessionTerminated` / :class:`SessionNotFound`."""
        self.check_open()
        session = self._live.get(session_id) if isinstance(session_id, str) else None
        if session is not None:
            return session
        sid = session_id if isinstance(session_id, str) else repr(session_id)
        tombstone = self._tombstones.get(sid)
        if tombstone is not None:
            raise SessionTerminated(sid, reason=tombstone.info.reason)
        raise SessionNotFound(sid)

    def info(self, session_id: object) -> SessionInfo:
        self.check_open()
        if isinstance(session_id, str):
            session = self._live.get(session_id)
            if session is not None:
                return SessionInfo.of(session.state)
            tombstone = self._tombstones.get(session_id)
            if tombstone is not None:
                return tombstone.info
        raise SessionNotFound(session_id if isinstance(session_id, str) else repr(session_id))

    def list_sessions(
        self, status: object = None, *, limit: int | None = None, after: str | None = None
    ) -> list[SessionInfo]:
        """Sessions in id (= creation) order, live and remembered, optionally by status.

        ``after`` (an id) and ``limit`` page through them.
        """
        self.check_open()
        wanted: Status | None = None
        if status is not None:
            try:
                wanted = Status(status) if isinstance(status, str) else Status(repr(status))
            except ValueError:
                raise InvalidArgument(
                    f"unknown status {status!r}; expected one of {[s.value for s in Status]}",
                    argument="status",
                ) from None
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise InvalidArgument(
                f"limit must be a positive integer, got {limit!r}", argument="limit"
            )
        if after is not None and not isinstance(after, str):
            raise InvalidArgument("after must be a session id", argument="after")
        ids: list[str] = []
        if wanted is not Status.TERMINATED:
            ids.extend(
                sid
                for sid, session in self._live.items()
                if wanted is None or session.state.status is wanted
            )
        if wanted is None or wanted is Status.TERMINATED:
            ids.extend(self._tombstones)
        ids.sort()
        if after is not None:
            ids = ids[bisect.bisect_right(ids, after) :]
        if limit is not None:
            ids = ids[:limit]
        return [self.info(sid) for sid in ids]

    def live_count(self) -> int:
        return len(self._live)

    def live_ids(self) -> frozenset[str]:
        return frozenset(self._live)

    def tombstone_ids(self) -> frozenset[str]:
        return frozenset(self._tombstones)

    def tasks(self) -> list[asyncio.Task[Any]]:
        """Every task the manager owns or tracks (workers, terminations, abandoned ones)."""
        out: list[asyncio.Task[Any]] = [*self._background, *self._abandoned]
        for session in self._live.values():
            if session.supervisor is not None:
                out.extend(session.supervisor.tasks())
        return out

    # --- workers ----------------------------------------------------------------------------------

    def start_worker(
        self, session_id: object, name: str, factory: WorkerFactory
    ) -> asyncio.Task[None]:
        """Run ``factory()`` as a supervised worker of the session (restarted if it crashes)."""
        session = self.get(session_id)
        session.ensure_writable()
        if not callable(factory):
            raise InvalidArgument("factory must be a coroutine function", argument="factory")
        if session.supervisor is None:
            config = session.state.config
            session.supervisor = Supervisor(
                session.session_id,
                max_restarts=config.max_restarts,
                max_restart_seconds=config.max_restart_seconds,
                clock=self._clock,
                on_crash=self._on_crash,
            )
        return session.supervisor.start(name, factory)

    def _on_crash(self, crash: WorkerCrash) -> None:
        self.telemetry.workers_restarted.add(0 if crash.gave_up else 1)
        session = self._live.get(crash.session_id)
        if session is None or session.terminating:
            return
        message = f"worker {crash.worker!r} crashed: {crash.error!r}"
        data = {"worker": crash.worker, "message": message, "restarts": crash.restarts}
        self._spawn(self._report_crash(session, data), f"jidoka:{session.session_id}:crash")
        if crash.gave_up:
            config = session.state.config
            error = (
                f"{message}; more than {config.max_restarts} restarts within "
                f"{config.max_restart_seconds:g}s"
            )
            self._spawn(
                self._terminate_quietly(session.session_id, REASON_ERROR, error),
                f"jidoka:{session.session_id}:give-up",
            )

    async def _report_crash(self, session: Session, data: dict[str, Any]) -> None:
        async with session.lock:
            if not session.terminating:
                await session.commit([(EventType.ERROR, data)])

    async def _terminate_quietly(self, session_id: str, reason: str, error: str | None) -> None:
        # Someone else may have terminated it first, or the runtime may be closing.
        with contextlib.suppress(
            InvalidTransition, SessionTerminated, SessionNotFound, RuntimeClosed
        ):
            await self.terminate(session_id, reason=reason, error=error)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task %s failed", task.get_name(), exc_info=task.exception())

    # --- terminate --------------------------------------------------------------------------------

    async def terminate(
        self, session_id: object, *, reason: str = REASON_REQUESTED, error: str | None = None
    ) -> SessionInfo:
        self.check_open()
        if not isinstance(reason, str) or not reason or len(reason) > 200:
            raise InvalidArgument("reason must be a short non-empty string", argument="reason")
        sid = session_id if isinstance(session_id, str) else repr(session_id)
        session = self._live.get(sid)
        if session is None:
            if sid in self._tombstones:
                raise InvalidTransition(sid, Status.TERMINATED, Status.TERMINATING)
            raise SessionNotFound(sid)
        if session.terminating:
            raise InvalidTransition(sid, Status.TERMINATING, Status.TERMINATING)
        check_transition(sid, session.state.status, Status.TERMINATING)
        session.terminating = True
        with self.telemetry.span("terminate_session", sid):
            started = self._clock.monotonic()
            try:
                async with session.lock:
                    await session.transition(Status.TERMINATING)
                await self._release(session)
                async with session.lock:
                    status = {
                        "status": Status.TERMINATED.value,
                        "previous": Status.TERMINATING.value,
                    }
                    if error is not None:
                        status["error"] = error
                    await session.commit(
                        [
                            (EventType.SESSION_STATUS, status),
                            (EventType.SESSION_TERMINATED, {"reason": reason, "error": error}),
                        ]
                    )
            finally:
                await self._retire(session)
            self.telemetry.sessions_terminated.add(1, {"reason": reason})
            self.telemetry.terminate_duration.record(self._clock.monotonic() - started)
            return self.info(sid)

    async def _release(self, session: Session) -> None:
        """Stop a session's workers and drop its cached files (awaited, bounded by the grace)."""
        if session.supervisor is not None:
            abandoned = await session.supervisor.aclose(self.settings.shutdown_grace_seconds)
            for task in abandoned:
                self._abandoned.add(task)
                task.add_done_callback(self._abandoned.discard)
            session.supervisor = None
        self.services.cache.evict_session(session.session_id)

    async def _retire(self, session: Session) -> None:
        """Replace a finished session by its tombstone and free what it held."""
        sid = session.session_id
        await self.services.bus.close_session(sid)  # ends subscriptions after the last events
        await self.services.store.release(sid)
        self._live.pop(sid, None)
        if session.state.status is not Status.TERMINATED:
            # The final commit failed (store error): remember it as terminated all the same.
            session.state.status = Status.TERMINATED
            session.state.reason = session.state.reason or REASON_ERROR
        self._tombstones[sid] = Tombstone(session.state)
        while len(self._tombstones) > self.settings.max_tombstones:
            self._tombstones.popitem(last=False)

    # --- idle and time-out ------------------------------------------------------------------------

    def _schedule(self, session: Session, when: float) -> None:
        if session.timer_at is None or when < session.timer_at:
            session.timer_at = when
            self._timers.schedule(session.session_id, when)

    def touch(self, session: Session) -> None:
        """After a command: an idle session that became active needs its idle deadline back."""
        if session.timer_at is None or session.timer_at > (
            deadline := session.last_activity + session.state.config.idle_after_seconds
        ):
            self._schedule(session, deadline)

    def _on_due(self, session_id: str, when: float) -> None:
        session = self._live.get(session_id)
        if session is None or session.timer_at != when or session.terminating:
            return
        session.timer_at = None
        now = self._clock.monotonic()
        config = session.state.config
        status = session.state.status
        if status is Status.ACTIVE:
            deadline = session.last_activity + config.idle_after_seconds
            if now < deadline:
                self._schedule(session, deadline)
            else:
                self._spawn(self._go_idle(session), f"jidoka:{session_id}:idle")
        elif status is Status.IDLE and config.timeout_minutes > 0:
            deadline = session.idle_since + config.timeout_minutes * 60
            if now < deadline:
                self._schedule(session, deadline)
            else:
                self._spawn(
                    self._terminate_quietly(session_id, REASON_TIMEOUT, None),
                    f"jidoka:{session_id}:timeout",
                )

    async def _go_idle(self, session: Session) -> None:
        async with session.lock:
            if session.terminating or session.state.status is not Status.ACTIVE:
                return
            config = session.state.config
            deadline = session.last_activity + config.idle_after_seconds
            if self._clock.monotonic() < deadline:  # activity while we waited for the lock
                self._schedule(session, deadline)
                return
            await session.transition(Status.IDLE)
            session.idle_since = self._clock.monotonic()
            if config.timeout_minutes > 0:
                self._schedule(session, session.idle_since + config.timeout_minutes * 60)

    # --- helpers for the client -------------------------------------------------------------------

    async def run(
        self,
        session_id: object,
        operation: str,
        call: Callable[[Session], Coroutine[Any, Any, Any]],
    ) -> Any:
        """Run a command on a live session inside a span, then re-arm its idle timer."""
        session = self.get(session_id)
        with self.telemetry.span(operation, session.session_id):
            result = await call(session)
        self.touch(session)
        return result

    @property
    def abandoned_tasks(self) -> frozenset[asyncio.Task[None]]:
        """Worker tasks that ignored cancellation past the grace period and are still running."""
        return frozenset(self._abandoned)

    @property
    def closed(self) -> bool:
        return self._closed

    def is_live(self, session_id: str) -> bool:
        return session_id in self._live
