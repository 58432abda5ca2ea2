"""Bringing sessions back from a store, and making their saved copies.

Loading reads the newest snapshot and replays the log's tail after it, so a session with a long
history loads in time proportional to the tail, not the history. A snapshot that cannot be
decoded is ignored (the whole log is replayed instead); a log that cannot be replayed (a corrupt
event, a gap, no ``session_created``) makes the load fail with :class:`CorruptSession`, for that
session alone.
"""

from __future__ import annotations

import logging
from datetime import datetime

from ..errors import JidokaError, StoreError
from ..events import EventType
from ..store.base import SavedSession, SessionStore
from .projection import apply_stored
from .snapshot import SnapshotError, decode_state, encode_state
from .state import SessionState

__all__ = ["CorruptSession", "load_state", "saved_copy"]

logger = logging.getLogger("jidoka.persistence")


class CorruptSession(StoreError):
    """A stored session could not be rebuilt; only that session is affected."""


async def load_state(store: SessionStore, session_id: str) -> tuple[SessionState, int]:
    """Rebuild a session's projection; returns it and the seq of the snapshot used (0: none)."""
    state: SessionState | None = None
    snapshot_seq = 0
    try:
        snapshot = await store.read_snapshot(session_id)
    except StoreError as exc:
        logger.warning("session %s: snapshot unreadable (%s); replaying its log", session_id, exc)
        snapshot = None
    if snapshot is not None:
        try:
            state = decode_state(snapshot[1], session_id=session_id)
            snapshot_seq = state.seq
        except SnapshotError as exc:
            logger.warning("session %s: %s; replaying its whole log", session_id, exc)
    if state is None:
        state = SessionState(session_id)
    try:
        events = await store.read_events(session_id, after_seq=state.seq)
        for event in events:
            apply_stored(state, event)  # past gaps of dropped stream chunks
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
