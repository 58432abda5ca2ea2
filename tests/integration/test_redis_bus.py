"""Two Redis buses in one process, two "nodes" sharing one store, on the real Redis server.

What crosses between nodes (session events in order, the lifecycle channel, a session's end),
and what an outage of either node's link to Redis costs (nothing: the subscriber reads the store
while the bus is degraded, and goes live again once Redis is back). The links go through a
:class:`~tests.support.tcp_proxy.TcpProxy` the test cuts and restores.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from jidoka.bus.redis import BusUnavailable, RedisBus, redacted_url
from jidoka.events import Event, EventType
from jidoka.store.memory import MemoryStore
from tests.helpers import PROMPTLY, drain, take
from tests.support.redis import address_of, key_prefix, require_redis, url_via
from tests.support.tcp_proxy import TcpProxy

S = "S" * 26
T0 = datetime(2026, 1, 1, tzinfo=UTC)
pytestmark = pytest.mark.stores("memory")  # the nodes share a MemoryStore of their own
Nodes = Callable[..., Awaitable[RedisBus]]


def event(seq: int, type_: EventType = EventType.CONVERSATION_ADDED, sid: str = S) -> Event:
    return Event(type_, sid, seq, T0, {"n": seq})


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds (a deadline, not a sleep for synchronisation)."""
    try:
        async with asyncio.timeout(PROMPTLY):
            while True:
                if condition():
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


@pytest.fixture
async def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def url() -> str:
    return require_redis()


@pytest.fixture
async def prefix(url: str) -> AsyncIterator[str]:
    async with key_prefix(url) as prefix:
        yield prefix


@pytest.fixture
async def node(url: str, prefix: str, store: MemoryStore) -> AsyncIterator[Nodes]:
    """Start a node: ``await node("a")``, or ``await node("b", via=proxy)``."""
    started: list[RedisBus] = []

    async def reader(sid: str, after: int, limit: int) -> list[Event]:
        return await store.read_events(sid, after_seq=after, limit=limit)

    async def make(node_id: str, *, via: TcpProxy | None = None, **options: object) -> RedisBus:
        target = url if via is None else url_via(url, via.port)
        degraded_ok = bool(options.pop("degraded_ok", False))
        bus = RedisBus(
            target, node_id=node_id, prefix=prefix, reader=reader, now=lambda: 0.0,
            poll_interval=0.05, **options,  # type: ignore[arg-type]
        )  # fmt: skip
        await bus.start(degraded_ok=degraded_ok)
        started.append(bus)
        return bus

    yield make
    for bus in started:
        await bus.aclose()


@pytest.fixture
async def proxy(url: str) -> AsyncIterator[TcpProxy]:
    async with TcpProxy(*address_of(url)) as proxy:
        yield proxy


async def listening(url: str, channel: str, count: int = 1) -> None:
    """Wait until ``count`` connections listen on ``channel`` (Redis says so)."""
    client = aioredis.Redis.from_url(url)
    try:
        async with asyncio.timeout(PROMPTLY):
            while True:
                [(_, subscribers)] = await client.pubsub_numsub(channel)
                if subscribers >= count:
                    return
                await asyncio.sleep(0.01)
    finally:
        await client.aclose()


async def commit(bus: RedisBus, store: MemoryStore, *events: Event) -> None:
    """Store, then publish: the order the runtime keeps."""
    for item in events:
        await store.append(item.session_id, [item])
        bus.publish_nowait(item)


async def test_events_cross_in_order_once(
    node: Nodes, store: MemoryStore, url: str, prefix: str
) -> None:
    a, b = await node("a"), await node("b")
    async with b.subscribe(S) as on_b, a.subscribe(S) as on_a:
        await listening(url, f"{prefix}:s:{S}", 2)
        await commit(a, store, *(event(n) for n in range(1, 51)))
        assert [e.seq for e in await take(on_b, 50)] == list(range(1, 51))
        assert [e.seq for e in await take(on_a, 50)] == list(range(1, 51))
        await a.publish(event(51))  # waits until it has left node a
        await store.append(S, [event(51)])
        assert [e.seq for e in await take(on_b, 1)] == [51]
        assert [e.seq for e in await take(on_a, 1)] == [51]
        assert on_b.get_nowait() is None
        assert on_a.get_nowait() is None
    assert b.remote_received == 51
    assert a.remote_received == 0  # its own events come back from Redis and are ignored
    assert (on_b.statistics().dropped, b.lost, a.send_dropped) == (0, 0, 0)


