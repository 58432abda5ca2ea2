"""The session registry: creates, finds, lists, times out and retires sessions.

Live sessions are in one dict keyed by id; terminated ones leave a bounded, ordered set of
tombstones. Idle detection and time-outs run on one shared :class:`~.timers.TimerQueue`. Worker
crashes come in from each session's :class:`~.supervisor.Supervisor`; a session over its restart
intensity is terminated with ``error`` set, on a task of its own — nothing spans two sessions.

Termination is awaited, never timed: the session's workers are cancelled and awaited (bounded by
the grace period), its subscriptions ended, its cache entries and store log released, and only
then is it replaced by its tombstone.

What follows a commit never fails the command that made it (see :mod:`.session`): the runtime's
share of a command's follow-up (idle timer, snapshots) runs in the session's post-commit section
through :meth:`SessionManager._after_command`, failures there are repaired by
:meth:`SessionManager._on_post_commit_fault`, and the commands made of several commits (create,
restore, terminate) run to their end even if their caller is cancelled (``_to_completion``).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, TypeVar

import msgspec
from opentelemetry.trace import Span

from ..config import Settings
from ..errors import (
    InvalidArgument,
    InvalidTransition,
    JidokaError,
    LimitExceeded,
    RuntimeClosed,
    SessionExists,
    SessionNotFound,
    SessionTerminated,
    StoreError,
)
from ..events import Event, EventType
from ..ids import IdGenerator, is_session_id
from ..store.base import SavedSession, StoredSession
from ..telemetry import SESSION_ID_ATTRIBUTE, Telemetry
from ..tools.sandbox import resolve_project_root
from .context import SessionState, json_size
from .idle import IdleTimers
from .info import SessionInfo, Tombstone
from .persistence import CorruptSession, load_state, saved_copy
from .session import Session, SessionServices, Step
from .snapshot import SnapshotError, decode_state, encode_state, state_to_dict
from .state import Status, check_transition
from .supervisor import Supervisor, WorkerCrash, WorkerFactory
from .timers import TimerQueue

__all__ = ["SessionManager"]

logger = logging.getLogger("jidoka.manager")

#: Termination reasons the runtime itself uses (clients may give their own).
REASON_REQUESTED: Final = "requested"
REASON_TIMEOUT: Final = "timeout"
REASON_ERROR: Final = "error"

_T = TypeVar("_T")


class SessionManager(IdleTimers):
    """Owns every session of one runtime."""

    def __init__(self, settings: Settings, services: SessionServices, telemetry: Telemetry) -> None:
        self.settings = settings
        self.services = services
        self.telemetry = telemetry
        self._clock = services.clock
        self._ids = IdGenerator(services.clock)
        self._live: dict[str, Session] = {}
        # Sessions the store holds live logs for, found at start-up and not loaded yet.
        self._dormant: dict[str, StoredSession] = {}
        self._loading: dict[str, asyncio.Future[Session]] = {}
        self._started_at = 0.0
        self._tombstones: OrderedDict[str, Tombstone] = OrderedDict()
        self._creating = 0
        self._timers = TimerQueue(services.clock, self._on_due)
        self._background: set[asyncio.Task[Any]] = set()
        self._due: deque[tuple[Callable[[], Coroutine[Any, Any, Any]], str]] = deque()
        self._due_running = 0
        self._abandoned: set[asyncio.Task[None]] = set()
        self._default_config = settings.session_defaults
        self._default_config_dict = self._default_config.to_dict()
        self._started = False
        self._closed = False
        # Sessions whose projection is being rebuilt from the log (an apply failed after a
        # commit), with the task doing it.
        self._rebuilding: dict[str, asyncio.Task[None]] = {}
        services.after_command = self._after_command
        services.on_fault = self._on_post_commit_fault

    # --- lifecycle of the manager -----------------------------------------------------------------

    async def start(self) -> None:
        """Find the sessions the store kept alive (they load lazily), start the timers."""
        if self._closed:
            raise RuntimeClosed("the session manager is closed")
        self._started_at = self._clock.monotonic()
        recovered = await self.services.store.live_sessions()
        # Their configs are unknown until loaded: look at them after the default idle period.
        check = self._started_at + self._default_config.idle_after_seconds
        for stored in recovered:
            self._dormant[stored.session_id] = stored
            self._timers.schedule(stored.session_id, check)
        if recovered:
            logger.info("found %d live sessions in the store", len(recovered))
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
        self._dormant.clear()
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
        owner: object = None,
    ) -> str:
        self.check_open()
        if owner is not None and (not isinstance(owner, str) or not owner or len(owner) > 256):
            raise InvalidArgument(
                f"owner must be a non-empty string of at most 256 characters, got {owner!r}",
                argument="owner",
            )
        with self._span("create_session") as span:
            started = self._clock.monotonic()
            meta = self._json_object(metadata, "metadata", self.settings.max_metadata_bytes)
            llm = self._json_object(llm_config, "llm_config", self.settings.max_llm_config_bytes)
            cfg = self.settings.session_config(config)
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
                if owner is not None:
                    created["owner"] = owner
            except BaseException:
                self._creating -= 1
                raise
            await self._to_completion(
                self._open(session, created, started),
                f"jidoka:{session_id}:create",
                inline=self._never_waits(),
            )
            return session_id

    async def _open(self, session: Session, created: dict[str, Any], started: float | None) -> None:
        """Bring a new (or restored) session to life: commit ``session_created`` and its move
        to ``active``, make it live, arm its idle timer. Releases the reservation
        :meth:`_reserve` made, when the commits are done (or failed), not when a cancelled
        caller leaves. What follows the commits is logged if it fails, never raised: the
        session exists, and a caller told otherwise would create another."""
        state = session.state
        try:
            async with session.lock:
                await session.commit([(EventType.SESSION_CREATED, created)])
                if state.config == self._default_config:
                    state.config = self._default_config  # share one instance
                await session.transition(Status.ACTIVE)
            self._tombstones.pop(session.session_id, None)  # a restored one's
            self._live[session.session_id] = session
        finally:
            self._creating -= 1
        try:
            self._schedule(session, session.last_activity + state.config.idle_after_seconds)
        except Exception as exc:
            session.report_fault(Step.IDLE_TIMER, exc)
        try:
            self.telemetry.sessions_created.add(1)
            if started is not None:
                self.telemetry.create_duration.record(self._clock.monotonic() - started)
        except Exception as exc:
            session.report_fault(Step.TELEMETRY, exc)

    def _never_waits(self) -> bool:
        """True if the store and bus never wait: a commit then has no suspension point, so
        nothing can cancel a run of commits halfway and it needs no task of its own."""
        return self.services.fast_append is not None and self.services.fast_publish is not None

    async def _to_completion(self, work: Coroutine[Any, Any, _T], name: str, *, inline: bool) -> _T:
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
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                task.add_done_callback(self._background_done)  # nobody else will look
            raise

    def _reserve(self) -> None:
        limit = self.settings.max_sessions
        count = self.live_count() + self._creating
        if count >= limit:
            raise LimitExceeded("max_sessions", limit, actual=count)
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
        """The loaded live session, or :class:`SessionTerminated` / :class:`SessionNotFound`.

        A session recovered from the store but not loaded yet raises ``InvalidArgument``:
        use :meth:`session`, which loads it.
        """
        self.check_open()
        session = self._live.get(session_id) if isinstance(session_id, str) else None
        if session is not None:
            return session
        sid = session_id if isinstance(session_id, str) else repr(session_id)
        if sid in self._dormant:
            raise InvalidArgument(
                "the session is stored but not loaded yet", argument="session_id", session_id=sid
            )
        raise self._missing(sid)

    def _missing(self, sid: str) -> JidokaError:
        """The error for an id that names no live session."""
        tombstone = self._tombstones.get(sid)
        if tombstone is not None:
            return SessionTerminated(sid, reason=tombstone.info.reason)
        return SessionNotFound(sid)

    async def session(self, session_id: object) -> Session:
        """The live session, loading it from the store first if it was recovered at start-up."""
        self.check_open()
        if isinstance(session_id, str):
            session = self._live.get(session_id)
            if session is not None:
                return session
            if session_id in self._dormant:
                return await self._load(session_id)
            if session_id not in self._tombstones:
                await self._recall(session_id)
        raise self._missing(session_id if isinstance(session_id, str) else repr(session_id))

    async def _recall(self, session_id: str) -> None:
        """Remember a session the store holds a terminated log for, as a tombstone.

        Tombstones live in memory and are bounded, but the durable log outlives both a restart
        and the tombstone's eviction: rebuilt from it, such a session still answers
        ``terminated`` with its reason (as the lifecycle contract says) instead of "not found".
        One store lookup per unknown id of the right shape; the log is replayed only if the
        store has one, and once (the tombstone then answers).
        """
        if not is_session_id(session_id):
            return
        store = self.services.store
        try:
            if await store.last_seq(session_id) == 0:
                return
            state, _ = await load_state(store, session_id)
        except (CorruptSession, StoreError):
            return  # nothing trustworthy to remember: the id stays unknown
        if state.status is not Status.TERMINATED:
            return  # not a finished session (a live one is never unknown: see _missing)
        if session_id in self._live or session_id in self._dormant or session_id in self._loading:
            return  # restored or recovered while the log was read
        self._remember(state)

    def _remember(self, state: SessionState) -> None:
        """Keep a terminated session's tombstone, the oldest dropped beyond the bound."""
        self._tombstones[state.session_id] = Tombstone(state)
        while len(self._tombstones) > self.settings.max_tombstones:
            self._tombstones.popitem(last=False)

    async def info(self, session_id: object) -> SessionInfo:
        self.check_open()
        try:
            return SessionInfo.of((await self.session(session_id)).state)
        except SessionTerminated:
            # Terminated, or found corrupt while loading: the tombstone answers.
            tombstone = self._tombstones.get(session_id) if isinstance(session_id, str) else None
            if tombstone is None:
                raise
            return tombstone.info

    async def owner_of(self, session_id: object) -> str | None:
        """The principal that owns a session (live, recovered or remembered), ``None`` if it
        was created without one; ``SessionNotFound`` if there is no such session. Cheaper than
        :meth:`info` on the server's hot path: it builds nothing, and a recovered session is
        not loaded for it (the store recorded its owner), so checking access to someone
        else's session costs that session nothing."""
        if isinstance(session_id, str):
            session = self._live.get(session_id)
            if session is not None:
                return session.state.owner
            stored = self._dormant.get(session_id)
            if stored is not None:
                return stored.owner
            tombstone = self._tombstones.get(session_id)
            if tombstone is not None:
                return tombstone.info.owner
        return (await self.info(session_id)).owner

    async def list_sessions(
        self,
        status: object = None,
        *,
        limit: int | None = None,
        after: str | None = None,
        owner: str | None = None,
    ) -> list[SessionInfo]:
        """Sessions in id (= creation) order, live and remembered, optionally by status and
        by owner.

        ``after`` (an id) and ``limit`` page through them. Recovered sessions not loaded yet
        are ``idle``; only those on the returned page are loaded. With ``owner``, the others'
        are passed over unloaded: the store recorded each recovered session's owner, so a
        server listing one principal's sessions after a restart does not load everyone's.
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
                if (wanted is None or session.state.status is wanted)
                and (owner is None or session.state.owner == owner)
            )
            if wanted is None or wanted is Status.IDLE:
                ids.extend(
                    sid
                    for sid, stored in self._dormant.items()
                    if owner is None or stored.owner == owner
                )
        if wanted is None or wanted is Status.TERMINATED:
            ids.extend(
                sid
                for sid, tombstone in self._tombstones.items()
                if owner is None or tombstone.info.owner == owner
            )
        ids.sort()
        if after is not None:
            ids = ids[bisect.bisect_right(ids, after) :]
        out: list[SessionInfo] = []
        for sid in ids:
            if limit is not None and len(out) >= limit:
                break
            with contextlib.suppress(SessionTerminated, SessionNotFound):  # corrupt on load
                info = await self.info(sid)
                # Checked again: what the session says once loaded is the truth.
                if owner is None or info.owner == owner:
                    out.append(info)
        return out

    def live_count(self) -> int:
        """Live sessions, loaded or not."""
        return len(self._live) + len(self._dormant)

    def live_ids(self) -> frozenset[str]:
        return frozenset(self._live).union(self._dormant)

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
        if session is None or session.state.status in (Status.TERMINATING, Status.TERMINATED):
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
            # Reports queued before a termination still go in, in order, before it.
            if session.state.status not in (Status.TERMINATING, Status.TERMINATED):
                await session.commit([(EventType.ERROR, data)])

    async def _terminate_quietly(self, session_id: str, reason: str, error: str | None) -> None:
        # Someone else may have terminated it first, or the runtime may be closing.
        with contextlib.suppress(
            InvalidTransition, SessionTerminated, SessionNotFound, RuntimeClosed
        ):
            await self.terminate(session_id, reason=reason, error=error)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return task

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
        if session is None and sid in self._dormant:
            session = await self._load(sid)
        if session is None:
            if sid not in self._tombstones:
                await self._recall(sid)
            if sid in self._tombstones:
                raise InvalidTransition(sid, Status.TERMINATED, Status.TERMINATING)
            raise SessionNotFound(sid)
        if session.terminating:
            raise InvalidTransition(sid, Status.TERMINATING, Status.TERMINATING)
        check_transition(sid, session.state.status, Status.TERMINATING)
        session.terminating = True
        with self._span("terminate_session", sid):
            return await self._to_completion(
                self._terminate_now(session, reason, error),
                f"jidoka:{sid}:terminate",
                inline=self._terminates_inline(session),
            )

    def _terminates_inline(self, session: Session) -> bool:
        """Whether a termination may run in the caller's task (see :meth:`_to_completion`).

        Yes for the runtime's own tasks (only its shutdown cancels them) and for a worker of
        the session (its supervisor spares the task that asks). Yes when nothing in it can
        wait: a store and bus that never wait, no workers to await, the lock free, nobody
        subscribed to the session (whose stream might have to catch up before it ends), so
        the common termination costs no task and no turn of the event loop.
        """
        current = asyncio.current_task()
        supervisor = session.supervisor
        if current in self._background or (
            supervisor is not None and current in supervisor.tasks()
        ):
            return True
        subscribers = getattr(self.services.bus, "subscriber_count", None)
        return (
            supervisor is None
            and self._never_waits()
            and not session.lock.locked()
            and subscribers is not None
            and subscribers(session.session_id) == 0
        )

    async def _terminate_now(self, session: Session, reason: str, error: str | None) -> SessionInfo:
        """Commit ``terminating``, stop the workers, commit ``terminated``, retire the session.

        Only a failed commit is raised. Whatever fails after the first commit is logged and
        the termination goes on: a failure stopping the workers, recording a metric or ending
        the streams must not leave a session terminating forever, nor tell the caller that a
        termination the log holds did not happen (a retry would then be refused).
        """
        started = self._clock.monotonic()
        try:
            async with session.lock:
                await session.transition(Status.TERMINATING)
            try:
                await self._release(session)
            except Exception as exc:
                session.report_fault(Step.WORKERS, exc)
            async with session.lock:
                status = {"status": Status.TERMINATED.value, "previous": Status.TERMINATING.value}
                if error is not None:
                    status["error"] = error
                await session.commit(
                    [
                        (EventType.SESSION_STATUS, status),
                        (EventType.SESSION_TERMINATED, {"reason": reason, "error": error}),
                    ]
                )
            try:
                self.telemetry.sessions_terminated.add(1, {"reason": reason})
                self.telemetry.terminate_duration.record(self._clock.monotonic() - started)
            except Exception as exc:
                session.report_fault(Step.TELEMETRY, exc)
        finally:
            await self._retire(session)
        return SessionInfo.of(session.state)

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
        self._live.pop(sid, None)
        if session.state.status is not Status.TERMINATED:
            # The final commit failed (store error): remember it as terminated all the same.
            session.state.status = Status.TERMINATED
            session.state.reason = session.state.reason or REASON_ERROR
        self._remember(session.state)
        # What follows may fail (logged); the session is retired all the same.
        try:
            if len(self._timers) > 2 * self.live_count() + 1024:
                self._timers.compact(self._timer_wanted)
        except Exception as exc:
            session.report_fault(Step.IDLE_TIMER, exc)
        try:
            # Streams end after the last events; by then the tombstone answers for the session.
            await self.services.bus.close_session(sid)
        except Exception as exc:
            session.report_fault(Step.STREAMS, exc)
        try:
            await self.services.store.release(sid)
        except (StoreError, RuntimeClosed):
            pass
        except Exception as exc:
            session.report_fault(Step.RELEASE, exc)

    # --- helpers for the client -------------------------------------------------------------------

    async def run(
        self,
        session_id: object,
        operation: str,
        call: Callable[[Session], Coroutine[Any, Any, Any]],
    ) -> Any:
        """Run a command on a live session inside a span.

        What a committed command implies for the runtime (the idle timer, a snapshot now and
        then) is not done here, after the call, but in the session's post-commit section
        (:meth:`_after_command`): there it runs even if this caller is cancelled once the
        command has committed, for commands that do not come through here too (the agent's
        events), and a failure in it cannot reach the caller.
        """
        session = await self.session(session_id)
        with self._span(operation, session.session_id):
            return await call(session)

    def _span(
        self, operation: str, session_id: str | None = None
    ) -> AbstractContextManager[Span | None]:
        """The operation's span, whose *ending* cannot fail the operation (see _GuardedSpan)."""
        span = self.telemetry.span(operation, session_id)
        if isinstance(span, contextlib.nullcontext):  # tracing off: nothing that can fail
            return span
        return _GuardedSpan(span, operation, session_id)

    def _after_command(self, session: Session) -> None:
        """A client command on ``session`` committed: re-arm its idle timer (an idle session
        that became active may have none), and snapshot it now and then.

        Called from the session's post-commit section (``SessionServices.after_command``),
        so it runs whether or not the command's caller still waits; it never raises, each
        step's failure being reported (and the timer re-armed: _on_post_commit_fault).
        """
        try:
            self.touch(session)
        except Exception as exc:
            session.report_fault(Step.IDLE_TIMER, exc)
        if (
            session.state.seq - session.snapshot_seq >= self.settings.snapshot_interval
            and session.session_id not in self._rebuilding  # never snapshot a stale projection
        ):
            try:
                self._snapshot(session)
            except Exception as exc:
                session.report_fault(Step.SNAPSHOT, exc)

    def _on_post_commit_fault(self, session: Session, step: Step, error: Exception) -> None:
        """Repair what a failed post-commit step left broken (it is logged already).

        A projection that missed committed events is rebuilt from the log (:meth:`_rebuild`);
        an idle timer that was not re-armed is re-armed (:meth:`rearm`). The other steps leave
        nothing broken in the session (see :class:`~.session.Step`).
        """
        sid = session.session_id
        if self._closed or self._live.get(sid) is not session or session.terminating:
            return  # going away: nothing to repair
        if step is Step.APPLY:
            if sid not in self._rebuilding:
                self._rebuilding[sid] = self._spawn(
                    self._rebuild(session, error), f"jidoka:{sid}:rebuild"
                )
        elif step is Step.IDLE_TIMER:
            self.rearm(session)

    async def _rebuild(self, session: Session, error: Exception) -> None:
        """Rebuild a projection from the log after applying committed events to it failed.

        ``apply`` is pure and commands are validated before they commit, so that failure is a
        bug, and the projection no longer matches the log. The log is the truth: replay it, as
        a load after a restart does, under the session's lock (commands queued before this ran
        on the stale projection; they were numbered right, see ``Session._after_commit``).
        If the log cannot be replayed either, the bug is in applying an event now stored and
        no retry will cure it: the session is terminated with ``error`` (a durable store keeps
        its log for inspection), like a session whose workers keep crashing. So is a session
        of the memory store whose log was trimmed (it no longer starts at ``session_created``).
        """
        sid = session.session_id
        try:
            async with session.lock:
                if session.terminating:
                    return
                state, _ = await load_state(self.services.store, sid)
                if state.seq < session.state.seq:
                    raise CorruptSession(
                        f"session {sid!r}: its log ends at seq {state.seq}, before the "
                        f"{session.state.seq} committed",
                        session_id=sid,
                    )
                if state.config == self._default_config:
                    state.config = self._default_config
                session.state = state
        except Exception as exc:
            self._rebuilding.pop(sid, None)
            logger.error(
                "session %s: its state could not be rebuilt from its log (%r); terminating it",
                sid,
                exc,
                extra={"session_id": sid},
            )
            detail = f"applying committed events failed ({error!r:.200}), and so did replaying "
            await self._terminate_quietly(sid, REASON_ERROR, f"{detail}its log ({exc!r:.200})")
            return
        finally:
            self._rebuilding.pop(sid, None)
        logger.warning(
            "session %s: state rebuilt from its log (seq %d)",
            sid,
            session.state.seq,
            extra={"session_id": sid},
        )

    def _snapshot(self, session: Session) -> None:
        """Write a snapshot in the background (only durable stores profit from one)."""
        if not self.services.store.durable:
            session.snapshot_seq = session.state.seq
            return
        session.snapshot_seq = seq = session.state.seq
        state = encode_state(session.state)
        store = self.services.store
        sid = session.session_id

        async def write() -> None:
            try:
                await store.write_snapshot(sid, seq, state)
            except (StoreError, RuntimeClosed) as exc:
                logger.warning("session %s: snapshot at seq %d not written: %s", sid, seq, exc)

        self._spawn(write(), f"jidoka:{sid}:snapshot")

    # --- loading, saving, restoring --------------------------------------------------------------

    async def _load(self, session_id: str) -> Session:
        """Load a recovered session (once, however many callers ask at the same time)."""
        pending = self._loading.get(session_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Session] = asyncio.get_running_loop().create_future()
        self._loading[session_id] = future
        try:
            session = await self._load_now(session_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: concurrent callers re-raise it themselves
            raise
        else:
            future.set_result(session)
            return session
        finally:
            del self._loading[session_id]

    async def _load_now(self, session_id: str) -> Session:
        stored = self._dormant[session_id]
        try:
            state, snapshot_seq = await load_state(self.services.store, session_id)
        except CorruptSession as exc:
            logger.error("%s", exc)
            del self._dormant[session_id]
            await self._bury_corrupt(session_id, stored, str(exc))
            raise SessionTerminated(session_id, reason=REASON_ERROR) from exc
        session = Session(state, self.services)
        session.snapshot_seq = snapshot_seq
        if state.config == self._default_config:
            state.config = self._default_config
        session.idle_since = self._started_at
        del self._dormant[session_id]
        self._live[session_id] = session
        status = state.status
        if status is Status.ACTIVE:
            async with session.lock:
                await session.transition(Status.IDLE)
        elif status is Status.INITIALIZING:
            async with session.lock:
                await session.commit(
                    [
                        (EventType.SESSION_STATUS, {"status": "terminated", "previous": status}),
                        (EventType.SESSION_TERMINATED, {"reason": REASON_ERROR, "error": None}),
                    ]
                )
            await self._retire(session)
            raise SessionTerminated(session_id, reason=REASON_ERROR)
        elif status is Status.TERMINATING:
            self._spawn(self._finish_terminating(session), f"jidoka:{session_id}:terminate")
            return session
        await self._close_interrupted_turn(session)
        timeout = state.config.timeout_minutes
        if timeout > 0:
            self._schedule(session, session.idle_since + timeout * 60)
        return session

    async def _close_interrupted_turn(self, session: Session) -> None:
        """A turn the process died in the middle of ends in the log: writes that waited for an
        approval are denied (nothing was written), and the agent's status says ``failed``."""
        state = session.state
        items: list[tuple[str, dict[str, Any]]] = [
            (EventType.APPROVAL_DECIDED, {"call_id": call_id, "allow": False, "reason": "restart"})
            for call_id in sorted(state.pending_approvals or ())
        ]
        if state.agent_status in ("thinking", "calling_tool"):
            items.append((EventType.AGENT_STATUS, {"status": "failed", "reason": "restart"}))
        if items:
            async with session.lock:
                await session.commit(items)

    async def _load_quietly(self, session_id: str) -> None:
        with contextlib.suppress(SessionTerminated, SessionNotFound, RuntimeClosed):
            await self._load(session_id)

    async def _finish_terminating(self, session: Session) -> None:
        """A session caught mid-termination by a crash: finish the job."""
        session.terminating = True
        async with session.lock:
            await session.commit(
                [
                    (EventType.SESSION_STATUS, {"status": "terminated", "previous": "terminating"}),
                    (EventType.SESSION_TERMINATED, {"reason": "interrupted", "error": None}),
                ]
            )
        await self._retire(session)

    async def _bury_corrupt(self, session_id: str, stored: StoredSession, error: str) -> None:
        """Record a session that cannot be loaded as terminated with ``error``, alone."""
        now = self._clock.time()
        when = datetime.fromtimestamp(now, UTC)
        state = SessionState(session_id)
        state.created_at = state.updated_at = when
        state.status = Status.TERMINATED
        state.reason, state.error = REASON_ERROR, error
        # The owner the store recorded: its owner still sees (only) it, listed or asked for.
        state.owner = stored.owner
        self._remember(state)
        last = stored.last_seq
        with contextlib.suppress(StoreError, RuntimeClosed):  # best effort: mark it in the log
            last = await self.services.store.last_seq(session_id)
            await self.services.store.append(
                session_id,
                [
                    Event(
                        EventType.SESSION_STATUS,
                        session_id,
                        last + 1,
                        when,
                        {"status": "terminated", "previous": stored.status, "error": error},
                    ),
                    Event(
                        EventType.SESSION_TERMINATED,
                        session_id,
                        last + 2,
                        when,
                        {"reason": REASON_ERROR, "error": error},
                    ),
                ],
            )

    async def save(self, session_id: object) -> SavedSession:
        """Write a named, self-contained copy of a live session (replacing an older one)."""
        session = await self.session(session_id)
        with self.telemetry.span("save_session", session.session_id):
            async with session.lock:
                session.ensure_writable()
                when = datetime.fromtimestamp(self._clock.time(), UTC)
                summary, state = saved_copy(session.state, when)
            await self.services.store.save(summary, state)
        return summary

    async def restore(self, session_id: object) -> SessionInfo:
        """Bring a saved session back as a live session with the same id."""
        self.check_open()
        if not isinstance(session_id, str):
            raise SessionNotFound(repr(session_id))
        if session_id in self._live or session_id in self._dormant or (session_id in self._loading):
            raise SessionExists(session_id)
        with self._span("restore_session", session_id):
            found = await self.services.store.load_saved(session_id)
            if found is None:
                raise SessionNotFound(session_id)
            summary, raw = found
            try:
                saved = decode_state(raw, session_id=session_id)
            except SnapshotError as exc:
                raise CorruptSession(str(exc), session_id=session_id) from exc
            self._reserve()
            try:
                if session_id in self._live or session_id in self._dormant:
                    raise SessionExists(session_id)
                state = SessionState(session_id)
                state.seq = await self.services.store.last_seq(session_id)
                session = Session(state, self.services)
                created = {
                    "status": Status.INITIALIZING.value,
                    "restored_from": summary.saved_at.isoformat(),
                    "state": state_to_dict(saved),
                }
            except BaseException:
                self._creating -= 1
                raise
            await self._to_completion(
                self._open(session, created, None),
                f"jidoka:{session_id}:restore",
                inline=self._never_waits(),
            )
        rebuilding = self._rebuilding.get(session_id)
        if rebuilding is not None:  # an apply failed: answer with what the log says
            await asyncio.wait({rebuilding})
        return SessionInfo.of(session.state)

    async def list_saved(self, owner: str | None = None) -> list[SavedSession]:
        self.check_open()
        saved = await self.services.store.list_saved()
        return saved if owner is None else [s for s in saved if s.owner == owner]

    async def saved_owner(self, session_id: object) -> str | None:
        """The owner recorded in a saved copy; ``SessionNotFound`` if there is no copy."""
        self.check_open()
        loaded = (
            await self.services.store.load_saved(session_id)
            if isinstance(session_id, str)
            else None
        )
        if loaded is None:
            raise SessionNotFound(session_id if isinstance(session_id, str) else repr(session_id))
        return loaded[0].owner

    async def delete_saved(self, session_id: object) -> None:
        self.check_open()
        if not isinstance(session_id, str) or not await self.services.store.delete_saved(
            session_id
        ):
            raise SessionNotFound(session_id if isinstance(session_id, str) else repr(session_id))

    async def wait_background(self) -> None:
        """Wait until the background work started so far (idle transitions, time-outs, loads,
        crash reports, snapshots) has finished, including work it started in turn.

        For tests on a :class:`~jidoka.FakeClock`: advance the clock, let the loop run, then
        wait here before asserting on what the timers did.
        """
        while self._background:
            await asyncio.wait(set(self._background))

    @property
    def abandoned_tasks(self) -> frozenset[asyncio.Task[None]]:
        """Worker tasks that ignored cancellation past the grace period and are still running."""
        return frozenset(self._abandoned)

    @property
    def closed(self) -> bool:
        return self._closed

    def is_live(self, session_id: str) -> bool:
        return session_id in self._live


class _GuardedSpan:
    """A telemetry span whose ending cannot fail the operation it timed.

    By the time a span ends, the operation may have committed; an exporter or span processor
    raising then must not turn a done command into an error. Such a failure is logged with the
    session id; an exception the operation itself raised passes through unchanged.
    """

    __slots__ = ("_inner", "_operation", "_session_id")

    def __init__(
        self, inner: AbstractContextManager[Span | None], operation: str, session_id: str | None
    ) -> None:
        self._inner = inner
        self._operation = operation
        self._session_id = session_id

    def __enter__(self) -> Span | None:
        return self._inner.__enter__()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self._inner.__exit__(kind, error, traceback)
        except Exception as exc:
            if exc is not error:
                logger.error(
                    "session %s: ending the %s span failed (%r); the operation stands",
                    self._session_id,
                    self._operation,
                    exc,
                    exc_info=exc,
                    extra={"session_id": self._session_id, "step": "telemetry"},
                )
