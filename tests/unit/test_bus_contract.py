"""The EventBus contract, run against every bus implementation (the Redis one on the real
server of :mod:`tests.support.redis`, with a channel prefix of its own per test)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest

from jidoka.bus.base import EventBus
from jidoka.bus.memory import MemoryBus
from jidoka.bus.redis import RedisBus
from jidoka.errors import RuntimeClosed
from jidoka.events import Event, EventType
from jidoka.store.memory import MemoryStore
from tests.helpers import drain, next_event, take
from tests.support.redis import key_prefix, require_redis

A, B = "A" * 26, "B" * 26
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def event(session_id: str, seq: int, type_: EventType = EventType.CONVERSATION_ADDED) -> Event:
    return Event(type_, session_id, seq, T0, {"n": seq})


BUSES = ("memory", "redis")
MakeBus = Callable[[int], Awaitable[EventBus]]


@pytest.fixture
def log() -> MemoryStore:
    return MemoryStore()


@pytest.fixture(params=BUSES)
async def make_bus(request: pytest.FixtureRequest, log: MemoryStore) -> AsyncIterator[MakeBus]:
    made: list[EventBus] = []
    url = require_redis() if request.param == "redis" else ""

    def reader(sid: str, after: int, limit: int) -> Awaitable[list[Event]]:
        return log.read_events(sid, after_seq=after, limit=limit)

    async with key_prefix(url) if url else _no_prefix() as prefix:

        async def make(queue_size: int = 100) -> EventBus:
            bus: EventBus
            if request.param == "memory":
                bus = MemoryBus(reader=reader, queue_size=queue_size, now=lambda: 0.0)
            else:
                redis_bus = RedisBus(
                    url, node_id="n1", prefix=prefix, reader=reader, queue_size=queue_size,
                    now=lambda: 0.0,
                )  # fmt: skip
                await redis_bus.start()
                bus = redis_bus
            made.append(bus)
            return bus

        yield make
        for bus in made:
            await bus.aclose()


@asynccontextmanager
async def _no_prefix() -> AsyncIterator[str]:
    yield ""


async def publish(bus: EventBus, log: MemoryStore, *items: Event) -> None:
    """Store, then publish: the order the runtime keeps."""
    for item in items:
        await log.append(item.session_id, [item])
        await bus.publish(item)


async def test_satisfies_protocol(make_bus: MakeBus) -> None:
    assert isinstance(await make_bus(10), EventBus)


async def test_topics(make_bus: MakeBus, log: MemoryStore) -> None:
    bus = await make_bus(10)
    async with bus.subscribe(A) as a, bus.subscribe(None) as everyone:
        await publish(bus, log, event(B, 1), event(A, 1, EventType.SESSION_CREATED), event(A, 2))
        assert [(e.session_id, e.seq) for e in await take(a, 2)] == [(A, 1), (A, 2)]
        assert [(e.session_id, e.seq) for e in await take(everyone, 1)] == [(A, 1)]
        assert a.get_nowait() is None
        assert everyone.get_nowait() is None


async def test_replay_after_seq(make_bus: MakeBus, log: MemoryStore) -> None:
    bus = await make_bus(10)
    await publish(bus, log, *(event(A, n) for n in range(1, 6)))
    async with bus.subscribe(A, after_seq=2) as a:
        await publish(bus, log, event(A, 6))
        assert [e.seq for e in await take(a, 4)] == [3, 4, 5, 6]


async def test_overflow_recovers_from_log(make_bus: MakeBus, log: MemoryStore) -> None:
    bus = await make_bus(3)
    async with bus.subscribe(A) as a:
        await publish(bus, log, *(event(A, n) for n in range(1, 21)))
        assert [e.seq for e in await take(a, 20)] == list(range(1, 21))
        await publish(bus, log, event(A, 21))
        assert (await next_event(a)).seq == 21


async def test_close_session_ends_after_queued(make_bus: MakeBus, log: MemoryStore) -> None:
    bus = await make_bus(10)
    async with bus.subscribe(A) as a:
        await publish(bus, log, event(A, 1), event(A, 2))
        await bus.close_session(A)
        await publish(bus, log, event(A, 3))  # after close: not delivered
        assert [e.seq for e in await drain(a)] == [1, 2]


async def test_closed_bus_refuses_subscriptions(make_bus: MakeBus) -> None:
    bus = await make_bus(10)
    async with bus.subscribe(A) as a:
        await bus.aclose()
        assert await drain(a) == []
    with pytest.raises(RuntimeClosed):
        async with bus.subscribe(A):
            pass


async def test_publish_nowait_delivers_as_publish_does(make_bus: MakeBus, log: MemoryStore) -> None:
    """The post-commit section publishes with ``publish_nowait`` (it must not await): same
    topics, same order, and the ``published`` counter counts both ways."""
    bus = await make_bus(10)
    before = bus.published
    async with bus.subscribe(A) as a, bus.subscribe(None) as everyone:
        for item in (event(A, 1, EventType.SESSION_CREATED), event(B, 1), event(A, 2)):
            await log.append(item.session_id, [item])
            bus.publish_nowait(item)
        await publish(bus, log, event(A, 3))
        assert [e.seq for e in await take(a, 3)] == [1, 2, 3]
        assert [(e.session_id, e.seq) for e in await take(everyone, 1)] == [(A, 1)]
        assert a.get_nowait() is None
    assert bus.published - before == 4


async def test_subscriber_count_per_topic(make_bus: MakeBus) -> None:
    bus = await make_bus(10)
    assert (bus.subscriber_count(A), bus.subscriber_count(None)) == (0, 0)
    async with bus.subscribe(A), bus.subscribe(A), bus.subscribe(None):
        assert bus.subscriber_count(A) == 2
        assert bus.subscriber_count(B) == 0
        assert bus.subscriber_count(None) == 1
    assert (bus.subscriber_count(A), bus.subscriber_count(None)) == (0, 0)


async def test_lost_counts_what_subscribers_were_told_they_missed(
    make_bus: MakeBus, log: MemoryStore
) -> None:
    """The global topic has no log to catch up from: an overflow costs events, one marker
    says how many, and ``lost`` counts them."""
    bus = await make_bus(2)
    before = bus.lost
    async with bus.subscribe(None) as everyone:
        for n in range(1, 6):
            await publish(bus, log, event(f"{n}" * 26, 1, EventType.SESSION_CREATED))
        seen = await take(everyone, 3)
    assert [e.type for e in seen] == [EventType.SESSION_CREATED] * 2 + [EventType.EVENTS_DROPPED]
    assert seen[-1].data["count"] == 3
    assert bus.lost - before == 3


async def test_publish_nowait_on_a_closed_bus_is_dropped(
    make_bus: MakeBus, log: MemoryStore
) -> None:
    """After ``aclose`` nobody is subscribed: a late publish (a session's last commit racing
    the shutdown) goes nowhere, and never raises into the post-commit section."""
    bus = await make_bus(10)
    await bus.aclose()
    bus.publish_nowait(event(A, 1))
    await bus.publish(event(A, 2))
    assert bus.subscriber_count(A) == 0


async def test_a_stalled_stream_of_an_ended_session_loses_nothing(
    make_bus: MakeBus, log: MemoryStore
) -> None:
    """A subscriber far behind when its session ends gets every event all the same, even once
    the store has let go of the log (the memory store frees it on release)."""
    bus = await make_bus(3)
    async with bus.subscribe(A) as a:
        await publish(bus, log, *(event(A, n) for n in range(1, 21)))
        await bus.close_session(A)
        await log.release(A)
        assert [e.seq for e in await drain(a)] == list(range(1, 21))
        assert a.statistics().dropped == 0
