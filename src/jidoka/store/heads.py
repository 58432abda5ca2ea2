"""What a session's head (status, owner) becomes as events are appended: shared by the stores
that keep a head per session (the SQLite writer and its migrations) and the one that derives it
from the log on demand (the memory store), so they agree on every event."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from ..events import Event, EventType
from .base import SeqConflict

__all__ = ["BatchHead", "batch_head", "created_owner", "status_after"]


class BatchHead(NamedTuple):
    """What one batch of events makes of its session's head row."""

    #: The status once the batch is stored (``None``: the batch does not change it).
    status: str | None
    #: The time of the event that set that status (the head's ``updated_at``).
    status_at: datetime | None
    #: Whether the batch holds a ``session_created`` event: only then is ``owner`` written.
    created: bool
    owner: str | None


def batch_head(session_id: str, events: Sequence[Event]) -> BatchHead:
    """Check that ``events`` are consecutive events of ``session_id``, starting at seq 1 or
    later (else :class:`~.base.SeqConflict`, nothing taken), and say what they make of its
    head: what every store that keeps a head row writes beside the events."""
    first = events[0].seq
    if first < 1:
        raise SeqConflict(session_id, 1, first)
    status: str | None = None
    status_at: datetime | None = None
    created = False
    owner = None
    for offset, event in enumerate(events):
        if event.session_id != session_id or event.seq != first + offset:
            raise SeqConflict(session_id, first + offset, event.seq)
        after = status_after(status, event)
        if after is not status:
            status, status_at = after, event.time
        if event.type == EventType.SESSION_CREATED:
            created, owner = True, created_owner(event.data)
    return BatchHead(status, status_at, created, owner)


def status_after(status: str | None, event: Event) -> str | None:
    """The session's status once ``event`` is stored (``status`` if it does not change it)."""
    if event.type == EventType.SESSION_CREATED or event.type == EventType.SESSION_STATUS:
        value = event.data.get("status")
        return value if isinstance(value, str) else status
    if event.type == EventType.SESSION_TERMINATED:
        return "terminated"
    return status


def created_owner(data: dict[str, Any]) -> str | None:
    """The owner a ``session_created`` event's data records: its own ``owner`` for a new
    session, its saved copy's (``state``) for a restored one; ``None`` for anything else, so a
    malformed event never stops a write or a migration (loading the session will judge it)."""
    saved = data.get("state")
    if saved is not None:
        owner = saved.get("owner") if isinstance(saved, dict) else None
    else:
        owner = data.get("owner")
    return owner if isinstance(owner, str) else None
