"""Retention: removing what is stored for sessions once it is older than the settings allow.

Two settings, both off by default: ``terminated_ttl`` (a terminated session's log, snapshots and
head go that long after it ended) and ``saved_ttl`` (a saved copy goes that long after it was
saved; only the copy). A periodic sweep removes what has expired, and ``purge_session`` removes
one session's rows at once (:meth:`~.manager.SessionManager.purge`). The sweep's choices:

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
dropped with it (:meth:`SessionManager._forget`), and so are this node's tombstones of sessions
that ended before the cutoff: on the memory store, which frees a log as its session ends, the
tombstone is all that is left, and its expiry is the one reported (``session_purged``); on a
durable store the node that removed the rows reported it, and the tombstone goes quietly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from ..clock import Clock
from ..config import Settings
from ..errors import RuntimeClosed, StoreError
from ..store.base import SessionStore, StoredSession
from .background import BackgroundTasks
from .timers import TimerQueue

__all__ = ["REASON_EXPIRED", "REASON_PURGE_REQUESTED", "RetentionSweep"]

logger = logging.getLogger("jidoka.manager")

#: ``session_purged``'s ``reason``: removed by ``purge_session``, or by the sweep.
REASON_PURGE_REQUESTED: Final = "requested"
REASON_EXPIRED: Final = "expired"

_KEY: Final = "retention"


class RetentionSweep:
    """Removes expired terminated sessions and saved copies, a bounded batch at a time."""

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
        self._interval = settings.retention_sweep_seconds
        self._batch = settings.retention_batch
        self.enabled = self._terminated_ttl is not None or self._saved_ttl is not None
        self._store = store
        self._clock = clock
        self._tasks = tasks
        self._purged = purged  # forget what this node holds of it, and say so on the bus
        self._forget_ended = forget_ended  # this node's tombstones of sessions ended before
        self._timers = TimerQueue(clock, self._on_due)
        self._running = False
        self._closed = False
        #: Terminated sessions and saved copies this node's sweeps removed (tests, logs).
        self.expired_sessions = 0
        self.expired_saved = 0

    def start(self, started_at: float) -> None:
        """Schedule the first pass one interval after ``started_at`` (monotonic)."""
        if self.enabled and not self._closed:
            self._timers.schedule(_KEY, started_at + self._interval)
            self._timers.start()

    async def aclose(self) -> None:
        self._closed = True
        await self._timers.aclose()

    def _on_due(self, key: str, when: float) -> None:
        if self._running or self._closed:
            return
        self._running = True
        self._tasks.spawn(self._pass(), "jidoka:retention")

    async def _pass(self) -> None:
        try:
            await self.sweep()
        except (StoreError, RuntimeClosed) as exc:
            logger.warning("the retention sweep failed (tried again later): %s", exc)
        finally:
            self._running = False
            if not self._closed:
                self._timers.schedule(_KEY, self._clock.monotonic() + self._interval)

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
