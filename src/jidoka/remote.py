"""The remote client: :class:`~jidoka.Client`'s methods over the HTTP API of ``jidoka serve``.

``RemoteClient`` speaks exactly the contract of ``docs/http-api.md``: request and answer bodies are
the structs of :mod:`jidoka.wire`, so it returns the very types the in-process client returns, and
every problem document is turned back into the same exception class by
:func:`jidoka.problems.error_from_problem`, so ``except SessionNotFound`` works the same in process
and over the network. httpx's own exceptions never reach the caller: a server that cannot be
reached is :class:`ServerUnavailable`.

Event streams are Server-Sent Events. A per-session subscription survives dropped connections and
server restarts by resuming with ``Last-Event-ID``, so the consumer sees each event once, in order;
the global stream cannot resume, so lifecycle events published while it reconnects are missed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Any, Final, Self, TypeVar, cast
from urllib.parse import quote

import httpx
import msgspec
from httpx_sse import ServerSentEvent, aconnect_sse

from . import wire
from ._version import __version__
from .errors import InvalidArgument, JidokaError, RuntimeClosed, SessionNotFound
from .events import Event, EventType, decode_event
from .problems import PROBLEM_CONTENT_TYPE, error_from_problem
from .session.context import CONTEXT_PARTS, ActiveFile, ContextBundle, FileIndexEntry, Message
from .session.info import SessionInfo
from .session.manager import REASON_REQUESTED
from .store.base import SavedSession

__all__ = ["RemoteClient", "RemoteSubscription", "ServerUnavailable"]

_T = TypeVar("_T")
_Stream = tuple[AsyncExitStack, AsyncIterator[ServerSentEvent]]  # closer, parsed messages
#: Events read ahead of the consumer. Small on purpose: when it is full the reader stops reading
#: the socket, and the server's slow-consumer policy (catch-up from its store) takes over.
_QUEUE_SIZE: Final = 64
_KEY_NOT_FOUND: Final = "/working-context-key-not-found"
#: The largest page the server serves (``limit`` above it is refused); longer lists take pages.
_MAX_PAGE: Final = 1000
#: Answers that mean "try again later" when a stream reconnects (the server is restarting).
_TRANSIENT_STATUSES: Final = frozenset({502, 503, 504})


class ServerUnavailable(JidokaError):
    """The server could not be reached (refused, timed out, or dropped the connection), so the
    request may or may not have taken effect. ``url`` is the server's base URL."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"the Jidoka server at {url} could not be reached: {detail}")
        self.url = url


def _segment(value: str) -> str:
    """One path segment, percent-encoded (``/`` included); ``.`` and ``..`` are encoded too, or
    URL normalisation would turn them into a different route."""
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if quoted in {".", ".."} else quoted


def _session(session_id: object) -> str:
    """The session's route. An id that cannot name a session is not found, as in process (the
    server would not even route one with a ``/``)."""
    if not isinstance(session_id, str) or not session_id or "/" in session_id:
        raise SessionNotFound(session_id if isinstance(session_id, str) else repr(session_id))
    return f"/v1/sessions/{_segment(session_id)}"


def _saved(session_id: object) -> str:
    return _session(session_id).replace("/v1/sessions/", "/v1/saved-sessions/", 1)


def _key_route(session_id: str, key: object) -> str:
    route = _session(session_id)
    if not isinstance(key, str) or not key:
        raise InvalidArgument(
            f"working-context key must be a non-empty string, got {key!r:.80}",
            argument="key",
            session_id=session_id,
        )
    return f"{route}/working-context/{_segment(key)}"


def _encode(body: object, argument: str, session_id: str | None = None) -> bytes:
    """JSON for a request body; an unencodable value is the caller's error, as in process."""
    try:
        return msgspec.json.encode(body)
    except (TypeError, ValueError, msgspec.EncodeError) as exc:
        raise InvalidArgument(
            f"{argument} is not JSON-serialisable: {exc}", argument=argument, session_id=session_id
        ) from None


def _content_type(response: httpx.Response) -> str:
    return str(response.headers.get("content-type", "")).partition(";")[0].strip().lower()


def _problem(response: httpx.Response) -> dict[str, Any] | None:
    if _content_type(response) != PROBLEM_CONTENT_TYPE:
        return None
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return None
    return body if isinstance(body, dict) else None


class _KeyNotFound(JidokaError):
    """No such working-context key: ``get_working_context`` answers its default instead."""


def _error_for(response: httpx.Response, route: str) -> JidokaError:
    """The exception an error answer stands for (the body must have been read)."""
    problem = _problem(response)
    if problem is not None:
        if str(problem.get("type", "")).endswith(_KEY_NOT_FOUND):
            return _KeyNotFound(str(problem.get("detail", "")))
        return error_from_problem(problem, status=response.status_code)
    return JidokaError(f"{route}: the server answered HTTP {response.status_code}")


