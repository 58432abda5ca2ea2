"""Subscription catch-up racing live publishes.

A catch-up read runs in a worker thread with a durable store, so an event can be committed and
published while a read that began before its commit is still running. Such a read comes back
without the event; the subscription must read again rather than report the event as lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from jidoka.bus.base import Subscription
from jidoka.events import Event, EventType
from jidoka.store.memory import MemoryStore
from tests.helpers import PROMPTLY, next_event, settle, take

A = "A" * 26
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def event(seq: int) -> Event:
    return Event(EventType.CONVERSATION_ADDED, A, seq, T0, {"n": seq})


class StaleFirstRead:
    """A reader whose first read sees the store as it was when the read began, and answers only
    after the test has committed and published more events (what a slow thread read does)."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.reads = 0

    async def __call__(self, session_id: str, after: int, limit: int) -> list[Event]:
        self.reads += 1
        snapshot = await self.store.read_events(session_id, after_seq=after, limit=limit)
        if self.reads == 1:
            self.started.set()
            await self.release.wait()
        return snapshot


async def commit_and_offer(store: MemoryStore, subscription: Subscription, seq: int) -> None:
    await store.append(A, [event(seq)])
    subscription.offer(event(seq))


async def test_catch_up_read_overtaken_by_a_publish_reads_again() -> None:
    store = MemoryStore()
    for seq in (1, 2):
        await store.append(A, [event(seq)])
    reader = StaleFirstRead(store)
    subscription = Subscription(A, queue_size=8, reader=reader, now=lambda: 0.0, after_seq=2)
    pending = asyncio.ensure_future(next_event(subscription))
    async with asyncio.timeout(PROMPTLY):
        await reader.started.wait()
    await commit_and_offer(store, subscription, 3)  # committed while the stale read runs
    reader.release.set()
    got = await pending
    assert (got.type, got.seq) == (EventType.CONVERSATION_ADDED, 3)
    assert subscription.statistics().dropped == 0
    assert reader.reads == 2


async def test_finish_overtaken_by_a_publish_keeps_the_event() -> None:
    store = MemoryStore()
    await store.append(A, [event(1)])
    reader = StaleFirstRead(store)
    subscription = Subscription(A, queue_size=8, reader=reader, now=lambda: 0.0, after_seq=0)
    finishing = asyncio.ensure_future(subscription.finish())
    async with asyncio.timeout(PROMPTLY):
        await reader.started.wait()
    await commit_and_offer(store, subscription, 2)
    reader.release.set()
    async with asyncio.timeout(PROMPTLY):
        await finishing
        seqs = [e.seq async for e in subscription]
    assert seqs == [1, 2]
    assert subscription.statistics().dropped == 0


async def test_events_the_store_lost_are_still_reported_once() -> None:
    """The race fix must not hide a real gap: published before the read began, yet not read."""
    store = MemoryStore()

    async def trimmed(session_id: str, after: int, limit: int) -> list[Event]:
        events = await store.read_events(session_id, after_seq=after, limit=limit)
        return [e for e in events if e.seq != 1]  # the store has let go of event 1

    subscription = Subscription(A, queue_size=8, reader=trimmed, now=lambda: 0.0, after_seq=0)
    await commit_and_offer(store, subscription, 1)
    marker = await next_event(subscription)
    assert marker.type == EventType.EVENTS_DROPPED
    assert marker.data == {"count": 1, "first_seq": 1, "last_seq": 1}
    await commit_and_offer(store, subscription, 2)
    assert (await next_event(subscription)).seq == 2


async def test_an_ended_stream_pages_through_the_store_then_ends() -> None:
    store = MemoryStore()
    for seq in range(1, 11):
        await store.append(A, [event(seq)])
    limits: list[int] = []

    async def reader(session_id: str, after: int, limit: int) -> list[Event]:
        limits.append(limit)
        return await store.read_events(session_id, after_seq=after, limit=limit)

    ended = Subscription.ended(A, after_seq=2, reader=reader, queue_size=3, now=lambda: 0.0)
    ended.offer(event(11))  # nothing live is taken: the session has ended
    async with asyncio.timeout(PROMPTLY):
        seqs = [e.seq async for e in ended]
    assert seqs == list(range(3, 11))
    assert set(limits) == {3}  # never the whole log at once
    assert len(limits) >= 3
    assert ended.statistics().dropped == 0


