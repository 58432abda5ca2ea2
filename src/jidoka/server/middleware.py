"""The one ASGI middleware in front of every route: request id, auth, limits, access log.

A plain ASGI callable rather than Starlette's ``BaseHTTPMiddleware``: that one runs the app in a
separate task and buffers streaming responses, which costs latency on every request and breaks
event streams. What it does, in order:

1. gives the request an id (the client's ``X-Request-ID`` if it is sane, else a new one), puts it
   on the response and in :data:`request_id_var` for log records;
2. for ``/v1`` HTTP routes, resolves the bearer token to a principal (401 problem if it cannot)
   -- or, on an event stream route only, a ``?ticket=`` from ``POST /v1/stream-tickets``
   (:mod:`jidoka.server.tickets`; spent on use) -- and counts the request against the
   principal's in-flight bound (429 problem beyond it; the routes the router marks as streams
   do not count: see ``is_stream``);
3. bounds the request body (413 problem, from ``Content-Length`` up front or while reading);
4. turns an error the app raises into its problem document (a :class:`~jidoka.JidokaError`) or
   a 500 (anything else, traceback in the log only), unless the response has started;
5. logs one line per request and records ``jidoka.http.*`` metrics. The line has the path,
   never the query string: a stream ticket (and whatever else a client puts there) stays out
   of the log.

WebSockets authenticate in their endpoint (browsers cannot set headers on them). What only a
web page would send (a foreign ``Host`` or ``Origin``, a body not typed as JSON) is refused by
:class:`~jidoka.server.browser_guard.BrowserGuard`, which runs inside this middleware, so its
refusals get a request id, a log line and metrics like any other problem.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Final

from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import JidokaError, LimitExceeded, Unauthorized
from .auth import Authenticator, InflightLimiter
from .responses import problem_response
from .tickets import TicketBook

__all__ = [
    "PRINCIPAL_KEY",
    "REQUEST_ID_KEY",
    "ROUTE_KEY",
    "ApiMiddleware",
    "RequestIdFilter",
    "request_id_var",
]

logger = logging.getLogger("jidoka.server.access")

PRINCIPAL_KEY: Final = "jidoka.principal"
REQUEST_ID_KEY: Final = "jidoka.request_id"
#: The matched route's path template (``/v1/sessions/{session_id}``), set by the router.
ROUTE_KEY: Final = "jidoka.route"
#: The current request's id, for log records (see :class:`RequestIdFilter`).
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "jidoka_request_id", default=None
)
_SANE_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")

#: (method, route template, status, seconds) -> None
Observer = Callable[[str, str, int, float], None]


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


#: Whether an HTTP request is for a stream route (long-lived, so not counted in flight).
StreamTest = Callable[[Scope], bool]


def no_streams(scope: Scope) -> bool:
    """The default :data:`StreamTest`: every request counts."""
    return False


def _ticket(scope: Scope) -> str | None:
    """The request's ``?ticket=``, if it has one; more than one is refused."""
    query: bytes = scope.get("query_string", b"")
    if b"ticket" not in query:
        return None  # the common case, without parsing the query
    values = QueryParams(query).getlist("ticket")
    if len(values) > 1:
        raise Unauthorized("give one stream ticket, not several")
    return values[0] if values else None


class ApiMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        auth: Authenticator,
        limiter: InflightLimiter,
        max_body_bytes: int,
        observe: Observer | None = None,
        access_log: bool = True,
        is_stream: StreamTest = no_streams,
        tickets: TicketBook | None = None,
    ) -> None:
        self.app = app
        self.auth = auth
        self.limiter = limiter
        self.max_body_bytes = max_body_bytes
        self.observe = observe
        self.access_log = access_log
        #: Decided by the route a request matches (the router's), never by how its path ends:
        #: ``PUT .../working-context/x/events`` is a plain request and counts.
        self.is_stream = is_stream
        #: Where ``?ticket=`` is redeemed on stream routes; ``None``: tickets are not taken.
        self.tickets = tickets
        # Request ids: random per process, then a counter -- unique across restarts and much
        # cheaper than a UUID per request.
        self._id_prefix = os.urandom(6).hex()
        self._ids = itertools.count(1)

    def _new_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):010x}"

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
            else:
                await self._http(scope, receive, send, request_id)
        finally:
            request_id_var.reset(token)

    async def _http(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        started = time.perf_counter()
        status = 500
        id_header = (b"x-request-id", request_id.encode())

        started_response = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status = message["status"]
                started_response = True
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            await send(message)

        path: str = scope["path"]
        principal: str | None = None
        counted = False
        try:
            if path.startswith("/v1/"):
                try:
                    stream = self.is_stream(scope)
                    ticket = _ticket(scope) if stream and self.tickets is not None else None
                    if ticket is not None and self.tickets is not None:
                        # A browser's EventSource cannot send the header: the ticket stands
                        # for it, on stream routes only (and is spent, whatever follows).
                        principal = self.tickets.redeem(ticket, path)
                    else:
                        principal = self.auth.principal(_header(scope, b"authorization"))
                    scope[PRINCIPAL_KEY] = principal
                    length = _header(scope, b"content-length")
                    if (
                        length is not None
                        and length.isdigit()
                        and int(length) > self.max_body_bytes
                    ):
                        raise LimitExceeded(
                            "max_request_bytes", self.max_body_bytes, actual=int(length)
                        )
                    if not stream:
                        self.limiter.acquire(principal)
                        counted = True
                except JidokaError as exc:
                    await problem_response(exc, request_id)(scope, receive, send_with_id)
                    return
                receive = self._bounded(receive)
            try:
                await self.app(scope, receive, send_with_id)
            except ClientDisconnect:
                # Gone mid-body (or ended by the server's body timeout, which answered 408):
                # nobody to answer, and no error of ours. 499 as in nginx's logs.
                if not started_response:
                    status = 499
            except Exception as exc:
                # The app's one exception handler: a JidokaError is its problem document, and
                # anything else a 500 whose traceback goes to the log only. Once the response
                # has started there is nothing to answer with: the connection is dropped.
                if started_response:
                    raise
                if not isinstance(exc, JidokaError):
                    logger.exception("request %s: unexpected error", request_id, exc_info=exc)
                    exc = JidokaError(
                        f"internal error (request id {request_id}); the server log has the details"
                    )
                await problem_response(exc, request_id)(scope, receive, send_with_id)
        finally:
            if counted:
                self.limiter.release(principal)
            elapsed = time.perf_counter() - started
            route = scope.get(ROUTE_KEY) or "unmatched"
            if self.observe is not None:
                self.observe(scope["method"], route, status, elapsed)
            if self.access_log:
                logger.info(
                    "%s %s %d %.1fms principal=%s",
                    scope["method"],
                    path,
                    status,
                    elapsed * 1000,
                    principal if principal is not None else "-",
                )

    def _bounded(self, receive: Receive) -> Receive:
        limit = self.max_body_bytes
        total = 0

        async def bounded_receive() -> Message:
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > limit:
                    raise LimitExceeded("max_request_bytes", limit, actual=total)
            return message

        return bounded_receive
