"""The in-memory store: the fast, non-durable mode (``Runtime(store="memory")``).

It keeps each session's events in a list in seq order, so appends are O(1) and reading from a seq is
a binary search and a slice (seqs may have gaps: ``drop_events`` removes stream chunks). The list is
all it keeps per session (its first event's ``seq`` says where it starts); while it is short it is a
tuple, which an append replaces by a longer one rather than growing it: an idle session's log is one
exact-size object with no spare slots. Nothing survives the process. To stay bounded, a session's
log keeps at most ``max_events_per_session`` events; older ones are trimmed in chunks (the
projection is unaffected; a subscriber that asks for trimmed events is told how many it missed). A
terminated session's log is freed.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from datetime import datetime
from operator import attrgetter

from ..errors import RuntimeClosed
from ..events import Event, EventType
from .base import (
    LIVE_SESSIONS_PAGE,
    OnCommitted,
    SavedSession,
    SeqConflict,
    StoredSession,
    check_drop,
)
from .heads import created_owner, status_after
from .memory_runs import MemoryRunIndex

__all__ = ["MemoryStore"]


#: A log of at most this many events is a tuple, replaced on append (at most this many pointers
#: copied); a longer one is a list that grows in place, amortised O(1).
_SHORT = 16

_Events = list[Event] | tuple[Event, ...]

#: A log's sort key: its seqs ascend, with gaps where stream chunks were dropped.
_SEQ = attrgetter("seq")


def _head(session_id: str, log: _Events) -> StoredSession:
    """A session's head, read from the end of its log (the latest status change, then the
    latest ``session_created`` for the owner): this store keeps no head beside the log, so an
    idle session costs no more than its events. A log trimmed past its ``session_created``
    reports no owner."""
    status: str | None = None
    updated: datetime | None = None
    owner = None
    for event in reversed(log):
        if status is None:
            status = status_after(None, event)
            if status is not None:
                updated = event.time
        if event.type == EventType.SESSION_CREATED:
            owner = created_owner(event.data)
            break
    return StoredSession(session_id, status or "active", log[-1].seq, owner, updated)


def _check_limit(limit: int) -> None:
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit!r}")


class MemoryStore:
    """Session logs in process memory."""

    durable = False
    commits_inline = True  # an append is a list extend: it is done when the call returns

    def __init__(self, *, max_events_per_session: int = 100_000) -> None:
        if max_events_per_session < 1:
            raise ValueError("max_events_per_session must be at least 1")
        self.max_events_per_session = max_events_per_session
        #: Each session's events, in seq order (``[0]`` is the oldest kept, never empty).
        self._logs: dict[str, _Events] = {}
        self._snapshots: dict[str, tuple[int, bytes]] = {}
        self._saved: dict[str, tuple[SavedSession, bytes]] = {}
        self._runs = MemoryRunIndex()
        self._closed = False
        # The runs index (``RunIndex``) answers from the same memory.
        self.get_run = self._runs.get_run
        self.list_runs = self._runs.list_runs
        self.unfinished_runs = self._runs.unfinished_runs
        self.claim_webhooks = self._runs.claim_webhooks
        self.record_webhook = self._runs.record_webhook
        self.find_idempotency = self._runs.find_idempotency
        self.expire_idempotency = self._runs.expire_idempotency

    async def append(self, session_id: str, events: Sequence[Event]) -> None:
        self.append_nowait(session_id, events)

    def append_nowait(
        self,
        session_id: str,
        events: Sequence[Event],
        on_done: OnCommitted | None = None,
    ) -> None:
        """Append at once: committed (and ``on_done(None)`` called) when this returns, or
        refused by raising (``on_done`` then never called)."""
        self._check_open(session_id)
        log = self._logs.get(session_id)
        expected = 1 if log is None else log[-1].seq + 1
        for offset, event in enumerate(events):
            if event.seq != expected + offset or event.session_id != session_id:
                raise SeqConflict(session_id, expected + offset, event.seq)
        if events:
            if isinstance(log, list):
                log.extend(events)
            elif log is None or len(log) + len(events) <= _SHORT:
                log = self._logs[session_id] = (*(log or ()), *events)
            else:
                log = self._logs[session_id] = [*log, *events]
            excess = len(log) - self.max_events_per_session
            if excess > self.max_events_per_session // 4:
                self._logs[session_id] = log[excess:]
            self._runs.derive(session_id, events)
        if on_done is not None:
            on_done(None)

    async def read_events(
        self,
        session_id: str,
        *,
        after_seq: int = 0,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> list[Event]:
        # ``max_bytes`` is not needed here: a page is a slice of events held anyway.
        log = self._logs.get(session_id)
        if log is None:
            return []
        start = bisect_right(log, after_seq, key=_SEQ)  # seqs may have gaps (drop_events)
        stop = None if limit is None else start + max(limit, 0)
        page = log[start:stop]
        return page if isinstance(page, list) else list(page)

    async def last_seq(self, session_id: str) -> int:
        log = self._logs.get(session_id)
        return 0 if log is None else log[-1].seq

    async def drop_events(
        self, session_id: str, event_type: EventType, *, first_seq: int, last_seq: int
    ) -> int:
        """Remove the range's events of that type from the log in place (the events kept
        around them are not copied when the log is a list)."""
        kind = check_drop(session_id, event_type, first_seq, last_seq)
        self._check_open(session_id)
        log = self._logs.get(session_id)
        if log is None:
            return 0
        lo = bisect_left(log, first_seq, key=_SEQ)
        hi = bisect_right(log, min(last_seq, log[-1].seq - 1), key=_SEQ)  # never the last
        kept = [event for event in log[lo:hi] if event.type != kind]
        dropped = hi - lo - len(kept)
        if dropped and isinstance(log, list):
            log[lo:hi] = kept
        elif dropped:
            self._logs[session_id] = (*log[:lo], *kept, *log[hi:])
        return dropped

    async def write_snapshot(self, session_id: str, seq: int, state: bytes) -> None:
        kept = self._snapshots.get(session_id)
        if kept is None or seq > kept[0]:  # the newest only, like the others' newest
            self._snapshots[session_id] = (seq, state)

    async def read_snapshot(
        self, session_id: str, *, at_most: int | None = None
    ) -> tuple[int, bytes] | None:
        # The newest only: the log is in memory, so folding from an older point is cheap,
        # and a million idle sessions should not each keep a list of snapshots.
        found = self._snapshots.get(session_id)
        if found is not None and at_most is not None and found[0] > at_most:
            return None
        return found

    async def find_session(self, session_id: str) -> StoredSession | None:
        log = self._logs.get(session_id)
        return None if log is None else _head(session_id, log)

    async def list_sessions(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        after: str | None = None,
        limit: int = LIVE_SESSIONS_PAGE,
    ) -> list[StoredSession]:
        """Sorted and filtered here, in O(sessions) per page: the runtime never pages through
        this store (all its sessions live in this process), so no index is kept for it."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._check_open(None)
        out: list[StoredSession] = []
        for sid in sorted(self._logs):
            if after is not None and sid <= after:
                continue
            head = _head(sid, self._logs[sid])
            if status is None and head.status == "terminated":
                continue
            if (status is None or head.status == status) and (owner is None or head.owner == owner):
                out.append(head)
                if len(out) == limit:
                    break
        return out

    async def quiet_sessions(
        self,
        before: datetime,
        *,
        after: tuple[datetime, str] | None = None,
        limit: int = LIVE_SESSIONS_PAGE,
    ) -> list[StoredSession]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._check_open(None)
        heads = [_head(sid, log) for sid, log in self._logs.items()]
        found = sorted(
            (head.updated_at, head.session_id, head)
            for head in heads
            if head.status != "terminated"
            and head.updated_at is not None
            and head.updated_at < before
        )
        return [head for when, sid, head in found if after is None or (when, sid) > after][:limit]

    async def save(self, saved: SavedSession, state: bytes) -> None:
        self._check_open(saved.session_id)
        self._saved[saved.session_id] = (saved, state)

    async def load_saved(self, session_id: str) -> tuple[SavedSession, bytes] | None:
        return self._saved.get(session_id)

    async def list_saved(self) -> list[SavedSession]:
        return [self._saved[sid][0] for sid in sorted(self._saved)]

    async def delete_saved(self, session_id: str) -> bool:
        return self._saved.pop(session_id, None) is not None

    async def purge(self, session_id: str) -> bool:
        self._check_open(session_id)
        found = session_id in self._logs or session_id in self._saved
        self._logs.pop(session_id, None)
        self._snapshots.pop(session_id, None)
        self._saved.pop(session_id, None)
        self._runs.forget(session_id, keep_outbox=False)
        return found

    async def expire_terminated(
        self, before: datetime, *, limit: int = LIVE_SESSIONS_PAGE
    ) -> list[StoredSession]:
        """Found by a scan, like :meth:`quiet_sessions`: the runtime frees a terminated
        session's log here as it ends (``release``), so there is rarely anything to find."""
        _check_limit(limit)
        self._check_open(None)
        heads = [_head(sid, log) for sid, log in self._logs.items()]
        found = sorted(
            (head.updated_at, head.session_id, head)
            for head in heads
            if head.status == "terminated"
            and head.updated_at is not None
            and head.updated_at < before
        )[:limit]
        for _, sid, _ in found:
            self._logs.pop(sid, None)
            self._snapshots.pop(sid, None)
            self._runs.forget(sid, keep_outbox=False)
        return [head for _, _, head in found]

    async def expire_saved(
        self, before: datetime, *, limit: int = LIVE_SESSIONS_PAGE
    ) -> list[SavedSession]:
        _check_limit(limit)
        self._check_open(None)
        found = sorted(
            (saved.saved_at, sid)
            for sid, (saved, _) in self._saved.items()
            if saved.saved_at < before
        )[:limit]
        return [self._saved.pop(sid)[0] for _, sid in found]

    async def ping(self) -> None:
        self._check_open(None)

    def _check_open(self, session_id: str | None) -> None:
        if self._closed:
            raise RuntimeClosed("the memory store is closed", session_id=session_id)

    async def release(self, session_id: str) -> None:
        self._logs.pop(session_id, None)
        self._snapshots.pop(session_id, None)
        self._runs.forget(session_id, keep_outbox=True)

    def sessions(self) -> frozenset[str]:
        """Sessions with a log held in memory."""
        return frozenset(self._logs)

    async def aclose(self) -> None:
        self._closed = True
        self._logs.clear()
        self._snapshots.clear()
        self._saved.clear()
        self._runs.clear()
