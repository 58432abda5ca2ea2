"""Every client verb, declared once: what the HTTP routes, the OpenAPI document, the WebSocket
ops and :class:`~jidoka.RemoteClient` are all made from.

A :class:`Verb` says what a verb takes (path, query and body arguments, with their types), what
it answers (the :mod:`jidoka.wire` type the HTTP body and the WebSocket ``result`` encode, byte
for byte), which errors it can raise, which principal may call it (:class:`Scope`), and how it
runs on a principal-scoped client (:class:`~jidoka.scoped.ScopedClient`). The hand-written,
documented surface stays :class:`~jidoka.Client`: ``client`` names its method, ``unwrap`` the
field of the answer that method returns, and a test checks every declaration against it.

Core-light on purpose (no server framework): ``RemoteClient`` reads the same table to build its
requests. Adding a verb is a :class:`Verb` here and its method on ``Client``; the transports
follow.

Most verbs have a method and path of their own. A verb may instead share the route of another
one, selected by a boolean query flag (``selected_by``): ``purge_session`` is ``DELETE
/v1/sessions/{id}?purge=true``, beside ``terminate_session`` on ``DELETE /v1/sessions/{id}``.
There is still one route (and one OpenAPI operation) per method and path: the route belongs to
the verb without a flag, takes the flag as one more query parameter, and runs the selected verb
when the flag is ``true`` (:func:`selected`); the WebSocket knows the selected verb as an op of
its own, and ``RemoteClient`` sends the flag.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import msgspec

from . import wire
from ._verb_calls import (
    Call,
    approve_call,
    build_context_call,
    cluster_status_call,
    compact_session_call,
    create_session_call,
    delete_saved_session_call,
    fork_session_call,
    get_working_context_call,
    join_run_call,
    list_runs_call,
    list_saved_sessions_call,
    list_sessions_call,
    put_working_context_call,
    read_events_call,
    rewind_session_call,
    run_location,
    send_message_call,
    session_location,
    session_verb,
    start_run_call,
    terminate_session_call,
)
from .errors import (
    InvalidArgument,
    InvalidRole,
    InvalidTransition,
    JidokaError,
    LimitExceeded,
    LLMError,
    PathNotAllowed,
    RunNotFound,
    SessionBusy,
    SessionExists,
    SessionNotFound,
    SessionTerminated,
)
from .llm.turns import ChatResult
from .problems import KeyNotFound
from .runs.info import RunInfo, RunPage
from .runs.service import MAX_JOIN_SECONDS
from .session.branching import Rewound
from .session.context import ContextBundle
from .session.info import SessionInfo
from .session.state import REASON_REQUESTED, ActiveFile, FileIndexEntry, Message, Status
from .store.base import SavedSession

if TYPE_CHECKING:
    pass

__all__ = [
    "DEFAULT_PAGE",
    "MAX_PAGE",
    "VERBS",
    "KeyNotFound",
    "Param",
    "Scope",
    "Verb",
    "by_name",
    "selected",
    "sharing",
]

#: A run's status, as ``list_runs`` filters on it.
RunStatus = Literal["queued", "running", "completed", "failed", "cancelled", "interrupted"]

#: A page of ``list_sessions`` unless ``limit`` says otherwise, and the largest one served.
DEFAULT_PAGE: Final = 100
MAX_PAGE: Final = 1000


class Scope(StrEnum):
    """Which principal may call a verb, checked before it runs (another principal's session
    is not found, exactly like one that does not exist, so ids cannot be probed)."""

    #: ``session_id`` names a live or terminated session of the caller's.
    SESSION = "session"
    #: ``session_id`` names a saved copy of the caller's.
    SAVED = "saved_session"
    #: Nothing named: the verb lists (or creates) the caller's own sessions.
    OWNER = "owner"


@dataclass(frozen=True, slots=True)
class Param:
    """A query parameter: its name, type (as the WebSocket takes it), default (none: it is
    required) and meaning."""

    name: str
    type: Any
    default: Any = msgspec.NODEFAULT
    description: str = ""


@dataclass(frozen=True, slots=True, eq=False)
class Verb:
    """One verb: its wire name (the WebSocket ``op``, the route's name and OpenAPI
    ``operationId``) and all a transport needs to serve or call it."""

    name: str
    method: str
    path: str
    summary: str
    scope: Scope
    #: The answer's type (``None``: no body, 204 over HTTP, ``null`` over the WebSocket).
    result: type | None
    #: The success status over HTTP.
    status: int = 200
    #: The request body's type (a :mod:`jidoka.wire` request struct), if it takes one.
    body: type[msgspec.Struct] | None = None
    query: tuple[Param, ...] = ()
    #: What the verb itself can raise, beyond what every route can answer (see the OpenAPI).
    errors: tuple[type[JidokaError], ...] = ()
    #: How it runs, the scope already checked; ``None`` for what the server serves itself
    #: (event streams, stream tickets).
    call: Call | None = None
    #: The :class:`~jidoka.Client` method it is, and the answer's field that method returns.
    client: str | None = None
    unwrap: str | None = None
    #: An event stream (SSE): long-lived, not counted as a request in flight.
    stream: bool = False
    #: Queued turns: HTTP answers 202 at once unless ``?wait=true``; the WebSocket waits.
    background: bool = False
    #: Its answer waits on a model call (a compaction's summary): no read timeout, as for a
    #: turn waited on, in ``RemoteClient`` and when forwarded to the session's node.
    long_running: bool = False
    #: The ``Location`` of what a 201 created, from the answer.
    location: Callable[[Any], str] | None = None
    #: The boolean query parameter that selects this verb on the route of the verb with the
    #: same method and path and no flag (``purge``: ``DELETE /v1/sessions/{id}?purge=true``).
    #: It is no argument of the verb: the request carries it as ``true``, and the route
    #: answers as this verb then (see the module's docstring).
    selected_by: str | None = None
    #: The arguments as one struct: path parameters, query parameters, body fields (derived).
    args: type[msgspec.Struct] = field(init=False)
    path_params: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = tuple(
            part[1:-1].split(":", 1)[0]
            for part in self.path.split("/")
            if part.startswith("{") and part.endswith("}")
        )
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [(n, str) for n in names]
        for param in self.query:
            if param.default is msgspec.NODEFAULT:
                fields.append((param.name, param.type))
            else:
                fields.append((param.name, param.type, param.default))
        for spec in msgspec.structs.fields(self.body) if self.body is not None else ():
            default = spec.default
            if spec.default_factory is not msgspec.NODEFAULT:
                default = msgspec.field(default_factory=spec.default_factory)
            if default is msgspec.NODEFAULT:
                fields.append((spec.name, spec.type))
            else:
                fields.append((spec.name, spec.type, default))
        # kw_only: a required field may follow one with a default (path, then query, then body).
        args = msgspec.defstruct(
            f"{self.name}_args", fields, kw_only=True, forbid_unknown_fields=True
        )
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "path_params", names)

    @property
    def websocket(self) -> bool:
        """Whether the WebSocket serves it as an op (streams are its ``subscribe``)."""
        return self.call is not None

    @property
    def query_names(self) -> tuple[str, ...]:
        """The query parameters the route takes (the router refuses any other)."""
        names = tuple(p.name for p in self.query)
        return (*names, "wait") if self.background else names

    @property
    def body_fields(self) -> tuple[str, ...]:
        if self.body is None:
            return ()
        return tuple(f.name for f in msgspec.structs.fields(self.body))

    @property
    def body_optional(self) -> bool:
        """Whether an empty body stands for the body with every default."""
        if self.body is None:
            return True
        return all(
            f.default is not msgspec.NODEFAULT or f.default_factory is not msgspec.NODEFAULT
            for f in msgspec.structs.fields(self.body)
        )

    def url(self, values: Mapping[str, str], quote_segment: Callable[[str], str]) -> str:
        """The path with the path parameters in ``values`` put in, quoted by
        ``quote_segment``."""
        parts = []
        for part in self.path.split("/"):
            if part.startswith("{") and part.endswith("}"):
                part = quote_segment(values[part[1:-1].split(":", 1)[0]])
            parts.append(part)
        return "/".join(parts)

    def takes_slashes(self, name: str) -> bool:
        """Whether path parameter ``name`` may hold ``/`` (a ``{name:path}``)."""
        return f"{{{name}:path}}" in self.path


_SESSION_ERRORS: Final = (SessionNotFound,)
#: A change to a session: it must be live.
_CHANGE_ERRORS: Final = (SessionNotFound, SessionTerminated, LimitExceeded)
_SID: Final = "/v1/sessions/{session_id}"
_SAVED: Final = "/v1/saved-sessions/{session_id}"
_KEY: Final = _SID + "/working-context/{key:path}"
_STREAM_QUERY: Final = (
    Param("lastEventId", str | None, None,
          "What EventSource polyfills send on reconnect: on a session's stream the same as "
          "after_seq (Last-Event-ID header first, then this, then after_seq); on /v1/events "
          "accepted and ignored (it does not replay)"),
    Param("ticket", str | None, None,
          "A ticket from POST /v1/stream-tickets, in place of the Authorization header "
          "(for EventSource); single use"),
    Param("frames", Literal["named", "unnamed"] | None, None,
          "unnamed: event frames without an event: line (all reach onmessage)"),
)  # fmt: skip


VERBS: Final[tuple[Verb, ...]] = (
    Verb("create_session", "POST", "/v1/sessions", "Create a session", Scope.OWNER,
         SessionInfo, 201, body=wire.CreateSessionRequest,
         errors=(InvalidArgument, PathNotAllowed, LimitExceeded),
         call=create_session_call, client="create_session", unwrap="session_id",
         location=session_location),
    Verb("list_sessions", "GET", "/v1/sessions", "List your sessions (paged)", Scope.OWNER,
         wire.SessionPage, query=(
             Param("status", Status | None, None, "Only sessions with this status"),
             Param("limit", Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)], DEFAULT_PAGE,
                   f"Page size (1-{MAX_PAGE}, default {DEFAULT_PAGE})"),
             Param("cursor", str | None, None, "`next_cursor` of the previous page")),
         call=list_sessions_call, client="list_sessions", unwrap="sessions"),
    Verb("get_session_info", "GET", _SID, "A session's description", Scope.SESSION,
         SessionInfo, errors=_SESSION_ERRORS,
         call=session_verb("get_session_info"), client="get_session_info"),
    Verb("terminate_session", "DELETE", _SID, "Terminate a session", Scope.SESSION,
         SessionInfo, query=(Param("reason", str, REASON_REQUESTED, "Why it is terminated"),),
         errors=(SessionNotFound, InvalidTransition),
         call=terminate_session_call, client="terminate_session"),
    # Shares terminate_session's route: DELETE /v1/sessions/{id}?purge=true.
    Verb("purge_session", "DELETE", _SID,
         "Purge a session: terminate it if live, then remove everything stored for it",
         Scope.SESSION, None, 204, errors=(SessionNotFound, InvalidTransition),
         call=session_verb("purge_session"), client="purge_session", selected_by="purge"),
    Verb("send_message", "POST", _SID + "/messages", "Append a message", Scope.SESSION,
         Message, 201, body=wire.SendMessageRequest,
         errors=(*_CHANGE_ERRORS, InvalidRole, SessionBusy, InvalidArgument),
         call=send_message_call, client="send_message"),
    Verb("get_conversation_history", "GET", _SID + "/messages", "The conversation window",
         Scope.SESSION, wire.MessageList, query=(
             Param("view", Literal["full", "compacted"], "full",
                   "full: every message of the window; compacted: the latest compaction's "
                   "summary (a system message), then the messages after it"),),
         errors=(SessionNotFound, SessionTerminated),
         call=session_verb("get_conversation_history", "view", wrap=wire.MessageList,
                            key="messages"),
         client="get_conversation_history", unwrap="messages"),
    Verb("clear_conversation", "DELETE", _SID + "/messages", "Clear the conversation",
         Scope.SESSION, wire.Cleared, errors=_CHANGE_ERRORS,
         call=session_verb("clear_conversation", wrap=wire.Cleared, key="cleared"),
         client="clear_conversation", unwrap="cleared"),
    Verb("compact_session", "POST", _SID + "/compact",
         "Summarise the older conversation with the session's model (the log keeps it all)",
         Scope.SESSION, wire.Compacted, body=wire.CompactSessionRequest,
         errors=(*_CHANGE_ERRORS, SessionBusy, LLMError, InvalidArgument),
         call=compact_session_call, client="compact_session", long_running=True),
    Verb("get_active_files", "GET", _SID + "/files", "Active files", Scope.SESSION,
         wire.FileList, errors=(SessionNotFound, SessionTerminated),
         call=session_verb("get_active_files", wrap=wire.FileList, key="files"),
         client="get_active_files", unwrap="files"),
    Verb("add_file", "POST", _SID + "/files", "Make a file active", Scope.SESSION,
         ActiveFile, 201, body=wire.AddFileRequest, errors=(*_CHANGE_ERRORS, PathNotAllowed),
         call=session_verb("add_file", "path"), client="add_file"),
    Verb("remove_file", "DELETE", _SID + "/files", "Make a file inactive", Scope.SESSION,
         wire.Removed, query=(Param("path", str, description="A path relative to the "
                                    "project root"),),
         errors=_CHANGE_ERRORS,
         call=session_verb("remove_file", "path", wrap=wire.Removed, key="removed"),
         client="remove_file", unwrap="removed"),
    Verb("get_file_index", "GET", _SID + "/file-index", "The file index", Scope.SESSION,
         wire.FileIndexList, errors=(SessionNotFound, SessionTerminated),
         call=session_verb("get_file_index", wrap=wire.FileIndexList, key="entries"),
         client="get_file_index", unwrap="entries"),
    Verb("update_file_index", "PATCH", _SID + "/file-index",
         "Merge fields into a file's index entry", Scope.SESSION, FileIndexEntry,
         body=wire.UpdateFileIndexRequest, errors=(*_CHANGE_ERRORS, PathNotAllowed),
         call=session_verb("update_file_index", "path", "fields"), client="update_file_index"),
    Verb("get_working_context_map", "GET", _SID + "/working-context",
         "The whole working context", Scope.SESSION, wire.WorkingContextMap,
         errors=(SessionNotFound, SessionTerminated),
         call=session_verb("get_working_context", wrap=wire.WorkingContextMap,
                            key="working_context"),
         client="get_working_context", unwrap="working_context"),
    Verb("get_working_context", "GET", _KEY, "One working-context value", Scope.SESSION,
         wire.WorkingContextValue, errors=(SessionNotFound, SessionTerminated, KeyNotFound),
         call=get_working_context_call, client="get_working_context", unwrap="value"),
    Verb("put_working_context", "PUT", _KEY, "Store a working-context value", Scope.SESSION,
         wire.WorkingContextValue, body=wire.WorkingContextWrite, errors=_CHANGE_ERRORS,
         call=put_working_context_call, client="put_working_context"),
    Verb("delete_working_context", "DELETE", _KEY, "Remove a working-context key",
         Scope.SESSION, wire.Deleted, errors=_CHANGE_ERRORS,
         call=session_verb("delete_working_context", "key", wrap=wire.Deleted, key="deleted"),
         client="delete_working_context", unwrap="deleted"),
    Verb("build_context", "POST", _SID + "/context", "Build the context an LLM would see",
         Scope.SESSION, ContextBundle, body=wire.BuildContextRequest,
         errors=(SessionNotFound, SessionTerminated),
         call=build_context_call, client="build_context"),
    Verb("chat", "POST", _SID + "/chat",
         "Run one agent turn (202 and events; ?wait=true answers with the result)",
         Scope.SESSION, ChatResult, body=wire.ChatRequestBody, background=True,
         errors=(*_CHANGE_ERRORS, SessionBusy, LLMError),
         call=session_verb("chat", "text"), client="chat"),
    Verb("start_run", "POST", _SID + "/runs",
         "Start an agent turn in the background: 202 and the run at once", Scope.SESSION,
         RunInfo, 202, body=wire.StartRunRequest,
         errors=(*_CHANGE_ERRORS, SessionBusy, InvalidArgument),
         call=start_run_call, client="start_run", location=run_location),
    Verb("list_runs", "GET", _SID + "/runs", "The session's runs, newest first (paged)",
         Scope.SESSION, RunPage, query=(
             Param("status", RunStatus | None, None, "Only runs with this status"),
             Param("limit", Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)], DEFAULT_PAGE,
                   f"Page size (1-{MAX_PAGE}, default {DEFAULT_PAGE})"),
             Param("cursor", str | None, None, "`next_cursor` of the previous page")),
         errors=(SessionNotFound, InvalidArgument),
         call=list_runs_call, client="list_runs"),
    Verb("get_run", "GET", _SID + "/runs/{run_id}", "A run as it is now", Scope.SESSION,
         RunInfo, errors=(SessionNotFound, RunNotFound),
         call=session_verb("get_run", "run_id"), client="get_run"),
    Verb("join_run", "GET", _SID + "/runs/{run_id}/join",
         "Wait for a run to end (at most timeout seconds), then the run", Scope.SESSION,
         RunInfo, query=(
             Param("timeout", Annotated[float, msgspec.Meta(ge=0, le=MAX_JOIN_SECONDS)], 30.0,
                   "Seconds to wait at most (0-3600, default 30); the run is answered as it "
                   "is then (still running: join again)"),),
         errors=(SessionNotFound, RunNotFound, InvalidArgument),
         call=join_run_call, client="join_run", long_running=True),
    Verb("cancel_run", "POST", _SID + "/runs/{run_id}/cancel",
         "Cancel a run (queued: it never starts; running: it stops)", Scope.SESSION, RunInfo,
         errors=(SessionNotFound, SessionTerminated, RunNotFound),
         call=session_verb("cancel_run", "run_id"), client="cancel_run", long_running=True),
    Verb("cancel", "POST", _SID + "/cancel", "Stop the running agent turn", Scope.SESSION,
         wire.Cancelled, errors=(SessionNotFound, SessionTerminated),
         call=session_verb("cancel", wrap=wire.Cancelled, key="cancelled"),
         client="cancel", unwrap="cancelled"),
    Verb("approve", "POST", _SID + "/approvals/{call_id}", "Answer a write approval",
         Scope.SESSION, None, 204, body=wire.ApprovalRequest,
         errors=(SessionNotFound, SessionTerminated, InvalidArgument),
         call=approve_call, client="approve"),
    Verb("save_session", "POST", _SID + "/save", "Save a named copy of the session",
         Scope.SESSION, SavedSession, 201, errors=(SessionNotFound, LimitExceeded),
         call=session_verb("save_session"), client="save_session"),
    Verb("fork_session", "POST", _SID + "/fork",
         "A new session from this one's state at a seq (default: its last)", Scope.SESSION,
         SessionInfo, 201, body=wire.ForkSessionRequest,
         errors=(SessionNotFound, SessionTerminated, InvalidArgument, LimitExceeded),
         call=fork_session_call, client="fork_session", unwrap="session_id",
         location=session_location),
    Verb("rewind_session", "POST", _SID + "/rewind",
         "Take the session's state back to a seq (the log keeps every event)", Scope.SESSION,
         Rewound, body=wire.RewindSessionRequest,
         errors=(*_CHANGE_ERRORS, InvalidArgument, SessionBusy),
         call=rewind_session_call, client="rewind_session"),
    Verb("cluster_status", "GET", "/v1/cluster",
         "The nodes of the cluster (none on a single node)", Scope.OWNER, wire.ClusterStatus,
         call=cluster_status_call, client="cluster_status"),
    Verb("list_saved_sessions", "GET", "/v1/saved-sessions", "Your saved sessions",
         Scope.OWNER, wire.SavedSessionList,
         call=list_saved_sessions_call, client="list_saved_sessions",
         unwrap="saved_sessions"),
    Verb("restore_session", "POST", _SAVED + "/restore", "Bring a saved session back",
         Scope.SAVED, SessionInfo, errors=(SessionNotFound, SessionExists, LimitExceeded),
         call=session_verb("restore_session"), client="restore_session"),
    Verb("delete_saved_session", "DELETE", _SAVED, "Delete a saved copy", Scope.SAVED,
         None, 204, errors=_SESSION_ERRORS,
         call=delete_saved_session_call, client="delete_saved_session"),
    Verb("read_events", "GET", _SID + "/log", "A page of the session's stored events",
         Scope.SESSION, wire.EventList, query=(
             Param("after_seq", Annotated[int, msgspec.Meta(ge=0)], 0,
                   "Events after this seq (the last one of the previous page)"),
             Param("limit", Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)], DEFAULT_PAGE,
                   f"Page size (1-{MAX_PAGE}, default {DEFAULT_PAGE}); a page is bounded in "
                   "bytes too, so read on until one comes back empty")),
         errors=_SESSION_ERRORS, call=read_events_call, client="read_events", unwrap="events"),
    Verb("session_events", "GET", _SID + "/events", "One session's events", Scope.SESSION,
         None, stream=True, query=(
             Param("after_seq", Annotated[int, msgspec.Meta(ge=0)] | None, None,
                   "Replay the stored events after this seq, then go live"),
             *_STREAM_QUERY),
         errors=(SessionNotFound, SessionTerminated, LimitExceeded)),
    Verb("all_events", "GET", "/v1/events", "Lifecycle events of your sessions", Scope.OWNER,
         None, stream=True, query=_STREAM_QUERY, errors=(LimitExceeded,)),
    # The server's own: a credential for a browser's EventSource (jidoka.server.tickets).
    Verb("create_stream_ticket", "POST", "/v1/stream-tickets",
         "A short-lived, single-use ticket that opens an event stream (for EventSource)",
         Scope.OWNER, wire.StreamTicket, 201, body=wire.StreamTicketRequest,
         errors=(SessionNotFound, LimitExceeded)),
)  # fmt: skip

_BY_NAME: Final = {verb.name: verb for verb in VERBS}


def by_name(name: str) -> Verb | None:
    """The verb called ``name``, if there is one."""
    return _BY_NAME.get(name)


def sharing(verb: Verb) -> tuple[Verb, ...]:
    """The verbs a query flag selects on ``verb``'s route (same method and path)."""
    if verb.selected_by is not None:
        return ()
    return tuple(
        other
        for other in VERBS
        if other.selected_by is not None and (other.method, other.path) == (verb.method, verb.path)
    )


def selected(verb: Verb, query: Mapping[str, str]) -> Verb:
    """The verb a request on ``verb``'s route runs: the one whose flag is ``true`` in
    ``query`` (``false`` or absent: ``verb`` itself). A flag of another value, or a query
    parameter the selected verb does not take beside its flag, is an ``InvalidArgument``
    naming it (``?purge=true&reason=x`` would otherwise drop the reason silently)."""
    for other in sharing(verb):
        flag = other.selected_by
        assert flag is not None
        value = query.get(flag)
        if value is None or value == "false":
            continue
        if value != "true":
            raise InvalidArgument(f"{flag} must be true or false, got {value!r:.40}", argument=flag)
        takes = {flag, *other.query_names}
        for name in query:
            if name not in takes:
                raise InvalidArgument(
                    f"query parameter {name} does not apply with {flag}=true", argument=name
                )
        return other
    return verb
