"""The middlewares in front of the routes, one concern each, as plain ASGI callables.

Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``: that one runs the app in a separate
task and buffers streaming responses, which costs latency on every request and breaks event
streams. :func:`~jidoka.server.app.create_app` stacks them, outermost first:

1. :class:`RequestId` -- the client's ``X-Request-ID`` if it is sane, else a new one; on the
   response, in the scope and in :data:`request_id_var` for log records. Outermost, so every
   refusal below carries it.
2. :class:`AccessLog` (unless ``access_log`` is off) and
   :class:`~jidoka.server.metrics.HttpMetrics` -- one line and one measurement per request,
   refusals included (they read the route template the router left in the scope, and the
   status sent).
3. :class:`Problems` -- a :class:`~jidoka.JidokaError` raised by anything inside becomes its
   problem document, anything else a 500 (traceback in the log only).
4. :class:`BearerPrincipal` -- on ``/v1`` routes, the bearer token's principal (401 if none),
   or the ``?ticket=`` that only an event-stream route redeems (:class:`StreamTicket`).
5. :class:`BodyLimit` -- 413 for a ``/v1`` body over the limit (up front from
   ``Content-Length``, else while it is read).
6. :class:`~jidoka.server.browser_guard.BrowserGuard`, then the router. Per route, wrapped
   around its endpoint: :class:`StreamTicket` (stream routes) and :class:`InflightBound`
   (every other ``/v1`` route: 429 beyond the principal's bound).

WebSockets authenticate in their endpoint (browsers cannot set headers on them).
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import re
import time
from typing import Final

from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import JidokaError, LimitExceeded, Unauthorized
from .auth import Authenticator, InflightLimiter
from .forwarding import FORWARDED_HEADER, Forwarding
from .responses import problem_response
from .tickets import StreamTickets

__all__ = [
    "PRINCIPAL_KEY",
    "REQUEST_ID_KEY",
    "TICKET_KEY",
    "AccessLog",
    "BearerPrincipal",
    "BodyLimit",
    "InflightBound",
    "Problems",
    "RequestId",
    "RequestIdFilter",
    "StatusWatch",
    "StreamTicket",
    "request_id_var",
    "response_status",
]

logger = logging.getLogger("jidoka.server.access")

PRINCIPAL_KEY: Final = "jidoka.principal"
REQUEST_ID_KEY: Final = "jidoka.request_id"
#: A ``?ticket=`` waiting for a stream route to redeem it (no principal is set meanwhile).
TICKET_KEY: Final = "jidoka.ticket"
#: The status of a request that got no response: the client left (499, as in nginx's logs).
_STATUS_KEY: Final = "jidoka.status"
#: The current request's id, for log records (see :class:`RequestIdFilter`).
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "jidoka_request_id", default=None
)
_SANE_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_API_PREFIX: Final = "/v1/"


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every log record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get() or "-"
        return True


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _is_api(scope: Scope) -> bool:
    return scope["type"] == "http" and str(scope["path"]).startswith(_API_PREFIX)


def response_status(scope: Scope, sent: int | None) -> int:
    """What to log and measure: the status sent, else 499 if the client left, else 500."""
    return sent if sent is not None else int(scope.get(_STATUS_KEY, 500))


class StatusWatch:
    """``send`` that notes the status of the response passing through it (``None`` until it
    starts): what the access log and the metrics read once the inner app is done."""

    __slots__ = ("send", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status: int | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)


class RequestId:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Random per process, then a counter: unique across restarts, cheaper than a UUID.
        self._prefix = os.urandom(6).hex()
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given if given and _SANE_ID.fullmatch(given) else self._new_id()
        scope[REQUEST_ID_KEY] = request_id
        token = request_id_var.set(request_id)
        try:
            if scope["type"] == "websocket":
                await self.app(scope, receive, send)
                return
            header = (b"x-request-id", request_id.encode())

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", ()), header]}
                await send(message)

            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)

    def _new_id(self) -> str:
        return f"{self._prefix}{next(self._ids):010x}"


class AccessLog:
    """One line per HTTP request: method, path (never the query string: a stream ticket, and
    whatever else a client puts there, stays out of the log), status, time, principal."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        watch = StatusWatch(send)
        try:
            await self.app(scope, receive, watch)
        finally:
            principal = scope.get(PRINCIPAL_KEY)
            logger.info(
                "%s %s %d %.1fms principal=%s",
                scope["method"],
                scope["path"],
                response_status(scope, watch.status),
                (time.perf_counter() - started) * 1000,
                principal if principal is not None else "-",
            )


