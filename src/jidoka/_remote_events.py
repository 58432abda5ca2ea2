"""Event streams of :class:`~jidoka.RemoteClient` (Server-Sent Events), and the HTTP helpers the
client and its streams share: paths, problem documents back into exceptions, transport errors into
:class:`ServerUnavailable`. Private: import these names from :mod:`jidoka.remote`.

A per-session subscription survives dropped connections and server restarts by resuming with
``Last-Event-ID``, so the consumer sees each event once, in order; the global stream cannot
resume, so lifecycle events published while it reconnects are missed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, suppress
from typing import Any, Final, Self
from urllib.parse import quote

import httpx
import msgspec
from httpx_sse import ServerSentEvent, aconnect_sse

from .errors import InvalidArgument, JidokaError, SessionNotFound
from .events import Event, EventType, decode_event
from .problems import PROBLEM_CONTENT_TYPE, KeyNotFound, error_from_problem

__all__ = [
    "KeyNotFound",
    "RemoteSubscription",
    "ServerUnavailable",
    "content_type",
    "error_for",
    "segment",
    "session_path",
    "translate",
]

_Stream = tuple[AsyncExitStack, AsyncIterator[ServerSentEvent]]  # closer, parsed messages
#: Events read ahead of the consumer. Small on purpose: when it is full the reader stops reading
#: the socket, and the server's slow-consumer policy (catch-up from its store) takes over.
_QUEUE_SIZE: Final = 64
#: Answers that mean "try again later" when a stream reconnects (the server is restarting).
_TRANSIENT_STATUSES: Final = frozenset({502, 503, 504})


class ServerUnavailable(JidokaError):
    """The server could not be reached (refused, timed out, or dropped the connection), so the
    request may or may not have taken effect. ``url`` is the server's base URL.

    The message says it in a user's words: ``cannot reach a jidoka server at URL: is `jidoka
    serve` running? (...)`` when no connection could be made, ``the jidoka server at URL did not
    answer ROUTE: ...`` when one was made and then failed (or none was free in time)."""

    def __init__(self, url: str, detail: str, *, connected: bool = True) -> None:
        if connected:
            message = f"the jidoka server at {url} did not answer {detail}"
        else:
            hint = "is `jidoka serve` running?"
            message = f"cannot reach a jidoka server at {url}: {hint} ({detail})"
        super().__init__(message)
        self.url = url


#: Transport failures in words, most specific first (httpx's own text is often empty).
_TRANSPORT_WORDS: Final[tuple[tuple[type[httpx.TransportError], str], ...]] = (
    (httpx.ConnectTimeout, "timed out connecting"),
    (httpx.ReadTimeout, "timed out waiting for the answer"),
    (httpx.WriteTimeout, "timed out sending the request"),
    (httpx.PoolTimeout, "no connection free in time"),
    (httpx.RemoteProtocolError, "the connection was dropped"),
    (httpx.ReadError, "the connection was dropped"),
    (httpx.WriteError, "the connection was dropped"),
)


def _transport_detail(exc: httpx.TransportError) -> str:
    """What went wrong, without a Python repr: httpx's message, else a phrase for its kind."""
    text = " ".join(str(exc).split())
    if isinstance(exc, httpx.ConnectError):
        cause: BaseException | None = exc
        for _ in range(8):  # the chain is short; a bound all the same
            if cause is None or isinstance(cause, ConnectionRefusedError):
                break
            cause = cause.__cause__ or cause.__context__
        refused = isinstance(cause, ConnectionRefusedError)
        return "connection refused" if refused or not text else text
    for kind, words in _TRANSPORT_WORDS:
        if isinstance(exc, kind):
            return f"{words} ({text})" if text and text != words else words
    return text or type(exc).__name__


def segment(value: str) -> str:
    """One path segment, percent-encoded (``/`` included); ``.`` and ``..`` are encoded too, or
    URL normalisation would turn them into a different route."""
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if quoted in {".", ".."} else quoted


def session_path(session_id: object) -> str:
    """The session's route. An id that cannot name a session is not found, as in process (the
    server would not even route one with a ``/``)."""
    if not isinstance(session_id, str) or not session_id or "/" in session_id:
        raise SessionNotFound(session_id if isinstance(session_id, str) else repr(session_id))
    return f"/v1/sessions/{segment(session_id)}"


def content_type(response: httpx.Response) -> str:
    return str(response.headers.get("content-type", "")).partition(";")[0].strip().lower()


def _problem(response: httpx.Response) -> dict[str, Any] | None:
    if content_type(response) != PROBLEM_CONTENT_TYPE:
        return None
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return None
    return body if isinstance(body, dict) else None


def error_for(response: httpx.Response, route: str) -> JidokaError:
    """The exception an error answer stands for (the body must have been read)."""
    problem = _problem(response)
    if problem is not None:
        return error_from_problem(problem, status=response.status_code)
    return JidokaError(f"{route}: the server answered HTTP {response.status_code}")


def translate(exc: httpx.HTTPError, url: str, route: str) -> JidokaError:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):  # nobody there
        return ServerUnavailable(url, _transport_detail(exc), connected=False)
    if isinstance(exc, httpx.TransportError):  # timed out, dropped
        return ServerUnavailable(url, f"{route}: {_transport_detail(exc)}")
    return JidokaError(f"{route}: {exc}")


class _Retry(Exception):
    """A reconnection answered 502/503/504: the server is restarting; try again later."""


class RemoteSubscription:
    """Events of one session (``session_id``), or lifecycle events of all the caller's sessions
    (``session_id`` ``None``), read from an SSE stream; an async iterator like
    :class:`~jidoka.Subscription`.

    A background task reads the stream into a small queue, so a consumer that cancels a wait
    (``asyncio.wait_for(anext(sub), ...)``) loses nothing. The iteration ends where the server
    ends the stream, with ``event: end`` (the session has ended and all its events were sent)
    or with a 204 (a resume at or past the end of an ended session's log), never at a
    ``session_terminated`` event it reads: a restored session's log holds the termination of
    its earlier life, and its stream goes on past it. Frames are read by
    their JSON, whatever their ``event:`` name (the agent's ``error`` is ``agent_error``) or
    without one (``?frames=unnamed``); only ``end`` and ``shutdown`` are told by name. An
    error the server answers when reconnecting (the session is gone, the token was revoked) is
    raised from the iteration. Transport failures, ``shutdown`` and 502/503/504 answers are
    retried for as long as the subscription is open.
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
        self._path = "/v1/events" if session_id is None else f"{session_path(session_id)}/events"
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
        stream = await self._connect(first=True)
        if stream is None:  # nothing after the position, and the session has ended
            self._queue.put_nowait(None)
            return
        self._stream = stream
        self._task = asyncio.create_task(self._run(), name=f"jidoka-sse {self._path}")

    async def _connect(self, *, first: bool) -> _Stream | None:
        """A connection's parsed messages, or ``None`` for a 204: the stream is complete."""
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
            if response.status_code == 204:
                await stack.aclose()
                return None
            if not response.is_success:
                await response.aread()
                error = error_for(response, route)
                if not first and response.status_code in _TRANSIENT_STATUSES:
                    raise _Retry from error
                raise error
            if content_type(response) != "text/event-stream":
                raise JidokaError(
                    f"{route}: expected an event stream, got {content_type(response)!r}"
                )
            messages = source.aiter_sse()
            stack.push_async_callback(messages.aclose)
        except httpx.HTTPError as exc:
            await stack.aclose()
            raise translate(exc, self._url, route) from exc
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
                        stream = await self._connect(first=False)
                    except (ServerUnavailable, _Retry):
                        continue
                    if stream is None:  # 204: it ended while we were away, and we have it all
                        await self._queue.put(None)
                        return
                    self._stream = stream
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
                if message.event == "end":
                    return True  # the session has ended and everything it had is delivered
                if not message.data:
                    continue  # a bare id/retry field: nothing to deliver
                event = _decode(message.data)
                seq = event if isinstance(event, int) else event.seq
                if self.session_id is not None:
                    if self._last_seq is not None and seq <= self._last_seq:
                        continue  # replayed twice by an overlapping resume
                    self._last_seq = seq
                if isinstance(event, int):
                    continue  # a type this client does not know: skipped, position kept
                await self._queue.put(event)
                self._delay = self._delays[0]
        except httpx.HTTPError:
            return False
        return False


class _Head(msgspec.Struct):
    """What every event has, whatever its type: enough to skip one this client does not know."""

    type: str
    seq: int = 0


_KNOWN: Final = frozenset(EventType)


def _decode(raw: str) -> Event | int:
    """The event, or the ``seq`` of one whose type this client does not know.

    A newer server may publish event types an older client has never heard of; skipping them
    (while keeping the stream's position) lets that client keep following, as clients of
    evolving event APIs do. Anything else malformed is still an error.
    """
    try:
        return decode_event(raw)
    except InvalidArgument:
        with suppress(msgspec.DecodeError):
            head = msgspec.json.decode(raw, type=_Head)
            if head.type not in _KNOWN:
                return head.seq
        raise
