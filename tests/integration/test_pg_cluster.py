"""The cluster's statements on the real Postgres server: membership (register, renew, leave,
incarnations), taking a session with its fence, handing sessions over, and what ``nodes()`` and
``locate()`` report, plus the strict fences of a store opened for a node.

Each "node" here is a :class:`PgCluster` over a :class:`PostgresStore` opened for that node id,
all on one schema of the test's own (the ``postgres_schema`` fixture). Leases that must expire
are granted for half a second, and the tests wait for the server to say they have expired (a
polled condition with a deadline), never for a fixed time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import asyncpg
import pytest

from jidoka.errors import NotOwner
from jidoka.events import Event, EventType
from jidoka.store.base import OwnershipLost, StoreUnavailable
from jidoka.store.postgres import PostgresStore
from jidoka.store.postgres_cluster import Location, PgCluster, close_quietly
from tests.helpers import PROMPTLY

pytestmark = pytest.mark.stores("postgres")

A, B, C = "A" * 26, "B" * 26, "C" * 26
T0 = datetime(2026, 1, 1, tzinfo=UTC)
#: A lease long enough never to run out during a test.
LONG = 30.0
#: A lease a test waits out.
SHORT = 0.5

OpenStore = Callable[[str | None], Awaitable[PostgresStore]]


def events(session_id: str, first: int, count: int = 1) -> list[Event]:
    return [
        Event(EventType.CONVERSATION_ADDED, session_id, seq, T0, {"role": "user", "n": seq})
        for seq in range(first, first + count)
    ]


class Member:
    """A node's statements and its heartbeat connection."""

    def __init__(self, cluster: PgCluster, conn: asyncpg.Connection) -> None:
        self.cluster = cluster
        self.conn = conn

    async def register(self, ttl: float = LONG) -> float | None:
        return await self.cluster.register(self.conn, ttl)


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


@pytest.fixture
def open_store(postgres_dsn: str, postgres_schema: str, stack: AsyncExitStack) -> OpenStore:
    """``await open_store("a")``: a store on the test's schema, writing for node ``a``
    (``None``: a single node's store, which adopts fences and creates sessions of no node)."""

    async def make(node_id: str | None) -> PostgresStore:
        store = PostgresStore(postgres_dsn, schema=postgres_schema, pool_size=2, node_id=node_id)
        await store.open()
        stack.push_async_callback(store.aclose)
        return store

    return make


@pytest.fixture
def member(stack: AsyncExitStack) -> Callable[[PostgresStore, str], Awaitable[Member]]:
    async def make(store: PostgresStore, node_id: str) -> Member:
        cluster = PgCluster(store, node_id, f"http://{node_id}.test:8765")
        conn = await cluster.connect()
        stack.push_async_callback(close_quietly, conn)
        return Member(cluster, conn)

    return make


