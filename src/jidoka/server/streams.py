"""Server-Sent Event streams of session events, and the registry that ends them at shutdown.

An :class:`EventStream` is a raw ASGI response rather than Starlette's ``StreamingResponse``:
it must subscribe *before* the response starts (so a client that has seen the headers has missed
nothing), notice a client that went away, interleave heartbeats, and on every path out -- end of
session, client gone, server draining, cancellation -- leave the subscription, awaited.

Wire format (``docs/http-api.md``): one SSE message per event, ``id:`` the event's seq on a
session stream (so ``Last-Event-ID`` resumes it) and the event id on the global stream; events
already queued are written together, in chunks of about ``CHUNK_BYTES``; a ``: keep-alive``
comment after ``heartbeat`` seconds of silence; a final ``event: shutdown`` (without ``id:``)
when the server drains, and a final ``event: end`` (without ``id:``) when a session stream is
complete because the session has ended: there is nothing to resume, and a client (a browser's
``EventSource`` reconnects by itself) knows to stop.

**Frame names for browsers.** ``event:`` is the event's type, except where ``EventSource`` gives
a name a meaning of its own: its ``error`` handler is the one pages use for a lost connection,
so the agent's ``error`` event is sent as ``event: agent_error`` (:func:`frame_name`; the JSON
``type`` stays ``error``). With ``?frames=unnamed`` event frames carry no ``event:`` line at
all, so a page's one ``onmessage`` handler gets every event and reads its ``type`` from the
JSON; the stream's own ``end`` and ``shutdown`` frames stay named (they are not events).

**A finished stream answers 204.** A session stream opened at or past the end of an ended
session's log has nothing to send and never will: it answers ``204 No Content``, which is how
the HTML standard tells an ``EventSource`` to stop reconnecting (a 200 with only ``event: end``
would have it come back every few seconds, for as long as the page stays open).

**Memory per stream.** A reader that does not read (slow, or hostile) must not make the server
hold its whole replay. A stream takes the next events from its subscription only once the
chunk before has left the server's send buffer (the ASGI server's flow control applies
backpressure to ``send``; an empty body message waits for the buffer to drain), chunks are
bounded in bytes, and a subscription catching up reads the store one bounded page at a time
(``Settings.subscriber_page_bytes``). A stalled stream so holds about one page and one chunk.

**Streams per principal.** Each principal may have ``max_streams_per_principal`` event streams
open at once, SSE and WebSocket subscriptions together (:meth:`StreamRegistry.reserve`); the
next is refused with ``LimitExceeded`` (429 with ``Retry-After``), before it subscribes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Final

from starlette.types import Receive, Scope, Send

from ..bus.base import Subscription
from ..errors import InvalidArgument
from ..events import Event, EventType, encode_event
from .auth import PrincipalCounter

__all__ = [
    "CHUNK_BYTES",
    "FRAME_NAMES",
    "EventStream",
    "StreamRegistry",
    "frame_name",
    "named_frames",
    "sse_frame",
]

#: Events written per chunk at most, when the subscriber has a backlog.
_BATCH: Final = 256
#: Bytes per chunk: a chunk ends with the event that reaches this (one larger event goes alone).
CHUNK_BYTES: Final = 256 * 1024
_HEADERS: Final = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
SHUTDOWN_FRAME: Final = b'event: shutdown\ndata: {"reason":"server shutting down"}\n\n'
END_FRAME: Final = b'event: end\ndata: {"reason":"session ended"}\n\n'
KEEPALIVE_FRAME: Final = b": keep-alive\n\n"
#: Names an ``EventSource`` dispatches by itself (``error`` on a lost connection, ``open``, and
#: ``message`` for frames without a name): no event frame may be sent under one of them.
EVENTSOURCE_NAMES: Final = frozenset({"error", "message", "open"})
#: The frame names that differ from the event type: the agent's ``error`` would reach the
#: page's connection-loss handler.
FRAME_NAMES: Final = {EventType.ERROR.value: "agent_error"}
#: ``?frames=``: named (the default) or unnamed event frames.
_FRAMES_VALUES: Final = ("named", "unnamed")


def frame_name(event_type: str) -> str:
    """The ``event:`` name of an event of ``event_type``: the type itself, or its entry in
    :data:`FRAME_NAMES` (never one of :data:`EVENTSOURCE_NAMES`)."""
    return FRAME_NAMES.get(event_type, event_type)


def named_frames(values: list[str]) -> bool:
    """Whether the ``frames`` query parameter (all its values) asks for named frames.
    :class:`InvalidArgument` naming ``frames`` for anything but one ``named`` or ``unnamed``."""
    if not values:
        return True
    if len(values) > 1 or values[0] not in _FRAMES_VALUES:
        shown = values[0] if len(values) == 1 else values
        raise InvalidArgument(
            f"query parameter frames must be 'named' or 'unnamed', got {shown!r}",
            argument="frames",
        )
    return values[0] == "named"


def sse_frame(event: Event, *, by_seq: bool, named: bool = True) -> bytes:
    """One SSE message. ``by_seq``: ``id:`` is the seq (session streams), else the event id.
    ``named``: with an ``event:`` line (:func:`frame_name`); without, ``EventSource`` hands it
    to ``onmessage``."""
    if event.type == EventType.EVENTS_DROPPED and not event.session_id:
        event_id = b""  # a global-stream loss marker has no place to resume from
    else:
        event_id = b"id: %d\n" % event.seq if by_seq else b"id: %s\n" % event.id.encode()
    name = b"event: %s\n" % frame_name(event.type).encode() if named else b""
    return b"%s%sdata: %s\n\n" % (event_id, name, encode_event(event))


class StreamRegistry:
    """The open streams and WebSockets, so that shutdown can end each one cleanly; and how many
    event streams each principal has open, so that none can open them without end."""

    def __init__(self, *, max_per_principal: int | None = None) -> None:
        self._closers: set[Callable[[], None]] = set()
        self._streams = PrincipalCounter("max_streams_per_principal", max_per_principal)
        self.max_per_principal = max_per_principal
        self.draining = False

    def reserve(self, principal: str | None) -> None:
        """Count one more stream of ``principal``; ``LimitExceeded`` past the limit. Every
        successful call is matched by one :meth:`release`."""
        self._streams.acquire(principal)

    def release(self, principal: str | None) -> None:
        self._streams.release(principal)

    def streams(self, principal: str | None) -> int:
        """Event streams ``principal`` has open."""
        return self._streams.count(principal)

    def add(self, closer: Callable[[], None]) -> None:
        """Track a stream; one opened while draining is told to finish at once."""
        self._closers.add(closer)
        if self.draining:
            closer()

    def discard(self, closer: Callable[[], None]) -> None:
        self._closers.discard(closer)

    def __len__(self) -> int:
        return len(self._closers)

    def drain(self) -> None:
        """Ask every stream to finish (each sends its final frame and ends)."""
        self.draining = True
        for closer in list(self._closers):
            closer()


Filter = Callable[[Event], Awaitable[bool]]


class EventStream:
    """An ASGI response that streams a subscription as SSE until it ends or the client leaves
    (or answers 204 if there is nothing left to stream: see :meth:`open`)."""

    def __init__(
        self,
        subscription: AbstractAsyncContextManager[Subscription],
        *,
        registry: StreamRegistry,
        heartbeat: float,
        by_seq: bool,
        keep: Filter | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        principal: str | None = None,
        named: bool = True,
    ) -> None:
        self._context = subscription
        self._principal = principal
        self._reserved = False
        self._registry = registry
        self._heartbeat = heartbeat
        self._by_seq = by_seq
        self._keep = keep
        self._named = named
        self._headers = [*_HEADERS, *(headers or ())]
        self._subscription: Subscription | None = None
        #: The first event, read by open() to learn whether there is any (see ``complete``).
        self._first: Event | None = None
        #: Nothing to stream, ever: a session stream past the end of an ended session's log.
        self.complete = False

    async def open(self) -> None:
        """Take the principal's stream slot and subscribe now, before any byte is sent, so
        errors (the stream limit among them) can still be a problem response.

        A session stream whose subscription is already closed (its session has ended) is
        asked for its first event at once: that never waits for anything live, and if there
        is none the stream is :attr:`complete` and answers 204 rather than 200 and ``end``."""
        self._registry.reserve(self._principal)
        self._reserved = True
        try:
            subscription = await self._context.__aenter__()
        except BaseException:
            self._release()
            raise
        self._subscription = subscription
        if not (self._by_seq and subscription.closed):
            return
        try:
            self._first = await anext(subscription)
        except StopAsyncIteration:
            self.complete = True
        except BaseException:
            try:
                await self._context.__aexit__(None, None, None)
            finally:
                self._release()
            raise

    def _release(self) -> None:
        if self._reserved:
            self._reserved = False
            self._registry.release(self._principal)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        subscription = self._subscription
        assert subscription is not None, "open() the stream first"
        self._registry.add(subscription.close)
        try:
            if self.complete:
                headers = [(b"cache-control", b"no-cache")]
                await send({"type": "http.response.start", "status": 204, "headers": headers})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            pump = asyncio.create_task(self._pump(subscription, send))
            watch = asyncio.create_task(_wait_disconnect(receive))
            try:
                await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (pump, watch):
                    task.cancel()
                for task in (pump, watch):
                    with contextlib.suppress(asyncio.CancelledError, OSError):
                        await task
            if pump.done() and not pump.cancelled() and pump.exception() is not None:
                exc = pump.exception()
                if not isinstance(exc, OSError):
                    raise exc  # type: ignore[misc]
        finally:
            self._registry.discard(subscription.close)
            try:
                await self._context.__aexit__(None, None, None)
            finally:
                self._release()

    async def _pump(self, subscription: Subscription, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        await send({"type": "http.response.body", "body": b": ok\n\n", "more_body": True})
        async for chunk in self._chunks(subscription):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            # Wait until the send buffer has drained (an empty message writes nothing but
            # waits like any other) before taking, or reading from the store, any more.
            await send({"type": "http.response.body", "body": b"", "more_body": True})
        if self._registry.draining:
            await send({"type": "http.response.body", "body": SHUTDOWN_FRAME, "more_body": True})
        elif self._by_seq:  # a session stream runs until its session ends: it is complete
            await send({"type": "http.response.body", "body": END_FRAME, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _next(self, iterator: AsyncIterator[Event]) -> Event:
        """The event open() read ahead, if any, else the next one."""
        first, self._first = self._first, None
        if first is not None:
            return first
        async with asyncio.timeout(self._heartbeat):
            return await anext(iterator)

    async def _chunks(self, subscription: Subscription) -> AsyncIterator[bytes]:
        iterator = aiter(subscription)
        while True:
            try:
                event = await self._next(iterator)
            except TimeoutError:
                yield KEEPALIVE_FRAME
                continue
            except StopAsyncIteration:
                return
            frames: list[bytes] = []
            size = 0
            batch: Event | None = event
            while batch is not None:
                if self._keep is None or await self._keep(batch):
                    frame = sse_frame(batch, by_seq=self._by_seq, named=self._named)
                    frames.append(frame)
                    size += len(frame)
                    if size >= CHUNK_BYTES or len(frames) >= _BATCH:
                        break  # the rest stays queued until this chunk has gone out
                batch = subscription.get_nowait()
            if frames:
                chunk = b"".join(frames)
                frames.clear()  # the frames are in the chunk: keep one copy only
                yield chunk


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