class Problems:
    """The app's one exception handler: a :class:`~jidoka.JidokaError` is answered with its
    problem document, anything else with a 500 whose traceback goes to the log only. Once the
    response has started there is nothing to answer with: the error propagates and the server
    drops the connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except ClientDisconnect:
            # Gone mid-body (or ended by the server's body timeout, which answered 408):
            # nobody to answer, and no error of ours.
            if not started:
                scope[_STATUS_KEY] = 499
        except Exception as exc:
            if started:
                raise
            request_id = scope.get(REQUEST_ID_KEY)
            if not isinstance(exc, JidokaError):
                logger.exception("request %s: unexpected error", request_id, exc_info=exc)
                exc = JidokaError(
                    f"internal error (request id {request_id}); the server log has the details"
                )
            await problem_response(exc, request_id)(scope, receive, send)


def _ticket(scope: Scope) -> str | None:
    """The request's ``?ticket=``, if it has one; more than one is refused."""
    query: bytes = scope.get("query_string", b"")
    if b"ticket" not in query:
        return None  # the common case, without parsing the query
    values = QueryParams(query).getlist("ticket")
    if len(values) > 1:
        raise Unauthorized("give one stream ticket, not several")
    return values[0] if values else None


class BearerPrincipal:
    """Who is calling a ``/v1`` route: ``Authorization: Bearer <token>`` resolved to a
    principal (:class:`~jidoka.Unauthorized` if it cannot be).

    A request with a ``?ticket=`` is left for its route: a browser's ``EventSource`` cannot
    send the header, so an event-stream route redeems the ticket in its place
    (:class:`StreamTicket`) and every other route refuses it (see
    :class:`~jidoka.server.router.ApiRoute`). Which routes are streams is the router's to know,
    and this middleware runs before it."""

    def __init__(
        self, app: ASGIApp, *, auth: Authenticator, forwarding: Forwarding | None = None
    ) -> None:
        self.app = app
        self.auth = auth
        #: A node of a cluster also takes requests another node forwarded, signed.
        self.forwarding = forwarding

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _is_api(scope):
            ticket = _ticket(scope)
            forwarded = _header(scope, FORWARDED_HEADER.encode())
            if forwarded is not None and self.forwarding is not None:
                scope[PRINCIPAL_KEY] = self.forwarding.principal_of(scope, forwarded)
            elif ticket is not None:
                scope[TICKET_KEY] = ticket
            else:
                scope[PRINCIPAL_KEY] = self.auth.principal(_header(scope, b"authorization"))
        await self.app(scope, receive, send)


class StreamTicket:
    """On an event-stream route: the waiting ``?ticket=`` becomes the principal it stands for
    (spent on use, whatever follows; 401 if unknown, used, expired or for another stream)."""

    def __init__(self, app: ASGIApp, *, tickets: StreamTickets) -> None:
        self.app = app
        self.tickets = tickets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ticket = scope.pop(TICKET_KEY, None)
        if ticket is not None:
            scope[PRINCIPAL_KEY] = await self.tickets.redeem(ticket, scope["path"])
        await self.app(scope, receive, send)


class BodyLimit:
    """A ``/v1`` request body is at most ``max_body_bytes``: refused up front when its
    ``Content-Length`` says more, else when what was read goes past it (413 either way)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_api(scope):
            await self.app(scope, receive, send)
            return
        limit = self.limit
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise LimitExceeded("max_request_bytes", limit, actual=int(length))
        total = 0

        async def bounded_receive() -> Message:
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > limit:
                    raise LimitExceeded("max_request_bytes", limit, actual=total)
            return message

        await self.app(scope, bounded_receive, send)


class InflightBound:
    """Counts the route's requests against the principal's in-flight bound while they run
    (429 beyond it). Wrapped around each ``/v1`` route that is not an event stream."""

    def __init__(self, app: ASGIApp, *, limiter: InflightLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = scope.get(PRINCIPAL_KEY)
        self.limiter.acquire(principal)
        try:
            await self.app(scope, receive, send)
        finally:
            self.limiter.release(principal)