async def test_finish_leaves_a_kept_log_to_be_read_page_by_page() -> None:
    """A stalled subscriber of a session that ends: from a store that keeps the log, finish()
    reads nothing at once (it used to load everything not yet caught up into the queue)."""
    store = MemoryStore()
    for seq in range(1, 11):
        await store.append(A, [event(seq)])
    reads: list[int] = []

    async def reader(session_id: str, after: int, limit: int) -> list[Event]:
        reads.append(after)
        return await store.read_events(session_id, after_seq=after, limit=2)

    subscription = Subscription(
        A, queue_size=2, reader=reader, now=lambda: 0.0, after_seq=0, keeps_logs=True
    )
    await subscription.finish()
    assert reads == []
    assert subscription.statistics().queued == 0
    async with asyncio.timeout(PROMPTLY):
        seqs = [e.seq async for e in subscription]
    assert seqs == list(range(1, 11))
    assert subscription.statistics().dropped == 0


async def test_finish_reads_a_log_about_to_be_freed_a_page_at_a_time() -> None:
    """From a store that frees the log next (keeps_logs=False), finish() reads what is still
    to be caught up before it goes, but a page (queue_size events) per read: never the whole
    log in one read."""
    store = MemoryStore()
    for seq in range(1, 11):
        await store.append(A, [event(seq)])
    limits: list[int] = []

    async def reader(session_id: str, after: int, limit: int) -> list[Event]:
        limits.append(limit)
        return await store.read_events(session_id, after_seq=after, limit=limit)

    subscription = Subscription(A, queue_size=3, reader=reader, now=lambda: 0.0, after_seq=0)
    await subscription.finish()
    assert set(limits) == {3}
    assert len(limits) == 5  # four pages of at most three, then the empty read that ends it
    await store.release(A)  # the memory store frees the log: the stream has what it needs
    async with asyncio.timeout(PROMPTLY):
        seqs = [e.seq async for e in subscription]
    assert seqs == list(range(1, 11))
    assert subscription.statistics().dropped == 0


def counting(
    store: MemoryStore, reads: list[int]
) -> Callable[[str, int, int], Awaitable[list[Event]]]:
    async def reader(session_id: str, after: int, limit: int) -> list[Event]:
        reads.append(after)
        return await store.read_events(session_id, after_seq=after, limit=limit)

    return reader


async def test_a_gap_in_the_seqs_offered_is_read_from_the_store() -> None:
    """A bus that crosses processes may lose a message: the next one shows the hole, and the
    subscription reads it from the store, even while its consumer is already waiting."""
    store = MemoryStore()
    reads: list[int] = []
    subscription = Subscription(A, queue_size=8, reader=counting(store, reads), now=lambda: 0.0)
    await commit_and_offer(store, subscription, 1)
    assert (await next_event(subscription)).seq == 1
    waiting = asyncio.ensure_future(next_event(subscription))
    await settle()
    await store.append(A, [event(2)])  # stored, its message lost on the way
    await commit_and_offer(store, subscription, 3)
    assert (await waiting).seq == 2
    assert (await next_event(subscription)).seq == 3
    assert reads[0] == 1
    await commit_and_offer(store, subscription, 4)
    assert (await next_event(subscription)).seq == 4
    assert subscription.statistics().dropped == 0


async def test_without_a_position_the_first_event_is_no_gap() -> None:
    store = MemoryStore()
    reads: list[int] = []
    subscription = Subscription(A, queue_size=8, reader=counting(store, reads), now=lambda: 0.0)
    await store.append(A, [event(1), event(2)])
    await commit_and_offer(store, subscription, 3)  # subscribed after 1 and 2 went by
    subscription.resync()  # no position to read on from: nothing happens
    assert (await next_event(subscription)).seq == 3
    assert subscription.get_nowait() is None
    assert reads == []


