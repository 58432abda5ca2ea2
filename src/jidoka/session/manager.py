"""The session manager: the one object the runtime, the client and the server ask about sessions.

A facade. It keeps the verbs its callers use (create, find, list, terminate, save, restore, run a
command) and the wiring, and hands each concern to a helper object with its own small state:

- :class:`~.registry.SessionRegistry` — which sessions this node holds (loaded, remembered);
- :class:`~.lifecycle.Lifecycle` — creation, workers and their crashes, termination;
- :class:`~.recovery.Recovery` — finding and loading stored sessions by id, recalling ended
  ones, rebuilding, snapshots;
- :mod:`.listing` — listing what this node holds merged with the store's index, page by page;
- :class:`~.sweep.QuietSweep` — loading the stored sessions nobody touches once they may be
  due to time out;
- :class:`~.saved.SavedSessions` — saved copies and restoring them;
- :class:`~.branching.Branching` — forks and rewinds of a session's history;
- :class:`~.idle.IdleReaper` — idle transitions and time-outs on one timer queue;
- :class:`~.background.BackgroundTasks` — the tasks all of them start.

Helpers that need to end a session by id (a time-out, a worker over its restart intensity, a
projection the log cannot rebuild) are given :meth:`SessionManager._terminate_quietly`, which
goes through the same checks as a client's request.

On a node of a cluster (``SessionServices.ownership``), loading a session takes it from the
store first (:mod:`.recovery`); :meth:`SessionManager.drop` lets go of a session without writing
(another node owns it now, or this node's lease lapsed), :func:`.leaving.hand_over` gives
every session up when the node leaves, and listings read sessions this node does not hold
from the store (:meth:`SessionManager.peek`) instead of taking them.

What follows a commit never fails the command that made it (see :mod:`.session`): the runtime's
share of a command's follow-up (idle timer, snapshots) runs in the session's post-commit section
through :meth:`SessionManager._after_command`, and failures there are repaired by
:meth:`SessionManager._on_post_commit_fault`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from ..config import Settings
from ..errors import (
    InvalidArgument,
    InvalidTransition,
    NotOwner,
    ProjectRootUnavailable,
    RuntimeClosed,
    SessionNotFound,
    SessionTerminated,
    StoreError,
)
from ..store.base import SavedSession, StoredSession
from ..telemetry import Telemetry
from .background import BackgroundTasks
from .branching import Branching
from .idle import IdleReaper
from .info import SessionInfo
from .leaving import hand_over
from .lifecycle import Lifecycle
from .listing import list_sessions
from .persistence import load_state
from .postcommit import Step
from .pruning import ChunkPruner
from .recovery import Recovery
from .registry import SessionRegistry
from .retention import Retention
from .saved import SavedSessions
from .session import Session, SessionServices
from .spans import guarded_span
from .state import REASON_ERROR as REASON_ERROR
from .state import REASON_REQUESTED as REASON_REQUESTED
from .state import REASON_TIMEOUT as REASON_TIMEOUT
from .state import Status
from .supervisor import WorkerFactory
from .sweep import QuietSweep
from .timers import TimerQueue

__all__ = ["SessionManager"]


class SessionManager:
    """Owns every session of one runtime."""

    def __init__(self, settings: Settings, services: SessionServices, telemetry: Telemetry) -> None:
        self.settings = settings
        self.services = services
        self.telemetry = telemetry
        self._registry = registry = SessionRegistry(settings)
        self._tasks = tasks = BackgroundTasks()
        self._idle = idle = IdleReaper(
            services.clock,
            registry,
            tasks,
            save=self.save,
            terminate=self._terminate_quietly,
        )
        self._lifecycle = lifecycle = Lifecycle(
            settings, services, telemetry, registry, tasks, idle, terminate=self._terminate_quietly
        )
        self._recovery = recovery = Recovery(
            settings, services, registry, tasks, idle, lifecycle, terminate=self._terminate_quietly
        )
        self._saved = SavedSessions(services, telemetry, registry, lifecycle, recovery)
        self.branching = Branching(services, telemetry, registry, lifecycle, recovery, self.session)
        self.chunks = ChunkPruner(services.store, tasks)  # Settings.keep_stream_chunks off
        self._sweep = QuietSweep(
            settings, services.store, services.clock, registry, tasks, load=self._load_quietly
        )
        self.retention = Retention(settings, services, registry, tasks, self.terminate)
        #: Called with each session loaded from the store, once recovered (see ``Recovery``).
        self.on_loaded = recovery.on_loaded
        self.background, self.lifecycle = tasks, lifecycle
        services.after_command = self._after_command
        services.on_fault = self._on_post_commit_fault

    # --- lifecycle of the manager -----------------------------------------------------------------

    async def start(self) -> None:
        """Start the timers. Nothing is read from the store: a stored session is found by id on
        first use, listed from the store's index, and swept up if nobody touches it."""
        if self._registry.closed:
            raise RuntimeClosed("the session manager is closed")
        await self._recovery.start()
        self._idle.start()
        self._sweep.start(self._recovery.started_at)
        self.retention.start(self._recovery.started_at)
        self._registry.open()

    async def aclose(self) -> None:
        """Stop every live session (no events: a durable store keeps them for the next start),
        then the timers and background tasks. Idempotent."""
        registry = self._registry
        if registry.closed:
            return
        registry.closed = True
        await asyncio.gather(self._sweep.aclose(), self.retention.aclose())
        await self._idle.aclose()
        for session in list(registry.live.values()):
            session.terminating = session.stopping = True
            await self._lifecycle.release(session)
        registry.live.clear()
        await self._tasks.aclose()

    def check_open(self) -> None:
        self._registry.check_open()

    @property
    def closed(self) -> bool:
        return self._registry.closed

    # --- create and terminate ---------------------------------------------------------------------

    async def create(
        self,
        *,
        metadata: object = None,
        config: object = None,
        llm_config: object = None,
        project_root: object = None,
        owner: object = None,
    ) -> str:
        return await self._lifecycle.create(
            metadata=metadata,
            config=config,
            llm_config=llm_config,
            project_root=project_root,
            owner=owner,
        )

    async def terminate(
        self, session_id: object, *, reason: str = REASON_REQUESTED, error: str | None = None
    ) -> SessionInfo:
        registry = self._registry
        registry.check_open()
        if not isinstance(reason, str) or not reason or len(reason) > 200:
            raise InvalidArgument("reason must be a short non-empty string", argument="reason")
        sid = session_id if isinstance(session_id, str) else repr(session_id)
        session = registry.live.get(sid)
        if session is None and sid not in registry.tombstones:
            session = await self._recovery.load(sid)
        if session is None:
            if sid in registry.tombstones:
                raise InvalidTransition(sid, Status.TERMINATED, Status.TERMINATING)
            raise SessionNotFound(sid)
        return await self._lifecycle.terminate(session, reason, error)

    async def _terminate_quietly(self, session_id: str, reason: str, error: str | None) -> None:
        # Someone else may have terminated it first, or the runtime may be closing.
        with contextlib.suppress(
            InvalidTransition, SessionTerminated, SessionNotFound, RuntimeClosed
        ):
            await self.terminate(session_id, reason=reason, error=error)

    def start_worker(
        self, session_id: object, name: str, factory: WorkerFactory
    ) -> asyncio.Task[None]:
        """Run ``factory()`` as a supervised worker of the session (restarted if it crashes)."""
        return self._lifecycle.start_worker(self.get(session_id), name, factory)

    # --- lookup -----------------------------------------------------------------------------------

    def get(self, session_id: object) -> Session:
        """The loaded live session, or :class:`SessionTerminated` / :class:`SessionNotFound`.

        A session the store holds that is not loaded yet is not found here: use
        :meth:`session`, which looks it up and loads it.
        """
        return self._registry.get(session_id)

    async def session(self, session_id: object) -> Session:
        """The live session, looked up in the store and loaded on first use if this node has
        not loaded it (once per id, however many callers ask at the same time)."""
        registry = self._registry
        registry.check_open()
        if isinstance(session_id, str):
            session = registry.live.get(session_id)
            if session is not None:
                return session
            if session_id not in registry.tombstones:
                session = await self._recovery.load(session_id)
                if session is not None:
                    return session
        raise registry.missing(session_id if isinstance(session_id, str) else repr(session_id))

    async def _load_quietly(self, session_id: str) -> None:
        # Queued by the sweep; a client may have loaded (or ended) the session since.
        registry = self._registry
        if session_id in registry.live or session_id in registry.tombstones:
            return
        with contextlib.suppress(
            SessionTerminated,
            SessionNotFound,
            RuntimeClosed,
            NotOwner,  # a cluster: another node's, alive (it times it out itself)
            ProjectRootUnavailable,
            StoreError,
        ):
            await self._recovery.load(session_id)

    async def info(self, session_id: object) -> SessionInfo:
        self.check_open()
        try:
            session = await self.session(session_id)
            return SessionInfo.of(session.state, terminating=session.terminating)
        except SessionTerminated:
            # Terminated, or found corrupt while loading: the tombstone answers.
            tombstones = self._registry.tombstones
            tombstone = tombstones.get(session_id) if isinstance(session_id, str) else None
            if tombstone is None:
                raise
            return await self.retention.recheck(tombstone)

    async def owner_of(self, session_id: object) -> str | None:
        """The principal that owns a session (live, stored or remembered), ``None`` if it
        was created without one; ``SessionNotFound`` if there is no such session. Cheaper than
        :meth:`info` on the server's hot path: it builds nothing, and a stored session is not
        loaded for it (one lookup of the owner the store recorded), so checking access to
        someone else's session costs that session nothing."""
        if isinstance(session_id, str):
            found, owner = self._registry.owner_nowait(session_id)
            if found:
                return owner
            self.check_open()
            stored = await self._recovery.find(session_id)
            if stored is not None and stored.status != Status.TERMINATED.value:
                return stored.owner
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
        by owner: those this node holds merged with the pages of the store's index (see
        :mod:`.listing`).

        ``after`` (an id) and ``limit`` page through them. Stored sessions not loaded yet
        come back ``idle``; only those on the returned page are loaded. With ``owner``, the
        store is asked for that owner's only, so a server listing one principal's sessions
        after a restart neither reads nor loads anyone else's.
        """
        self.check_open()
        return await list_sessions(
            self._registry,
            self.services.store,
            self.info if self.services.ownership is None else self.peek,
            status,
            limit=limit,
            after=after,
            owner=owner,
        )

    async def peek(self, session_id: str) -> SessionInfo:
        """:meth:`info` without taking the session: what a node of a cluster answers for a
        session it does not hold (read from the store's log, as of its last commit)."""
        session = self._registry.live.get(session_id)
        if session is not None:
            return SessionInfo.of(session.state, terminating=session.terminating)
        stored = await self._recovery.find(session_id)
        if stored is None or stored.status == Status.TERMINATED.value:
            return await self.info(session_id)  # a tombstone: recalled, never taken
        state, _ = await load_state(self.services.store, session_id)
        return SessionInfo.of(state)

    @property
    def clustered(self) -> bool:
        """Whether this manager is one node of a cluster (sessions are taken, not just loaded)."""
        return self.services.ownership is not None

    async def stored(self, session_id: str) -> StoredSession | None:
        """The store's head of a session this node does not hold (``None``: none, or an id
        that cannot be one): what a node of a cluster serves streams and log reads from,
        without taking the session."""
        self.check_open()
        return await self._recovery.find(session_id)

    # --- a node of a cluster ----------------------------------------------------------------------

    def drop(self, session_id: str) -> None:
        """Let go of a session without writing anything: another node owns it now (the fence
        refused an append) or may take it (this node's lease lapsed). Commands on it from now
        on look it up again (and go to its owner); its workers stop in the background."""
        registry = self._registry
        session = registry.live.pop(session_id, None)
        if session is None or registry.closed:
            return
        self._idle.prune()
        self._tasks.spawn(self._lifecycle.release(session), f"jidoka:{session_id}:drop")

    def drop_all(self) -> None:
        """:meth:`drop` every session this node holds (its lease lapsed)."""
        for session_id in list(self._registry.live):
            self.drop(session_id)

    async def hand_over(self, busy: Callable[[str], bool], deadline: float) -> None:
        """Give every session up to the other nodes (this node is leaving): see
        :func:`~.leaving.hand_over`."""
        await hand_over(self.services, self._registry, self._idle, self._lifecycle, busy, deadline)

    def live_count(self) -> int:
        """Live sessions loaded on this node (stored ones not loaded yet are not counted)."""
        return self._registry.live_count()

    def live_ids(self) -> frozenset[str]:
        return self._registry.live_ids()

    def tombstone_ids(self) -> frozenset[str]:
        return self._registry.tombstone_ids()

    def is_live(self, session_id: str) -> bool:
        return session_id in self._registry.live

    # --- saved sessions ---------------------------------------------------------------------------

    async def save(self, session_id: object) -> SavedSession:
        """Write a named, self-contained copy of a live session (replacing an older one)."""
        return await self._saved.save(await self.session(session_id))

    async def restore(self, session_id: object) -> SessionInfo:
        """Bring a saved session back as a live session with the same id."""
        return await self._saved.restore(session_id)

    async def list_saved(self, owner: str | None = None) -> list[SavedSession]:
        return await self._saved.list_saved(owner)

    async def saved_owner(self, session_id: object) -> str | None:
        """The owner recorded in a saved copy; ``SessionNotFound`` if there is no copy."""
        return await self._saved.owner_of(session_id)

    async def delete_saved(self, session_id: object) -> None:
        await self._saved.delete(session_id)

    # --- commands ---------------------------------------------------------------------------------

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
        with guarded_span(self.telemetry, operation, session.session_id):
            return await call(session)

    def touch(self, session: Session) -> None:
        """After a command: the session's next look is at its idle deadline, unless an earlier
        one is set (see :meth:`IdleReaper.touch`)."""
        self._idle.touch(session)

    def rearm(self, session: Session) -> None:
        """Repair a session whose timer step failed after a commit (see
        :meth:`IdleReaper.rearm`)."""
        self._idle.rearm(session)

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
            # never snapshot a stale projection
            and self._recovery.rebuilding(session.session_id) is None
        ):
            try:
                self._recovery.snapshot(session)
            except Exception as exc:
                session.report_fault(Step.SNAPSHOT, exc)

    def _on_post_commit_fault(self, session: Session, step: Step, error: Exception) -> None:
        """Repair what a failed post-commit step left broken (it is logged already).

        A projection that missed committed events is rebuilt from the log
        (:meth:`Recovery.rebuild_soon`); an idle timer that was not re-armed is re-armed
        (:meth:`rearm`). The other steps leave nothing broken in the session (see
        :class:`~.session.Step`).
        """
        registry = self._registry
        if (
            registry.closed
            or registry.live.get(session.session_id) is not session
            or (session.terminating)
        ):
            return  # going away: nothing to repair
        if step is Step.APPLY:
            self._recovery.rebuild_soon(session, error)
        elif step is Step.IDLE_TIMER:
            self.rearm(session)

    # --- tasks ------------------------------------------------------------------------------------

    def tasks(self) -> list[asyncio.Task[Any]]:
        """Every task the manager owns or tracks (workers, terminations, abandoned ones)."""
        out = self._tasks.all()
        for session in self._registry.live.values():
            if session.supervisor is not None:
                out.extend(session.supervisor.tasks())
        return out

    async def wait_background(self) -> None:
        """Wait until the background work started so far (idle transitions, time-outs, loads,
        crash reports, snapshots) has finished, including work it started in turn.

        For tests on a :class:`~jidoka.FakeClock`: advance the clock, let the loop run, then
        wait here before asserting on what the timers did.
        """
        await self._tasks.wait()

    @property
    def abandoned_tasks(self) -> frozenset[asyncio.Task[None]]:
        """Worker tasks that ignored cancellation past the grace period and are still running."""
        return frozenset(self._tasks.abandoned)

    # --- for tests and benchmarks that look inside ------------------------------------------------

    @property
    def _live(self) -> dict[str, Session]:
        return self._registry.live

    @property
    def _timers(self) -> TimerQueue:
        return self._idle.timers

    @property
    def _background(self) -> set[asyncio.Task[Any]]:
        return self._tasks.running
