"""What a session's head (status, owner) becomes as events are appended: shared by the stores
that keep a head per session (the SQLite writer and its migrations) and the one that derives it
from the log on demand (the memory store), so they agree on every event."""

from __future__ import annotations

from typing import Any

from ..events import Event, EventType

__all__ = ["created_owner", "status_after"]


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
