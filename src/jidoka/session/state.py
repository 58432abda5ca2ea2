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
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Generic, TypeAlias, TypeVar, cast, overload

import msgspec

from ..config import SessionConfig
from ..errors import InvalidTransition
from ..events import Event

__all__ = [
    "REASON_ERROR",
    "REASON_PURGED",
    "REASON_REQUESTED",
    "REASON_TIMEOUT",
    "ROLES",
    "SHORT_HISTORY",
    "TRANSITIONS",
    "ActiveFile",
    "Compaction",
    "FileIndexEntry",
    "HistoryWindow",
    "Message",
    "SessionState",
    "Status",
    "check_transition",
    "history_window",
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
#: A live session terminated because it is being purged (``purge_session``).
REASON_PURGED: Final = "purged"


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
#: (:meth:`SessionState.messages`). A tuple of one for a single message (no spare slots: most
#: idle sessions), a list while it holds at most :data:`SHORT_HISTORY` (appended in place: a
#: tuple remade per message costs a tracked allocation each, which the garbage collector pays
#: for), then a deque of ``max_history`` slots: a deque allocates 64 slots (760 bytes) for its
#: first item, more than a short conversation's messages cost.
HistoryWindow: TypeAlias = (
    tuple[Message | Event, ...] | list[Message | Event] | deque[Message | Event]
)

#: ``list``, typed for a window whose entries :meth:`SessionState.messages` has just turned into
#: messages (no ``cast`` call per read).
_copy = cast("Callable[[HistoryWindow], list[Message]]", list)

#: The longest history window kept as a tuple (see :data:`HistoryWindow`).
SHORT_HISTORY: Final = 16


def history_window(messages: list[Message], maximum: int) -> HistoryWindow:
    """The newest ``maximum`` of ``messages`` as a window, in the form apply keeps it (a
    snapshot's history becomes a tuple or a deque just as the same messages appended would)."""
    newest = messages[-maximum:]
    if len(newest) == 1:
        return (newest[0],)
    if len(messages) <= SHORT_HISTORY or maximum <= SHORT_HISTORY:
        return list(newest)
    return deque(messages, maxlen=maximum)


def _message_of(event: Event) -> Message:
    data = event.data
    return Message(event.id, data["role"], data["content"], event.time, event.seq)


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


class Compaction(msgspec.Struct, frozen=True, gc=False):
    """The session's latest ``context_compacted``: ``summary`` stands for the messages from
    ``first_seq`` to ``last_seq``; ``seq`` and ``time`` are the event's own (the summary's
    place when the compacted history shows it as a message)."""

    summary: str
    first_seq: int
    last_seq: int
    seq: int
    time: datetime

    def as_message(self, session_id: str) -> Message:
        """The summary as the leading ``system`` message of a compacted history (its id is
        the ``context_compacted`` event's)."""
        return Message(f"{session_id}-{self.seq}", "system", self.summary, self.time, self.seq)


_T = TypeVar("_T")


class _Rare(Generic[_T]):
    """A :class:`SessionState` field most sessions never set (files, usage, an error ...).

    Its value lives in the state's ``rare`` dict, which exists only while some such field holds
    something other than its default: an idle chat session pays one slot for all nine of
    them instead of nine slots (64 bytes). Reading costs a property call instead of a slot
    read; none of them is read or written on the path of an appended message.
    """

    __slots__ = ("default", "name")

    def __init__(self, default: _T) -> None:
        self.default = default
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, state: None, owner: type) -> _Rare[_T]: ...
    @overload
    def __get__(self, state: SessionState, owner: type) -> _T: ...
    def __get__(self, state: SessionState | None, owner: type) -> _Rare[_T] | _T:
        if state is None:
            return self
        rare = state.rare
        if rare is None:
            return self.default
        value: _T = rare.get(self.name, self.default)
        return value

    def __set__(self, state: SessionState, value: _T) -> None:
        rare = state.rare
        if value is self.default:  # back to the default: nothing to keep
            if rare is not None:
                rare.pop(self.name, None)
                if not rare:
                    state.rare = None
        elif rare is None:
            state.rare = {self.name: value}
        else:
            rare[self.name] = value


