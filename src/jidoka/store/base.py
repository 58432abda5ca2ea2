"""The session store: where a session's event log lives.

A store holds each session's events keyed by ``(session_id, seq)``. The session code talks only to
this Protocol, so the in-memory store (fast, not durable), the SQLite store and, for scale-out, the
Postgres store are interchangeable; one contract test suite runs against every implementation.

Two promises every implementation keeps:

- an append is all-or-nothing for its batch and refuses a batch that does not start right after
  the last stored event (:class:`SeqConflict`): ``(session_id, seq)`` is unique, so two writers can
  never both win;
- when an append is acknowledged, the events are stored as durably as the store promises
  (``durable``); events are published to subscribers only after that.

Nothing here assumes the store shares the process's memory: every call that may go to disk or
over the network is a coroutine (or, for the session's commit, hands back something to await),
results are values, and start-up reads no list of sessions: a session is found by id on first
use (``find_session``), listed a page at a time from an index (``list_sessions``), and one left
quiet past its time-out is found by another index (``quiet_sessions``). Retention works the
same way: expired sessions and saved copies are removed a bounded batch at a time, found through
indexes of their own (``expire_terminated``, ``expire_saved``), and ``purge`` removes one
session's every row.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Final, Protocol, runtime_checkable

import msgspec

from ..errors import InvalidArgument, NotOwner, StoreError
from ..events import Event, EventType
from .runs import RunIndex

__all__ = [
    "DROPPABLE",
    "LIVE_SESSIONS_PAGE",
    "CommitOutcomeUnknown",
    "OnCommitted",
    "OwnershipLost",
    "SavedSession",
    "SchemaError",
    "SeqConflict",
    "SessionStore",
    "StoreUnavailable",
    "StoredSession",
    "check_drop",
]

#: Called once when an append taken by ``append_nowait`` is settled: with ``None`` once it is
#: committed, with the error if nothing of it was stored.
OnCommitted = Callable[[BaseException | None], None]

#: How many sessions ``list_sessions`` and ``quiet_sessions`` return at most by default.
LIVE_SESSIONS_PAGE: Final = 500


#: The event types ``drop_events`` may delete: those whose content another event of the log
#: holds too. A turn's ``llm_stream_chunk`` events are its answer in pieces, and its
#: ``llm_response`` holds the whole answer; nothing else in a log is redundant, so a gap in a
#: stored log is always dropped chunks (which the projection ignores, see ``apply_stored``).
DROPPABLE: Final = frozenset({EventType.LLM_STREAM_CHUNK})


def check_drop(
    session_id: object, event_type: object, first_seq: object, last_seq: object
) -> EventType:
    """Refuse a ``drop_events`` call the store must not run, naming the argument at fault:
    a store deletes for good, so a bad range or type is an error, never a clamp. Returns the
    type as an :class:`EventType` (a caller may have passed its name)."""
    if not isinstance(session_id, str) or not session_id:
        raise InvalidArgument(
            f"session_id must be a non-empty string, not {session_id!r}", argument="session_id"
        )
    sid = session_id
    if event_type not in DROPPABLE:
        raise InvalidArgument(
            f"only {sorted(DROPPABLE)} events can be dropped, not {event_type!r}",
            argument="event_type",
            session_id=sid,
        )
    for name, seq in (("first_seq", first_seq), ("last_seq", last_seq)):
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise InvalidArgument(
                f"{name} must be a seq (an integer >= 1), not {seq!r}",
                argument=name,
                session_id=sid,
            )
    if isinstance(first_seq, int) and isinstance(last_seq, int) and last_seq < first_seq:
        raise InvalidArgument(
            f"last_seq {last_seq} is before first_seq {first_seq}",
            argument="last_seq",
            session_id=sid,
        )
    return EventType(str(event_type))


class StoredSession(msgspec.Struct, frozen=True):
    """A session's head as the store keeps it: what is known of it without replaying its log."""

    session_id: str
    status: str
    last_seq: int
    #: The principal that owns the session (``None``: created without one). Kept beside the
    #: status so that listing one principal's sessions after a restart needs no session loaded.
    owner: str | None = None
    #: When the session's status last changed (the time of the event that changed it); a store
    #: may also move it on later appends. The runtime uses it only as a lower bound of how long
    #: the session has been quiet (``quiet_sessions``), so either is right.
    updated_at: datetime | None = None


class SavedSession(msgspec.Struct, frozen=True, kw_only=True):
    """A named, self-contained copy of a session (``list_saved_sessions`` returns these)."""

    session_id: str
    saved_at: datetime
    message_count: int
    metadata: dict[str, Any]
    #: The principal that owns the session (``None``: created without one, in process).
    owner: str | None = None


