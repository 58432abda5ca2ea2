"""A session's projection: the state derived from its event log, and the context built from it.

:func:`apply` is the only code that changes a :class:`SessionState`. It is deterministic and does
no I/O, reads no clock and draws no random number: the same log always yields the same state, so
a session can be rebuilt from its log at any time (replay, restore, another node taking over).
It updates the state in place rather than returning a copy; a copying apply would make every
message cost O(history), and appending must stay O(1).

Bounds are enforced *before* an event is made (by the session's commands), so ``apply`` never
refuses a valid event. The one bound ``apply`` itself implements is the history window: the
projection keeps the newest ``max_history`` messages and drops the oldest; the log keeps them all.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Final

import msgspec

from ..config import SessionConfig
from ..events import Event, EventType
from .state import Status

__all__ = [
    "ActiveFile",
    "ContextBundle",
    "FileExcerpt",
    "FileIndexEntry",
    "Message",
    "SessionState",
    "TokenCounter",
    "apply",
    "build_context",
    "estimate_tokens",
]

ROLES: Final = frozenset({"user", "assistant", "system"})
CONTEXT_PARTS: Final = ("conversation", "files", "file_index", "working_context")
#: Tokens charged per message on top of its content (role and separators), as chat APIs do.
MESSAGE_OVERHEAD_TOKENS: Final = 4
#: A file excerpt shorter than this many tokens is not worth including.
MIN_EXCERPT_TOKENS: Final = 16

TokenCounter = Callable[[str], int]


def estimate_tokens(text: str) -> int:
    """The default token counter: about four characters per token, rounded up.

    That is the usual rule of thumb for English text and code with BPE tokenizers; it over-counts
    dense code a little, which errs on the side of fitting the model's window. Pass a real
    tokenizer (``Runtime(token_counter=...)``) when exact counts matter.
    """
    return (len(text) + 3) // 4


class Message(msgspec.Struct, frozen=True, gc=False):
    """One conversation message. ``id`` is the id of the event that added it."""

    id: str
    role: str
    content: str
    timestamp: datetime
    seq: int


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
    """The projection of one session's log. Mutated only by :func:`apply`.

    Containers are created on first use: an idle, empty session holds no history deque, no file
    dicts and no working-context dict, which is most of what keeps it small.
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
        self.history: deque[Message] | None = None
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
            "history": list(self.history or ()),
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


# --- apply ----------------------------------------------------------------------------------------


def _created(state: SessionState, event: Event) -> None:
    data = event.data
    restored = data.get("state")
    if restored is not None:
        _restored(state, event, restored)
        return
    state.history = state.files = state.index = state.working_context = state.wc_sizes = None
    state.reason = state.error = None
    state.created_at = event.time
    state.status = Status(data.get("status", Status.INITIALIZING))
    metadata, llm_config = data.get("metadata"), data.get("llm_config")
    state.metadata = metadata if metadata is not None else {}
    state.config = SessionConfig.from_dict(data.get("config"), session_id=state.session_id)
    state.llm_config = llm_config if llm_config is not None else {}
    state.project_root = data.get("project_root")
    state.owner = data.get("owner")


def _restored(state: SessionState, event: Event, saved: dict[str, Any]) -> None:
    """A restored session starts a new life from its saved copy (``session_created.state``)."""
    from .snapshot import decode_state  # snapshot builds on this module

    source = decode_state(saved, session_id=state.session_id)
    for name in SessionState.__slots__:
        if name not in ("seq", "session_id", "updated_at"):
            setattr(state, name, getattr(source, name))
    state.status = Status(event.data.get("status", Status.INITIALIZING))
    state.reason = state.error = None


def _status(state: SessionState, event: Event) -> None:
    state.status = Status(event.data["status"])
    if event.data.get("error"):
        state.error = event.data["error"]


def _terminated(state: SessionState, event: Event) -> None:
    state.status = Status.TERMINATED
    state.reason = event.data.get("reason")
    state.error = event.data.get("error") or state.error


def _message(state: SessionState, event: Event) -> None:
    if state.history is None:
        state.history = deque(maxlen=state.config.max_history)
    data = event.data
    state.history.append(Message(event.id, data["role"], data["content"], event.time, event.seq))


def _cleared(state: SessionState, event: Event) -> None:
    state.history = None


