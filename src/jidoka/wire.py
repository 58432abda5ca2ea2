"""The JSON bodies of the HTTP and WebSocket API, shared by the server and ``RemoteClient``.

Requests are strict (unknown fields are refused, so a typo is an error, not a silent default);
responses reuse the core's own structs (:class:`~jidoka.SessionInfo`, :class:`Message` ...) so a
remote client decodes exactly what an in-process one returns. Collections are wrapped in an object
(``{"sessions": [...], "next_cursor": ...}``) so they can grow fields without breaking clients.
The OpenAPI document is generated from these types.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from .events import Event
from .session.context import ContextBundle
from .session.info import SessionInfo
from .session.inputs import DEFAULT_KEEP_LAST, MAX_INSTRUCTIONS, MAX_KEEP_LAST
from .session.state import ActiveFile, FileIndexEntry, Message
from .store.base import SavedSession

__all__ = [
    "Accepted",
    "AddFileRequest",
    "ApprovalRequest",
    "BuildContextRequest",
    "Cancelled",
    "ClusterNode",
    "ClusterStatus",
    "ChatRequestBody",
    "Cleared",
    "CompactSessionRequest",
    "Compacted",
    "CreateSessionRequest",
    "Deleted",
    "FileIndexList",
    "ForkSessionRequest",
    "FileList",
    "MessageList",
    "Problem",
    "Removed",
    "RewindSessionRequest",
    "SavedSessionList",
    "SendMessageRequest",
    "SessionPage",
    "StartRunRequest",
    "StreamTicket",
    "StreamTicketRequest",
    "UpdateFileIndexRequest",
    "WorkingContextMap",
    "WorkingContextValue",
    "WorkingContextWrite",
]


class _Request(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class CreateSessionRequest(_Request):
    """``POST /v1/sessions``: every field optional; ``config`` overrides the server defaults."""

    metadata: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    llm_config: dict[str, Any] | None = None
    project_root: str | None = None


class ForkSessionRequest(_Request):
    """``POST /v1/sessions/{id}/fork``: a new session from the source's projection at
    ``at_seq`` (default: its last seq); ``metadata`` replaces the source's."""

    at_seq: Annotated[int, msgspec.Meta(ge=1)] | None = None
    metadata: dict[str, Any] | None = None


class RewindSessionRequest(_Request):
    """``POST /v1/sessions/{id}/rewind``: the projection goes back to ``to_seq``; ``cancel``
    stops a running turn first (else a running turn answers 409 ``session-busy``)."""

    to_seq: Annotated[int, msgspec.Meta(ge=1)]
    cancel: bool = False


class SendMessageRequest(_Request):
    """``POST /v1/sessions/{id}/messages`` (the ``Idempotency-Key`` header, if sent, is
    ``idempotency_key``)."""

    role: str
    content: str
    idempotency_key: str | None = None


class StartRunRequest(_Request):
    """``POST /v1/sessions/{id}/runs``: an agent turn on ``text``, in the background (the
    ``Idempotency-Key`` header, if sent, is ``idempotency_key``)."""

    text: str
    multitask: Literal["reject", "enqueue", "interrupt"] = "reject"
    webhook: str | None = None
    idempotency_key: str | None = None
    metadata: dict[str, Any] | None = None


class AddFileRequest(_Request):
    """``POST /v1/sessions/{id}/files``: a path relative to the session's project root."""

    path: str


class UpdateFileIndexRequest(_Request):
    """``PATCH /v1/sessions/{id}/file-index``: merge ``fields`` into ``path``'s entry."""

    path: str
    fields: dict[str, Any]


class WorkingContextWrite(_Request):
    """``PUT /v1/sessions/{id}/working-context/{key}``: any JSON value (``null`` included)."""

    value: Any


class ChatRequestBody(_Request):
    """``POST /v1/sessions/{id}/chat``: one agent turn on ``text``."""

    text: str


class ApprovalRequest(_Request):
    """``POST /v1/sessions/{id}/approvals/{call_id}``: let the write happen, or not."""

    allow: bool


class CompactSessionRequest(_Request):
    """``POST /v1/sessions/{id}/compact``: summarise the messages before the newest
    ``keep_last`` (``instructions``: what the summary should keep, for the model)."""

    instructions: Annotated[str, msgspec.Meta(max_length=MAX_INSTRUCTIONS)] | None = None
    keep_last: Annotated[int, msgspec.Meta(ge=0, le=MAX_KEEP_LAST)] = DEFAULT_KEEP_LAST


