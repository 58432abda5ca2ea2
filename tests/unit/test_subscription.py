"""Subscription catch-up racing live publishes.

A catch-up read runs in a worker thread with a durable store, so an event can be committed and
published while a read that began before its commit is still running. Such a read comes back
without the event; the subscription must read again rather than report the event as lost.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from jidoka.bus.base import Subscription
from jidoka.events import Event, EventType
from jidoka.store.memory import MemoryStore
from tests.helpers import PROMPTLY, next_event

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
