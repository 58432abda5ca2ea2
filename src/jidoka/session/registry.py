"""Which sessions this node holds: the loaded ones, those being loaded or opened, the tombstones.

Every other part of the session manager asks here whether a session is loaded, being loaded
from the store, being opened (created or restored: its first commit in flight), or terminated,
and records here the moves between those. It holds no task and does no I/O, so a lookup never
waits. A session a durable store keeps but nobody has touched since this node started is in
none of these: it is found by id on first use (:mod:`.recovery`) and listed from the store's
index (:mod:`.listing`), so nothing here grows with the number of stored sessions. It also
counts the sessions being created, so that ``max_sessions`` holds while their first commits are
in flight, and says whether the manager takes new work at all (started, not closed).

Terminated sessions leave a bounded, ordered set of tombstones (oldest dropped first), so that
asking for one answers ``terminated`` with its reason instead of "not found".
"""

from __future__ import annotations

import asyncio
import bisect
from collections import OrderedDict

from ..config import Settings
from ..errors import (
    InvalidArgument,
    JidokaError,
    LimitExceeded,
    RuntimeClosed,
    SessionNotFound,
    SessionTerminated,
)
from .info import Tombstone
from .session import Session
from .state import REASON_ERROR, SessionState, Status

__all__ = ["SessionRegistry"]


class SessionRegistry:
    """The sessions of one runtime, by id, and whether it is open for work."""

    __slots__ = (
        "_creating",
        "_settings",
        "_started",
        "closed",
        "live",
        "loading",
        "opening",
        "tombstones",
    )

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.live: dict[str, Session] = {}
        # Sessions being loaded from the store (None: found to be no live session).
        self.loading: dict[str, asyncio.Future[Session | None]] = {}
        # Sessions whose creation or restore is committing: a lookup must not load them from
        # the store meanwhile (that would make a second Session of the same log).
        self.opening: set[str] = set()
        self.tombstones: OrderedDict[str, Tombstone] = OrderedDict()
        self._creating = 0  # sessions reserved and not live yet (see reserve)
        self._started = False
        self.closed = False

    # --- open for work ----------------------------------------------------------------------------

    def open(self) -> None:
        self._started = True

    def check_open(self) -> None:
        if self.closed or not self._started:
            raise RuntimeClosed("the runtime is not running (use `async with Runtime()`)")

    def reserve(self) -> None:
        """Count a session about to be created against ``max_sessions``; :meth:`unreserve`
        once its creation has committed (it is then live) or failed.

        ``max_sessions`` bounds what this node holds in memory: the sessions loaded here and
        those being created. Sessions a durable store keeps but this node has not loaded do not
        count (a node started against a million of them can still create one), and loading a
        stored session on first use is never refused: it exists already."""
        limit = self._settings.max_sessions
        count = self.live_count() + self._creating
        if count >= limit:
            raise LimitExceeded("max_sessions", limit, actual=count)
        self._creating += 1

    def unreserve(self) -> None:
        self._creating -= 1

    # --- lookup -----------------------------------------------------------------------------------

    def get(self, session_id: object) -> Session:
        """The loaded live session, or :class:`SessionTerminated` / :class:`SessionNotFound`
        (also for a session the store holds that is not loaded yet: never waits, so it cannot
        ask the store; ``SessionManager.session`` does)."""
        self.check_open()
        session = self.live.get(session_id) if isinstance(session_id, str) else None
        if session is not None:
            return session
        raise self.missing(session_id if isinstance(session_id, str) else repr(session_id))

    def missing(self, sid: str) -> JidokaError:
        """The error for an id that names no live session."""
        tombstone = self.tombstones.get(sid)
        if tombstone is not None:
            return SessionTerminated(sid, reason=tombstone.info.reason)
        return SessionNotFound(sid)

    def known(self, session_id: str) -> bool:
        """Whether the id names a session this node holds: loaded, being loaded or opened."""
        return session_id in self.live or session_id in self.loading or session_id in self.opening

    def owner_nowait(self, session_id: str) -> tuple[bool, str | None]:
        """``(True, owner)`` if the registry knows the session's owner: a loaded session's, a
        tombstone's (a stored one's is the store's to tell)."""
        session = self.live.get(session_id)
        if session is not None:
            return True, session.state.owner
        tombstone = self.tombstones.get(session_id)
        if tombstone is not None:
            return True, tombstone.info.owner
        return False, None

    def listing_filter(self, status: object, *, limit: object, after: object) -> Status | None:
        """Check a listing's arguments; the status it asks for (``None``: any)."""
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
        return wanted

    def page(self, wanted: Status | None, *, after: str | None, owner: str | None) -> list[str]:
        """The ids this node holds that a listing looks at, in id (= creation) order: loaded
        sessions by their status and owner in memory, tombstones, those after ``after``.
        What a durable store holds beyond them is merged in by :mod:`.listing`."""
        ids: list[str] = []
        if wanted is not Status.TERMINATED:
            ids.extend(
                sid
                for sid, session in self.live.items()
                if (wanted is None or session.state.status is wanted)
                and (owner is None or session.state.owner == owner)
            )
        if wanted is None or wanted is Status.TERMINATED:
            ids.extend(
                sid
                for sid, tombstone in self.tombstones.items()
                if owner is None or tombstone.info.owner == owner
            )
        ids.sort()
        if after is not None:
            ids = ids[bisect.bisect_right(ids, after) :]
        return ids

    def live_count(self) -> int:
        """Live sessions loaded on this node (what ``max_sessions`` bounds, with those being
        created)."""
        return len(self.live)

    def live_ids(self) -> frozenset[str]:
        """The ids of the live sessions loaded on this node."""
        return frozenset(self.live)

    def tombstone_ids(self) -> frozenset[str]:
        return frozenset(self.tombstones)

    # --- tombstones -------------------------------------------------------------------------------

    def remember(self, state: SessionState) -> None:
        """Keep a terminated session's tombstone, the oldest dropped beyond the bound."""
        self.tombstones[state.session_id] = Tombstone(state)
        while len(self.tombstones) > self._settings.max_tombstones:
            self.tombstones.popitem(last=False)

    def retire(self, session: Session) -> None:
        """Replace a finished session by its tombstone."""
        self.live.pop(session.session_id, None)
        if session.state.status is not Status.TERMINATED:
            # The final commit failed (store error): remember it as terminated all the same.
            session.state.status = Status.TERMINATED
            session.state.reason = session.state.reason or REASON_ERROR
        self.remember(session.state)
