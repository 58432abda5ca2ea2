"""Timing out the stored sessions nobody touches: a sweep through the store's index of quiet ones.

Sessions load lazily (by id, on first use), so a session a durable store kept through a restart
has no timer on this node until something asks for it. Left alone, one would never time out:
its ``timeout_minutes`` would not be honoured, and with ``persistence_enabled`` it would never
be saved. Three ways were weighed:

- a timer per stored session at start-up (what the runtime did before): start-up then reads
  every stored session, which is what issue 15 forbids;
- a check when a session is loaded: cheap, and done anyway (a loaded session's time-out counts
  from its last stored event, see ``Recovery._quiet_since``), but a session nobody asks for is
  never loaded, so on its own it times out nothing;
- a periodic sweep through the store's index of sessions by last status change
  (``SessionStore.quiet_sessions``): each pass reads only the sessions that went quiet since
  the last pass, a page at a time, and loads them; loading sets each one's real deadline from
  its own config, and the idle reaper times it out.

This module is the third, on top of the second. Its choices:

- the threshold is the *default* ``timeout_minutes`` (the store knows no session's config): a
  stored session quiet longer than that is loaded and judged by its own config; one with a
  shorter time-out of its own is timed out up to the default late, one with a longer one stays
  loaded until its deadline, one that never times out stays loaded (what ``max_sessions`` does
  not count against creation: it bounds creation, not loads);
- the first pass runs one default time-out after the node started, not at start-up: a stored
  session's time-out never counts from before the start (nobody could touch it while the node
  was down), so nothing can be due earlier, and start-up reads nothing;
- passes repeat every default ``idle_after_seconds`` (a stored session is timed out at most that
  late); a cursor ``(updated_at, session_id)`` carries over, so a pass reads only what went
  quiet since the last one, not the sessions it loaded before;
- loads run a few at a time (:data:`QuietSweep.PARALLEL`), and a pass that fails (the store is
  down) keeps its cursor and is retried at the next;
- a store that is not durable needs no sweep (all its sessions live in this process), nor does
  a default of ``timeout_minutes=0`` (sessions with a time-out of their own then time out from
  their first load on).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Final

from ..clock import Clock
from ..config import Settings
from ..store.base import SessionStore
from .background import BackgroundTasks
from .periodic import PeriodicPass
from .registry import SessionRegistry

__all__ = ["QuietSweep"]

logger = logging.getLogger("jidoka.manager")

_MICROSECOND: Final = timedelta(microseconds=1)


class QuietSweep(PeriodicPass):
    """Finds the stored sessions quiet past the default time-out and loads them."""

    WHAT = "the sweep for quiet stored sessions"

    #: Sessions read from the store at a time.
    PAGE: Final = 500
    #: Sessions loaded at once.
    PARALLEL: Final = 16

    def __init__(
        self,
        settings: Settings,
        store: SessionStore,
        clock: Clock,
        registry: SessionRegistry,
        tasks: BackgroundTasks,
        *,
        load: Callable[[str], Awaitable[None]],
    ) -> None:
        defaults = settings.session_defaults
        self._timeout = defaults.timeout_minutes * 60.0
        super().__init__(
            clock, tasks, name="jidoka:sweep", first_delay=self._timeout,
            interval=defaults.idle_after_seconds,
        )  # fmt: skip
        self.enabled = store.durable and self._timeout > 0
        self._store = store
        self._registry = registry
        self._load = load  # quietly: the session may be gone, corrupt, or loaded meanwhile
        #: Where the last pass stopped: ``(updated_at, session_id)`` of the last session read.
        self.cursor: tuple[datetime, str] | None = None
        #: Sessions loaded by the sweep so far (for tests and logs).
        self.loaded = 0

    async def sweep(self) -> int:
        """One pass: load every stored session quiet since before one default time-out ago
        that this node holds in no form, page by page from the cursor. Returns how many."""
        registry = self._registry
        # Quiet for the whole time-out: changed at or before this moment (hence one microsecond
        # more, ``quiet_sessions`` being strict).
        before = datetime.fromtimestamp(self._clock.time() - self._timeout, UTC) + _MICROSECOND
        loaded = 0
        while not self._closed:
            page = await self._store.quiet_sessions(before, after=self.cursor, limit=self.PAGE)
            wanted = [
                stored.session_id
                for stored in page
                if not registry.known(stored.session_id)
                and stored.session_id not in registry.tombstones
            ]
            for start in range(0, len(wanted), self.PARALLEL):
                chunk = wanted[start : start + self.PARALLEL]
                await asyncio.gather(*(self._load(sid) for sid in chunk))
            loaded += len(wanted)
            self.loaded += len(wanted)
            if page:
                last = page[-1]
                assert last.updated_at is not None  # quiet_sessions only returns dated heads
                self.cursor = (last.updated_at, last.session_id)
            if len(page) < self.PAGE:
                break
        if loaded:
            logger.info("loaded %d stored sessions quiet past their time-out", loaded)
        return loaded
