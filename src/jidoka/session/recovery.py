"""Between the log and the projection: loading stored sessions, recalling ended ones, and
rebuilding a projection that missed its events.

The store's log is the truth and a projection is derived from it. This module holds every place
where the manager goes back to the log for it. Start-up reads nothing: a session this node has
not loaded is looked up by id in the store on first use (one indexed lookup, once however many
callers ask at the same time) and loaded if it is live; a session that was mid-turn or
mid-termination when the process died is then closed properly in the log; one that cannot be
replayed is buried as terminated with ``error``, alone; one whose log ends in termination is
remembered as a tombstone; a projection whose apply failed after a commit is rebuilt by
replaying the log. It also writes the snapshots that keep a replay short.

On a node of a cluster, loading a session first *takes* it (``SessionServices.ownership``): the
store names this node its owner and raises its fence before the log is read, so what is read is
final (the former owner can no longer append). A turn or approval the former owner left open is
closed in the log as interrupted with reason ``owner_lost``: never re-run, since its tools may
have had effects. A session whose ``project_root`` this node cannot see is handed back, refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from ..config import Settings
from ..errors import ProjectRootUnavailable, RuntimeClosed, SessionTerminated, StoreError
from ..events import Event, EventType
from ..ids import is_session_id
from ..payloads import (
    AgentStatusData,
    ApprovalDecidedData,
    RunCompletedData,
    SessionStatusData,
    SessionTerminatedData,
    data_of,
    event_item,
)
from ..store.base import StoredSession
from .background import BackgroundTasks
from .core import status_data
from .idle import IdleReaper
from .lifecycle import Lifecycle
from .persistence import CorruptSession, load_state
from .registry import SessionRegistry
from .session import Session, SessionServices
from .snapshot import encode_state
from .state import REASON_ERROR, SessionState, Status

__all__ = ["REASON_OWNER_LOST", "REASON_RESTART", "Recovery"]

#: Why a turn or an approval left open in the log was closed when the session was loaded: the
#: process that ran it died (``restart``), or another node of a cluster had it (``owner_lost``).
REASON_RESTART = "restart"
REASON_OWNER_LOST = "owner_lost"

logger = logging.getLogger("jidoka.manager")


class Recovery:
    """Brings sessions back from the store's log, and keeps projections true to it."""

    def __init__(
        self,
        settings: Settings,
        services: SessionServices,
        registry: SessionRegistry,
        tasks: BackgroundTasks,
        idle: IdleReaper,
        lifecycle: Lifecycle,
        *,
        terminate: Callable[[str, str, str | None], Coroutine[Any, Any, None]],
    ) -> None:
        self._services = services
        self._registry = registry
        self._tasks = tasks
        self._idle = idle
        self._lifecycle = lifecycle
        self._terminate = terminate  # by id, quietly: for a projection the log cannot rebuild
        self._clock = services.clock
        self._default_config = settings.session_defaults
        self._started_at = 0.0
        # Sessions whose projection is being rebuilt from the log (an apply failed after a
        # commit), with the task doing it.
        self._rebuilding: dict[str, asyncio.Task[None]] = {}
        #: Called with each session loaded from the store, once its recovery is committed (the
        #: runs it left queued are queued again there: :meth:`jidoka.runs.service.Runs.resume`).
        self.on_loaded: list[Callable[[Session], None]] = []

    async def start(self) -> None:
        """Note when this node started; nothing is read from the store (sessions load lazily,
        by id: :meth:`load`). A stored session's time-out counts from no earlier than this."""
        self._started_at = self._clock.monotonic()

    @property
    def started_at(self) -> float:
        return self._started_at

    # --- loading ----------------------------------------------------------------------------------

    async def find(self, session_id: str) -> StoredSession | None:
        """The store's head for a session this node may load: ``None`` for an id of the wrong
        shape or one being opened here (neither is looked up)."""
        if not is_session_id(session_id) or session_id in self._registry.opening:
            return None
        return await self._services.store.find_session(session_id)

    async def load(self, session_id: str) -> Session | None:
        """The live session, found in the store and loaded if this node has not loaded it:
        once, however many callers ask at the same time (they share one lookup and one load).

        ``None`` if there is no live session of that id: the store holds none, or holds one
        that ended (then remembered as a tombstone, so :meth:`SessionRegistry.missing` answers
        ``terminated`` with its reason). Raises :class:`SessionTerminated` if the session was
        found but could not come back (corrupt, or caught mid-creation by a crash)."""
        registry = self._registry
        session = registry.live.get(session_id)
        if session is not None:
            return session
        loading = registry.loading
        pending = loading.get(session_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Session | None] = asyncio.get_running_loop().create_future()
        loading[session_id] = future
        try:
            found = await self._find_and_load(session_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: concurrent callers re-raise it themselves
            raise
        else:
            future.set_result(found)
            return found
        finally:
            del loading[session_id]

    async def _find_and_load(self, session_id: str) -> Session | None:
        if self._services.ownership is not None:
            return await self._take_and_load(session_id)
        registry = self._registry
        stored = await self.find(session_id)
        session = registry.live.get(session_id)
        if session is not None:  # restored while the store was asked
            return session
        if stored is None or session_id in registry.opening or session_id in registry.tombstones:
            return None
        if stored.status == Status.TERMINATED.value:
            await self._recall(session_id)
            return None
        return await self._load_now(session_id, stored)

    async def _take_and_load(self, session_id: str) -> Session | None:
        """:meth:`_find_and_load` on a node of a cluster: take the session first (the head is
        read in the same statement), so it is ours before the log is read and from then on
        nobody else appends to it."""
        ownership = self._services.ownership
        assert ownership is not None
        registry = self._registry
        if not is_session_id(session_id) or session_id in registry.opening:
            return None
        taken = await ownership.take(session_id)  # NotOwner: a live node has it
        session = registry.live.get(session_id)
        if session is not None:  # restored while the store was asked
            return session
        head = taken.head
        if head is None or session_id in registry.opening or session_id in registry.tombstones:
            return None
        if head.status == Status.TERMINATED.value:
            await self._recall(session_id)
            return None
        if taken.fence is None:
            return None
        lost = taken.previous is not None and taken.previous != ownership.node_id
        return await self._load_now(session_id, head, REASON_OWNER_LOST if lost else REASON_RESTART)

    async def _load_now(
        self, session_id: str, stored: StoredSession, reason: str = REASON_RESTART
    ) -> Session:
        try:
            state, snapshot_seq = await load_state(self._services.store, session_id)
        except CorruptSession as exc:
            logger.error("%s", exc)
            await self._bury_corrupt(session_id, stored, str(exc))
            raise SessionTerminated(session_id, reason=REASON_ERROR) from exc
        await self._check_project_root(session_id, state)
        session = Session(state, self._services)
        session.snapshot_seq = snapshot_seq
        if state.config == self._default_config:
            state.config = self._default_config
        session.idle_since = self._quiet_since(state)
        self._registry.live[session_id] = session
        status = state.status
        if status is Status.INITIALIZING:
            async with session.lock:
                await session.commit(
                    [
                        event_item(SessionStatusData(status="terminated", previous=status.value)),
                        event_item(SessionTerminatedData(reason=REASON_ERROR, error=None)),
                    ]
                )
            await self._lifecycle.retire(session)
            raise SessionTerminated(session_id, reason=REASON_ERROR)
        if status is Status.TERMINATING:
            self._tasks.spawn(self._finish_terminating(session), f"jidoka:{session_id}:terminate")
            return session
        await self._settle_loaded(session, reason)
        self._idle.schedule_timeout(session)
        if state.status is Status.ACTIVE:  # taken over in use: idle on its own timer
            session.last_activity = self._clock.monotonic()
            self._idle.touch(session)
        for hook in self.on_loaded:
            hook(session)
        return session

    async def _check_project_root(self, session_id: str, state: SessionState) -> None:
        """On a node of a cluster: refuse (and hand back) a session whose project files this
        node cannot see; its tools would run against nothing, or against another tree."""
        ownership = self._services.ownership
        root = state.project_root
        if ownership is None or root is None:
            return
        if await self._services.blocking(os.path.isdir, root):
            return
        with contextlib.suppress(StoreError, RuntimeClosed):
            await ownership.hand_over([session_id])
        raise ProjectRootUnavailable(session_id, root, ownership.node_id)

    def _quiet_since(self, state: SessionState) -> float:
        """When, on this node's monotonic clock, a loaded session last did anything: its last
        stored event, but never before this node started. A session nobody touched while the
        node was down is not charged for the downtime (its time-out counts from the start, as
        it always has), and one written by this node since counts from that write."""
        now = self._clock.monotonic()
        if state.updated_at is None:
            return now
        quiet = max(self._clock.time() - state.updated_at.timestamp(), 0.0)
        return max(now - quiet, self._started_at)

    async def _settle_loaded(self, session: Session, reason: str = REASON_RESTART) -> None:
        """In one commit, what a session brought back from its log must record: an ``active``
        one goes ``idle`` after a restart (nobody is using it now; one taken from a lost node
        stays ``active``), and a turn the process died in the middle
        of ends: writes that waited for an approval are denied (nothing was written), and the
        agent's status says ``failed`` with reason ``restart`` (or ``cancelled`` with reason
        ``owner_lost`` when another node of a cluster had the session)."""
        state = session.state
        items: list[tuple[EventType, dict[str, Any]]] = []
        if state.status is Status.ACTIVE and reason != REASON_OWNER_LOST:
            # Taken over from a lost node, it is in use (a command is taking it): it stays
            # active, and goes idle on its own timer like any active session.
            items.append((EventType.SESSION_STATUS, status_data(Status.ACTIVE, Status.IDLE)))
        items.extend(
            event_item(ApprovalDecidedData(call_id=call_id, allow=False, reason=reason))
            for call_id in sorted(state.pending_approvals or ())
        )
        if state.agent_status in ("thinking", "calling_tool"):
            # Interrupted by the loss of its node: ``cancelled``, as a cancelled turn reads.
            status = "cancelled" if reason == REASON_OWNER_LOST else "failed"
            items.append(event_item(AgentStatusData(status=status, reason=reason)))
        # The runs it was running end after the agent's status, as a turn's run does.
        items.extend(
            event_item(
                RunCompletedData(
                    run_id=run_id,
                    status="interrupted",
                    message=None,
                    usage=None,
                    error=None,
                    reason=reason,
                )
            )
            for run_id, run_status in (state.runs or {}).items()
            if run_status == "running"
        )
        if items:
            async with session.lock:
                await session.commit(items)

    async def _finish_terminating(self, session: Session) -> None:
        """A session caught mid-termination by a crash: finish the job."""
        session.terminating = True
        async with session.lock:
            await session.commit(
                [
                    event_item(SessionStatusData(status="terminated", previous="terminating")),
                    event_item(SessionTerminatedData(reason="interrupted", error=None)),
                ]
            )
        await self._lifecycle.retire(session)

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
        self._registry.remember(state)
        store = self._services.store
        last = stored.last_seq
        with contextlib.suppress(StoreError, RuntimeClosed):  # best effort: mark it in the log
            last = await store.last_seq(session_id)
            await store.append(
                session_id,
                [
                    Event(
                        EventType.SESSION_STATUS,
                        session_id,
                        last + 1,
                        when,
                        data_of(
                            SessionStatusData(
                                status="terminated", previous=stored.status, error=error
                            )
                        ),
                    ),
                    Event(
                        EventType.SESSION_TERMINATED,
                        session_id,
                        last + 2,
                        when,
                        data_of(SessionTerminatedData(reason=REASON_ERROR, error=error)),
                    ),
                ],
            )

    async def _recall(self, session_id: str) -> None:
        """Remember a session the store holds a terminated log for, as a tombstone.

        Tombstones live in memory and are bounded, but the durable log outlives both a restart
        and the tombstone's eviction: rebuilt from it, such a session still answers
        ``terminated`` with its reason (as the lifecycle contract says) instead of "not found".
        The log is replayed once (the tombstone then answers); one that cannot be replayed
        leaves the id unknown.
        """
        store = self._services.store
        try:
            state, _ = await load_state(store, session_id)
        except (CorruptSession, StoreError):
            return  # nothing trustworthy to remember: the id stays unknown
        if state.status is not Status.TERMINATED:
            return  # restored while the log was read: not a finished session
        registry = self._registry
        if session_id in registry.live or session_id in registry.opening:
            return  # restored while the log was read (this load is in ``loading`` itself)
        registry.remember(state)

    # --- keeping the projection true to the log ---------------------------------------------------

    def rebuild_soon(self, session: Session, error: Exception) -> None:
        """Rebuild ``session``'s projection from its log in the background (once at a time)."""
        sid = session.session_id
        if sid not in self._rebuilding:
            self._rebuilding[sid] = self._tasks.spawn(
                self._rebuild(session, error), f"jidoka:{sid}:rebuild"
            )

    def rebuilding(self, session_id: str) -> asyncio.Task[None] | None:
        """The task rebuilding the session's projection, if one is."""
        return self._rebuilding.get(session_id)

    async def _rebuild(self, session: Session, error: Exception) -> None:
        """Rebuild a projection from the log after applying committed events to it failed.

        ``apply`` is pure and commands are validated before they commit, so that failure is a
        bug, and the projection no longer matches the log. The log is the truth: replay it, as
        a load after a restart does, under the session's lock (commands queued before this ran
        on the stale projection; they were numbered right, see ``postcommit.after_commit``).
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
                state, _ = await load_state(self._services.store, sid)
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
            await self._terminate(sid, REASON_ERROR, f"{detail}its log ({exc!r:.200})")
            return
        finally:
            self._rebuilding.pop(sid, None)
        logger.warning(
            "session %s: state rebuilt from its log (seq %d)",
            sid,
            session.state.seq,
            extra={"session_id": sid},
        )

    def snapshot(self, session: Session) -> None:
        """Write a snapshot in the background (only durable stores profit from one)."""
        if not self._services.store.durable:
            session.snapshot_seq = session.state.seq
            return
        session.snapshot_seq = seq = session.state.seq
        state = encode_state(session.state)
        store = self._services.store
        sid = session.session_id

        async def write() -> None:
            try:
                await store.write_snapshot(sid, seq, state)
            except (StoreError, RuntimeClosed) as exc:
                logger.warning("session %s: snapshot at seq %d not written: %s", sid, seq, exc)

        self._tasks.spawn(write(), f"jidoka:{sid}:snapshot")
