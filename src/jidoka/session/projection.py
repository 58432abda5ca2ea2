"""A session's projection: :func:`apply`, the one function that folds its event log into a
:class:`~jidoka.session.state.SessionState`.

:func:`apply` is the only code that changes a :class:`SessionState`. It is deterministic and does
no I/O, reads no clock and draws no random number: the same log always yields the same state, so
a session can be rebuilt from its log at any time (replay, restore, another node taking over).
It updates the state in place rather than returning a copy; a copying apply would make every
message cost O(history), and appending must stay O(1).

Bounds are enforced *before* an event is made (by the session's commands), so ``apply`` never
refuses a valid event. The one bound ``apply`` itself implements is the history window: the
projection keeps the newest ``max_history`` messages and drops the oldest; the log keeps them all.

The state's shapes live in :mod:`.state`, not here: a ``session_created`` that restores a saved
session carries its snapshot, so applying it decodes one (:mod:`.snapshot`), and snapshots
decode into those shapes. The imports go one way: projection, then snapshot, then state.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final

import msgspec

from ..config import SessionConfig
from ..events import Event, EventType
from .snapshot import decode_state
from .state import (
    SHORT_HISTORY,
    ActiveFile,
    Compaction,
    FileIndexEntry,
    SessionState,
    Status,
    history_window,
    json_size,
)

__all__ = [
    "REWIND_KEEPS",
    "RewindTargetMissing",
    "apply",
    "apply_stored",
    "replay",
    "rewind_to",
]


class RewindTargetMissing(ValueError):
    """A ``session_rewound`` was applied without the projection at its ``to_seq``: the fold
    cannot rebuild an earlier state from the state alone (whoever folds a log that holds a
    rewind gives it, see :func:`rewind_to` and :mod:`.history`)."""


#: What a rewind leaves as it is (the state's rare fields that go on): the usage counters,
#: the agent's status and the approvals pending (none: a rewind waits for the turn to end).
REWIND_KEEPS: Final = frozenset(
    {"usage", "usage_estimated", "agent_status", "pending_approvals", "rewind_target", "runs"}
)


def _created(state: SessionState, event: Event) -> None:
    data = event.data
    restored = data.get("state")
    if restored is not None:
        _restored(state, event, restored)
        return
    state.history = None
    state.reason = state.error = None
    if state.rare is not None:  # a fresh state has none (a session_created is always seq 1)
        state.files = state.index = state.working_context = state.wc_sizes = None
        state.compaction = None
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
    source = decode_state(saved, session_id=state.session_id)
    for name in SessionState.__slots__:
        if name not in ("seq", "session_id", "updated_at"):
            setattr(state, name, getattr(source, name))
    state.status = Status(event.data.get("status", Status.INITIALIZING))
    state.reason = state.error = None


def _rewound(state: SessionState, event: Event) -> None:
    """The projection at ``to_seq`` again: its history window, files, index, working context
    (and any other rare field but :data:`REWIND_KEEPS`); status, usage and the session's
    identity go on. ``rewind_target`` holds that projection (see :func:`rewind_to`)."""
    target = state.rewind_target
    to_seq = event.data["to_seq"]
    if target is None or target.seq != to_seq or target.session_id != state.session_id:
        raise RewindTargetMissing(
            f"session {state.session_id!r}: the rewind at seq {event.seq} needs the "
            f"projection at seq {to_seq}"
        )
    state.rewind_target = None
    messages = target.messages()
    state.history = history_window(messages, state.config.max_history) if messages else None
    kept = {k: v for k, v in (state.rare or {}).items() if k in REWIND_KEEPS}
    for name, value in (target.rare or {}).items():
        if name not in REWIND_KEEPS:
            kept[name] = _copied(value)
    state.rare = kept or None


def _copied(value: Any) -> Any:
    """A rare field's value, unshared: the target may be a live projection that goes on."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, set | list):
        return type(value)(value)
    return value


def _status(state: SessionState, event: Event) -> None:
    state.status = Status(event.data["status"])
    if event.data.get("error"):
        state.error = event.data["error"]


