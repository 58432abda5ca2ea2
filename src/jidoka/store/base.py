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
from typing import Protocol, runtime_checkable

from ..errors import StoreError
from ..events import Event

__all__ = ["SeqConflict", "SessionStore"]


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
        self, session_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[Event]:
        """Events with ``seq > after_seq`` in order, at most ``limit``. A store may have
        trimmed old events; the first returned seq then shows the gap."""
        ...

    async def last_seq(self, session_id: str) -> int:
        """The highest stored seq of the session (0 if none)."""
        ...

    async def release(self, session_id: str) -> None:
        """The runtime is done with this session (it terminated). A durable store may keep the
        log for saved sessions and audit; the memory store frees it."""
        ...

    async def aclose(self) -> None:
        """Flush and close. Idempotent."""
        ...
