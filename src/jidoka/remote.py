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
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, Self

import httpx
import msgspec

from ._remote_events import (
    KeyNotFound,
    RemoteSubscription,
    ServerUnavailable,
    error_for,
    translate,
)
from ._remote_verbs import refuse_owner, remote_method, request_for
from ._version import __version__
from .errors import InvalidArgument, InvalidRole, JidokaError, RuntimeClosed
from .session.context import CONTEXT_PARTS, ContextBundle
from .session.info import SessionInfo
from .session.state import ROLES, Message
from .verbs import MAX_PAGE, VERBS, Verb, by_name

if TYPE_CHECKING:
    # The verbs are made from the verb table at import (see the end of this module), with
    # Client's own signatures: this tells the type checker so.
    from .client import Client as _Verbs
else:
    _Verbs = object

__all__ = ["RemoteClient", "RemoteSubscription", "ServerUnavailable"]

#: Short requests in flight at most; more wait their turn (FIFO). Like a browser's connections
#: per host: more cost CPU, since httpx's pool does work per connection on every request
#: (1,000 concurrent creations on loopback: 2 s with 8, 4-5 s with 16, a pool timeout with 100).
_MAX_CONNECTIONS: Final = 8
#: Idle connections kept for chats and event streams.
_LONG_KEEPALIVE: Final = 8


class RemoteClient(_Verbs):
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

    if TYPE_CHECKING:
        # Client's, not the network's: a type checker is told they are not here.
        scoped: None  # type: ignore[assignment]
        submit_chat: None  # type: ignore[assignment]

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

    # --- the verbs that need more than their declaration -----------------------------------------
    # (every other verb of Client is made from the verb table at the end of this module)

    async def list_sessions(
        self,
        status: str | None = None,
        *,
        limit: int | None = None,
        after: str | None = None,
        owner: str | None = None,
    ) -> list[SessionInfo]:
        """Sessions in creation order; without ``limit``, every page is fetched."""
        refuse_owner(owner)
        if limit is not None and (not _natural(limit) or limit < 1):
            raise InvalidArgument(f"limit must be positive, got {limit!r}", argument="limit")
        verb = _verb("list_sessions")
        sessions: list[SessionInfo] = []
        cursor = after
        while True:
            size = min(MAX_PAGE, MAX_PAGE if limit is None else limit - len(sessions))
            values = {"status": status, "limit": size, "cursor": cursor}
            page = await self._verb(verb, values)
            sessions.extend(page.sessions)
            full = limit is not None and len(sessions) >= limit
            # An empty page or a repeated cursor would loop forever: stop rather than trust it.
            if full or page.next_cursor in (None, cursor) or not page.sessions:
                return sessions[:limit]
            cursor = page.next_cursor

    async def send_message(
        self,
        session_id: str,
        role: str,
        content: str,
        *,
        idempotency_key: str | None = None,
    ) -> Message:
        if not isinstance(role, str) or (role not in ROLES and not isinstance(content, str)):
            # As in process (the role is checked first), not the server's type error.
            raise InvalidRole(session_id if isinstance(session_id, str) else None, role)
        values = {
            "session_id": session_id,
            "role": role,
            "content": content,
            "idempotency_key": idempotency_key,
        }
        message: Message = await self._verb(_verb("send_message"), values)
        return message

    async def get_working_context(
        self, session_id: str, key: str | None = None, default: Any = None
    ) -> Any:
        """The value under ``key`` (``default`` if absent), or the whole mapping if no key."""
        if key is None:
            answer = await self._verb(_verb("get_working_context_map"), {"session_id": session_id})
            return answer.working_context
        try:
            values = {"session_id": session_id, "key": key}
            return (await self._verb(_verb("get_working_context"), values)).value
        except KeyNotFound:
            return default

    async def build_context(
        self,
        session_id: str,
        include: Iterable[str] = CONTEXT_PARTS,
        max_tokens: int | None = None,
    ) -> ContextBundle:
        if isinstance(include, str) or not isinstance(include, Iterable):
            raise InvalidArgument("include must be a collection of part names", argument="include")
        values = {"session_id": session_id, "include": list(include), "max_tokens": max_tokens}
        bundle: ContextBundle = await self._verb(_verb("build_context"), values)
        return bundle

    # --- events ---------------------------------------------------------------------------------

    # RemoteSubscription is Subscription's twin over SSE (the same iteration), not a subclass.
    @asynccontextmanager
    async def subscribe_to_session(  # type: ignore[override]
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
    async def subscribe_to_all_sessions(  # type: ignore[override]
        self,
    ) -> AsyncIterator[RemoteSubscription]:
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

    async def _verb(self, verb: Verb, values: Mapping[str, Any]) -> Any:
        """Call ``verb`` with ``values`` (its arguments by name); its answer, decoded."""
        self._check_open()
        try:
            request = request_for(verb, values)
        except InvalidArgument as exc:  # name the session, as in process
            session_id = values.get("session_id")
            if exc.session_id is None and isinstance(session_id, str):
                exc.session_id = session_id
            raise
        return await self._call(request.method, request.path, verb.result, request.body,
                                request.params, long_lived=request.long_lived)  # fmt: skip

    async def _call(
        self,
        method: str,
        path: str,
        answer: type | None,
        content: bytes | None,
        params: Mapping[str, str | int],
        *,
        long_lived: bool = False,
    ) -> Any:
        """Send one request and decode its answer as ``answer``."""
        headers = None if content is None else {"Content-Type": "application/json"}
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
        if response.status_code == 204 or answer is None:
            return None
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


def _verb(name: str) -> Verb:
    verb = by_name(name)
    assert verb is not None, name
    return verb


# Every other verb of Client, made from its declaration (remote_method binds Client's own
# signature, so arguments and defaults behave as in process).
for _declared in VERBS:
    if _declared.client is not None and _declared.client not in vars(RemoteClient):
        setattr(RemoteClient, _declared.client, remote_method(_declared))
del _declared
