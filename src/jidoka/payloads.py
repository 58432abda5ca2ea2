"""The ``data`` of each event type, as msgspec Structs: what an event of that type carries.

Each :class:`~jidoka.EventType` has one Struct here, tagged with the type's name, so
:data:`AnyEventData` is a tagged union and :data:`PAYLOADS` maps a type to its Struct. Code that
builds an event builds its Struct (:func:`event_item` turns it into the ``(type, data)`` pair a
commit takes), so a misspelt or missing field is a type error, not a silently different log.
``docs/events.md`` is the table of them all, and a test holds it to these classes.

:attr:`Event.data <jidoka.Event.data>` stays a plain JSON object: that is what the store keeps
and the wire carries, byte for byte as before, and what extensions append. The union is not the
wire form because msgspec writes a tag *inside* the tagged object: tagging ``data`` would add a
``type`` key to every event's ``data``, and tagging the whole event would put the fields beside
``type`` instead of under ``data``. So the tag here is the event's own ``type``, and
:func:`payload_of` reads an event's ``data`` back into its Struct.

A field whose default is :data:`msgspec.UNSET` is left out of ``data`` when not given (``None``
is a value, written as ``null``). Field order is the order in ``data``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final, TypeAlias, get_args

import msgspec
from msgspec import UNSET, UnsetType

from .events import Event, EventType

__all__ = [
    "PAYLOADS",
    "AgentStatusData",
    "ApprovalDecidedData",
    "ApprovalRequestedData",
    "ConversationAddedData",
    "ConversationClearedData",
    "ContextCompactedData",
    "ErrorData",
    "AnyEventData",
    "EventsDroppedData",
    "FileAddedData",
    "FileIndexUpdatedData",
    "FileRemovedData",
    "LLMResponseData",
    "LLMStreamChunkData",
    "EventData",
    "SessionCreatedData",
    "SessionPurgedData",
    "SessionRewoundData",
    "SessionStatusData",
    "SessionTerminatedData",
    "RunCompletedData",
    "RunQueuedData",
    "RunStartedData",
    "ToolCallData",
    "ToolResultData",
    "WorkingContextUpdatedData",
    "data_of",
    "event_item",
    "payload_of",
]


class EventData(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag_field="type"):
    """Base of every event's ``data``; its tag is the event type's name (``event_type``)."""

    #: The type of the events whose ``data`` this is (set from the tag, below the classes).
    event_type: ClassVar[EventType]


# --- lifecycle -------------------------------------------------------------------------------


class SessionCreatedData(EventData, tag="session_created", frozen=True, kw_only=True):
    """A session was created (or restored from a saved copy: ``restored_from``, ``state``)."""

    status: str
    metadata: dict[str, Any] | UnsetType = UNSET
    #: The session's whole config (with ``schema_version``).
    config: dict[str, Any] | UnsetType = UNSET
    llm_config: dict[str, Any] | UnsetType = UNSET
    project_root: str | UnsetType | None = UNSET
    #: The principal that created it (absent with auth off).
    owner: str | UnsetType = UNSET
    #: When the saved copy was made (ISO 8601), and the copy itself.
    restored_from: str | UnsetType = UNSET
    state: dict[str, Any] | UnsetType = UNSET
    #: A fork: ``{"session_id", "seq"}`` of the session and point it was copied from (``state``
    #: holds the projection there).
    forked_from: dict[str, Any] | UnsetType = UNSET


class SessionStatusData(EventData, tag="session_status", frozen=True, kw_only=True):
    """The session moved from ``previous`` to ``status`` (``error`` when it ends in error)."""

    status: str
    previous: str
    error: str | UnsetType = UNSET


class SessionTerminatedData(EventData, tag="session_terminated", frozen=True, kw_only=True):
    """The session ended: the last event of its log."""

    reason: str
    error: str | None


# --- conversation, files, working context --------------------------------------------------


class SessionRewoundData(EventData, tag="session_rewound", frozen=True, kw_only=True):
    """The projection is again what it was at ``to_seq`` (history, files, index, working
    context; the usage counters and the status go on). ``from_seq`` was the last seq before the
    rewind. Files on disk are not touched: ``touched_paths`` are the paths the rewound range's
    ``write_file``/``edit_file`` calls wrote, so that a client can offer to restore them."""

    to_seq: int
    from_seq: int
    touched_paths: list[str]


class ConversationAddedData(EventData, tag="conversation_added", frozen=True, kw_only=True):
    """A message joined the conversation."""

    role: str
    content: str
    #: The ``Idempotency-Key`` the message was sent with, and a digest of the request it came
    #: in: a retry with the same key answers this message instead of sending it again.
    idempotency_key: str | UnsetType = UNSET
    request_hash: str | UnsetType = UNSET


class ConversationClearedData(EventData, tag="conversation_cleared", frozen=True, kw_only=True):
    """The conversation was emptied; ``count`` messages were in it."""

    count: int


class FileAddedData(EventData, tag="file_added", frozen=True, kw_only=True):
    """A file became active (or was read again); ``mtime`` in seconds since the epoch."""

    path: str
    size: int
    mtime: float
    line_count: int
    language: str | None


class FileRemovedData(EventData, tag="file_removed", frozen=True, kw_only=True):
    """A file stopped being active."""

    path: str


class FileIndexUpdatedData(EventData, tag="file_index_updated", frozen=True, kw_only=True):
    """A file's index entry changed; ``entry`` is the whole entry after the change."""

    path: str
    entry: dict[str, Any]