def _translate(exc: httpx.HTTPError, url: str, route: str) -> JidokaError:
    if isinstance(exc, httpx.TransportError):  # refused, timed out, dropped
        return ServerUnavailable(url, f"{route}: {exc!r}")
    return JidokaError(f"{route}: {exc}")


class _Retry(Exception):
    """A reconnection answered 502/503/504: the server is restarting; try again later."""


class RemoteSubscription:
    """Events of one session (``session_id``), or lifecycle events of all the caller's sessions
    (``session_id`` ``None``), read from an SSE stream; an async iterator like
    :class:`~jidoka.Subscription`.

    A background task reads the stream into a small queue, so a consumer that cancels a wait
    (``asyncio.wait_for(anext(sub), ...)``) loses nothing. The iteration ends after the session's
    ``session_terminated`` event; an error the server answers when reconnecting (the session is
    gone, the token was revoked) is raised from the iteration. Transport failures, ``shutdown``
    and 502/503/504 answers are retried for as long as the subscription is open.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        url: str,
        session_id: str | None,
        *,
        after_seq: int | None,
        delays: tuple[float, float],
    ) -> None:
        self.session_id = session_id
        self._http = http
        self._url = url
        self._path = "/v1/events" if session_id is None else f"{_session(session_id)}/events"
        self._last_seq = after_seq
        self._delays = delays  # initial, doubling up to the maximum
        self._delay = delays[0]
        self._queue: asyncio.Queue[Event | BaseException | None] = asyncio.Queue(_QUEUE_SIZE)
        self._stream: _Stream | None = None
        self._task: asyncio.Task[None] | None = None
        self._done = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, Event):
            return item
        self._done = True
        if item is None:
            raise StopAsyncIteration
        raise item

    async def aclose(self) -> None:
        """Stop reading and close the connection. Idempotent; the iteration then ends."""
        self._done = True
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                await asyncio.wait({task})
        finally:
            await self._close_stream()

    # --- internals ------------------------------------------------------------------------------

    async def _start(self) -> None:
        """Connect (errors surface to the caller) before returning, so no event published after
        the subscription was entered can be missed; then read in the background."""
        self._stream = await self._connect(first=True)
        self._task = asyncio.create_task(self._run(), name=f"jidoka-sse {self._path}")

    async def _connect(self, *, first: bool) -> _Stream:
        # The query only on the first request: on a reconnect it would compete with the header.
        resume = self.session_id is not None and self._last_seq is not None
        params = {"after_seq": self._last_seq} if resume and first else {}
        headers = {"Last-Event-ID": str(self._last_seq)} if resume and not first else {}
        route = f"GET {self._path}"
        stack = AsyncExitStack()
        try:
            source = await stack.enter_async_context(
                aconnect_sse(self._http, "GET", self._path, params=params, headers=headers)
            )
            response = source.response
            if not response.is_success:
                await response.aread()
                error = _error_for(response, route)
                if not first and response.status_code in _TRANSIENT_STATUSES:
                    raise _Retry from error
                raise error
            if _content_type(response) != "text/event-stream":
                raise JidokaError(
                    f"{route}: expected an event stream, got {_content_type(response)!r}"
                )
            messages = source.aiter_sse()
            stack.push_async_callback(messages.aclose)
        except httpx.HTTPError as exc:
            await stack.aclose()
            raise _translate(exc, self._url, route) from exc
        except BaseException:
            await stack.aclose()
            raise
        return stack, messages

    async def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream[0].aclose()

    async def _run(self) -> None:
        try:
            while True:
                if self._stream is None:
                    await asyncio.sleep(self._delay)
                    self._delay = min(self._delay * 2, self._delays[1])
                    try:
                        self._stream = await self._connect(first=False)
                    except (ServerUnavailable, _Retry):
                        continue
                try:
                    ended = await self._pump(self._stream)
                finally:
                    await self._close_stream()
                if ended:
                    await self._queue.put(None)
                    return
        except Exception as exc:  # handed to the consumer, who decides what it means
            await self._queue.put(exc)

    async def _pump(self, stream: _Stream) -> bool:
        """Forward one connection's events; ``True`` once the session's stream is complete."""
        try:
            async for message in stream[1]:
                if message.event == "shutdown":
                    return False  # the server is going away: resume from the last real event
                if not message.data:
                    continue  # a bare id/retry field: nothing to deliver
                event = _decode(message.data)
                if self.session_id is not None:
                    if self._last_seq is not None and event.seq <= self._last_seq:
                        continue  # replayed twice by an overlapping resume
                    self._last_seq = event.seq
                await self._queue.put(event)
                self._delay = self._delays[0]
                if self.session_id is not None and event.type == EventType.SESSION_TERMINATED:
                    return True
        except httpx.HTTPError:
            return False
        return False


def _decode(raw: str) -> Event:
    if '"events_dropped"' in raw:  # the global stream's marker has seq 0: decode_event refuses it
        with suppress(msgspec.DecodeError):
            return msgspec.json.decode(raw, type=Event)
    return decode_event(raw)


class RemoteClient:
    """Create, drive and watch the sessions of a ``jidoka serve`` server.

    Every method of :class:`~jidoka.Client`, with the same arguments, results and exceptions,
    plus :class:`ServerUnavailable` when the server cannot be reached. Use it as
    ``async with RemoteClient(url, token) as client:``; one instance keeps a connection pool, so
    share it rather than making one per call.

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
        self._http = httpx.AsyncClient(
            base_url=url, headers=headers, timeout=timeout, transport=transport
        )
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
            await self._http.aclose()

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
        return await self._call("GET", _session(session_id), SessionInfo)

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
        return await self._call("DELETE", _session(session_id), SessionInfo, params=params)

    # --- saved sessions -------------------------------------------------------------------------

    async def save_session(self, session_id: str) -> SavedSession:
        return await self._call("POST", f"{_session(session_id)}/save", SavedSession)

    async def restore_session(self, session_id: str) -> SessionInfo:
        return await self._call("POST", f"{_saved(session_id)}/restore", SessionInfo)

    async def list_saved_sessions(self, *, owner: str | None = None) -> list[SavedSession]:
        """The caller's saved copies."""
        _refuse_owner(owner)
        found = await self._call("GET", "/v1/saved-sessions", wire.SavedSessionList)
        return found.saved_sessions

    async def delete_saved_session(self, session_id: str) -> None:
        await self._call("DELETE", _saved(session_id), type(None))

    # --- conversation ---------------------------------------------------------------------------

    async def send_message(self, session_id: str, role: str, content: str) -> Message:
        body = wire.SendMessageRequest(role=role, content=content)
        return await self._call("POST", f"{_session(session_id)}/messages", Message, body=body)

    async def get_conversation_history(self, session_id: str) -> list[Message]:
        path = f"{_session(session_id)}/messages"
        return (await self._call("GET", path, wire.MessageList)).messages

    async def clear_conversation(self, session_id: str) -> int:
        path = f"{_session(session_id)}/messages"
        return (await self._call("DELETE", path, wire.Cleared)).cleared

    # --- files ----------------------------------------------------------------------------------

    async def add_file(self, session_id: str, path: str) -> ActiveFile:
        body = wire.AddFileRequest(path=path)
        return await self._call("POST", f"{_session(session_id)}/files", ActiveFile, body=body)

    async def remove_file(self, session_id: str, path: str) -> bool:
        route = f"{_session(session_id)}/files"
        return (await self._call("DELETE", route, wire.Removed, params={"path": path})).removed

    async def get_active_files(self, session_id: str) -> list[ActiveFile]:
        return (await self._call("GET", f"{_session(session_id)}/files", wire.FileList)).files

    async def get_file_index(self, session_id: str) -> list[FileIndexEntry]:
        path = f"{_session(session_id)}/file-index"
        return (await self._call("GET", path, wire.FileIndexList)).entries

    async def update_file_index(
        self, session_id: str, path: str, fields: dict[str, Any]
    ) -> FileIndexEntry:
        body = wire.UpdateFileIndexRequest(path=path, fields=fields)
        route = f"{_session(session_id)}/file-index"
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
            route = f"{_session(session_id)}/working-context"
            return (await self._call("GET", route, wire.WorkingContextMap)).working_context
        route = _key_route(session_id, key)
        try:
            return (await self._call("GET", route, wire.WorkingContextValue)).value
        except _KeyNotFound:
            return default

    async def delete_working_context(self, session_id: str, key: str) -> bool:
        return (await self._call("DELETE", _key_route(session_id, key), wire.Deleted)).deleted

    async def build_context(
        self,
        session_id: str,
        include: Iterable[str] = CONTEXT_PARTS,
        max_tokens: int | None = None,
    ) -> ContextBundle:
        route = f"{_session(session_id)}/context"
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
            self._http, self._url, session_id, after_seq=after_seq, delays=self._reconnect
        )
        self._subscriptions.add(subscription)
        try:
            await subscription._start()
            yield subscription
        finally:
            self._subscriptions.discard(subscription)
            await subscription.aclose()

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
    ) -> _T:
        """Send one request and decode its answer as ``answer``."""
        self._check_open()
        content = None if body is None else _encode(body, argument)
        headers = None if body is None else {"Content-Type": "application/json"}
        route = f"{method} {path}"
        try:
            response = await self._http.request(
                method, path, content=content, params=params, headers=headers
            )
        except httpx.HTTPError as exc:
            raise _translate(exc, self._url, route) from exc
        if not response.is_success:
            raise _error_for(response, route)
        if response.status_code == 204:
            return cast(_T, None)
        try:
            return msgspec.json.decode(response.content, type=answer)
        except msgspec.DecodeError as exc:
            raise JidokaError(f"{route}: unexpected answer from the server: {exc}") from exc


def _natural(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _refuse_owner(owner: str | None) -> None:
    if owner is not None:
        raise InvalidArgument(
            "owner cannot be chosen through the server: it scopes every session to the principal "
            "of the client's token",
            argument="owner",
        )