class Compacted(msgspec.Struct, kw_only=True):
    """What ``compact_session`` stored: the ``context_compacted`` event's ``seq`` and its data
    (the summary stands for the messages ``first_seq`` to ``last_seq``; the conversation's
    cost in the context went from ``tokens_before`` to ``tokens_after``)."""

    seq: int
    summary: str
    first_seq: int
    last_seq: int
    tokens_before: int
    tokens_after: int


class Accepted(msgspec.Struct, kw_only=True):
    """``202`` for a chat that runs in the background: follow it on the event stream."""

    session_id: str
    events: str


class Cancelled(msgspec.Struct, kw_only=True):
    """Whether ``POST .../cancel`` found a turn running."""

    cancelled: bool


class BuildContextRequest(_Request):
    """``POST /v1/sessions/{id}/context``: which parts, within how many tokens."""

    include: list[str] | None = None
    max_tokens: int | None = None


class SessionPage(msgspec.Struct, kw_only=True):
    """A page of sessions; pass ``next_cursor`` as ``cursor`` for the next (``null``: last)."""

    sessions: list[SessionInfo]
    next_cursor: str | None = None


class EventList(msgspec.Struct, kw_only=True):
    events: list[Event]


class MessageList(msgspec.Struct, kw_only=True):
    messages: list[Message]


class FileList(msgspec.Struct, kw_only=True):
    files: list[ActiveFile]


class FileIndexList(msgspec.Struct, kw_only=True):
    entries: list[FileIndexEntry]


class SavedSessionList(msgspec.Struct, kw_only=True):
    saved_sessions: list[SavedSession]


class ClusterNode(msgspec.Struct, kw_only=True):
    """One node of a cluster as the store knows it: ``alive`` while its lease is valid (by the
    database's clock), ``state`` ``up`` or ``down`` (it left), ``owned_sessions`` live."""

    node_id: str
    advertise_url: str
    state: str
    alive: bool
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age: float
    owned_sessions: int


class ClusterStatus(msgspec.Struct, kw_only=True):
    """The cluster seen from the node that answered (``node_id`` ``None``: a single node,
    no cluster)."""

    node_id: str | None
    lease_ttl: float | None
    nodes: list[ClusterNode]


class WorkingContextValue(msgspec.Struct, kw_only=True):
    key: str
    value: Any


class WorkingContextMap(msgspec.Struct, kw_only=True):
    working_context: dict[str, Any]


class Cleared(msgspec.Struct, kw_only=True):
    """How many messages ``DELETE .../messages`` removed."""

    cleared: int


class Removed(msgspec.Struct, kw_only=True):
    """Whether ``DELETE .../files`` found the file active."""

    removed: bool


class Deleted(msgspec.Struct, kw_only=True):
    """Whether ``DELETE .../working-context/{key}`` found the key."""

    deleted: bool


class StreamTicketRequest(_Request):
    """``POST /v1/stream-tickets`` (the body is optional): ``session_id`` limits the ticket to
    that session's event stream; without it, it opens any event stream of the caller's."""

    session_id: str | None = None


class StreamTicket(msgspec.Struct, kw_only=True):
    """A ticket for one event stream: ``?ticket=<ticket>``, once, within ``expires_in`` seconds."""

    ticket: str
    expires_in: float
    #: The session whose stream it opens; ``None``: any of the caller's event streams.
    session_id: str | None = None


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An RFC 9457 problem document (``application/problem+json``), with the error's fields."""

    type: str
    title: str
    status: int
    detail: str
    session_id: str | None = None
    request_id: str | None = None
    argument: str | None = None
    field: str | None = None
    role: str | None = None
    path: str | None = None
    reason: str | None = None
    limit: str | None = None
    maximum: int | None = None
    actual: int | None = None
    from_status: str | None = None
    to_status: str | None = None
    provider: str | None = None
    data_dir: str | None = None
    provider_status: int | None = None
    retryable: bool | None = None
    key: str | None = None


# The result types of the API, for the OpenAPI document.
RESPONSE_TYPES: tuple[type, ...] = (SessionInfo, Message, ActiveFile, FileIndexEntry, ContextBundle)
