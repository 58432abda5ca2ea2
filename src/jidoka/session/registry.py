"""Which sessions exist: the live map, the recovered ones not loaded yet, and the tombstones.

Every other part of the session manager asks here whether a session is live, dormant (found in
the store at start-up and not loaded yet), being loaded, or terminated, and records here the
moves between those. It holds no task and does no I/O, so a lookup never waits: what needs the
store (loading a dormant session, recalling a terminated one from its log) is
:mod:`.recovery`'s, on top of this. It also counts the sessions being created, so that
``max_sessions`` holds while their first commits are in flight, and says whether the manager
takes new work at all (started, not closed).

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
from ..store.base import StoredSession
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
        "dormant",
        "live",
        "loading",
        "tombstones",
    )

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.live: dict[str, Session] = {}
        # Sessions the store holds live logs for, found at start-up and not loaded yet.
        self.dormant: dict[str, StoredSession] = {}
        self.loading: dict[str, asyncio.Future[Session]] = {}
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
        once its creation has committed (it is then live) or failed."""
        limit = self._settings.max_sessions
        count = self.live_count() + self._creating
        if count >= limit:
            raise LimitExceeded("max_sessions", limit, actual=count)
        self._creating += 1

    def unreserve(self) -> None:
        self._creating -= 1

    # --- lookup -----------------------------------------------------------------------------------

    def get(self, session_id: object) -> Session:
        """The loaded live session, or :class:`SessionTerminated` / :class:`SessionNotFound`.

        A session recovered from the store but not loaded yet raises ``InvalidArgument``.
        """
        self.check_open()
        session = self.live.get(session_id) if isinstance(session_id, str) else None
        if session is not None:
            return session
        sid = session_id if isinstance(session_id, str) else repr(session_id)
        if sid in self.dormant:
            raise InvalidArgument(
                "the session is stored but not loaded yet", argument="session_id", session_id=sid
            )
        raise self.missing(sid)

    def missing(self, sid: str) -> JidokaError:
        """The error for an id that names no live session."""
        tombstone = self.tombstones.get(sid)
        if tombstone is not None:
            return SessionTerminated(sid, reason=tombstone.info.reason)
        return SessionNotFound(sid)

    def known(self, session_id: str) -> bool:
        """Whether the id names a live session, loaded, dormant or being loaded."""
        return session_id in self.live or session_id in self.dormant or session_id in self.loading

    def owner_nowait(self, session_id: str) -> tuple[bool, str | None]:
        """``(True, owner)`` if the registry knows the session's owner without loading it: a
        live session's, the one the store recorded for a dormant one, a tombstone's."""
        session = self.live.get(session_id)
        if session is not None:
            return True, session.state.owner
        stored = self.dormant.get(session_id)
        if stored is not None:
            return True, stored.owner
        tombstone = self.tombstones.get(session_id)
        if tombstone is not None:
            return True, tombstone.info.owner
        return False, None

    def page(
        self, status: object, *, limit: int | None, after: str | None, owner: str | None
    ) -> list[str]:
        """The ids a listing looks at, in id (= creation) order: live, dormant and remembered,
        by status and owner, those after ``after``. ``limit`` is checked here and applied by
        the caller, which loads the sessions on the page (see ``SessionManager.list_sessions``).

        A dormant session counts as ``idle``; its owner is the one the store recorded.
        """
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
                for sid, session in self.live.items()
                if (wanted is None or session.state.status is wanted)
                and (owner is None or session.state.owner == owner)
            )
            if wanted is None or wanted is Status.IDLE:
                ids.extend(
                    sid
                    for sid, stored in self.dormant.items()
                    if owner is None or stored.owner == owner
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
        """Live sessions, loaded or not."""
        return len(self.live) + len(self.dormant)

    def live_ids(self) -> frozenset[str]:
        return frozenset(self.live).union(self.dormant)

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
