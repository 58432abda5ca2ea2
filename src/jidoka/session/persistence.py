"""Bringing sessions back from a store, and making their saved copies.

Loading reads the newest snapshot and replays the log's tail after it, so a session with a long
history loads in time proportional to the tail, not the history. A snapshot that cannot be
decoded is ignored (the whole log is replayed instead); a log that cannot be replayed (a corrupt
event, a gap, no ``session_created``) makes the load fail with :class:`CorruptSession`, for that
session alone.
"""

from __future__ import annotations

from datetime import datetime

from ..errors import JidokaError, StoreError
from ..events import EventType
from ..store.base import SavedSession, SessionStore
from .history import project
from .snapshot import encode_state
from .state import SessionState

__all__ = ["CorruptSession", "load_state", "saved_copy"]


class CorruptSession(StoreError):
    """A stored session could not be rebuilt; only that session is affected."""


async def load_state(store: SessionStore, session_id: str) -> tuple[SessionState, int]:
    """Rebuild a session's projection; returns it and the seq of the snapshot used (0: none)."""
    try:
        state, snapshot_seq = await project(store, session_id)
    except (StoreError, ValueError, KeyError, TypeError, JidokaError) as exc:
        raise CorruptSession(
            f"session {session_id!r} cannot be loaded: {exc}", session_id=session_id
        ) from exc
    if state.created_at is None or state.seq == 0:
        raise CorruptSession(
            f"session {session_id!r} cannot be loaded: its log has no session_created event",
            session_id=session_id,
        )
    return state, snapshot_seq


def saved_copy(state: SessionState, when: datetime) -> tuple[SavedSession, bytes]:
    """The self-contained saved form of a session: summary and encoded projection."""
    summary = SavedSession(
        session_id=state.session_id,
        saved_at=when,
        message_count=state.conversation_count,
        metadata=state.metadata,
        owner=state.owner,
    )
    return summary, encode_state(state)


#: The event type a restored session's new life starts with (``data.state`` holds the copy).
RESTORED_EVENT = EventType.SESSION_CREATED