def _file_added(state: SessionState, event: Event) -> None:
    data = event.data
    path = data["path"]
    if state.files is None:
        state.files = {}
    state.files.pop(path, None)  # re-adding moves it to the end (most recent)
    state.files[path] = ActiveFile(path, event.time, event.seq)
    _put_index(
        state,
        FileIndexEntry(
            path=path,
            language=data.get("language"),
            line_count=data.get("line_count"),
            size=data.get("size"),
            mtime=data.get("mtime"),
            last_accessed=event.time,
        ),
    )


def _file_removed(state: SessionState, event: Event) -> None:
    if state.files is not None:
        state.files.pop(event.data["path"], None)
        if not state.files:
            state.files = None


def _index_updated(state: SessionState, event: Event) -> None:
    _put_index(state, msgspec.convert(event.data["entry"], FileIndexEntry))


def _llm_response(state: SessionState, event: Event) -> None:
    """A turn's usage (``llm_response``, or the ``error`` that ended a failed turn) adds up."""
    usage = event.data.get("usage")
    if isinstance(usage, dict):
        before = state.usage or (0, 0, 0)
        state.usage = (
            before[0] + int(usage.get("prompt_tokens", 0)),
            before[1] + int(usage.get("completion_tokens", 0)),
            before[2] + int(usage.get("total_tokens", 0)),
        )
        state.usage_estimated = state.usage_estimated or usage.get("estimated") is True


def _agent_status(state: SessionState, event: Event) -> None:
    state.agent_status = event.data.get("status")


def _approval_requested(state: SessionState, event: Event) -> None:
    if state.pending_approvals is None:
        state.pending_approvals = set()
    state.pending_approvals.add(event.data["call_id"])


def _approval_decided(state: SessionState, event: Event) -> None:
    if state.pending_approvals is not None:
        state.pending_approvals.discard(event.data["call_id"])
        if not state.pending_approvals:
            state.pending_approvals = None


def _put_index(state: SessionState, entry: FileIndexEntry) -> None:
    if state.index is None:
        state.index = {}
    state.index.pop(entry.path, None)
    state.index[entry.path] = entry


def _working_context(state: SessionState, event: Event) -> None:
    key = event.data["key"]
    if event.data.get("deleted"):
        if state.working_context is not None:
            state.working_context.pop(key, None)
            assert state.wc_sizes is not None
            state.wc_sizes.pop(key, None)
        return
    if state.working_context is None:
        state.working_context, state.wc_sizes = {}, {}
    assert state.wc_sizes is not None
    value = event.data["value"]
    state.working_context[key] = value
    state.wc_sizes[key] = len(key) + json_size(value)


_APPLY: Final[dict[str, Callable[[SessionState, Event], None]]] = {
    EventType.SESSION_CREATED: _created,
    EventType.SESSION_STATUS: _status,
    EventType.SESSION_TERMINATED: _terminated,
    EventType.CONVERSATION_ADDED: _message,
    EventType.CONVERSATION_CLEARED: _cleared,
    EventType.FILE_ADDED: _file_added,
    EventType.FILE_REMOVED: _file_removed,
    EventType.FILE_INDEX_UPDATED: _index_updated,
    EventType.WORKING_CONTEXT_UPDATED: _working_context,
    EventType.LLM_RESPONSE: _llm_response,
    EventType.ERROR: _llm_response,
    EventType.AGENT_STATUS: _agent_status,
    EventType.APPROVAL_REQUESTED: _approval_requested,
    EventType.APPROVAL_DECIDED: _approval_decided,
}


def apply(state: SessionState, event: Event) -> None:
    """Apply the next event of the session's log to its projection.

    Events that do not change the projection (LLM chunks, tool calls, errors ...) still advance
    ``seq`` and ``updated_at``. Raises ``ValueError`` if the event is not the next one, which
    means the log is corrupt; the state is then left unchanged.
    """
    if event.session_id != state.session_id or event.seq != state.seq + 1:
        raise ValueError(
            f"event {event.session_id}/{event.seq} does not follow "
            f"{state.session_id}/{state.seq} in the log"
        )
    handler = _APPLY.get(event.type)
    if handler is not None:
        handler(state, event)
    state.seq = event.seq
    state.updated_at = event.time


def replay(session_id: str, events: Iterable[Event]) -> SessionState:
    """Rebuild a projection from a whole log."""
    state = SessionState(session_id)
    for event in events:
        apply(state, event)
    return state


# --- build_context --------------------------------------------------------------------------------


class FileExcerpt(msgspec.Struct, frozen=True):
    """A file's text as packed into the context; ``truncated`` if only its head fitted."""

    path: str
    language: str | None
    content: str
    truncated: bool = False


