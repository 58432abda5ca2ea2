"""The ``/v1`` HTTP routes: decode the request, call :class:`Operations`, encode the answer.

Handlers stay this thin on purpose: validation of values belongs to the core (which names the
session and the argument in its errors), ownership to :class:`Operations`, and errors to the
app's one exception handler, which turns any :class:`~jidoka.JidokaError` into problem+json.
:data:`ROUTES` also feeds the OpenAPI document, so the two cannot disagree, and the router: the
query parameters a route declares are the only ones it accepts, and a route marked ``stream``
is the only kind the in-flight limit leaves uncounted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, NamedTuple, TypeVar
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from ..errors import InvalidArgument
from ..llm.orchestrator import ChatResult
from ..session.context import ContextBundle
from ..session.info import SessionInfo
from ..session.state import ActiveFile, FileIndexEntry, Message
from ..store.base import SavedSession
from ..wire import (
    Accepted,
    AddFileRequest,
    ApprovalRequest,
    BuildContextRequest,
    Cancelled,
    ChatRequestBody,
    Cleared,
    CreateSessionRequest,
    Deleted,
    FileIndexList,
    FileList,
    MessageList,
    Removed,
    SavedSessionList,
    SendMessageRequest,
    SessionPage,
    UpdateFileIndexRequest,
    WorkingContextMap,
    WorkingContextValue,
    WorkingContextWrite,
)
from .inputs import decode_json, query_int, query_str
from .middleware import PRINCIPAL_KEY
from .operations import Operations
from .responses import json_response
from .tickets import StreamTicket, StreamTicketRequest, TicketBook

__all__ = ["DEFAULT_PAGE", "MAX_PAGE", "ROUTES", "RouteSpec", "SessionRoutes"]

T = TypeVar("T")
logger = logging.getLogger("jidoka.server")
DEFAULT_PAGE: Final = 100
MAX_PAGE: Final = 1000


class RouteSpec(NamedTuple):
    """One route: what the router needs and what the OpenAPI document says of it."""

    method: str
    path: str
    name: str
    summary: str
    body: type | None
    response: type | None
    status: int
    #: The query parameters it takes; the router refuses any other (422 naming it).
    query: tuple[str, ...] = ()
    #: Other successful or specific answers: (status, body type, description).
    also: tuple[tuple[int, type | None, str], ...] = ()
    #: An event stream: long-lived by design, so not counted as a request in flight (its
    #: handler is the app's, not :class:`SessionRoutes`').
    stream: bool = False


ROUTES: Final = (
    RouteSpec("POST", "/v1/sessions", "create_session", "Create a session",
              CreateSessionRequest, SessionInfo, 201),
    RouteSpec("GET", "/v1/sessions", "list_sessions", "List your sessions (paged)",
              None, SessionPage, 200, ("status", "limit", "cursor")),
    RouteSpec("GET", "/v1/sessions/{session_id}", "get_session", "A session's description",
              None, SessionInfo, 200),
    RouteSpec("DELETE", "/v1/sessions/{session_id}", "terminate_session",
              "Terminate a session", None, SessionInfo, 200, ("reason",)),
    RouteSpec("POST", "/v1/sessions/{session_id}/messages", "send_message",
              "Append a message", SendMessageRequest, Message, 201),
    RouteSpec("GET", "/v1/sessions/{session_id}/messages", "get_messages",
              "The conversation window", None, MessageList, 200),
    RouteSpec("DELETE", "/v1/sessions/{session_id}/messages", "clear_messages",
              "Clear the conversation", None, Cleared, 200),
    RouteSpec("GET", "/v1/sessions/{session_id}/files", "get_files", "Active files",
              None, FileList, 200),
    RouteSpec("POST", "/v1/sessions/{session_id}/files", "add_file", "Make a file active",
              AddFileRequest, ActiveFile, 201),
    RouteSpec("DELETE", "/v1/sessions/{session_id}/files", "remove_file",
              "Make a file inactive", None, Removed, 200, ("path",)),
    RouteSpec("GET", "/v1/sessions/{session_id}/file-index", "get_file_index",
              "The file index", None, FileIndexList, 200),
    RouteSpec("PATCH", "/v1/sessions/{session_id}/file-index", "update_file_index",
              "Merge fields into a file's index entry", UpdateFileIndexRequest,
              FileIndexEntry, 200),
    RouteSpec("GET", "/v1/sessions/{session_id}/working-context", "get_working_context_map",
              "The whole working context", None, WorkingContextMap, 200),
    RouteSpec("GET", "/v1/sessions/{session_id}/working-context/{key:path}",
              "get_working_context", "One working-context value", None,
              WorkingContextValue, 200),
    RouteSpec("PUT", "/v1/sessions/{session_id}/working-context/{key:path}",
              "put_working_context", "Store a working-context value", WorkingContextWrite,
              WorkingContextValue, 200),
    RouteSpec("DELETE", "/v1/sessions/{session_id}/working-context/{key:path}",
              "delete_working_context", "Remove a working-context key", None, Deleted, 200),
    RouteSpec("POST", "/v1/sessions/{session_id}/context", "build_context",
              "Build the context an LLM would see", BuildContextRequest, ContextBundle, 200),
    RouteSpec("POST", "/v1/sessions/{session_id}/chat", "chat",
              "Run one agent turn (202 and events; ?wait=true answers with the result)",
              ChatRequestBody, ChatResult, 200, ("wait",),
              ((202, Accepted, "The turn runs; follow it on the events stream"),
               (502, None, "The model provider failed (problem llm-error)"))),
    RouteSpec("POST", "/v1/sessions/{session_id}/cancel", "cancel",
              "Stop the running agent turn", None, Cancelled, 200),
    RouteSpec("POST", "/v1/sessions/{session_id}/approvals/{call_id}", "approve",
              "Answer a write approval", ApprovalRequest, None, 204),
    RouteSpec("POST", "/v1/sessions/{session_id}/save", "save_session",
              "Save a named copy of the session", None, SavedSession, 201),
    RouteSpec("GET", "/v1/saved-sessions", "list_saved_sessions", "Your saved sessions",
              None, SavedSessionList, 200),
    RouteSpec("POST", "/v1/saved-sessions/{session_id}/restore", "restore_session",
              "Bring a saved session back", None, SessionInfo, 200),
    RouteSpec("DELETE", "/v1/saved-sessions/{session_id}", "delete_saved_session",
              "Delete a saved copy", None, None, 204),
    RouteSpec("GET", "/v1/sessions/{session_id}/events", "session_events",
              "One session's events", None, None, 200,
              ("after_seq", "lastEventId", "ticket", "frames"), stream=True),
    RouteSpec("GET", "/v1/events", "all_events", "Lifecycle events of your sessions",
              None, None, 200, ("lastEventId", "ticket", "frames"), stream=True),
    RouteSpec("POST", "/v1/stream-tickets", "create_stream_ticket",
              "A short-lived, single-use ticket that opens an event stream (for EventSource)",
              StreamTicketRequest, StreamTicket, 201),
)  # fmt: skip


def _principal(request: Request) -> str | None:
    principal: str | None = request.scope.get(PRINCIPAL_KEY)
    return principal


async def decode_body(request: Request, kind: type[T], *, optional: bool = False) -> T:
    """The body as ``kind``; an empty body is ``kind()`` when every field is optional."""
    raw = await request.body()
    if optional and not raw.strip():
        return kind()
    return decode_json(raw, kind)


Handler = Callable[[Request], Awaitable[Response]]


class SessionRoutes:
    """The handlers of :data:`ROUTES`, by name."""

    def __init__(self, ops: Operations, tickets: TicketBook) -> None:
        self.ops = ops
        #: Stream tickets this server issues (the middleware redeems them).
        self.tickets = tickets
        #: Turns running in the background (202), until they end: to log how they ended.
        self._background: set[asyncio.Future[ChatResult]] = set()

    def handler(self, name: str) -> Handler:
        handler: Handler = getattr(self, name)
        return handler

    async def create_session(self, request: Request) -> Response:
        body = await decode_body(request, CreateSessionRequest, optional=True)
        info = await self.ops.create_session(
            _principal(request),
            metadata=body.metadata,
            config=body.config,
            llm_config=body.llm_config,
            project_root=body.project_root,
        )
        location = f"/v1/sessions/{quote(info.session_id, safe='')}"
        return json_response(info, 201, {"Location": location})

    async def list_sessions(self, request: Request) -> Response:
        query = request.query_params
        limit = query_int(query, "limit", default=DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE)
        assert limit is not None
        page = await self.ops.list_sessions(
            _principal(request),
            status=query_str(query, "status"),
            limit=limit + 1,
            after=query_str(query, "cursor"),
        )
        more = len(page) > limit
        page = page[:limit]
        cursor = page[-1].session_id if more and page else None
        return json_response(SessionPage(sessions=page, next_cursor=cursor))

    async def get_session(self, request: Request) -> Response:
        return json_response(
            await self.ops.get_session_info(_principal(request), **request.path_params)
        )

    async def terminate_session(self, request: Request) -> Response:
        reason = query_str(request.query_params, "reason")
        extra = {"reason": reason} if reason is not None else {}
        info = await self.ops.terminate_session(_principal(request), **request.path_params, **extra)
        return json_response(info)

    async def send_message(self, request: Request) -> Response:
        body = await decode_body(request, SendMessageRequest)
        message = await self.ops.send_message(
            _principal(request), **request.path_params, role=body.role, content=body.content
        )
        return json_response(message, 201)

    async def get_messages(self, request: Request) -> Response:
        history = await self.ops.get_conversation_history(
            _principal(request), **request.path_params
        )
        return json_response(MessageList(messages=history))

    async def clear_messages(self, request: Request) -> Response:
        count = await self.ops.clear_conversation(_principal(request), **request.path_params)
        return json_response(Cleared(cleared=count))

    async def get_files(self, request: Request) -> Response:
        files = await self.ops.get_active_files(_principal(request), **request.path_params)
        return json_response(FileList(files=files))

    async def add_file(self, request: Request) -> Response:
        body = await decode_body(request, AddFileRequest)
        active = await self.ops.add_file(_principal(request), **request.path_params, path=body.path)
        return json_response(active, 201)

    async def remove_file(self, request: Request) -> Response:
        path = query_str(request.query_params, "path")
        if path is None:
            raise InvalidArgument("query parameter path is required", argument="path")
        removed = await self.ops.remove_file(_principal(request), **request.path_params, path=path)
        return json_response(Removed(removed=removed))

    async def get_file_index(self, request: Request) -> Response:
        entries = await self.ops.get_file_index(_principal(request), **request.path_params)
        return json_response(FileIndexList(entries=entries))

    async def update_file_index(self, request: Request) -> Response:
        body = await decode_body(request, UpdateFileIndexRequest)
        entry = await self.ops.update_file_index(
            _principal(request), **request.path_params, path=body.path, fields=body.fields
        )
        return json_response(entry)

    async def get_working_context_map(self, request: Request) -> Response:
        mapping = await self.ops.get_working_context(_principal(request), **request.path_params)
        return json_response(WorkingContextMap(working_context=mapping))

    async def get_working_context(self, request: Request) -> Response:
        params: dict[str, Any] = request.path_params
        value = await self.ops.get_working_context(_principal(request), **params)
        return json_response(WorkingContextValue(key=params["key"], value=value))

    async def put_working_context(self, request: Request) -> Response:
        body = await decode_body(request, WorkingContextWrite)
        params: dict[str, Any] = request.path_params
        await self.ops.put_working_context(_principal(request), **params, value=body.value)
        return json_response(WorkingContextValue(key=params["key"], value=body.value))

    async def delete_working_context(self, request: Request) -> Response:
        deleted = await self.ops.delete_working_context(_principal(request), **request.path_params)
        return json_response(Deleted(deleted=deleted))

    async def build_context(self, request: Request) -> Response:
        body = await decode_body(request, BuildContextRequest, optional=True)
        bundle = await self.ops.build_context(
            _principal(request),
            **request.path_params,
            include=body.include,
            max_tokens=body.max_tokens,
        )
        return json_response(bundle)

    async def chat(self, request: Request) -> Response:
        """With ``?wait=true`` the answer is the turn's result (the connection stays open for
        the whole turn); without, 202 at once and the turn's progress on the event stream."""
        body = await decode_body(request, ChatRequestBody)
        wait = query_str(request.query_params, "wait")
        if wait not in (None, "true", "false"):
            raise InvalidArgument(f"wait must be true or false, got {wait!r}", argument="wait")
        principal = _principal(request)
        sid = await self.ops.owned(principal, request.path_params["session_id"])
        if wait == "true":
            return json_response(await self.ops.chat(principal, session_id=sid, text=body.text))
        # Queued before answering: a turn the session cannot take (busy, or past its queue
        # limits) is the problem answer, not a 202 for a turn that will never run.
        turn = await self.ops.submit_chat(principal, session_id=sid, text=body.text)
        self._background.add(turn)
        turn.add_done_callback(self._chat_done)
        events = f"/v1/sessions/{quote(sid, safe='')}/events"
        return json_response(Accepted(session_id=sid, events=events), 202, {"Location": events})

    def _chat_done(self, task: asyncio.Future[ChatResult]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Already an `error` event on the session's stream; the log gets a line too.
            logger.info("background chat ended with %r", task.exception())

    async def cancel(self, request: Request) -> Response:
        cancelled = await self.ops.cancel(_principal(request), **request.path_params)
        return json_response(Cancelled(cancelled=cancelled))

    async def approve(self, request: Request) -> Response:
        body = await decode_body(request, ApprovalRequest)
        await self.ops.approve(_principal(request), **request.path_params, allow=body.allow)
        return Response(status_code=204)

    async def save_session(self, request: Request) -> Response:
        saved = await self.ops.save_session(_principal(request), **request.path_params)
        return json_response(saved, 201)

    async def list_saved_sessions(self, request: Request) -> Response:
        saved = await self.ops.list_saved_sessions(_principal(request))
        return json_response(SavedSessionList(saved_sessions=saved))

    async def restore_session(self, request: Request) -> Response:
        info = await self.ops.restore_session(_principal(request), **request.path_params)
        return json_response(info)

    async def delete_saved_session(self, request: Request) -> Response:
        await self.ops.delete_saved_session(_principal(request), **request.path_params)
        return Response(status_code=204)

    async def create_stream_ticket(self, request: Request) -> Response:
        """A ticket for a browser's ``EventSource`` (see :mod:`jidoka.server.tickets`). With a
        ``session_id``, the session must be the caller's, and the ticket opens its stream only.
        ``Cache-Control: no-store``: it is a credential, if a short-lived one."""
        body = await decode_body(request, StreamTicketRequest, optional=True)
        principal = _principal(request)
        sid = path = None
        if body.session_id is not None:
            sid = await self.ops.owned(principal, body.session_id)
            path = f"/v1/sessions/{sid}/events"
        ticket = self.tickets.issue(principal, path=path)
        answer = StreamTicket(ticket=ticket, expires_in=self.tickets.ttl, session_id=sid)
        return json_response(answer, 201, {"Cache-Control": "no-store"})
