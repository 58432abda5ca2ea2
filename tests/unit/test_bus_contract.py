"""The EventBus contract, run against every bus implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest

from jidoka.bus.base import EventBus
from jidoka.bus.memory import MemoryBus
from jidoka.errors import RuntimeClosed
from jidoka.events import Event, EventType
from jidoka.store.memory import MemoryStore
from tests.helpers import drain, next_event, take

A, B = "A" * 26, "B" * 26
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def event(session_id: str, seq: int, type_: str = EventType.CONVERSATION_ADDED) -> Event:
    return Event(type_, session_id, seq, T0, {"n": seq})


BUSES: dict[str, Callable[[MemoryStore, int], EventBus]] = {
    "memory": lambda store, size: MemoryBus(
        reader=lambda sid, after, limit: store.read_events(sid, after_seq=after, limit=limit),
        queue_size=size,
        now=lambda: 0.0,
    ),
}


@pytest.fixture
def log() -> MemoryStore:
    return MemoryStore()


@pytest.fixture(params=sorted(BUSES))
async def make_bus(
    request: pytest.FixtureRequest, log: MemoryStore
) -> AsyncIterator[Callable[[int], EventBus]]:
    made: list[EventBus] = []

    def make(queue_size: int = 100) -> EventBus:
        made.append(BUSES[request.param](log, queue_size))
        return made[-1]

    yield make
    for bus in made:
        await bus.aclose()


async def publish(bus: EventBus, log: MemoryStore, *items: Event) -> None:
    """Store, then publish: the order the runtime keeps."""
    for item in items:
        await log.append(item.session_id, [item])
        await bus.publish(item)


async def test_satisfies_protocol(make_bus: Callable[[int], EventBus]) -> None:
    assert isinstance(make_bus(10), EventBus)


async def test_topics(make_bus: Callable[[int], EventBus], log: MemoryStore) -> None:
    bus = make_bus(10)
    async with bus.subscribe(A) as a, bus.subscribe(None) as everyone:
        await publish(bus, log, event(B, 1), event(A, 1, EventType.SESSION_CREATED), event(A, 2))
        assert [(e.session_id, e.seq) for e in await take(a, 2)] == [(A, 1), (A, 2)]
        assert [(e.session_id, e.seq) for e in await take(everyone, 1)] == [(A, 1)]
        assert a.get_nowait() is None
        assert everyone.get_nowait() is None


async def test_replay_after_seq(make_bus: Callable[[int], EventBus], log: MemoryStore) -> None:
    bus = make_bus(10)
    await publish(bus, log, *(event(A, n) for n in range(1, 6)))
    async with bus.subscribe(A, after_seq=2) as a:
        await publish(bus, log, event(A, 6))
        assert [e.seq for e in await take(a, 4)] == [3, 4, 5, 6]


async def test_overflow_recovers_from_log(
    make_bus: Callable[[int], EventBus], log: MemoryStore
) -> None:
    bus = make_bus(3)
    async with bus.subscribe(A) as a:
        await publish(bus, log, *(event(A, n) for n in range(1, 21)))
        assert [e.seq for e in await take(a, 20)] == list(range(1, 21))
        await publish(bus, log, event(A, 21))
        assert (await next_event(a)).seq == 21


async def test_close_session_ends_after_queued(
    make_bus: Callable[[int], EventBus], log: MemoryStore
) -> None:
    bus = make_bus(10)
    async with bus.subscribe(A) as a:
        await publish(bus, log, event(A, 1), event(A, 2))
        await bus.close_session(A)
        await publish(bus, log, event(A, 3))  # after close: not delivered
        assert [e.seq for e in await drain(a)] == [1, 2]


async def test_closed_bus_refuses_subscriptions(make_bus: Callable[[int], EventBus]) -> None:
    bus = make_bus(10)
    async with bus.subscribe(A) as a:
        await bus.aclose()
        assert await drain(a) == []
    with pytest.raises(RuntimeClosed):
        async with bus.subscribe(A):
            pass
