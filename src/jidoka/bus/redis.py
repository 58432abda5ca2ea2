"""The Redis event bus: events cross nodes over Redis pub/sub, and the store stays the truth.

Each node keeps its own subscriptions, as :class:`~jidoka.bus.memory.MemoryBus` does, and
delivers an event published here to them at once. A background sender also publishes it to
Redis, on the channel ``{prefix}:s:{session_id}`` (and, for a lifecycle event, on
``{prefix}:lifecycle``), tagged with this node's id so that the node ignores its own messages.
It listens on a session's channel only while it holds subscriptions on that session, on the
lifecycle channel always; one reader task offers what arrives.

Pub/sub forgets what nobody heard, and that is enough: every event is stored before it is
published, and a session subscription that sees a hole in the seqs reads the store to fill it
(:mod:`jidoka.bus.base`). So the bus need only say when it cannot vouch for what it delivered:

- once it listens on a session's channel (confirmed), that session's subscriptions read the
  store once: what was published before is stored, what comes after arrives live;
- while Redis cannot be reached the bus is *degraded*: every session subscription here reads
  the store every ``poll_interval`` (one bounded read each, only while its consumer reads), and
  the sender keeps just the newest unsent event of each session (bounded by sessions, not
  events). Back in touch, it publishes those (a node that missed the ones before sees the gap
  and reads the store), every session subscription here reads the store once more, and each
  global subscription gets one ``events_dropped`` marker for what it may have missed;
- a full send queue (``send_queue_max``) never slows the publisher: the event joins the
  newest-per-session set and ``send_dropped`` counts it.

A ``session_terminated`` from another node ends this node's streams of that session (as
``close_session`` does on the node that ended it), and so does a log found ending with one
while catching up (the end went by while the link was down). Subscriptions skip seqs they
have, so nothing is delivered twice. Reconnects back off from 0.1 s to 2 s; URL credentials
never appear in errors or logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from ..errors import InvalidArgument, RuntimeClosed
from ..events import GLOBAL_EVENT_TYPES, Event, EventType, decode_event, encode_event
from ._redis_support import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    CLOSE_FLUSH,
    COMMAND_TIMEOUT,
    CONNECT_TIMEOUT,
    LINK_ERRORS,
    SEND_BATCH,
    BusUnavailable,
    NoBackoff,
    Retry,
    aioredis,
    describe,
    honouring_cancel,
    redacted_url,
)
from .base import EventReader, Subscription
from .topics import Topics

__all__ = ["BusUnavailable", "RedisBus", "open_redis_bus", "redacted_url"]

logger = logging.getLogger("jidoka.bus")


class RedisBus:
    """Per-session and global topics, shared between nodes through Redis pub/sub."""

    def __init__(
        self,
        url: str,
        *,
        node_id: str,
        prefix: str = "jidoka",
        reader: EventReader | None = None,
        keeps_logs: bool = False,
        queue_size: int = 1_000,
        now: Callable[[], float],
        poll_interval: float = 0.5,
        send_queue_max: int = 10_000,
    ) -> None:
        if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise InvalidArgument(
                f"the bus URL must be redis://, rediss:// or unix://, not {redacted_url(url)}",
                argument="bus",
            )
        if not node_id or "\n" in node_id:
            raise InvalidArgument("node_id must be non-empty, on one line", argument="node_id")
        if queue_size < 1 or send_queue_max < 1 or poll_interval <= 0:
            raise ValueError("queue_size and send_queue_max must be positive, poll_interval > 0")
        self._url = url
        self.url = redacted_url(url)
        self.node_id = node_id
        self.prefix = prefix
        self.queue_size = queue_size
        self._reader = reader
        self._keeps_logs = keeps_logs
        self._now = now
        self._poll_interval = poll_interval
        self._send_queue_max = send_queue_max
        self._tag = node_id.encode() + b"\n"
        self._lifecycle = f"{prefix}:lifecycle"
        self._session_prefix = f"{prefix}:s:"
        self._local = Topics()
        self._state = "new"  # "new", "ok", "degraded" or "closed"
        self._detail = "not started"
        self._closed = False
        self._global_missed = False  # the global topic is owed an outage marker
        # Sending: the queue in order, and the newest unsent event of each session when the
        # queue is full or Redis is down.
        self._queue: deque[Event] = deque()
        self._pending: dict[str, Event] = {}
        self._send_wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._channels_changed = asyncio.Event()
        self._degraded = asyncio.Event()
        self._client: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: asyncio.Task[None] | None = None
        self._ending: set[asyncio.Task[None]] = set()  # close_session of remote ends
        self.published = 0
        self.lost = 0
        self.remote_received = 0
        self.send_dropped = 0
        self.reconnects = 0

    # --- life cycle -----------------------------------------------------------------------------

    async def start(self, *, degraded_ok: bool = False) -> None:
        """Connect and start the sender and the reader. If Redis cannot be reached, raise
        :class:`BusUnavailable` (a wrong URL should stop a node at once), or with
        ``degraded_ok`` start degraded (subscribers read the store) and keep trying."""
        if self._state != "new":
            raise RuntimeClosed("a RedisBus can be started once")
        self._client = aioredis.from_url(
            self._url,
            retry=Retry(NoBackoff(), 0),  # reconnecting is this bus's business, not hidden
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
        )
        first: Any = None
        try:
            first = await self._connect()
        except LINK_ERRORS as exc:
            if not degraded_ok:
                await self._client.aclose()
                self._closed = True
                self._state, self._detail = "closed", "could not start"
                raise BusUnavailable(f"cannot reach Redis at {self.url}: {describe(exc)}") from None
            self._degrade(exc)
        else:
            self._state, self._detail = "ok", f"connected to {self.url}"
        self._tasks = [
            asyncio.create_task(self._supervise(first), name="jidoka-redis-bus"),
            asyncio.create_task(self._poll(), name="jidoka-redis-bus-poll"),
        ]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End every subscription, send what is queued (briefly), disconnect. Idempotent, and a
        cancelled call leaves the closing to run on: the next call waits for it."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        was_up = self._state == "ok"
        self._closed = True
        self._local.close_all()
        if was_up and not self._idle.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_FLUSH):
                    await self._idle.wait()
        self._state, self._detail = "closed", "closed"
        tasks = [*self._tasks, *self._ending]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._idle.set()
        if self._client is not None:
            with contextlib.suppress(*LINK_ERRORS):
                await self._client.aclose()

    @property
    def state(self) -> str:
        """``ok``, ``degraded`` (Redis unreachable: subscribers poll the store), ``closed``."""
        return self._state

    @property
    def detail(self) -> str:
        """What :attr:`state` rests on, in words (the URL without credentials)."""
        return self._detail

    def health(self) -> tuple[bool, str]:
        return self._state == "ok", f"{self._state}: {self._detail}"

    # --- publishing -----------------------------------------------------------------------------

    async def publish(self, event: Event) -> None:
        """:meth:`publish_nowait`, then wait until the send queue is empty (or the bus is
        degraded, the event then kept as its session's newest unsent one)."""
        self.publish_nowait(event)
        await self._idle.wait()

    def publish_nowait(self, event: Event) -> None:
        if self._closed:
            return
        self.published += 1
        self._local.deliver(event)
        if self._state != "ok":
            self._keep(event)
            return
        if len(self._queue) >= self._send_queue_max:
            self.send_dropped += 1
            self._keep(event)
        else:
            self._queue.append(event)
        self._idle.clear()
        self._send_wake.set()

    def _keep(self, event: Event) -> None:
        kept = self._pending.get(event.session_id)
        if kept is None or kept.seq < event.seq:
            self._pending[event.session_id] = event

    # --- subscribing ----------------------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(
        self, session_id: str | None, *, after_seq: int | None = None
    ) -> AsyncIterator[Subscription]:
        if self._closed:
            raise RuntimeClosed("the event bus is closed", session_id=session_id)
        subscription = Subscription(
            session_id,
            queue_size=self.queue_size,
            reader=self._reader,
            now=self._now,
            after_seq=after_seq,
            on_lost=self._count_lost,
            keeps_logs=self._keeps_logs,
            ends_on_terminated=True,  # the end may be learnt from the store (see base)
        )
        if self._local.add(session_id, subscription):
            self._channels_changed.set()  # listen on the session's channel
        try:
            yield subscription
        finally:
            subscription.close()
            if self._local.discard(session_id, subscription):
                self._channels_changed.set()

    def _count_lost(self, count: int) -> None:
        self.lost += count

    async def close_session(self, session_id: str) -> None:
        topic = self._local.pop(session_id)
        if topic:
            self._channels_changed.set()
        for subscription in topic:
            await subscription.finish()

    def subscriber_count(self, session_id: str | None = None) -> int:
        return self._local.count(session_id)

    def topics(self) -> frozenset[str]:
        """Sessions that have at least one subscription in this process."""
        return frozenset(self._local.sessions)

    # --- the link to Redis ----------------------------------------------------------------------

    async def _connect(self) -> Any:
        """A new pub/sub connection listening on the lifecycle channel (the session channels
        follow in :meth:`_follow_topics`), after checking that commands get through too."""
        assert self._client is not None
        await self._client.ping()
        pubsub = self._client.pubsub()
        try:
            await honouring_cancel(pubsub.subscribe(self._lifecycle))
        except BaseException:
            with contextlib.suppress(*LINK_ERRORS):
                await pubsub.aclose()
            raise
        return pubsub

    def _degrade(self, exc: BaseException) -> None:
        if self._closed:
            return
        self._detail = f"Redis unreachable at {self.url}: {describe(exc)}"
        if self._state != "degraded":
            logger.warning("event bus degraded: %s; subscribers read the store", self._detail)
            self._state = "degraded"
            self._global_missed = True
            self._degraded.set()
        for event in self._queue:
            self._keep(event)
        self._queue.clear()
        self._idle.set()

    async def _supervise(self, pubsub: Any) -> None:
        """Run the link; when it fails, degrade and reconnect with backoff, for ever."""
        backoff = BACKOFF_FIRST
        while True:
            if pubsub is None:
                try:
                    pubsub = await self._connect()
                except Exception as exc:
                    if not isinstance(exc, LINK_ERRORS):
                        logger.error("event bus: unexpected error connecting", exc_info=exc)
                    self._degrade(exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                self.reconnects += 1
                logger.warning("event bus back in touch with Redis at %s", self.url)
            backoff = BACKOFF_FIRST
            self._state, self._detail = "ok", f"connected to {self.url}"
            self._degraded.clear()
            if self._pending:
                self._idle.clear()
                self._send_wake.set()
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._listen(pubsub))
                    group.create_task(self._follow_topics(pubsub))
                    group.create_task(self._send())
            except* Exception as failed:
                error = failed.exceptions[0]
                if not isinstance(error, LINK_ERRORS):  # a bug: say so, and carry on all the same
                    logger.error("event bus: unexpected error", exc_info=error)
                self._degrade(error)
            finally:
                with contextlib.suppress(*LINK_ERRORS):
                    await pubsub.aclose()
            pubsub = None

    async def _follow_topics(self, pubsub: Any) -> None:
        """Listen on exactly the channels of the sessions with subscriptions here."""
        listening: set[str] = set()
        while True:
            self._channels_changed.clear()
            wanted = {self._session_prefix + session_id for session_id in self._local.sessions}
            if added := wanted - listening:
                await honouring_cancel(pubsub.subscribe(*added))
                listening |= added
            if removed := listening - wanted:
                await honouring_cancel(pubsub.unsubscribe(*removed))
                listening -= removed
            if not self._channels_changed.is_set():
                await self._channels_changed.wait()

    async def _listen(self, pubsub: Any) -> None:
        """Offer what arrives to the subscriptions here. A link that says nothing for a while
        is asked for a PING, and one that does not answer it counts as down."""
        loop = asyncio.get_running_loop()
        quiet_limit = max(1.0, 4 * self._poll_interval)
        heard = loop.time()
        pinged = False
        while True:
            message = await honouring_cancel(pubsub.get_message(timeout=self._poll_interval))
            if message is None:
                silent = loop.time() - heard
                if silent > 2 * quiet_limit:
                    raise ConnectionError(f"no answer from Redis for {silent:.1f} s")
                if silent > quiet_limit and not pinged:
                    await honouring_cancel(pubsub.ping())
                    pinged = True
                continue
            heard, pinged = loop.time(), False
            kind = message["type"]
            if kind == "message":
                self._receive(message["channel"], message["data"])
            elif kind == "subscribe":
                self._listening(message["channel"])

    def _receive(self, channel: bytes, data: bytes) -> None:
        if data.startswith(self._tag):
            return  # this node's own event: delivered here already
        _node, _, body = data.partition(b"\n")
        try:
            event = decode_event(body)
        except InvalidArgument as exc:
            logger.warning("event bus: a malformed message on %r ignored: %s", channel, exc)
            return
        self.remote_received += 1
        if channel.decode() == self._lifecycle:
            for subscription in self._local.everyone:
                subscription.offer(event)
        else:
            for subscription in self._local.sessions.get(event.session_id, ()):
                subscription.offer(event)
            if (
                event.type == EventType.SESSION_TERMINATED
                and event.session_id in self._local.sessions
            ):
                # Ended on another node: nobody here will call close_session for it.
                ending = asyncio.create_task(self.close_session(event.session_id))
                self._ending.add(ending)
                ending.add_done_callback(self._ending.discard)

    def _listening(self, channel: bytes) -> None:
        """Redis confirmed a subscription: from now on events on ``channel`` arrive, and those
        before it are in the store, so the subscriptions it serves read the store once."""
        name = channel.decode()
        if name == self._lifecycle:
            if self._global_missed:
                self._global_missed = False
                for subscription in self._local.everyone:
                    subscription.resync()
            return
        for subscription in self._local.sessions.get(name.removeprefix(self._session_prefix), ()):
            subscription.resync()

    async def _send(self) -> None:
        """Publish queued events in batches, then the kept newest-per-session ones. That order
        matters to a subscriber that has no position yet: the first event it sees becomes its
        position, so the newest one must not overtake the queue's older ones."""
        assert self._client is not None
        while True:
            if not self._queue and not self._pending:
                self._idle.set()
                self._send_wake.clear()
                await self._send_wake.wait()
                continue
            batch: list[Event] = []
            while self._queue and len(batch) < SEND_BATCH:
                batch.append(self._queue.popleft())
            while self._pending and len(batch) < SEND_BATCH:
                batch.append(self._pending.pop(next(iter(self._pending))))
            try:
                pipe = self._client.pipeline(transaction=False)
                for event in batch:
                    payload = self._tag + encode_event(event)
                    pipe.publish(self._session_prefix + event.session_id, payload)
                    if event.type in GLOBAL_EVENT_TYPES:
                        pipe.publish(self._lifecycle, payload)
                await honouring_cancel(pipe.execute())
            except BaseException:
                for event in batch:  # perhaps not sent: the newest of each session is resent
                    self._keep(event)
                raise

    async def _poll(self) -> None:
        """While degraded, have every session subscription here read the store each
        ``poll_interval`` (a read happens only when its consumer asks for more)."""
        while True:
            await self._degraded.wait()
            for topic in list(self._local.sessions.values()):
                for subscription in topic:
                    subscription.resync()
            await asyncio.sleep(self._poll_interval)


async def open_redis_bus(url: str, *, degraded_ok: bool = False, **options: Any) -> RedisBus:
    """A started :class:`RedisBus` (``options`` are the constructor's keywords)."""
    bus = RedisBus(url, **options)
    await bus.start(degraded_ok=degraded_ok)
    return bus