class WorkingContextUpdatedData(
    EventData, tag="working_context_updated", frozen=True, kw_only=True
):
    """A working-context key was set (or deleted: ``value`` null, ``deleted`` true)."""

    key: str
    value: Any
    deleted: bool | UnsetType = UNSET


# --- the agent -------------------------------------------------------------------------------


class LLMStreamChunkData(EventData, tag="llm_stream_chunk", frozen=True, kw_only=True):
    """Answer text as it streams (text that came while the previous chunk was being stored is
    merged in); ``iteration`` counts the turn's model calls from 1."""

    text: str
    iteration: int
    #: The run whose turn this is (every turn is a run's, but a log written before runs has
    #: none).
    run_id: str | UnsetType = UNSET


class LLMResponseData(EventData, tag="llm_response", frozen=True, kw_only=True):
    """A turn's answer, stored as the assistant message ``message_id`` at ``seq``."""

    message_id: str
    seq: int
    content: str
    #: ``prompt_tokens``, ``completion_tokens``, ``total_tokens`` (``estimated: true`` when
    #: counted here because the endpoint reported none).
    usage: dict[str, Any]
    iterations: int
    finish_reason: str | None
    interrupted: bool
    run_id: str | UnsetType = UNSET


class ToolCallData(EventData, tag="tool_call", frozen=True, kw_only=True):
    """The model called a tool; ``arguments`` is its JSON text (cut if very long)."""

    call_id: str
    name: str
    arguments: str
    iteration: int
    run_id: str | UnsetType = UNSET


class ToolResultData(EventData, tag="tool_result", frozen=True, kw_only=True):
    """A tool's whole result (``cut_for_model`` when the model got only part of it;
    ``cut_off`` for a call cut by ``max_tokens``, which is not run)."""

    call_id: str
    name: str
    content: str
    is_error: bool
    cut_off: bool | UnsetType = UNSET
    cut_for_model: bool | UnsetType = UNSET
    run_id: str | UnsetType = UNSET


class AgentStatusData(EventData, tag="agent_status", frozen=True, kw_only=True):
    """The agent is ``thinking``, ``calling_tool``, ``compacting`` (summarising the
    conversation: ``context_compacted`` or an ``error`` follows), ``idle``, ``cancelled`` or
    ``failed`` (``reason: restart`` for a turn a restart interrupted, ``owner_lost`` for one
    whose node of a cluster was lost)."""

    status: str
    reason: str | UnsetType = UNSET


class ApprovalRequestedData(EventData, tag="approval_requested", frozen=True, kw_only=True):
    """A write waits for the user's answer: ``path`` is the raw key, ``summary`` and
    ``diff`` are for people (an odd name quoted and escaped)."""

    call_id: str
    tool: str
    path: str
    summary: str
    diff: str


class ApprovalDecidedData(EventData, tag="approval_decided", frozen=True, kw_only=True):
    """The answer to an approval: ``reason`` is ``user``, ``timeout``, ``cancelled`` or
    ``restart``."""

    call_id: str
    allow: bool
    reason: str


class ErrorData(EventData, tag="error", frozen=True, kw_only=True):
    """Something failed: a supervised worker crashed (``worker``, ``restarts``) or a turn
    failed (``code``: ``llm_error``, ``max_iterations``, ``limit_exceeded``, ``invalid_config``,
    ``error``, ``internal_error``; ``compaction_failed`` for a summariser that failed, the
    context left as it was; then the error's own fields, and ``usage`` if it used any), or an
    MCP server a turn goes on without (``code`` ``mcp_unavailable``, ``server``)."""

    worker: str | UnsetType = UNSET
    code: str | UnsetType = UNSET
    iterations: int | UnsetType = UNSET
    message: str
    restarts: int | UnsetType = UNSET
    provider: str | UnsetType = UNSET
    status: int | UnsetType | None = UNSET
    retryable: bool | UnsetType = UNSET
    limit: str | UnsetType = UNSET
    maximum: int | UnsetType = UNSET
    field: str | UnsetType = UNSET
    usage: dict[str, Any] | UnsetType = UNSET
    server: str | UnsetType = UNSET


class ContextCompactedData(EventData, tag="context_compacted", frozen=True, kw_only=True):
    """The session's own model summarised the conversation from ``first_seq`` to ``last_seq``
    (the seqs of the oldest and newest message it stands for; a summary of an earlier summary
    stands for that one's messages too). From then on the context carries ``summary`` and the
    messages after ``last_seq``; the log keeps every message. ``tokens_before`` and
    ``tokens_after`` are the conversation's cost in the context, ``usage`` the summariser's."""

    summary: str
    first_seq: int
    last_seq: int
    tokens_before: int
    tokens_after: int
    usage: dict[str, Any] | UnsetType = UNSET


