"""The remote client: :class:`~jidoka.Client`'s methods over the HTTP API of ``jidoka serve``.

``RemoteClient`` speaks exactly the contract of ``docs/http-api.md``: request and answer bodies are
the structs of :mod:`jidoka.wire`, so it returns the very types the in-process client returns, and
every problem document is turned back into the same exception class by
:func:`jidoka.problems.error_from_problem`, so ``except SessionNotFound`` works the same in process
and over the network. httpx's own exceptions never reach the caller: a server that cannot be
reached is :class:`ServerUnavailable`.

Event streams are Server-Sent Events (:class:`RemoteSubscription`, in :mod:`jidoka._remote_events`).
A per-session subscription survives dropped connections and server restarts by resuming with
``Last-Event-ID``, so the consumer sees each event once, in order; the global stream cannot
resume, so lifecycle events published while it reconnects are missed.
"""

from __future__ import annotations

import asyncio
import functools
import re
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final, Self, TypeVar, cast
from urllib.parse import unquote

import httpx
import msgspec

from . import wire
from ._remote_events import (
    KeyNotFound,
    RemoteSubscription,
    ServerUnavailable,
    error_for,
    segment,
    session_path,
    translate,
)
from ._version import __version__
from .errors import InvalidArgument, InvalidRole, JidokaError, RuntimeClosed
from .llm.orchestrator import ChatResult
from .session.context import CONTEXT_PARTS, ContextBundle
from .session.info import SessionInfo
from .session.manager import REASON_REQUESTED
from .session.state import ROLES, ActiveFile, FileIndexEntry, Message
from .store.base import SavedSession

__all__ = ["RemoteClient", "RemoteSubscription", "ServerUnavailable"]

_T = TypeVar("_T")
#: Short requests in flight at most; more wait their turn (FIFO). Like a browser's connections
#: per host: more cost CPU, since httpx's pool does work per connection on every request
#: (1,000 concurrent creations on loopback: 2 s with 8, 4-5 s with 16, a pool timeout with 100).
_MAX_CONNECTIONS: Final = 8
#: Idle connections kept for chats and event streams.
_LONG_KEEPALIVE: Final = 8
#: The largest page the server serves (``limit`` above it is refused); longer lists take pages.
_MAX_PAGE: Final = 1000
#: Where a validation error points (``... - at `$.role```): the argument to name.
_ERROR_PATH: Final = re.compile(r" - at `\$\.?([^`.\[]*)")


def _saved(session_id: object) -> str:
    return session_path(session_id).replace("/v1/sessions/", "/v1/saved-sessions/", 1)


def _key_route(session_id: str, key: object) -> str:
    route = session_path(session_id)
    if not isinstance(key, str) or not key:
        raise InvalidArgument(
            f"working-context key must be a non-empty string, got {key!r:.80}",
            argument="key",
            session_id=session_id,
        )
    return f"{route}/working-context/{segment(key)}"


def _encode(body: object, argument: str, session_id: str | None = None) -> bytes:
    """JSON for a request body; an unencodable value is the caller's error, as in process."""
    if isinstance(body, msgspec.Struct):
        _check_types(body)
    try:
        return msgspec.json.encode(body)
    except (TypeError, ValueError, msgspec.EncodeError) as exc:
        raise InvalidArgument(
            f"{argument} is not JSON-serialisable: {exc}", argument=argument, session_id=session_id
        ) from None


def _check_types(body: msgspec.Struct) -> None:
    """Refuse an argument of the wrong type here, as the server would: JSON would otherwise
    carry some of them as something else (bytes become a base64 string, a tuple a list)."""
    try:
        msgspec.convert(msgspec.structs.asdict(body), type(body))
    except msgspec.ValidationError as exc:
        field = match.group(1) if (match := _ERROR_PATH.search(str(exc))) else "request"
        raise InvalidArgument(f"invalid argument: {exc}", argument=field or "request") from None


