"""Retention: removing what is stored for sessions once it is older than the settings allow.

Two settings, both off by default: ``terminated_ttl`` (a terminated session's log, snapshots and
head go that long after it ended) and ``saved_ttl`` (a saved copy goes that long after it was
saved; only the copy). A periodic sweep removes what has expired, and ``purge_session`` removes
one session's rows at once (:meth:`Retention.purge`: the manager's ``retention``). The sweep's
choices:

- it asks the store, never this node's memory: expired sessions are found through an index of
  the terminated ones by when they ended (``SessionStore.expire_terminated``), saved copies
  through one by age (``expire_saved``), a bounded batch (``retention_batch``) per transaction,
  batch after batch until one comes back short;
- the store removes and reports in one step, each session by one call only (on Postgres the
  batch's heads are locked ``SKIP LOCKED``, and the delete re-checks that the session is still
  terminated), so every node of a cluster may sweep at the same time: they take disjoint
  batches, a session restored meanwhile is left alone, and each removed session gets exactly
  one ``session_purged`` event on the global stream (reason ``expired``). A second pass over
  what a first one removed finds nothing;
- a live session is never touched (the store's batch holds terminated sessions only), and a
  terminated session's saved copy stays: saving is an explicit "keep this", governed by
  ``saved_ttl`` alone;
- times are the runtime's clock (a :class:`~jidoka.FakeClock` in tests): a session's
  ``updated_at`` is the time of the event that ended it, written with that clock;
- the first pass runs one ``retention_sweep_seconds`` after start (start-up reads nothing), then
  one every ``retention_sweep_seconds``; a pass that fails (the store is down) is logged and
  the next one tries again, from scratch (there is no cursor: what was removed is gone).

What this node holds of a removed session in memory (its tombstone, file cache entries) is
dropped with it (:meth:`Retention.forget`), and so are this node's tombstones of sessions
that ended before the cutoff: on the memory store, which frees a log as its session ends, the
tombstone is all that is left, and its expiry is the one reported (``session_purged``); on a
durable store the node that removed the rows reported it, and the tombstone goes quietly.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, Final

from ..clock import Clock
from ..config import Settings
from ..errors import (
    InvalidTransition,
    SessionNotFound,
    SessionTerminated,
)
from ..events import Event, EventType
from ..ids import is_session_id
from ..payloads import SessionPurgedData, data_of
from ..store.base import SessionStore, StoredSession
from .background import BackgroundTasks
from .info import SessionInfo, Tombstone
from .periodic import PeriodicPass
from .registry import SessionRegistry
from .session import SessionServices
from .state import REASON_PURGED, Status

__all__ = ["REASON_EXPIRED", "REASON_PURGE_REQUESTED", "Retention", "RetentionSweep"]

logger = logging.getLogger("jidoka.manager")

#: ``session_purged``'s ``reason``: removed by ``purge_session``, or by the sweep.
REASON_PURGE_REQUESTED: Final = "requested"
REASON_EXPIRED: Final = "expired"


class RetentionSweep(PeriodicPass):
    """Removes expired terminated sessions and saved copies, a bounded batch at a time."""

    WHAT = "the retention sweep"

    def __init__(
        self,
        settings: Settings,
        store: SessionStore,
        clock: Clock,
        tasks: BackgroundTasks,
        *,
        purged: Callable[[StoredSession, str], None],
        forget_ended: Callable[[datetime], int],
    ) -> None:
        self._terminated_ttl = settings.terminated_ttl
        self._saved_ttl = settings.saved_ttl
        interval = settings.retention_sweep_seconds
        super().__init__(
            clock, tasks, name="jidoka:retention", first_delay=interval, interval=interval
        )
        self._batch = settings.retention_batch
        self.enabled = self._terminated_ttl is not None or self._saved_ttl is not None
        self._store = store
        self._purged = purged  # forget what this node holds of it, and say so on the bus
        self._forget_ended = forget_ended  # this node's tombstones of sessions ended before
        #: Terminated sessions and saved copies this node's sweeps removed (tests, logs).
        self.expired_sessions = 0
        self.expired_saved = 0

    def _cutoff(self, ttl: float) -> datetime:
        return datetime.fromtimestamp(self._clock.time() - ttl, UTC)

    async def sweep(self) -> tuple[int, int]:
        """One pass: every expired terminated session, then every expired saved copy, a batch
        (one transaction) at a time. Returns how many of each this call removed."""
        sessions = saved = 0
        if self._terminated_ttl is not None:
            before = self._cutoff(self._terminated_ttl)
            # A store that is not durable frees a log as its session ends: nothing to find
            # (and its scan would read every live log).
            while self._store.durable and not self._closed:
                batch = await self._store.expire_terminated(before, limit=self._batch)
                for head in batch:
                    self._purged(head, REASON_EXPIRED)
                sessions += len(batch)
                if len(batch) < self._batch:
                    break
            # What this node remembers of sessions ended before the cutoff goes too (on a
            # store that frees a log as its session ends, the tombstone is all there is).
            sessions += self._forget_ended(before)
        if self._saved_ttl is not None:
            before = self._cutoff(self._saved_ttl)
            while not self._closed:
                copies = await self._store.expire_saved(before, limit=self._batch)
                saved += len(copies)
                if len(copies) < self._batch:
                    break
        self.expired_sessions += sessions
        self.expired_saved += saved
        if sessions or saved:
            logger.info(
                "retention removed %d terminated sessions and %d saved copies", sessions, saved
            )
        return sessions, saved


class Retention:
    """Purging sessions, and the retention sweep, for the session manager (its ``retention``):
    what removes a session's stored rows, and what this node then forgets of it."""

    def __init__(
        self,
        settings: Settings,
        services: SessionServices,
        registry: SessionRegistry,
        tasks: BackgroundTasks,
        terminate: Callable[..., Coroutine[Any, Any, SessionInfo]],
    ) -> None:
        self._services = services
        self._registry = registry
        self._terminate = terminate  # the manager's own, checks included
        self.sweeper = RetentionSweep(
            settings,
            services.store,
            services.clock,
            tasks,
            purged=self.forget,
            forget_ended=self.forget_ended,
        )

    def start(self, started_at: float) -> None:
        self.sweeper.start(started_at)

    async def aclose(self) -> None:
        await self.sweeper.aclose()

    async def sweep(self) -> tuple[int, int]:
        """Run one retention pass now (what the periodic sweep does): the terminated sessions
        and saved copies removed. For tests on a fake clock, and operators' scripts."""
        self._registry.check_open()
        return await self.sweeper.sweep()

    async def purge(self, session_id: object) -> None:
        """Remove everything stored for a session: a live one is terminated first (reason
        ``purged``, so its log ends properly and its workers stop), then its log, snapshots,
        saved copy and head go in one store transaction, and what this node holds of it
        (tombstone, cache entries) with them; ``session_purged`` goes out on the global stream.
        Afterwards the session is not found. :class:`SessionNotFound` if nothing was stored
        (a second purge); :class:`InvalidTransition` while another termination of it is
        still running (purge again once it has ended)."""
        registry = self._registry
        registry.check_open()
        if not isinstance(session_id, str) or not is_session_id(session_id):
            raise SessionNotFound(session_id if isinstance(session_id, str) else repr(session_id))
        sid = session_id
        # Already ended (a tombstone answers), found corrupt while loading (buried as
        # terminated: purging it is what is left to do), or nothing live by that id.
        with contextlib.suppress(InvalidTransition, SessionTerminated, SessionNotFound):
            await self._terminate(sid, reason=REASON_PURGED)
        if sid in registry.live or sid in registry.loading or sid in registry.opening:
            # Ending in another task, or brought back (restored) meanwhile: not ours to remove.
            raise InvalidTransition(sid, Status.TERMINATING, Status.TERMINATED)
        store = self._services.store
        head = await store.find_session(sid)
        tombstone = registry.tombstones.get(sid)
        owner = head.owner if head is not None else None
        if head is None and tombstone is not None:
            owner = tombstone.info.owner
        if head is None and tombstone is None:
            saved = await store.load_saved(sid)
            owner = saved[0].owner if saved is not None else None
        if not await store.purge(sid) and tombstone is None:
            raise SessionNotFound(sid)
        last = head.last_seq if head is not None else 0
        gone = StoredSession(sid, Status.TERMINATED.value, last, owner)
        self.forget(gone, REASON_PURGE_REQUESTED)

    def forget(self, head: StoredSession, reason: str) -> None:
        """A session's stored rows were removed (purged, or expired): drop what this node
        holds of it, and tell the global stream (once: only the call that removed the rows
        comes here)."""
        sid = head.session_id
        self._registry.tombstones.pop(sid, None)
        services = self._services
        services.cache.evict_session(sid)
        when = datetime.fromtimestamp(services.clock.time(), UTC)
        data = data_of(SessionPurgedData(reason=reason, owner=head.owner))
        services.bus.publish_nowait(Event(EventType.SESSION_PURGED, sid, head.last_seq, when, data))

    def forget_ended(self, before: datetime) -> int:
        """Drop the tombstones of sessions that ended before ``before`` (retention); on a store
        that keeps no log of ended sessions, report each as purged. How many were reported."""
        tombstones = self._registry.tombstones
        ended = [sid for sid, t in tombstones.items() if t.info.updated_at < before]
        report = not self._services.store.durable
        for sid in ended:
            tombstone = tombstones.pop(sid)
            if report:
                gone = StoredSession(sid, Status.TERMINATED.value, 0, tombstone.info.owner)
                self.forget(gone, REASON_EXPIRED)
        return len(ended) if report else 0

    async def recheck(self, tombstone: Tombstone) -> SessionInfo:
        """What a tombstone answers for its session; on a node of a cluster, once the store
        confirms the session is still stored (one indexed read): another node may have purged
        it (or expired it), and then this node's memory of it goes too (``SessionNotFound``)."""
        sid = tombstone.info.session_id
        clustered = self._services.ownership is not None
        if clustered and await self._services.store.find_session(sid) is None:
            self._registry.tombstones.pop(sid, None)
            raise SessionNotFound(sid)
        return tombstone.info