async def test_resync_reads_what_the_bus_never_offered() -> None:
    store = MemoryStore()
    reads: list[int] = []
    subscription = Subscription(A, queue_size=8, reader=counting(store, reads), now=lambda: 0.0)
    await commit_and_offer(store, subscription, 1)
    assert (await next_event(subscription)).seq == 1
    await store.append(A, [event(2), event(3)])  # the bus was down: nothing offered
    waiting = asyncio.ensure_future(next_event(subscription))
    await settle()
    subscription.resync()
    assert (await waiting).seq == 2
    assert (await next_event(subscription)).seq == 3
    subscription.offer(event(3))  # the late message: already delivered
    await commit_and_offer(store, subscription, 4)
    assert (await next_event(subscription)).seq == 4
    assert subscription.get_nowait() is None


async def test_a_log_found_ending_with_the_end_ends_the_stream() -> None:
    """A node that was away when the session ended elsewhere learns of it from the store; only
    at the end of the log (a restored session's log goes on past an earlier termination)."""
    store = MemoryStore()
    reads: list[int] = []
    subscription = Subscription(
        A, queue_size=8, reader=counting(store, reads), now=lambda: 0.0, ends_on_terminated=True
    )
    await commit_and_offer(store, subscription, 1)
    ended = Event(EventType.SESSION_TERMINATED, A, 2, T0, {"reason": "user"})
    await store.append(A, [ended, event(3)])  # ended, then restored: the log goes on
    subscription.resync()
    assert [e.seq for e in await take(subscription, 3)] == [1, 2, 3]
    assert not subscription.closed
    await store.append(A, [Event(EventType.SESSION_TERMINATED, A, 4, T0, {"reason": "user"})])
    subscription.resync()
    async with asyncio.timeout(PROMPTLY):
        seqs = [e.seq async for e in subscription]
    assert seqs == [4]
    assert subscription.closed


async def test_resync_of_the_global_stream_is_one_marker() -> None:
    everyone = Subscription(None, queue_size=8, reader=None, now=lambda: 0.0)
    everyone.resync()
    marker = await next_event(everyone)
    assert (marker.type, marker.session_id, marker.seq) == (EventType.EVENTS_DROPPED, "", 0)
    assert marker.data == {"count": 0}
    assert everyone.get_nowait() is None


async def test_each_gap_inside_a_page_read_back_gets_one_exact_marker() -> None:
    """Stream chunks dropped after their turn leave gaps anywhere in the log, not only at the
    start of what a catch-up reads: each is named once, exactly, and never read again."""
    store = MemoryStore()
    chunk = EventType.LLM_STREAM_CHUNK
    await store.append(A, [event(1)])
    await store.append(A, [Event(chunk, A, seq, T0, {"text": "x"}) for seq in range(2, 5)])
    await store.append(A, [event(5), Event(chunk, A, 6, T0, {"text": "y"}), event(7)])
    assert await store.drop_events(A, chunk, first_seq=1, last_seq=7) == 4
    reads: list[int] = []

    async def reader(session_id: str, after: int, limit: int) -> list[Event]:
        reads.append(after)
        return await store.read_events(session_id, after_seq=after, limit=limit)

    for page in (8, 2):  # one page holds every gap; pages of two split them across reads
        reads.clear()
        ended = Subscription.ended(A, after_seq=0, reader=reader, queue_size=page, now=lambda: 0)
        async with asyncio.timeout(PROMPTLY):
            got = [(e.type, e.seq, e.data) async for e in ended]
        drops = [(seq, data) for kind, seq, data in got if kind == EventType.EVENTS_DROPPED]
        assert drops == [
            (4, {"count": 3, "first_seq": 2, "last_seq": 4}),
            (6, {"count": 1, "first_seq": 6, "last_seq": 6}),
        ]
        assert [seq for kind, seq, _ in got if kind != EventType.EVENTS_DROPPED] == [1, 5, 7]
        assert [seq for _, seq, _ in got] == [1, 4, 5, 6, 7]
        assert ended.statistics().delivered == 5
        assert ended.statistics().dropped == 4
        assert len(reads) == len(set(reads))  # nothing read twice: no loop on a gap