class ContextBundle(msgspec.Struct, frozen=True):
    """What :func:`build_context` packed, and how many tokens it counts."""

    messages: list[Message] = []
    files: list[FileExcerpt] = []
    file_index: list[FileIndexEntry] = []
    working_context: dict[str, Any] = {}
    token_count: int = 0
    max_tokens: int | None = None
    #: Something was left out (or cut short) to stay within ``max_tokens``.
    truncated: bool = False
    #: Messages of the history that did not fit.
    omitted_messages: int = 0


def build_context(
    state: SessionState,
    *,
    include: Iterable[str] = CONTEXT_PARTS,
    max_tokens: int | None = None,
    file_texts: Mapping[str, str] | None = None,
    counter: TokenCounter = estimate_tokens,
) -> ContextBundle:
    """Pack the session's context into at most ``max_tokens`` tokens (no bound if ``None``).

    Order of packing, each part only if it is in ``include``:

    1. working context, key by key in insertion order, while it fits;
    2. file index entries, most recently touched first, while they fit;
    3. conversation messages and file excerpts together, **newest first** by the seq of the event
       that added them. The conversation stops at the first message that does not fit (no gaps);
       a file that does not fit is cut to its first lines if at least ``MIN_EXCERPT_TOKENS``
       remain, otherwise skipped.

    ``file_texts`` maps active-file paths to their current text (files missing from it, e.g.
    deleted since they were added, are skipped). Messages come back oldest first.
    """
    parts = frozenset(include)
    budget = max_tokens if max_tokens is not None else float("inf")
    used = 0
    truncated = False

    working: dict[str, Any] = {}
    if "working_context" in parts and state.working_context:
        for key, value in state.working_context.items():
            cost = counter(key) + counter(msgspec.json.encode(value).decode())
            if used + cost > budget:
                truncated = True
                continue
            working[key] = value
            used += cost

    index: list[FileIndexEntry] = []
    if "file_index" in parts and state.index:
        for entry in reversed(state.index.values()):
            cost = counter(_index_line(entry))
            if used + cost > budget:
                truncated = True
                break
            index.append(entry)
            used += cost

    want_messages = "conversation" in parts and state.history
    want_files = "files" in parts and state.files and file_texts is not None
    messages: list[Message] = []
    excerpts: list[tuple[int, FileExcerpt]] = []
    history = list(state.history or ()) if want_messages else []
    files = sorted((state.files or {}).values(), key=lambda f: f.seq) if want_files else []
    texts = file_texts or {}
    mi, fi = len(history) - 1, len(files) - 1
    while mi >= 0 or fi >= 0:
        if mi >= 0 and (fi < 0 or history[mi].seq > files[fi].seq):
            message = history[mi]
            mi -= 1
            cost = counter(message.content) + MESSAGE_OVERHEAD_TOKENS
            if used + cost > budget:
                truncated = True
                mi = -1  # the conversation stops here: a context never has gaps in it
                continue
            messages.append(message)
            used += cost
            continue
        active = files[fi]
        fi -= 1
        text = texts.get(active.path)
        if text is None:
            continue
        indexed = state.index.get(active.path) if state.index else None
        language = indexed.language if indexed is not None else None
        cost = counter(text)
        if used + cost <= budget:
            excerpts.append((active.seq, FileExcerpt(active.path, language, text)))
            used += cost
            continue
        truncated = True
        room = budget - used
        if room >= MIN_EXCERPT_TOKENS:
            head, head_cost = _head(text, int(room), counter)
            if head:
                excerpts.append((active.seq, FileExcerpt(active.path, language, head, True)))
                used += head_cost

    omitted = len(history) - len(messages) if want_messages else 0
    messages.reverse()
    excerpts.sort(key=lambda pair: pair[0])
    return ContextBundle(
        messages=messages,
        files=[excerpt for _, excerpt in excerpts],
        file_index=index,
        working_context=working,
        token_count=used,
        max_tokens=max_tokens,
        truncated=truncated or omitted > 0,
        omitted_messages=omitted,
    )


def _index_line(entry: FileIndexEntry) -> str:
    return f"{entry.path} {entry.language or ''} {entry.line_count or 0} lines {entry.size or 0} B"


def _head(text: str, room: int, counter: TokenCounter) -> tuple[str, int]:
    """The longest run of whole first lines of ``text`` costing at most ``room`` tokens."""
    taken: list[str] = []
    cost = 0
    for line in text.splitlines(keepends=True):
        line_cost = counter(line)
        if cost + line_cost > room:
            break
        taken.append(line)
        cost += line_cost
    head = "".join(taken)
    return head, counter(head) if head else 0