class SessionState:
    """The projection of one session's log. Mutated only by
    :func:`~jidoka.session.projection.apply` (:meth:`messages` changes how the history window
    holds its messages, never which they are).

    Containers are created on first use: an idle, empty session holds no history window, no
    file dicts and no working-context dict, which is most of what keeps it small. The history
    window holds events rather than messages until it is read (see :data:`HistoryWindow`):
    read it with :meth:`messages`. The fields most sessions never set are not slots of their
    own (see :class:`_Rare`).
    """

    __slots__ = (
        "config",
        "created_at",
        "error",
        "history",
        "llm_config",
        "metadata",
        "owner",
        "project_root",
        "rare",
        "reason",
        "seq",
        "session_id",
        "status",
        "updated_at",
    )

    files: _Rare[dict[str, ActiveFile] | None] = _Rare(None)
    index: _Rare[dict[str, FileIndexEntry] | None] = _Rare(None)
    working_context: _Rare[dict[str, Any] | None] = _Rare(None)
    #: Each working-context key's size (its share of ``max_working_context_bytes``).
    wc_sizes: _Rare[dict[str, int] | None] = _Rare(None)
    #: The agent's cumulative token usage: (prompt, completion, total); None before any turn.
    usage: _Rare[tuple[int, int, int] | None] = _Rare(None)
    #: Some of ``usage`` was estimated (the endpoint did not report it).
    usage_estimated: _Rare[bool] = _Rare(False)
    #: The agent's last ``agent_status`` (``thinking``, ``idle`` ...), None before any turn.
    agent_status: _Rare[str | None] = _Rare(None)
    #: Write approvals asked for and not yet decided, by call id.
    pending_approvals: _Rare[set[str] | None] = _Rare(None)
    #: The projection at the ``to_seq`` of the ``session_rewound`` about to be applied: what
    #: the rewind copies from (see :func:`~jidoka.session.projection.apply`); set just before
    #: it and taken by it, never kept.
    rewind_target: _Rare[SessionState | None] = _Rare(None)
    #: The latest compaction (issue 17): the context carries its summary and the messages
    #: after its ``last_seq``; the history window still holds them all. None: never compacted
    #: (or cleared since).
    compaction: _Rare[Compaction | None] = _Rare(None)
    #: The runs not ended yet (issue 18), ``run_id -> "queued" | "running"`` in the order they
    #: were queued: what a restart must finish (a running one ends ``interrupted``, a queued one
    #: still runs). None: none.
    runs: _Rare[dict[str, str] | None] = _Rare(None)

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.seq = 0
        self.status = Status.INITIALIZING
        self.created_at: datetime | None = None
        self.updated_at: datetime | None = None
        self.metadata: dict[str, Any] = {}
        self.config = SessionConfig()
        self.llm_config: dict[str, Any] = {}
        self.owner: str | None = None
        self.project_root: str | None = None
        self.history: HistoryWindow | None = None
        #: Why it ended, and the error it ended in (slots: every termination and SessionInfo
        #: reads them).
        self.reason: str | None = None
        self.error: str | None = None
        #: The rare fields' values other than their defaults (see :class:`_Rare`); None if none.
        self.rare: dict[str, Any] | None = None

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
        if type(history[-1]) is Event:
            history = self.turn_events()
        return _copy(history)

    def turn_events(self) -> HistoryWindow:
        """Turn the window's newest entries that are still events into their messages, in
        place, and return the window (which must not be empty). What :meth:`messages` does
        before it copies; a durable store's session does it after each commit instead (see
        ``SessionCore._committed``): its log is not in memory, so keeping the event would keep
        its data dict too, which costs more than the message and burdens the garbage
        collector."""
        history = self.history
        assert history
        newest = history[-1]
        if type(newest) is not Event:
            return history
        last = len(history)
        first = last - 1
        if first == 0 or type(history[-2]) is not Event:  # only the newest: after a commit
            if isinstance(history, tuple):
                history = self.history = (*history[:first], _message_of(newest))
            else:
                history[first] = _message_of(newest)
            return history
        while first > 0 and type(history[first - 1]) is Event:
            first -= 1
        if isinstance(history, tuple):
            turned = [_message_of(cast("Event", history[i])) for i in range(first, last)]
            history = self.history = (*history[:first], *turned)
        else:
            for i in range(first, last):
                history[i] = _message_of(cast("Event", history[i]))
        return history

    def compacted_messages(self) -> list[Message]:
        """The conversation as the model sees it: the compaction's summary (a ``system``
        message) and the window's messages after its ``last_seq``; :meth:`messages` if the
        session was never compacted."""
        messages = self.messages()
        compaction = self.compaction
        if compaction is None:
            return messages
        kept = [m for m in messages if m.seq > compaction.last_seq]
        return [compaction.as_message(self.session_id), *kept]

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
            "compaction": self.compaction,
            "runs": dict(self.runs or {}),
        }


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON (the unit of the working-context bound)."""
    return len(msgspec.json.encode(value))
