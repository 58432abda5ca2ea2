"""The HTTP/1.1 protocol ``jidoka serve`` runs: uvicorn's httptools one, with connection limits.

uvicorn alone (0.55, the httptools protocol) leaves a server open to cheap attacks:

- it puts no bound on a request head: an 8 MiB header is parsed and answered 200 (its
  ``h11_max_incomplete_event_size`` exists for the h11 protocol only);
- its keep-alive timeout is armed only after a response, and it has no header or body read
  timeout: a connection that never sends a byte, one that sends its head a byte at a time
  (slowloris), and a request whose body stops half way are all kept forever -- the last one
  also holding its principal's in-flight slot;
- ``limit_concurrency`` is checked only once a request head is complete, so connections that
  send nothing are never refused and it does not bound open sockets; and it counts the asking
  connection itself, so a limit of N serves N - 1.

:class:`LimitedHttpProtocol` closes those gaps in the protocol, where bytes and connections are
seen, with at most one timer per connection besides uvicorn's keep-alive one, and none at all
for a request whose head and body arrive in one read (the common case):

- **head size**: the bytes of a head still incomplete after a read are counted; a head over
  ``max_header_bytes`` (or one that completes in a single read and sums over it) is answered
  431. httptools keeps a partial header in memory, so the count must be of raw reads;
- **head timeout**: a head must be complete ``header_timeout`` seconds after the read in which
  it began, else 408;
- **body timeout**: a body that gets no byte for ``body_timeout`` seconds ends its request: 408
  if the app has not started answering (it sees ``http.disconnect``), a plain close otherwise.
  Time during which we do not read (uvicorn pauses reading while the app is behind) does not
  count;
- **idle timeout**: uvicorn's keep-alive timer (``idle_timeout``), armed from the connection's
  start too, and not put off by bytes that begin no request (empty lines);
- **connection cap**: beyond ``max_connections`` open connections (HTTP, event streams and
  WebSockets: all are in uvicorn's connection set) a new one gets a 503 and is closed at once.

A refused request's answer is a problem document naming its limit, sent with ``Connection:
close``; the server then stops writing and drops what it still receives for at most
:data:`LINGER_SECONDS` before closing, so that a client still sending (an oversized head) reads
the answer instead of a reset.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, ClassVar, Final

import httptools
import msgspec
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from ..problems import PROBLEM_BASE, PROBLEM_CONTENT_TYPE
from .config import ServerConfig

__all__ = ["LINGER_SECONDS", "LimitedHttpProtocol", "protocol_class"]

logger = logging.getLogger("jidoka.server")

#: After a refusal, how long the server drains what the client still sends before closing.
LINGER_SECONDS: Final = 2.0
#: The cap is logged at most once per this many seconds (a flood would fill the log).
_CAP_LOG_SECONDS: Final = 10.0
_encode: Final = msgspec.json.Encoder().encode


class _HeadTooLarge(Exception):
    """Raised from a parser callback; httptools re-raises it as the context of its error."""


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of :class:`ServerConfig` (see the module).

    Subclassed per server by :func:`protocol_class`, which sets :attr:`limits`.
    """

    limits: ClassVar[ServerConfig]
    #: When the cap was last logged, per server (:func:`protocol_class` gives each its own).
    cap_logged: ClassVar[list[float]]

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = self.limits
        # uvicorn declares it an int, but only hands it to ``call_later``.
        self.timeout_keep_alive = limits.idle_timeout  # type: ignore[assignment]
        self._max_head = limits.max_header_bytes
        self._head_timeout = limits.header_timeout
        self._body_timeout = limits.body_timeout
        self._in_head = False  # between a request's first byte and its blank line
        self._in_body = False  # between its blank line and the end of its body
        self._head_bytes = 0  # bytes of the current head in reads before this one
        self._read = 0  # length of the read being parsed
        self._ended = False  # a request ended within the read being parsed (pipelining)
        self._timer: asyncio.TimerHandle | None = None  # head, body or linger deadline
        self._refused = False

    # --- connection -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        cap = self.limits.max_connections
        if len(self.connections) > cap:
            now = time.monotonic()
            if now - self.cap_logged[0] >= _CAP_LOG_SECONDS:
                self.cap_logged[0] = now
                logger.warning("refusing connections: max_connections=%d are open", cap)
            self._answer(
                503,
                "max_connections",
                cap,
                f"the server has max_connections={cap} connections open; retry later",
                linger=False,
            )
            return
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's, plus the head and body bookkeeping after the parser has run. Unlike
        # uvicorn's, it leaves the idle timer alone (see timeout_keep_alive_handler): bytes
        # that begin no request (empty lines the parser skips) must not keep a connection open.
        if self._refused:
            return  # lingering after a refusal: what still comes is dropped
        self._read = len(data)
        self._ended = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._head_too_large()
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        if self._in_head:
            # Everything read since the head began is head, except in a read that also ended
            # an earlier (pipelined) request: that one is not counted.
            if not self._ended:
                self._head_bytes += len(data)
                if self._head_bytes > self._max_head:
                    self._head_too_large()
                    return
            if self._timer is None:
                self._timer = self.loop.call_later(self._head_timeout, self._expire)
        elif self._in_body:
            self._cancel_timer()
            self._timer = self.loop.call_later(self._body_timeout, self._expire)

    def handle_websocket_upgrade(self) -> None:
        self._in_body = False
        self._cancel_timer()
        self._unset_keepalive_if_required()  # the transport is the WebSocket's from now on
        super().handle_websocket_upgrade()

    def timeout_keep_alive_handler(self) -> None:
        """The idle timer, armed on connecting and after each answer, has run out. It is not
        cancelled when a request begins (that would cost every request a timer operation):
        here, a request under way (its head, its body or its answer) lets it pass; the next
        answer, or the end of a body answered early, arms it again."""
        cycle = self.cycle
        if self._in_head or self._in_body or (cycle is not None and not cycle.response_complete):
            self.timeout_keep_alive_task = None
            return
        super().timeout_keep_alive_handler()

    # --- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._timer is not None:
            self._cancel_timer()
        # A head that completed in this read is at most the bytes so far; only count it
        # exactly when that bound is over the limit.
        if self._head_bytes + self._read > self._max_head and self._head_size() > self._max_head:
            raise _HeadTooLarge
        self._in_body = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._ended = True
        if self._timer is not None:
            self._cancel_timer()
        super().on_message_complete()
        cycle = self.cycle  # None after a WebSocket upgrade's head
        if cycle is not None and cycle.response_complete and not self.pipeline:
            # The body ended after its answer: the connection is idle from now on.
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    # --- limits -----------------------------------------------------------------------------

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        """The head, body or linger deadline has passed."""
        self._timer = None
        if self.transport.is_closing():
            return
        if self._refused:
            self.transport.close()
            return
        if not (self._in_head or self._in_body):
            return  # pragma: no cover - every change of phase cancels the timer
        timeout = self._head_timeout if self._in_head else self._body_timeout
        if self.flow.read_paused:
            # We stopped reading (the app is behind on a body, or a pipelined request waits):
            # the client cannot be blamed for it.
            self._timer = self.loop.call_later(timeout, self._expire)
            return
        if self._in_head:
            self._refuse_head(
                408,
                "header_timeout",
                timeout,
                f"the request head was not complete within header_timeout={timeout:g} s",
            )
            return
        cycle = self.cycle
        if cycle is None or cycle.response_started or self.pipeline:
            self.transport.close()  # an answer is under way: nothing can be sent in its place
            return
        cycle.disconnected = True  # the app reads http.disconnect and writes nothing more
        cycle.message_event.set()
        self._answer(
            408,
            "body_timeout",
            timeout,
            f"the request body stalled: no byte for body_timeout={timeout:g} s",
        )

    def _head_too_large(self) -> None:
        limit = self._max_head
        self._refuse_head(
            431,
            "max_header_bytes",
            limit,
            f"the request head is larger than max_header_bytes={limit} bytes",
        )

    def _refuse_head(self, status: int, limit: str, maximum: float, detail: str) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            self.transport.close()  # an earlier (pipelined) request is still being answered
            return
        self._answer(status, limit, maximum, detail)

    def _answer(
        self, status: int, limit: str, maximum: float, detail: str, *, linger: bool = True
    ) -> None:
        """Send a problem document for ``limit`` and end the connection."""
        logger.info("%s:%s: %s (%d)", *(self.client or ("?", 0)), detail, status)
        problem = {
            "type": PROBLEM_BASE + "limit-exceeded",
            "title": "Limit exceeded",
            "status": status,
            "detail": detail,
            "limit": limit,
            "maximum": maximum,
        }
        body = _encode(problem)
        parts = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            parts += [name, b": ", value, b"\r\n"]
        parts += [
            b"content-type: " + PROBLEM_CONTENT_TYPE.encode() + b"\r\n",
            b"content-length: %d\r\n" % len(body),
            b"retry-after: 1\r\n" if status == 503 else b"",
            b"connection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(parts))
        if linger:
            self._linger()
        else:
            self._refused = True
            self._cancel_timer()
            self.transport.close()

    def _linger(self) -> None:
        """End the connection: stop writing, drop what still arrives, close on the client's
        end or after :data:`LINGER_SECONDS`. Closing at once with unread input would send a
        reset, which may destroy the answer before the client reads it."""
        self._refused = True
        self._in_head = self._in_body = False
        self._cancel_timer()
        self._unset_keepalive_if_required()
        if not self.transport.can_write_eof():  # pragma: no cover - TCP transports can
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_reading()
        self._timer = self.loop.call_later(LINGER_SECONDS, self._expire)


def protocol_class(config: ServerConfig) -> type[LimitedHttpProtocol]:
    """A :class:`LimitedHttpProtocol` bound to ``config``'s limits, for ``uvicorn.Config(http=)``
    (uvicorn makes one per connection and passes it only uvicorn's own config)."""

    class JidokaHttpProtocol(LimitedHttpProtocol):
        limits = config
        cap_logged: ClassVar[list[float]] = [float("-inf")]

    return JidokaHttpProtocol