async def test_after_seq_replays_from_the_store_then_goes_live(
    node: Nodes, store: MemoryStore
) -> None:
    a, b = await node("a"), await node("b")
    await commit(a, store, *(event(n) for n in range(1, 6)))
    async with b.subscribe(S, after_seq=2) as on_b:
        assert [e.seq for e in await take(on_b, 3)] == [3, 4, 5]
        await commit(a, store, event(6), event(7))
        assert [e.seq for e in await take(on_b, 2)] == [6, 7]
        assert on_b.get_nowait() is None


async def test_lifecycle_crosses_nodes(
    node: Nodes, store: MemoryStore, url: str, prefix: str
) -> None:
    a, b = await node("a"), await node("b")
    async with b.subscribe(None) as everyone:
        await listening(url, f"{prefix}:lifecycle", 2)
        other = "O" * 26
        await commit(a, store, event(1, EventType.SESSION_CREATED), event(2))
        await commit(a, store, event(1, EventType.SESSION_CREATED, other))
        seen = await take(everyone, 2)
        assert [(e.type, e.session_id) for e in seen] == [
            (EventType.SESSION_CREATED, S),
            (EventType.SESSION_CREATED, other),
        ]
        assert everyone.get_nowait() is None


async def test_a_session_terminated_elsewhere_ends_the_stream(
    node: Nodes, store: MemoryStore, url: str, prefix: str
) -> None:
    a, b = await node("a"), await node("b")
    async with b.subscribe(S) as on_b:
        await listening(url, f"{prefix}:s:{S}")
        await commit(a, store, event(1), event(2, EventType.SESSION_TERMINATED))
        assert [e.seq for e in await drain(on_b)] == [1, 2]
        assert on_b.closed
        assert b.subscriber_count(S) == 0  # as close_session leaves it on the ending node


async def test_an_end_missed_during_an_outage_ends_the_stream_all_the_same(
    node: Nodes, store: MemoryStore, proxy: TcpProxy, url: str, prefix: str
) -> None:
    a, b = await node("a"), await node("b", via=proxy)
    async with b.subscribe(S) as on_b:
        await listening(url, f"{prefix}:s:{S}")
        await commit(a, store, event(1))
        assert [e.seq for e in await take(on_b, 1)] == [1]
        await proxy.cut()
        await eventually(lambda: b.state == "degraded", "b degraded")
        await commit(a, store, event(2), event(3, EventType.SESSION_TERMINATED))
        assert [e.seq for e in await drain(on_b)] == [2, 3]  # read from the store, then the end


async def test_subscribers_read_the_store_while_their_link_is_cut(
    node: Nodes, store: MemoryStore, proxy: TcpProxy, url: str, prefix: str
) -> None:
    a, b = await node("a"), await node("b", via=proxy)
    async with b.subscribe(S, after_seq=0) as on_b, b.subscribe(None) as everyone:
        await listening(url, f"{prefix}:s:{S}")
        await commit(a, store, event(1), event(2))
        assert [e.seq for e in await take(on_b, 2)] == [1, 2]

        await proxy.cut()
        await eventually(lambda: b.state == "degraded", "b degraded")
        assert "***" not in b.detail or "redis://" in b.detail
        await commit(a, store, *(event(n) for n in range(3, 11)))
        assert [e.seq for e in await take(on_b, 8)] == list(range(3, 11))  # from the store

        await proxy.restore()
        await eventually(lambda: b.state == "ok", "b back")
        await listening(url, f"{prefix}:s:{S}")
        marker = (await take(everyone, 1))[0]  # the global stream missed an unknown number
        assert marker.type == EventType.EVENTS_DROPPED
        received = b.remote_received
        await commit(a, store, event(11), event(12))
        assert [e.seq for e in await take(on_b, 2)] == [11, 12]
        await eventually(lambda: b.remote_received >= received + 2, "live again")
        assert on_b.get_nowait() is None
        assert on_b.statistics().dropped == 0
        assert b.reconnects == 1