class SeqConflict(StoreError):
    """An append whose first seq is not the next one: another writer got there first."""

    def __init__(self, session_id: str, expected: int, got: int) -> None:
        message = f"session {session_id!r}: append at seq {got} but the log expects {expected}"
        if got > expected:  # a gap: it was queued behind an append that was not stored
            message += " (an earlier append of this session failed; nothing of this one was stored)"
        super().__init__(message, session_id=session_id)
        self.expected = expected
        self.got = got


class SchemaError(StoreError):
    """The database's schema version is newer than this version of Jidoka understands (or the
    database is not a Jidoka database)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached (a database server restarting, a network cut): the call did
    not take effect and may be retried; the store reconnects by itself."""


class CommitOutcomeUnknown(StoreUnavailable):
    """The connection to the store broke while an append was being committed, and the store
    cannot be reached to find out whether it was. Not a failure: the append may be stored. The
    store keeps asking; once its server answers, the session applies the append if it was
    stored (its log, and its event stream, then show it), and it never is stored twice."""


class OwnershipLost(NotOwner, StoreError):
    """An append refused because the session's fence moved on: another node took the session
    (a store shared by several nodes raises it; on one node the fence never changes). Nothing
    of the append was stored, and this holder must not write to the session again."""

    def __init__(self, session_id: str, held: int, current: int | None) -> None:
        now = "gone" if current is None else f"at fence {current}"
        holds = f"held it at fence {held}" if held > 0 else "does not hold it (never took it)"
        NotOwner.__init__(
            self,
            session_id,
            f"session {session_id!r}: this node {holds}, but the session is {now}"
            " (another node owns it); the append was not stored",
        )
        self.held = held
        self.current = current


