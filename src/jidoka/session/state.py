"""A session's state: its lifecycle (the statuses, the one transition table) and its projection.

:class:`SessionState` is what a session's event log adds up to (history, active files, file
index, working context, status); the records it holds (:class:`Message`, :class:`ActiveFile`,
:class:`FileIndexEntry`) are also what clients get back. Only
:func:`~jidoka.session.projection.apply` changes a ``SessionState``; this module holds the shapes
alone, so the projection, snapshots and ``build_context`` all build on it and on nothing of each
other's.

The lifecycle (blueprint §4)::

    initializing ──► active ◄──► idle
         │              │          │
         │              └──► terminating ◄──┘
         │                       │
         └──────────────────► terminated

``initializing → terminated`` is a start-up failure. Every other move raises
:class:`~jidoka.InvalidTransition`. The table lives here and nowhere else.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, TypeAlias, cast

import msgspec

from ..config import SessionConfig
from ..errors import InvalidTransition
from ..events import Event

__all__ = [
    "REASON_ERROR",
    "REASON_REQUESTED",
    "REASON_TIMEOUT",
    "ROLES",
    "SHORT_HISTORY",
    "TRANSITIONS",
    "ActiveFile",
    "FileIndexEntry",
    "HistoryWindow",
    "Message",
    "SessionState",
    "Status",
    "check_transition",
    "json_size",
]


class Status(StrEnum):
    INITIALIZING = "initializing"
    ACTIVE = "active"
    IDLE = "idle"
    TERMINATING = "terminating"
    TERMINATED = "terminated"


TRANSITIONS: Final[dict[Status, frozenset[Status]]] = {
    Status.INITIALIZING: frozenset({Status.ACTIVE, Status.TERMINATED}),
    Status.ACTIVE: frozenset({Status.IDLE, Status.TERMINATING}),
    Status.IDLE: frozenset({Status.ACTIVE, Status.TERMINATING}),
    Status.TERMINATING: frozenset({Status.TERMINATED}),
    Status.TERMINATED: frozenset(),
}


def check_transition(session_id: str, from_status: str, to_status: str) -> Status:
    """Return ``to_status`` as a :class:`Status` if the move is allowed, else raise."""
    try:
        src, dst = Status(from_status), Status(to_status)
    except ValueError:
        raise InvalidTransition(session_id, from_status, to_status) from None
    if dst not in TRANSITIONS[src]:
        raise InvalidTransition(session_id, src.value, dst.value)
    return dst


#: Termination reasons the runtime itself uses (clients may give their own).
REASON_REQUESTED: Final = "requested"
REASON_TIMEOUT: Final = "timeout"
REASON_ERROR: Final = "error"


# --- the projected state -------------------------------------------------------------------------

#: The roles a conversation message may have.
ROLES: Final = frozenset({"user", "assistant", "system"})


class Message(msgspec.Struct, frozen=True, gc=False):
    """One conversation message. ``id`` is the id of the event that added it."""

    id: str
    role: str
    content: str
    timestamp: datetime
    seq: int


#: The history window: each message as its ``conversation_added`` event (the very object the
#: store's log holds) until it is first read, then as its :class:`Message`
#: (:meth:`SessionState.messages`). A list while it holds at most :data:`SHORT_HISTORY`
#: messages, then a deque of ``max_history`` slots: a deque allocates 64 slots (760 bytes) for
#: its first item, more than a short conversation's messages cost.
HistoryWindow: TypeAlias = list[Message | Event] | deque[Message | Event]

#: The longest history window kept as a list (see :data:`HistoryWindow`).
SHORT_HISTORY: Final = 16


class ActiveFile(msgspec.Struct, frozen=True, gc=False):
    """A file the session is working on; ``path`` is relative to the project root."""

    path: str
    added_at: datetime
    seq: int


class FileIndexEntry(msgspec.Struct, frozen=True):
    """What the session knows about one file. ``mtime`` is seconds since the epoch."""

    path: str
    language: str | None = None
    line_count: int | None = None
    size: int | None = None
    mtime: float | None = None
    last_accessed: datetime | None = None
    extra: dict[str, Any] = {}


class SessionState:
    """The projection of one session's log. Mutated only by
    :func:`~jidoka.session.projection.apply`.

    Containers are created on first use: an idle, empty session holds no history window, no
    file dicts and no working-context dict, which is most of what keeps it small. The history
    window holds events rather than messages until it is read (see :data:`HistoryWindow`):
    read it with :meth:`messages`.
    """

    __slots__ = (
        "agent_status",
        "config",
        "created_at",
        "error",
        "files",
        "history",
        "index",
        "llm_config",
        "metadata",
        "owner",
        "pending_approvals",
        "project_root",
        "reason",
        "seq",
        "session_id",
        "status",
        "updated_at",
        "usage",
        "usage_estimated",
        "wc_sizes",
        "working_context",
    )

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.seq = 0
        self.status = Status.INITIALIZING
        self.created_at: datetime | None = None
        self.updated_at: datetime | None = None
        self.metadata: dict[str, Any] = {}
        self.config = SessionConfig()
        self.llm_config: dict[str, Any] = {}
        self.project_root: str | None = None
        self.owner: str | None = None
        self.history: HistoryWindow | None = None
        self.files: dict[str, ActiveFile] | None = None
        self.index: dict[str, FileIndexEntry] | None = None
        self.working_context: dict[str, Any] | None = None
        self.wc_sizes: dict[str, int] | None = None
        self.reason: str | None = None
        self.error: str | None = None
        #: The agent's cumulative token usage: (prompt, completion, total); None before any turn.
        self.usage: tuple[int, int, int] | None = None
        #: Some of ``usage`` was estimated (the endpoint did not report it).
        self.usage_estimated = False
        #: The agent's last ``agent_status`` (``thinking``, ``idle`` ...), None before any turn.
        self.agent_status: str | None = None
        #: Write approvals asked for and not yet decided, by call id.
        self.pending_approvals: set[str] | None = None

    @property
    def conversation_count(self) -> int:
        return len(self.history) if self.history is not None else 0

    def messages(self) -> list[Message]:
        """The history window's messages, oldest first (a new list).

        The newest entries may still be the events that added them: each is turned into its
        :class:`Message` once, here, and kept in its place, so reading again is a plain copy.
        They are always a suffix (apply appends events, this turns them all), so the walk stops
        at the first message from the end.
        """
        history = self.history
        if not history:
            return []
        last = len(history)
        first = last
        while first > 0 and type(history[first - 1]) is Event:
            first -= 1
        for i in range(first, last):
            event = cast("Event", history[i])
            data = event.data
            history[i] = Message(event.id, data["role"], data["content"], event.time, event.seq)
        return cast("list[Message]", list(history))

    @property
    def file_count(self) -> int:
        return len(self.files) if self.files is not None else 0

    @property
    def index_count(self) -> int:
        return len(self.index) if self.index is not None else 0

    @property
    def working_context_bytes(self) -> int:
        return sum(self.wc_sizes.values()) if self.wc_sizes is not None else 0

    def snapshot(self) -> dict[str, Any]:
        """Everything the projection holds, as comparable plain values (for tests and replay)."""
        return {
            "session_id": self.session_id,
            "seq": self.seq,
            "status": str(self.status),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "metadata": self.metadata,
            "config": self.config.to_dict(),
            "llm_config": self.llm_config,
            "project_root": self.project_root,
            "owner": self.owner,
            "history": self.messages(),
            "files": dict(self.files or {}),
            "index": dict(self.index or {}),
            "working_context": dict(self.working_context or {}),
            "reason": self.reason,
            "error": self.error,
            "usage": self.usage,
            "usage_estimated": self.usage_estimated,
            "agent_status": self.agent_status,
            "pending_approvals": sorted(self.pending_approvals or ()),
        }


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON (the unit of the working-context bound)."""
    return len(msgspec.json.encode(value))