class RunQueuedData(EventData, tag="run_queued", frozen=True, kw_only=True):
    """A run was taken: the agent turn ``text`` will run when the session's earlier runs have
    ended (``multitask`` says what it did about a run under way: ``reject``, ``enqueue`` or
    ``interrupt``). ``webhook`` is called when it ends; ``idempotency_key`` and
    ``request_hash`` let a retried request find it instead of starting another."""

    run_id: str
    text: str
    multitask: str
    webhook: str | UnsetType = UNSET
    metadata: dict[str, Any] | UnsetType = UNSET
    idempotency_key: str | UnsetType = UNSET
    request_hash: str | UnsetType = UNSET


class RunStartedData(EventData, tag="run_started", frozen=True, kw_only=True):
    """The run's turn began (its ``conversation_added`` follows)."""

    run_id: str


class RunCompletedData(EventData, tag="run_completed", frozen=True, kw_only=True):
    """The run ended: ``completed``, ``failed`` (``error`` says why), ``cancelled`` (by
    ``cancel_run``/``cancel``, or before it started), or ``interrupted`` (another run's
    ``multitask: interrupt``, or the process that ran it died: ``reason``). ``message`` is the
    final assistant message (``id``, ``seq``, ``content``) when there is one, ``usage`` the
    turn's tokens. When the run has a webhook, this event is also the outbox entry its
    delivery is made from (``webhook_id``, the same on every attempt)."""

    run_id: str
    status: str
    message: dict[str, Any] | None
    usage: dict[str, Any] | None
    error: str | None
    reason: str | UnsetType = UNSET
    iterations: int | UnsetType = UNSET
    finish_reason: str | UnsetType | None = UNSET
    webhook_id: str | UnsetType = UNSET


class EventsDroppedData(EventData, tag="events_dropped", frozen=True, kw_only=True):
    """A subscription skipped events it could not recover (never in a session's log); the
    global stream's marker has only ``count``."""

    count: int
    first_seq: int | UnsetType = UNSET
    last_seq: int | UnsetType = UNSET


class SessionPurgedData(EventData, tag="session_purged", frozen=True, kw_only=True):
    """Everything stored for the session was removed (never in a log: its log is gone).
    ``reason`` is ``requested`` (``purge_session``) or ``expired`` (``terminated_ttl``: a
    saved copy, which expires by ``saved_ttl``, is then kept); ``owner`` is the principal the
    session belonged to (``null`` if none), which decides who sees the event."""

    reason: str
    owner: str | None


#: Every event's ``data``, tagged by the event's type.
AnyEventData: TypeAlias = (
    SessionCreatedData
    | SessionStatusData
    | SessionTerminatedData
    | SessionRewoundData
    | ConversationAddedData
    | ConversationClearedData
    | FileAddedData
    | FileRemovedData
    | FileIndexUpdatedData
    | WorkingContextUpdatedData
    | LLMStreamChunkData
    | LLMResponseData
    | ToolCallData
    | ToolResultData
    | AgentStatusData
    | ApprovalRequestedData
    | ApprovalDecidedData
    | ErrorData
    | ContextCompactedData
    | RunQueuedData
    | RunStartedData
    | RunCompletedData
    | EventsDroppedData
    | SessionPurgedData
)

for _kind in get_args(AnyEventData):
    _kind.event_type = EventType(str(_kind.__struct_config__.tag))

#: The Struct of each event type's ``data``.
PAYLOADS: Final[dict[EventType, type[EventData]]] = {
    kind.event_type: kind for kind in get_args(AnyEventData)
}
#: The Structs with fields that may be left out: their dict needs the UNSET ones dropped.
_SPARSE: Final = frozenset(
    kind
    for kind in PAYLOADS.values()
    if any(field.default is UNSET for field in msgspec.structs.fields(kind))
)
_asdict: Final = msgspec.structs.asdict


def data_of(payload: EventData) -> dict[str, Any]:
    """``payload`` as an event's ``data``: its fields in order, the unset ones left out.

    Values are kept as they are (no copy, no conversion), as a hand-written dict would hold
    them; the store and the wire encode them the same.
    """
    data = _asdict(payload)
    if type(payload) in _SPARSE:
        return {name: value for name, value in data.items() if value is not UNSET}
    return data


def event_item(payload: EventData) -> tuple[EventType, dict[str, Any]]:
    """The ``(type, data)`` pair a session commits, its type the payload's own.

    :func:`data_of` written out again: this is on the path of every appended message, where
    one more call is a measurable part of the cost.
    """
    data = _asdict(payload)
    if type(payload) in _SPARSE:
        data = {name: value for name, value in data.items() if value is not UNSET}
    return payload.event_type, data


def payload_of(event: Event) -> AnyEventData:
    """An event's ``data`` read into its type's Struct.

    Raises :class:`msgspec.ValidationError` if the data does not have the Struct's shape (an
    extension may append agent events of its own shape; the runtime never reads them this way).
    Fields the Struct does not know are ignored.
    """
    kind = PAYLOADS[event.type]
    return msgspec.convert(event.data, kind)  # type: ignore[return-value]