def _terminated(state: SessionState, event: Event) -> None:
    state.status = Status.TERMINATED
    state.reason = event.data.get("reason")
    state.error = event.data.get("error") or state.error


def _message(state: SessionState, event: Event) -> None:
    """The window keeps the event itself (shared with the log): a tuple of one, then a list
    while it is short (appended in place: no new object per message), then a deque."""
    history = state.history
    if history is None:
        state.history = (event,)
        return
    maximum = state.config.max_history
    if isinstance(history, tuple):  # one message so far
        state.history = [*history, event] if maximum > 1 else (event,)
    elif isinstance(history, list):
        if len(history) < min(SHORT_HISTORY, maximum):
            history.append(event)
        elif maximum <= SHORT_HISTORY:  # full: the oldest goes
            del history[0]
            history.append(event)
        else:
            state.history = deque((*history, event), maxlen=maximum)
    else:
        history.append(event)


def _cleared(state: SessionState, event: Event) -> None:
    state.history = None
    state.compaction = None  # a summary of what was cleared would bring it back


def _compacted(state: SessionState, event: Event) -> None:
    """The context carries the summary from now on; the window keeps every message (the
    full history is still there to read), and the summariser's usage counts."""
    data = event.data
    state.compaction = Compaction(
        data["summary"], data["first_seq"], data["last_seq"], event.seq, event.time
    )
    _llm_response(state, event)


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


def _run_queued(state: SessionState, event: Event) -> None:
    if state.runs is None:
        state.runs = {}
    state.runs[event.data["run_id"]] = "queued"


def _run_started(state: SessionState, event: Event) -> None:
    if state.runs is not None and event.data["run_id"] in state.runs:
        state.runs[event.data["run_id"]] = "running"


def _run_completed(state: SessionState, event: Event) -> None:
    if state.runs is not None:
        state.runs.pop(event.data["run_id"], None)
        if not state.runs:
            state.runs = None


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
    EventType.SESSION_REWOUND: _rewound,
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
    EventType.CONTEXT_COMPACTED: _compacted,
    EventType.RUN_QUEUED: _run_queued,
    EventType.RUN_STARTED: _run_started,
    EventType.RUN_COMPLETED: _run_completed,
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


def apply_stored(state: SessionState, event: Event) -> None:
    """:func:`apply` for an event read back from a store, which may follow a gap in the seqs:
    stream chunks dropped once their turn ended (``SessionStore.drop_events``, which drops
    nothing else). A chunk changes nothing but ``seq`` and ``updated_at``, and the event after
    the gap sets both, so the gap is stepped over and the state is what the whole log gives.
    A log without its start is still refused (a load checks for ``session_created``)."""
    if state.seq and event.session_id == state.session_id and event.seq > state.seq + 1:
        state.seq = event.seq - 1
    apply(state, event)


def rewind_to(state: SessionState, event: Event, target: SessionState) -> None:
    """Apply ``event``, a ``session_rewound``, given ``target``: the projection at its
    ``to_seq`` (what only the log, not the state, can say)."""
    state.rewind_target = target
    try:
        apply_stored(state, event)
    finally:
        state.rewind_target = None


def replay(session_id: str, events: Iterable[Event], *, upto: int | None = None) -> SessionState:
    """Rebuild a projection from a whole stored log (from seq 1; gaps of dropped chunks
    stepped over), up to seq ``upto`` if given.

    A ``session_rewound`` is folded with the projection at its ``to_seq``, rebuilt from the
    same events (the log is in memory here; :mod:`.history` does the same from a store,
    starting at a snapshot)."""
    log = events if isinstance(events, list) else list(events)
    state = SessionState(session_id)
    for event in log:
        if upto is not None and event.seq > upto:
            if state.seq:
                state.seq = upto  # inside a gap of dropped chunks, which changed nothing
            break
        if event.type == EventType.SESSION_REWOUND:
            rewind_to(state, event, replay(session_id, log, upto=event.data["to_seq"]))
        else:
            apply_stored(state, event)
    return state