async def test_a_publisher_cut_off_sends_its_newest_event_when_back(
    node: Nodes, store: MemoryStore, proxy: TcpProxy, url: str, prefix: str
) -> None:
    a, b = await node("a", via=proxy), await node("b")
    async with b.subscribe(S) as on_b:
        await listening(url, f"{prefix}:s:{S}")
        await commit(a, store, event(1))
        assert [e.seq for e in await take(on_b, 1)] == [1]

        await proxy.cut()
        await eventually(lambda: a.state == "degraded", "a degraded")
        await commit(a, store, *(event(n) for n in range(2, 6)))
        assert on_b.get_nowait() is None  # b's link is fine: it cannot know yet

        await proxy.restore()
        # a publishes seq 5 when back; b sees 2..4 missing and reads them from the store
        assert [e.seq for e in await take(on_b, 4)] == [2, 3, 4, 5]
        await commit(a, store, event(6))
        assert [e.seq for e in await take(on_b, 1)] == [6]
        assert on_b.get_nowait() is None
        assert on_b.statistics().dropped == 0
        assert a.reconnects == 1


async def test_a_full_send_queue_never_blocks_and_loses_nothing(
    node: Nodes, store: MemoryStore, url: str, prefix: str
) -> None:
    a, b = await node("a", send_queue_max=4), await node("b")
    async with b.subscribe(S) as on_b:
        await listening(url, f"{prefix}:s:{S}")
        await commit(a, store, *(event(n) for n in range(1, 41)))  # no await in between
        assert a.send_dropped == 36
        assert [e.seq for e in await take(on_b, 40)] == list(range(1, 41))
        assert on_b.get_nowait() is None


async def test_an_unreachable_redis_is_named_without_credentials(store: MemoryStore) -> None:
    async with TcpProxy("127.0.0.1", 9) as proxy:  # nothing listens on the discard port
        await proxy.cut()
        secret = f"redis://user:hunter2@127.0.0.1:{proxy.port}/0"
        bus = RedisBus(secret, node_id="a", now=lambda: 0.0)
        with pytest.raises(BusUnavailable) as raised:
            await bus.start()
        assert "hunter2" not in str(raised.value)
        assert redacted_url(secret) in str(raised.value)
        assert bus.state == "closed"
        degraded = RedisBus(secret, node_id="a", now=lambda: 0.0)
        await degraded.start(degraded_ok=True)
        try:
            assert degraded.state == "degraded"
            assert "hunter2" not in degraded.detail
        finally:
            await degraded.aclose()
            await degraded.aclose()  # idempotent
        assert degraded.state == "closed"


async def test_a_silent_link_is_found_out_and_polled_around(
    node: Nodes, store: MemoryStore, proxy: TcpProxy, url: str, prefix: str
) -> None:
    """A stalled link (a frozen host, a dropped route) says nothing: an unanswered PING is what
    tells the bus it is down."""
    a, b = await node("a"), await node("b", via=proxy)
    async with b.subscribe(S) as on_b:
        await listening(url, f"{prefix}:s:{S}")
        await commit(a, store, event(1))
        assert [e.seq for e in await take(on_b, 1)] == [1]
        proxy.stall()
        await commit(a, store, event(2), event(3))
        assert [e.seq for e in await take(on_b, 2)] == [2, 3]  # by polling, once found out
        assert b.state == "degraded"
        await proxy.restore()
        await eventually(lambda: b.state == "ok", "b back")
        await listening(url, f"{prefix}:s:{S}")
        await commit(a, store, event(4))
        assert [e.seq for e in await take(on_b, 1)] == [4]
        assert on_b.get_nowait() is None