class RemoteClient:
    """Create, drive and watch the sessions of a ``jidoka serve`` server.

    Every method of :class:`~jidoka.Client`, with the same arguments, results and exceptions,
    plus :class:`ServerUnavailable` when the server cannot be reached. Use it as
    ``async with RemoteClient(url, token) as client:``; one instance keeps its connections, so
    share it rather than making one per call. At most 8 short requests are in flight at once
    (more wait their turn, in order); each event stream and each ``chat`` has a connection of
    its own, so neither starves the other calls.

    ``owner`` arguments exist only so code can switch clients: the server decides ownership from
    the token, so passing one is an :class:`~jidoka.InvalidArgument`.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        reconnect_delay: float = 0.5,
        max_reconnect_delay: float = 10.0,
    ) -> None:
        try:
            parsed = httpx.URL(url) if isinstance(url, str) else None
        except httpx.InvalidURL:
            parsed = None
        if parsed is None or parsed.scheme not in {"http", "https"} or not parsed.host:
            raise InvalidArgument(f"url must be an http(s) URL, got {url!r}", argument="url")
        if token is not None and (not isinstance(token, str) or not token.isprintable()):
            raise InvalidArgument("token must be a printable string", argument="token")
        numbers = {"timeout": timeout, "reconnect_delay": reconnect_delay}
        for name, value in {**numbers, "max_reconnect_delay": max_reconnect_delay}.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise InvalidArgument(f"{name} must be positive, got {value!r}", argument=name)
        if max_reconnect_delay < reconnect_delay:
            raise InvalidArgument(
                "max_reconnect_delay < reconnect_delay", argument="reconnect_delay"
            )
        self._url = url.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": f"jidoka/{__version__}"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        common: dict[str, Any] = {"base_url": url, "headers": headers, "timeout": timeout}
        if transport is None:
            common["verify"] = _ssl_context()
        limits = httpx.Limits(max_connections=_MAX_CONNECTIONS, max_keepalive_connections=None)
        self._http = httpx.AsyncClient(**common, transport=transport, limits=limits)
        # Event streams and chats hold a connection for as long as they last: they get a pool of
        # their own, without a bound, so that they never starve the short requests (a cancel,
        # an approval) nor each other. A given transport serves both.
        self._long = self._http
        if transport is None:
            unbounded = httpx.Limits(
                max_connections=None, max_keepalive_connections=_LONG_KEEPALIVE
            )
            self._long = httpx.AsyncClient(**common, limits=unbounded)
        self._slots = asyncio.Semaphore(_MAX_CONNECTIONS)
        self._timeout = float(timeout)
        self._no_read_timeout = httpx.Timeout(self._timeout, read=None)
        self._reconnect = (float(reconnect_delay), float(max_reconnect_delay))
        self._subscriptions: set[RemoteSubscription] = set()
        self._closed = False

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self._url

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End open subscriptions and close the connection pool. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            for subscription in list(self._subscriptions):
                await subscription.aclose()
        finally:
            try:
                await self._http.aclose()
            finally:
                await self._long.aclose()

    # --- lifecycle ------------------------------------------------------------------------------

    async def create_session(
        self,
        *,
        metadata: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        llm_config: dict[str, Any] | None = None,
        project_root: str | None = None,
        owner: str | None = None,
    ) -> str:
        """Create a session owned by the token's principal and return its id."""
        _refuse_owner(owner)
        for name, value in (("metadata", metadata), ("config", config), ("llm_config", llm_config)):
            _encode(value, name)  # to name the argument that cannot travel
        body = wire.CreateSessionRequest(
            metadata=metadata, config=config, llm_config=llm_config, project_root=project_root
        )
        return (await self._call("POST", "/v1/sessions", SessionInfo, body=body)).session_id

    async def get_session_info(self, session_id: str) -> SessionInfo:
        return await self._call("GET", session_path(session_id), SessionInfo)

    async def list_sessions(
        self,
        status: str | None = None,
        *,
        limit: int | None = None,
        after: str | None = None,
        owner: str | None = None,
    ) -> list[SessionInfo]:
        """Sessions in creation order; without ``limit``, every page is fetched."""
        _refuse_owner(owner)
        if limit is not None and (not _natural(limit) or limit < 1):
            raise InvalidArgument(f"limit must be positive, got {limit!r}", argument="limit")
        sessions: list[SessionInfo] = []
        cursor = after
        while True:
            params: dict[str, str | int] = {} if status is None else {"status": str(status)}
            if cursor is not None:
                params["cursor"] = cursor
            params["limit"] = min(_MAX_PAGE, _MAX_PAGE if limit is None else limit - len(sessions))
            page = await self._call("GET", "/v1/sessions", wire.SessionPage, params=params)
            sessions.extend(page.sessions)
            full = limit is not None and len(sessions) >= limit
            # An empty page or a repeated cursor would loop forever: stop rather than trust it.
            if full or page.next_cursor in (None, cursor) or not page.sessions:
                return sessions[:limit]
            cursor = page.next_cursor

    async def terminate_session(
        self, session_id: str, *, reason: str = REASON_REQUESTED
    ) -> SessionInfo:
        params = {"reason": reason}
        return await self._call("DELETE", session_path(session_id), SessionInfo, params=params)

    # --- saved sessions -------------------------------------------------------------------------

    async def save_session(self, session_id: str) -> SavedSession:
        return await self._call("POST", f"{session_path(session_id)}/save", SavedSession)

    async def restore_session(self, session_id: str) -> SessionInfo:
        return await self._call("POST", f"{_saved(session_id)}/restore", SessionInfo)

    async def list_saved_sessions(self, *, owner: str | None = None) -> list[SavedSession]:
        """The caller's saved copies."""
        _refuse_owner(owner)
        found = await self._call("GET", "/v1/saved-sessions", wire.SavedSessionList)
        return found.saved_sessions

    async def delete_saved_session(self, session_id: str) -> None:
        await self._call("DELETE", _saved(session_id), type(None))

    # --- the agent ------------------------------------------------------------------------------

    async def chat(self, session_id: str, text: str) -> ChatResult:
        """Run one agent turn and return its result; the request waits for the whole turn (no
        read timeout). Cancelling this call does not stop the turn (it belongs to the session);
        :meth:`cancel` does."""
        route = f"{session_path(session_id)}/chat"
        body = wire.ChatRequestBody(text=text)
        answer = ChatResult
        params = {"wait": "true"}
        return await self._call("POST", route, answer, body=body, params=params, long_lived=True)

    async def cancel(self, session_id: str) -> bool:
        """Stop the session's running turn; ``False`` if no turn was running."""
        route = f"{session_path(session_id)}/cancel"
        return (await self._call("POST", route, wire.Cancelled)).cancelled

    async def approve(self, session_id: str, call_id: str, allow: bool = True) -> None:
        """Answer an ``approval_requested`` event: let the write happen, or not."""
        route = session_path(session_id)
        if not isinstance(call_id, str) or not call_id or "/" in call_id:
            raise InvalidArgument(  # no route can name it: nothing can wait under it
                f"no write is waiting for approval under call id {call_id!r}",
                argument="call_id",
                session_id=session_id,
            )
        body = wire.ApprovalRequest(allow=allow)
        route = f"{route}/approvals/{segment(call_id)}"
        await self._call("POST", route, type(None), body=body, argument="allow")

    # --- conversation ---------------------------------------------------------------------------

    async def send_message(self, session_id: str, role: str, content: str) -> Message:
        if not isinstance(role, str) or (role not in ROLES and not isinstance(content, str)):
            # As in process (the role is checked first), not the server's type error.
            raise InvalidRole(session_id if isinstance(session_id, str) else None, role)
        body = wire.SendMessageRequest(role=role, content=content)
        return await self._call("POST", f"{session_path(session_id)}/messages", Message, body=body)

    async def get_conversation_history(self, session_id: str) -> list[Message]:
        path = f"{session_path(session_id)}/messages"
        return (await self._call("GET", path, wire.MessageList)).messages

    async def clear_conversation(self, session_id: str) -> int:
        path = f"{session_path(session_id)}/messages"
        return (await self._call("DELETE", path, wire.Cleared)).cleared

    # --- files ----------------------------------------------------------------------------------

    async def add_file(self, session_id: str, path: str) -> ActiveFile:
        body = wire.AddFileRequest(path=path)
        return await self._call("POST", f"{session_path(session_id)}/files", ActiveFile, body=body)

    async def remove_file(self, session_id: str, path: str) -> bool:
        route = f"{session_path(session_id)}/files"
        return (await self._call("DELETE", route, wire.Removed, params={"path": path})).removed

    async def get_active_files(self, session_id: str) -> list[ActiveFile]:
        return (await self._call("GET", f"{session_path(session_id)}/files", wire.FileList)).files

    async def get_file_index(self, session_id: str) -> list[FileIndexEntry]:
        path = f"{session_path(session_id)}/file-index"
        return (await self._call("GET", path, wire.FileIndexList)).entries

    async def update_file_index(
        self, session_id: str, path: str, fields: dict[str, Any]
    ) -> FileIndexEntry:
        body = wire.UpdateFileIndexRequest(path=path, fields=fields)
        route = f"{session_path(session_id)}/file-index"
        return await self._call("PATCH", route, FileIndexEntry, body=body, argument="fields")

    # --- working context ------------------------------------------------------------------------

    async def put_working_context(self, session_id: str, key: str, value: Any) -> None:
        body = wire.WorkingContextWrite(value=value)
        route = _key_route(session_id, key)
        await self._call("PUT", route, wire.WorkingContextValue, body=body, argument="value")

    async def get_working_context(
        self, session_id: str, key: str | None = None, default: Any = None
    ) -> Any:
        """The value under ``key`` (``default`` if absent), or the whole mapping if no key."""
        if key is None:
            route = f"{session_path(session_id)}/working-context"
            return (await self._call("GET", route, wire.WorkingContextMap)).working_context
        route = _key_route(session_id, key)
        try:
            return (await self._call("GET", route, wire.WorkingContextValue)).value
        except KeyNotFound:
            return default

    async def delete_working_context(self, session_id: str, key: str) -> bool:
        return (await self._call("DELETE", _key_route(session_id, key), wire.Deleted)).deleted

    async def build_context(
        self,
        session_id: str,
        include: Iterable[str] = CONTEXT_PARTS,
        max_tokens: int | None = None,
    ) -> ContextBundle:
        route = f"{session_path(session_id)}/context"
        if isinstance(include, str) or not isinstance(include, Iterable):
            raise InvalidArgument("include must be a collection of part names", argument="include")
        body = wire.BuildContextRequest(include=list(include), max_tokens=max_tokens)
        return await self._call("POST", route, ContextBundle, body=body, argument="include")

    # --- events ---------------------------------------------------------------------------------

    @asynccontextmanager
    async def subscribe_to_session(
        self, session_id: str, *, after_seq: int | None = None
    ) -> AsyncIterator[RemoteSubscription]:
        """Every event of one session; leaving the block closes the stream.

        With ``after_seq``, stored events after it are replayed first. Without it the stream
        starts live, and a connection dropped before the first event resumes live too (no seq
        to resume from yet), so events in that gap can be missed; pass ``after_seq`` to be sure.
        """
        if after_seq is not None and not _natural(after_seq):
            raise InvalidArgument(
                f"after_seq must be a non-negative integer, got {after_seq!r}",
                argument="after_seq",
                session_id=session_id,
            )
        async with self._subscription(session_id, after_seq) as subscription:
            yield subscription

    @asynccontextmanager
    async def subscribe_to_all_sessions(self) -> AsyncIterator[RemoteSubscription]:
        """The lifecycle events of the caller's sessions. The stream is not replayable: events
        published while it reconnects (after a dropped connection or a restart) are missed."""
        async with self._subscription(None, None) as subscription:
            yield subscription

    # --- internals ------------------------------------------------------------------------------

    @asynccontextmanager
    async def _subscription(
        self, session_id: str | None, after_seq: int | None
    ) -> AsyncIterator[RemoteSubscription]:
        self._check_open()
        subscription = RemoteSubscription(
            self._long, self._url, session_id, after_seq=after_seq, delays=self._reconnect
        )
        self._subscriptions.add(subscription)
        try:
            await subscription._start()
            yield subscription
        finally:
            self._subscriptions.discard(subscription)
            await subscription.aclose()

    @asynccontextmanager
    async def _slot(self, route: str, long_lived: bool) -> AsyncIterator[None]:
        """A turn to send a short request: no more are in flight than the pool has connections,
        so the pool never queues (httpx's queue is slow when long). Waiting for a turn is bounded
        by ``timeout``, like waiting for a pool's connection."""
        if long_lived:
            yield
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        except TimeoutError:
            detail = f"{route}: no connection free within {self._timeout:g} s"
            raise ServerUnavailable(self._url, detail) from None
        try:
            yield
        finally:
            self._slots.release()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeClosed(f"the RemoteClient for {self._url} is closed")

    async def _call(
        self,
        method: str,
        path: str,
        answer: type[_T],
        *,
        body: msgspec.Struct | None = None,
        argument: str = "request",
        params: Mapping[str, str | int] | None = None,
        long_lived: bool = False,
    ) -> _T:
        """Send one request and decode its answer as ``answer``."""
        self._check_open()
        try:
            content = None if body is None else _encode(body, argument)
        except InvalidArgument as exc:  # name the session, as in process
            if exc.session_id is None and path.startswith("/v1/sessions/"):
                exc.session_id = unquote(path.split("/")[3])
            raise
        headers = None if body is None else {"Content-Type": "application/json"}
        route = f"{method} {path}"
        # A long-lived request (a chat) has no read timeout: it lasts as long as its turn.
        http, timeout = (self._long, self._no_read_timeout) if long_lived else (self._http, None)
        try:
            async with self._slot(route, long_lived):
                response = await http.request(
                    method,
                    path,
                    content=content,
                    params=params,
                    headers=headers,
                    timeout=http.timeout if timeout is None else timeout,
                )
        except httpx.HTTPError as exc:
            raise translate(exc, self._url, route) from exc
        if not response.is_success:
            raise error_for(response, route)
        if response.status_code == 204:
            return cast(_T, None)
        try:
            return msgspec.json.decode(response.content, type=answer)
        except msgspec.DecodeError as exc:
            raise JidokaError(f"{route}: unexpected answer from the server: {exc}") from exc


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """httpx's default context (CA bundle, ``SSL_CERT_FILE``...), made once: making one reads
    the CA bundle, tens of milliseconds that every client would otherwise spend twice."""
    return httpx.create_ssl_context()


def _natural(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _refuse_owner(owner: str | None) -> None:
    if owner is not None:
        raise InvalidArgument(
            "owner cannot be chosen through the server: it scopes every session to the principal "
            "of the client's token",
            argument="owner",
        )