@runtime_checkable
class SessionStore(RunIndex, Protocol):
    """Where session logs are kept, and the runs index derived from them (:mod:`.runs`)."""

    @property
    def durable(self) -> bool:
        """Whether an acknowledged append survives the process dying."""
        ...

    @property
    def commits_inline(self) -> bool:
        """Whether ``append_nowait`` has always committed by the time it returns (a store in
        this process's memory). A session's commit then has no suspension point, which the
        runtime uses to do small things on the spot instead of in a task of their own."""
        ...

    def append_nowait(
        self,
        session_id: str,
        events: Sequence[Event],
        on_done: OnCommitted | None = None,
    ) -> Awaitable[None] | None:
        """Start appending ``events`` (consecutive seqs of one session) without waiting: the
        path every session command commits by. Called on the event loop; never blocks.

        A batch refused before anything is queued (not consecutive, another session's, the
        store closed) raises here, and ``on_done`` is never called. Otherwise the store has
        taken the batch, and ``on_done(error)`` is called exactly once, on the loop: ``None``
        when the batch is committed, else the :class:`~jidoka.StoreError` (a
        :class:`SeqConflict` found at commit time, a failed commit) with nothing stored. It is
        called before the returned awaitable completes, and even if whoever awaits it was
        cancelled meanwhile: cancelling the awaiter never cancels the append, so the session
        layer can apply committed events there and never fall behind its log.

        Returns ``None`` if the batch was committed before this returned (``on_done(None)``
        has run; a store with ``commits_inline`` always does), else an awaitable that
        completes when ``on_done`` has run and raises what it was given. One exception: a
        store over a network whose connection broke while the commit was in flight, and that
        cannot reach its server to find out whether it was stored, fails the awaitable with
        :class:`CommitOutcomeUnknown` (so the caller is answered in bounded time, truthfully)
        and calls ``on_done`` later, once the log says."""
        ...

    async def append(self, session_id: str, events: Sequence[Event]) -> None:
        """Store ``events`` (consecutive seqs of one session) atomically, or raise StoreError:
        ``append_nowait`` awaited, for callers outside a session's commit."""
        ...

    async def read_events(
        self,
        session_id: str,
        *,
        after_seq: int = 0,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> list[Event]:
        """Events with ``seq > after_seq`` in order, at most ``limit``. A store may have
        trimmed old events; the first returned seq then shows the gap.

        With ``max_bytes``, the read stops after the event that brings the stored size read to
        ``max_bytes`` or more (so a page is never empty while events remain): what a reader
        replaying a long log may bring into memory at once. A store whose events are in memory
        already may ignore it (its page costs only references)."""
        ...

    async def last_seq(self, session_id: str) -> int:
        """The highest stored seq of the session (0 if none)."""
        ...

    async def drop_events(
        self, session_id: str, event_type: EventType, *, first_seq: int, last_seq: int
    ) -> int:
        """Delete the session's stored events of ``event_type`` with ``first_seq <= seq <=
        last_seq`` (one statement), and return how many were deleted: how a turn's stream
        chunks leave the log once the turn has ended (``Settings.keep_stream_chunks``).

        Only :data:`DROPPABLE` types, and never the log's last event: the log's end
        (``last_seq``, the head) stays where it is, and so do snapshots. ``read_events`` over
        the range then returns the events that remain, with a gap in their seqs, which a
        subscription that replays it reports as one ``events_dropped`` marker per gap. A store
        shared by several nodes deletes only while this store holds the session's fence (the
        node that ran the turn owns the session), else raises :class:`OwnershipLost`. A bad
        argument raises ``InvalidArgument`` naming it (:func:`check_drop`)."""
        ...

    async def write_snapshot(self, session_id: str, seq: int, state: bytes) -> None:
        """Keep ``state`` (the projection at ``seq``) so loading needs only the log's tail."""
        ...

    async def read_snapshot(
        self, session_id: str, *, at_most: int | None = None
    ) -> tuple[int, bytes] | None:
        """The newest snapshot ``(seq, state)`` (the newest with ``seq <= at_most`` if given),
        or ``None``. A durable store keeps every snapshot written until the session ends, so
        the projection at any seq is one snapshot plus the events after it; the memory store
        keeps the newest only (its log is in memory)."""
        ...

    async def find_session(self, session_id: str) -> StoredSession | None:
        """The session's head as stored (status, last seq, owner), terminated ones included;
        ``None`` if the store holds no log for it. One indexed lookup: how a session that is not
        loaded is found on first use, instead of reading every stored session at start-up."""
        ...

    async def list_sessions(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        after: str | None = None,
        limit: int = LIVE_SESSIONS_PAGE,
    ) -> list[StoredSession]:
        """One page of stored sessions by id (those after ``after``, at most ``limit``):
        ``owner`` ``None`` means any owner; ``status`` ``None`` means every status but
        ``terminated``, else exactly that one. Served from an index (owner, status, id), so a
        page costs the same among a million sessions as among ten. ``limit`` below 1 raises
        ``ValueError``."""
        ...

    async def quiet_sessions(
        self,
        before: datetime,
        *,
        after: tuple[datetime, str] | None = None,
        limit: int = LIVE_SESSIONS_PAGE,
    ) -> list[StoredSession]:
        """One page of the sessions not terminated whose ``updated_at`` is before ``before``,
        oldest first (by ``(updated_at, session_id)``, those after the cursor ``after``), at
        most ``limit``. Served from an index on ``(updated_at, session_id)`` of the sessions not
        terminated: how a node finds the stored sessions nobody touched for longer than a
        time-out, without listing every session. ``limit`` below 1 raises ``ValueError``."""
        ...

    async def save(self, saved: SavedSession, state: bytes) -> None:
        """Write (or replace) the saved copy of a session."""
        ...

    async def load_saved(self, session_id: str) -> tuple[SavedSession, bytes] | None: ...

    async def list_saved(self) -> list[SavedSession]:
        """Saved sessions, by session id."""
        ...

    async def delete_saved(self, session_id: str) -> bool:
        """``False`` if there was no saved copy."""
        ...

    async def purge(self, session_id: str) -> bool:
        """Remove everything stored for the session, in one transaction: its events,
        snapshots, saved copy and head (on a store shared by a cluster also what it keeps per
        session beside them: the owner node and fence on the head, its stream tickets).
        ``False`` if nothing was stored. Unconditional (the caller terminated the session
        first) and idempotent: a second purge finds nothing and does nothing."""
        ...

    async def expire_terminated(
        self, before: datetime, *, limit: int = LIVE_SESSIONS_PAGE
    ) -> list[StoredSession]:
        """Remove the terminated sessions whose head changed before ``before`` (their events,
        snapshots and head; not a saved copy, which expires by its own age), oldest first, at
        most ``limit``; their heads as they were. Served from an index on ``(updated_at,
        session_id)`` of the terminated sessions, so a batch costs the same whatever else is
        stored. Each removal re-checks that the session is still terminated (a restore under
        the same id makes it live again), and a session is returned only by the call that
        removed it: several nodes may expire at once, and each expired session is reported
        once. ``limit`` below 1 raises ``ValueError``."""
        ...

    async def expire_saved(
        self, before: datetime, *, limit: int = LIVE_SESSIONS_PAGE
    ) -> list[SavedSession]:
        """Remove the saved copies written before ``before`` (only the copies), oldest first,
        at most ``limit``; those removed by this call. Served from an index on ``(saved_at,
        session_id)``; a copy saved again meanwhile is newer and stays. ``limit`` below 1
        raises ``ValueError``."""
        ...

    async def ping(self) -> None:
        """Raise StoreError if the store cannot serve requests (for readiness checks)."""
        ...

    async def release(self, session_id: str) -> None:
        """The runtime is done with this session (it terminated). A durable store may keep the
        log for saved sessions and audit; the memory store frees it."""
        ...

    async def aclose(self) -> None:
        """Flush and close. Idempotent."""
        ...
