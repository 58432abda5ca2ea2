"""The session store: where a session's event log lives.

A store holds each session's events keyed by ``(session_id, seq)``. The session code talks only to
this Protocol, so the in-memory store (fast, not durable), the SQLite store and, for scale-out, the
Postgres store are interchangeable; one contract test suite runs against every implementation.

Two promises every implementation keeps:

- ``append`` is all-or-nothing for its batch and refuses a batch that does not start right after
  the last stored event (:class:`SeqConflict`): ``(session_id, seq)`` is unique, so two writers can
  never both win;
- when ``append`` returns, the events are stored as durably as the store promises (``durable``);
  events are published to subscribers only after that.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import msgspec

from ..errors import StoreError
from ..events import Event

__all__ = ["SavedSession", "SeqConflict", "SessionStore", "StoredSession"]


class StoredSession(msgspec.Struct, frozen=True):
    """A session the store holds a live (not terminated) log for, as found at start-up."""

    session_id: str
    status: str
    last_seq: int
    #: The principal that owns the session (``None``: created without one). Kept beside the
    #: status so that listing one principal's sessions after a restart needs no session loaded.
    owner: str | None = None


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
        super().__init__(
            f"session {session_id!r}: append at seq {got} but the log expects {expected}",
            session_id=session_id,
        )
        self.expected = expected
        self.got = got


@runtime_checkable
class SessionStore(Protocol):
    """Where session logs are kept."""

    #: Whether an acknowledged append survives the process dying.
    durable: bool

    async def append(self, session_id: str, events: Sequence[Event]) -> None:
        """Store ``events`` (consecutive seqs of one session) atomically, or raise StoreError."""
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

    async def write_snapshot(self, session_id: str, seq: int, state: bytes) -> None:
        """Keep ``state`` (the projection at ``seq``) so loading needs only the log's tail."""
        ...

    async def read_snapshot(self, session_id: str) -> tuple[int, bytes] | None:
        """The newest snapshot ``(seq, state)``, or ``None``."""
        ...

    async def live_sessions(self) -> list[StoredSession]:
        """Sessions whose log does not end in termination (what comes back after a restart),
        by session id, each with its status, last seq and owner: the owner as recorded by the
        session's latest ``session_created`` event (its saved copy's, for a restored one)."""
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