async def eventually(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``condition`` until it holds (a deadline, not a sleep for synchronisation)."""
    try:
        async with asyncio.timeout(PROMPTLY):
            while True:
                if await condition():
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


async def located(cluster: PgCluster, session_id: str) -> Location:
    where = await cluster.locate(session_id)
    assert where is not None, f"no session {session_id}"
    return where


async def expired(cluster: PgCluster, session_id: str) -> None:
    """Wait until the session's owner's lease has run out by the server's clock."""

    async def dead() -> bool:
        where = await cluster.locate(session_id)
        return where is not None and not where.alive

    await eventually(dead, f"the lease of {session_id}'s owner expires")


# --- membership ----------------------------------------------------------------------------------


async def test_register_renew_leave_and_the_next_incarnation(
    open_store: OpenStore, member: Callable[[PostgresStore, str], Awaitable[Member]]
) -> None:
    store = await open_store("a")
    first, second = await member(store, "a"), await member(store, "a")
    assert await first.register() == LONG
    assert first.cluster.incarnation == 1
    # The id is held under a valid lease: a second process with the same id must wait.
    assert await second.register() is None
    assert second.cluster.incarnation == 0
    left = await second.cluster.lease_left(second.conn)
    assert left is not None
    assert 0 < left <= LONG
    renewed = await first.cluster.renew(first.conn, LONG)
    assert renewed is not None
    assert LONG - 5 < renewed <= LONG
    await first.cluster.leave(first.conn)
    assert await second.cluster.lease_left(second.conn) is None  # nobody holds it now
    assert await second.register() == LONG
    assert second.cluster.incarnation == 2
    # The former incarnation learns that the row is not its own any more.
    assert await first.cluster.renew(first.conn, LONG) is None
    [row] = await second.cluster.nodes()
    assert (row.node_id, row.advertise_url, row.state, row.alive, row.owned) == (
        "a", "http://a.test:8765", "up", True, 0,
    )  # fmt: skip


async def test_an_expired_lease_lets_the_id_register_again(
    open_store: OpenStore, member: Callable[[PostgresStore, str], Awaitable[Member]]
) -> None:
    store = await open_store("a")
    crashed, restarted = await member(store, "a"), await member(store, "a")
    assert await crashed.register(SHORT) == SHORT
    assert await restarted.register() is None

    async def registered() -> bool:
        return await restarted.register() is not None

    await eventually(registered, "a's expired lease lets it register again")
    assert restarted.cluster.incarnation == 2
    assert await crashed.cluster.renew(crashed.conn, SHORT) is None


# --- taking sessions -----------------------------------------------------------------------------


async def test_taking_a_free_session_raises_its_fence_and_names_the_node(
    open_store: OpenStore, member: Callable[[PostgresStore, str], Awaitable[Member]]
) -> None:
    single, store_b = await open_store(None), await open_store("b")
    await single.append(A, events(A, 1, 2))  # a single node's session: no node
    b = await member(store_b, "b")
    where = await located(b.cluster, A)
    assert (where.node, where.url, where.alive) == (None, None, False)
    await b.register()
    taken = await b.cluster.take(A)
    assert (taken.fence, taken.previous, taken.owner) == (2, None, None)
    assert store_b.held_fence(A) == 2
    where = await located(b.cluster, A)
    assert (where.node, where.url, where.alive) == ("b", "http://b.test:8765", True)
    await store_b.append(A, events(A, 3))
    with pytest.raises(OwnershipLost):  # the single node's fence is gone
        await single.append(A, events(A, 4))
    # Taking it again (after a lapse, say) raises the fence once more.
    again = await b.cluster.take(A)
    assert (again.fence, again.previous) == (3, "b")
    # No such session: nothing taken, nothing raised.
    assert await b.cluster.take(C) == (None, None, None, None, None, None)


async def test_a_session_of_a_live_node_is_not_taken_and_its_owner_is_named(
    open_store: OpenStore, member: Callable[[PostgresStore, str], Awaitable[Member]]
) -> None:
    store_a, store_b = await open_store("a"), await open_store("b")
    a, b = await member(store_a, "a"), await member(store_b, "b")
    await a.register()
    await b.register()
    await store_a.append(A, events(A, 1))  # created by node a: the column default names it
    taken = await b.cluster.take(A)
    assert taken.fence is None
    assert (taken.owner, taken.owner_url, taken.previous) == ("a", "http://a.test:8765", "a")
    assert store_b.held_fence(A) is None
    await store_a.append(A, events(A, 2))  # a's fence did not move
    assert store_a.held_fence(A) == 1
    # Nor may a node without a valid lease take it: it is told who owns it, nothing raised.
    idle = await member(await open_store("c"), "c")
    assert (await idle.cluster.take(A)).owner == "a"


async def test_a_session_is_taken_once_its_owners_lease_has_expired(
    open_store: OpenStore, member: Callable[[PostgresStore, str], Awaitable[Member]]
) -> None:
    store_a, store_b = await open_store("a"), await open_store("b")
    a, b = await member(store_a, "a"), await member(store_b, "b")
    await a.register(SHORT)
    await b.register()
    await store_a.append(A, events(A, 1, 2))
    await expired(b.cluster, A)
    taken = await b.cluster.take(A)
    assert (taken.fence, taken.previous) == (2, "a")
    await store_b.append(A, events(A, 3))
    # The former owner wakes up believing it still owns the session: refused, nothing stored.
    with pytest.raises(OwnershipLost) as info:
        await store_a.append(A, events(A, 4))
    assert (info.value.held, info.value.current) == (1, 2)
    assert [e.seq for e in await store_b.read_events(A)] == [1, 2, 3]


async def test_nodes_racing_for_the_same_free_sessions_each_get_one_owner(
    open_store: OpenStore, member: Callable[[PostgresStore, str], Awaitable[Member]]
) -> None:
    """Three nodes take the same twenty free sessions at once: each session ends with exactly
    one owner at fence 2, and every loser is told the winner's name."""
    single = await open_store(None)
    sids = [f"{n:026d}" for n in range(20)]
    for sid in sids:
        await single.append(sid, events(sid, 1))
    nodes = []
    for name in ("a", "b", "c"):
        node = await member(await open_store(name), name)
        await node.register()
        nodes.append(node)
    results = await asyncio.gather(*(node.cluster.take(sid) for sid in sids for node in nodes))
    for index, sid in enumerate(sids):
        takes = results[index * 3 : index * 3 + 3]
        winners = [name for name, t in zip("abc", takes, strict=True) if t.fence is not None]
        assert len(winners) == 1, (sid, takes)
        [winner] = winners
        assert [t.fence for t in takes if t.fence is not None] == [2]
        assert {t.owner for t in takes if t.fence is None} == {winner}
        assert (await located(nodes[0].cluster, sid)).node == winner


async def test_a_node_without_a_valid_lease_cannot_take_a_free_session(
    open_store: OpenStore, member: Callable[[PostgresStore, str], Awaitable[Member]]
) -> None:
    single, store_b = await open_store(None), await open_store("b")
    await single.append(A, events(A, 1))
    b = await member(store_b, "b")
    with pytest.raises(StoreUnavailable, match="'b' holds no valid lease"):  # never joined
        await b.cluster.take(A)
    await b.register()
    await b.cluster.leave(b.conn)
    with pytest.raises(StoreUnavailable, match="heartbeats are not reaching Postgres"):
        await b.cluster.take(A)
    assert store_b.held_fence(A) is None
    where = await located(b.cluster, A)
    assert where.node is None  # untouched


async def test_hand_over_frees_only_the_sessions_whose_fence_still_matches(
    open_store: OpenStore, member: Callable[[PostgresStore, str], Awaitable[Member]]
) -> None:
    single, store_a = await open_store(None), await open_store("a")
    for sid in (A, B):
        await single.append(sid, events(sid, 1))
    a = await member(store_a, "a")
    await a.register()
    assert (await a.cluster.take(A)).fence == 2
    assert (await a.cluster.take(B)).fence == 2
    # B with a stale fence: another node took it meanwhile, as far as this node knows.
    await a.cluster.hand_over([(A, 2), (B, 1)])
    located = [await a.cluster.locate(sid) for sid in (A, B)]
    assert [where.node if where else "?" for where in located] == [None, "a"]
    [row] = await a.cluster.nodes()
    assert row.owned == 1
    # A handed-over session is free at once for any node with a lease.
    b = await member(await open_store("b"), "b")
    await b.register()
    taken = await b.cluster.take(A)
    assert (taken.fence, taken.previous) == (3, None)


async def test_nodes_report_liveness_and_the_live_sessions_each_owns(
    open_store: OpenStore, member: Callable[[PostgresStore, str], Awaitable[Member]]
) -> None:
    store_a, store_b, store_c = await open_store("a"), await open_store("b"), await open_store("c")
    a, b, c = await member(store_a, "a"), await member(store_b, "b"), await member(store_c, "c")
    for node in (a, b, c):
        await node.register()
    await store_a.append(A, events(A, 1))
    await store_a.append(B, events(B, 1))
    await store_b.append(C, events(C, 1))
    await c.cluster.leave(c.conn)
    rows = {row.node_id: row for row in await a.cluster.nodes()}
    assert {n: (r.state, r.alive, r.owned) for n, r in rows.items()} == {
        "a": ("up", True, 2), "b": ("up", True, 1), "c": ("down", False, 0),
    }  # fmt: skip
    assert all(0 <= row.heartbeat_age < 10 for row in rows.values())
    where = await located(c.cluster, C)
    assert (where.node, where.alive) == ("b", True)


# --- strict fences -------------------------------------------------------------------------------


async def test_a_nodes_store_writes_only_to_sessions_it_created_or_took(
    open_store: OpenStore, member: Callable[[PostgresStore, str], Awaitable[Member]]
) -> None:
    store_a, store_b, single = await open_store("a"), await open_store("b"), await open_store(None)
    await store_a.append(A, events(A, 1, 2))
    a = await member(store_a, "a")
    where = await located(a.cluster, A)
    assert where.node == "a"  # sessions.node defaults to jidoka.node
    with pytest.raises(OwnershipLost) as info:
        await store_b.append(A, events(A, 3))
    assert isinstance(info.value, NotOwner)
    assert info.value.held <= 0
    assert "never took it" in str(info.value)
    # A single node's store adopts the head's fence (one writer), and creates sessions of no node.
    await single.append(A, events(A, 3))
    await single.append(B, events(B, 1))
    where = await located(a.cluster, B)
    assert where.node is None
    await store_a.append(A, events(A, 4))  # adopting did not move the fence
    assert [e.seq for e in await store_a.read_events(A)] == [1, 2, 3, 4]
