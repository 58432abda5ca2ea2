"""The event bus: how events reach subscribers, and what a subscriber that falls behind gets.

A bus has two kinds of topic: one per session (all of that session's events) and one global
(the lifecycle events of every session). Backends (memory now, Redis for scale-out) differ only in
how an event travels to the process that holds the subscription; what happens once it arrives is
:class:`Subscription`'s job and is the same for every backend.

**Slow-consumer policy.** Each subscription has a bounded queue (``queue_size`` events). Publishing
never waits: when the queue is full the subscription switches to *catch-up* and further live
events are not queued. Once the consumer has drained its queue:

- a **session** subscription reads the events it missed from the store (the store has every
  published event, since events are published only after they are stored) and then goes back to
  live delivery, so nothing is lost and nothing repeats. Only if the store no longer has them
  (the memory store trims very long logs and frees a terminated session's log; a turn's stream
  chunks are dropped once it has ended, with ``keep_stream_chunks`` off) does the
  subscription yield one ``events_dropped`` marker (``data``: ``count``, ``first_seq``,
  ``last_seq``; its ``seq`` is ``last_seq``) for each gap, wherever it lies in what is read
  back, and carry on after it;
- the **global** subscription has no single log to read back, so it yields one ``events_dropped``
  marker (``session_id`` ``""``, ``seq`` 0, ``data.count``) and resumes with live events.

A publisher or another subscriber is never slowed by a slow one.

**Gaps.** Seqs of a session have no holes, so a session subscription that knows where it stands
(it was given ``after_seq``, or has seen an event) and is offered an event past the next one
has missed something on the way (a bus that crosses processes can drop a message, or deliver
it late) and switches to catch-up as if it had overflowed. :meth:`Subscription.resync` does the
same on demand: a bus that cannot vouch for what it delivered (its link was down, or it has
just subscribed) has the consumer read the store until it is caught up. On the node that ended a
session the bus closes its streams (``close_session``); a bus on another node can learn of the
end from the store alone (it was away when the end went by), so with ``ends_on_terminated`` a
session stream also ends when catching up finds the log ending with ``session_terminated``. Only
at the end of the log: a restored session's log goes on past an earlier termination.

Nothing in :class:`EventBus` assumes the subscribers share the publisher's memory: publishing
hands an event over without waiting (a bus that crosses processes sends it in the background),
and the counters and ``subscriber_count`` speak of this process's side only.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import NamedTuple, Protocol, runtime_checkable

from ..events import Event, EventType
from ..payloads import EventsDroppedData, data_of

__all__ = ["EventBus", "EventReader", "Subscription", "SubscriptionStatistics"]

#: Reads a session's stored events with ``seq > after_seq`` (at most ``limit``).
EventReader = Callable[[str, int, int], Awaitable[list[Event]]]


class SubscriptionStatistics(NamedTuple):
    queued: int
    delivered: int
    dropped: int
    catching_up: bool


class Subscription:
    """An async iterator over the events of one session (or, with ``session_id=None``, the
    lifecycle events of all sessions). Obtained from ``Client.subscribe_to_session`` /
    ``subscribe_to_all_sessions``; iteration ends when the session terminates (after its final
    events) or the runtime closes.
    """

    __slots__ = (
        "_anchored",
        "_catching_up",
        "_closed",
        "_delivered",
        "_dropped",
        "_ends_on_terminated",
        "_keeps_logs",
        "_last_seq",
        "_latest_seen",
        "_now",
        "_on_lost",
        "_pending_drops",
        "_queue",
        "_reader",
        "_tail_terminated",
        "_waiter",
        "queue_size",
        "session_id",
    )

    def __init__(
        self,
        session_id: str | None,
        *,
        queue_size: int,
        reader: EventReader | None,
        now: Callable[[], float],
        after_seq: int | None = None,
        on_lost: Callable[[int], None] | None = None,
        keeps_logs: bool = False,
        ends_on_terminated: bool = False,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.session_id = session_id
        self._ends_on_terminated = ends_on_terminated
        #: Whether the newest event queued (``_last_seq``) is a ``session_terminated``.
        self._tail_terminated = False
        #: The reader's store keeps a session's log after it ends (a durable one does), so
        #: catching up can go on at the consumer's pace once the session has ended.
        self._keeps_logs = keeps_logs
        self.queue_size = queue_size
        self._now = now
        self._on_lost = on_lost
        self._reader = reader
        self._queue: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._delivered = 0
        self._dropped = 0  # events this consumer will never see (reported in markers)
        self._pending_drops = 0  # global stream: skipped since the last marker
        # Per-session: seq of the newest event queued or delivered, and the newest one published.
        self._last_seq = after_seq or 0
        self._latest_seen = after_seq or 0
        self._catching_up = after_seq is not None and session_id is not None
        #: Whether ``_latest_seen`` is a real position (``after_seq`` given, or an event seen):
        #: only then does a seq past the next one mean a gap, and can the store be read on.
        self._anchored = after_seq is not None

    # --- the bus side ---------------------------------------------------------------------------

    def offer(self, event: Event) -> None:
        """Hand over one published event. Never blocks; applies the slow-consumer policy."""
        if self._closed:
            return
        if self.session_id is not None:
            if event.seq <= self._latest_seen:
                return  # already queued or replayed (or delivered twice by a backend)
            gap = self._anchored and event.seq > self._latest_seen + 1
            self._latest_seen = event.seq
            self._anchored = True
            if self._catching_up:
                return  # the store has it; catch-up will read it
            if gap and self._reader is not None:
                self._catching_up = True  # events before this one went missing: read them
                self._wake()
                return
            if len(self._queue) >= self.queue_size:
                self._catching_up = True
                return
            self._last_seq = event.seq
            self._tail_terminated = event.type == EventType.SESSION_TERMINATED
        elif self._catching_up or len(self._queue) >= self.queue_size:
            self._catching_up = True
            self._pending_drops += 1
            return
        self._queue.append(event)
        self._wake()

    def resync(self) -> None:
        """Read the store from where the consumer stands before taking live events again: the
        bus may have missed some (its link was down, or its subscription was not yet in place
        when they went by). Costs one store read per call once the consumer asks for more, and
        nothing is read twice (the subscription skips seqs it has). A session subscription
        without a position (no ``after_seq``, nothing seen yet) has no place to read on from
        and is left as it is. On the global topic, which has no log, the consumer gets one
        ``events_dropped`` marker (``count`` is what this process knows it skipped, often 0:
        the number missed elsewhere is unknown)."""
        if self._closed:
            return
        if self.session_id is None or (self._anchored and self._reader is not None):
            self._catching_up = True
            self._wake()

    def close(self) -> None:
        """End the stream after what is already queued (the session ended, or the bus closed)."""
        self._closed = True
        self._wake()

    async def finish(self) -> None:
        """The session is ending: close. From a store that keeps logs, catching up goes on
        page by page as the consumer reads, and nothing is read here. A store that may free
        the log next (the memory store) is read now for every event still to be caught up, a
        page (``queue_size`` events) per read, so the queue may exceed its bound by that much:
        references to events that store holds in memory anyway, never one unbounded read."""
        if (
            self._catching_up
            and not self._keeps_logs
            and self.session_id is not None
            and self._reader is not None
        ):
            while True:
                seen = self._latest_seen
                events = await self._reader(self.session_id, self._last_seq, self.queue_size)
                events = [e for e in events if e.seq > self._last_seq]
                if events:
                    self._take(events)
                    continue  # the next page
                if self._latest_seen <= max(seen, self._last_seq):
                    break  # nothing was published while the read ran that it may have missed
            self._catching_up = False
        self.close()

    @classmethod
    def ended(
        cls,
        session_id: str,
        *,
        after_seq: int,
        reader: EventReader,
        queue_size: int,
        now: Callable[[], float],
    ) -> Subscription:
        """The stream of a session that has ended, for a subscriber that was away: what the
        store holds after ``after_seq``, then the end. Read through the catch-up path, at most
        ``queue_size`` events at a time, so a long log is never held in memory at once."""
        subscription = cls(
            session_id, queue_size=queue_size, reader=reader, now=now, after_seq=after_seq
        )
        subscription.close()  # nothing live will come: only the catch-up reads remain
        return subscription

    @property
    def closed(self) -> bool:
        return self._closed

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # --- the consumer side ----------------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._queue:
                self._delivered += 1
                return self._queue.popleft()
            if self._catching_up:
                marker = await self._catch_up()
                if marker is not None:
                    self._delivered += 1
                    return marker
                continue
            if self._closed:
                raise StopAsyncIteration
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None

    def get_nowait(self) -> Event | None:
        """The next queued event, or ``None`` if none is queued (no catch-up, no waiting)."""
        if self._queue:
            self._delivered += 1
            return self._queue.popleft()
        return None

    async def _catch_up(self) -> Event | None:
        """Refill the queue from the store or end catch-up; may return an ``events_dropped``."""
        if self.session_id is None or self._reader is None:
            count, self._pending_drops = self._pending_drops, 0
            self._catching_up = False
            self._lost(count)
            return self._marker("", 0, EventsDroppedData(count=count))
        after = self._last_seq
        seen = self._latest_seen
        events = await self._reader(self.session_id, after, self.queue_size)
        events = [e for e in events if e.seq > after]
        gap: Event | None = None
        if events:
            self._take(events)
            self._tail_terminated = events[-1].type == EventType.SESSION_TERMINATED
            self._latest_seen = max(self._latest_seen, self._last_seq)
            return None
        if self._latest_seen > seen:
            # Published while the read ran: the read may have started before their commit, so
            # an empty answer proves nothing. Read again; the store has them now.
            return None
        # The store has nothing after `after`: caught up, unless it lost events seen published
        # (before the read began, so it must have seen them).
        self._catching_up = False
        if seen > after:
            gap = self._gap(after + 1, seen)
            self._last_seq = seen
        elif self._ends_on_terminated and self._tail_terminated:
            self._closed = True  # the log ends with the session's end: so does the stream
        return gap

    def _take(self, events: list[Event]) -> None:
        """Queue a page read from the store after ``_last_seq``, with one ``events_dropped``
        marker before each gap in its seqs, anywhere in the page: events the store no longer
        has (the memory store trims the oldest; stream chunks are dropped once their turn has
        ended, ``Settings.keep_stream_chunks``). The marker names the gap exactly, and the
        stream goes on after it: a gap is never read again."""
        last = self._last_seq
        for event in events:
            if event.seq > last + 1:
                self._queue.append(self._gap(last + 1, event.seq - 1))
            self._queue.append(event)
            last = event.seq
        self._last_seq = last

    def _gap(self, first: int, last: int) -> Event:
        assert self.session_id is not None
        self._lost(last - first + 1)
        dropped = EventsDroppedData(count=last - first + 1, first_seq=first, last_seq=last)
        return self._marker(self.session_id, last, dropped)

    def _lost(self, count: int) -> None:
        self._dropped += count
        if self._on_lost is not None:
            self._on_lost(count)

    def _marker(self, session_id: str, seq: int, data: EventsDroppedData) -> Event:
        when = datetime.fromtimestamp(self._now(), UTC)
        return Event(EventType.EVENTS_DROPPED, session_id, seq, when, data_of(data))

    def statistics(self) -> SubscriptionStatistics:
        return SubscriptionStatistics(
            len(self._queue), self._delivered, self._dropped + self._pending_drops,
            self._catching_up,
        )  # fmt: skip


@runtime_checkable
class EventBus(Protocol):
    """Delivers published events to the subscriptions of their topics."""

    @property
    def published(self) -> int:
        """Events this process has handed to the bus (a counter for telemetry)."""
        ...

    @property
    def lost(self) -> int:
        """Events this process's subscribers were told they missed (``events_dropped``)."""
        ...

    def publish_nowait(self, event: Event) -> None:
        """Hand ``event`` over for delivery to its session's topic (and, for lifecycle events,
        the global one) without waiting: what the post-commit section calls, which must not
        await. Waits on no subscriber; a bus that crosses processes queues the event and sends
        it in the background. A closed bus drops it: nobody is subscribed any more."""
        ...

    async def publish(self, event: Event) -> None:
        """:meth:`publish_nowait`, then wait until the event has left this process (at once
        for a bus in memory); for publishers that may wait, such as tests and tools."""
        ...

    def subscribe(
        self, session_id: str | None, *, after_seq: int | None = None
    ) -> AbstractAsyncContextManager[Subscription]:
        """Subscribe to one session (or all, with ``None``); leaving the context unsubscribes.
        With ``after_seq``, events after that seq are replayed from the store first."""
        ...

    def subscriber_count(self, session_id: str | None = None) -> int:
        """Subscriptions held in this process on one session's topic (on the global topic
        with ``None``): whether ending a session's streams may have to wait on a reader."""
        ...

    async def close_session(self, session_id: str) -> None:
        """End every subscription of a session that has terminated."""
        ...

    def health(self) -> tuple[bool, str]:
        """``(ok, detail)`` for the readiness probe: whether events reach every subscriber
        live (a bus across processes may fall back to reading the store while it cannot)."""
        ...

    async def aclose(self) -> None:
        """End every subscription. Idempotent."""
        ...