async def test_a_node_started_while_redis_is_away_catches_up_when_it_comes(
    node: Nodes, store: MemoryStore, proxy: TcpProxy, url: str, prefix: str
) -> None:
    await proxy.cut()
    a = await node("a")
    b = await node("b", via=proxy, degraded_ok=True)
    assert b.state == "degraded"
    async with b.subscribe(S, after_seq=0) as on_b, b.subscribe(None) as everyone:
        await commit(a, store, event(1, EventType.SESSION_CREATED), event(2))
        assert [e.seq for e in await take(on_b, 2)] == [1, 2]  # from the store
        await proxy.restore()
        await eventually(lambda: b.state == "ok", "b connected")
        marker = (await take(everyone, 1))[0]
        assert marker.type == EventType.EVENTS_DROPPED
        await listening(url, f"{prefix}:s:{S}")
        await commit(a, store, event(3))
        assert [e.seq for e in await take(on_b, 1)] == [3]
        assert b.reconnects == 1


async def test_aclose_survives_being_cancelled(node: Nodes, store: MemoryStore) -> None:
    a = await node("a")
    async with a.subscribe(S) as on_a:
        closing = asyncio.ensure_future(a.aclose())
        await asyncio.sleep(0)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        await a.aclose()  # waits for the close the cancelled call began
        assert a.state == "closed"
        assert await drain(on_a) == []


def test_without_redis_py_the_import_names_the_extra() -> None:
    """A node configured for Redis without the extra installed is told what to install."""
    blocked = "import sys; sys.modules['redis'] = None; import jidoka.bus.redis"
    done = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0
    assert "pip install 'jidoka-core[redis]'" in done.stderr


async def test_a_gap_of_pruned_stream_chunks_is_named_once_and_never_read_again(
    node: Nodes, store: MemoryStore, url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node b never heard a turn's chunks (pub/sub forgets), and by the time it reads the
    store for them they were dropped (the turn ended): the seq gap makes it read the store
    once, it gets one exact ``events_dropped`` marker and the events after it, and it goes
    back to live delivery instead of reading the gap again and again."""
    reads: list[int] = []
    read_events = store.read_events

    async def counted(sid: str, **options: Any) -> list[Event]:
        reads.append(options.get("after_seq") or 0)
        return await read_events(sid, **options)

    monkeypatch.setattr(store, "read_events", counted)
    a, b = await node("a"), await node("b")
    async with b.subscribe(S, after_seq=0) as on_b:
        await listening(url, f"{prefix}:s:{S}")
        await commit(a, store, event(1))
        assert [e.seq for e in await take(on_b, 1)] == [1]
        chunk = EventType.LLM_STREAM_CHUNK
        await store.append(S, [event(seq, chunk) for seq in (2, 3, 4)])  # never heard by b
        await commit(a, store, event(5, EventType.LLM_RESPONSE))
        assert await store.drop_events(S, chunk, first_seq=2, last_seq=5) == 3
        await commit(a, store, event(6, EventType.AGENT_STATUS))
        got = await take(on_b, 3)
        assert [(e.type, e.seq) for e in got] == [
            (EventType.EVENTS_DROPPED, 4),
            (EventType.LLM_RESPONSE, 5),
            (EventType.AGENT_STATUS, 6),
        ]
        assert got[0].data == {"count": 3, "first_seq": 2, "last_seq": 4}
        for seq in range(7, 27):
            await commit(a, store, event(seq))
            assert [e.seq for e in await take(on_b, 1)] == [seq]
        # Each read starts past the previous one: the gap is never read again, and no read
        # is repeated without progress (a spin would read the same position on and on).
        assert reads == sorted(set(reads))
        assert not [after for after in reads if 2 <= after <= 5]  # nothing inside the gap
        assert on_b.statistics().dropped == 3
