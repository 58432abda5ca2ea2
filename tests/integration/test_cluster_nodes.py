"""Two nodes of a cluster in one process, on the machine's real Postgres and Redis: two
:class:`Runtime` objects with node ids ``a`` and ``b``, each with a store of its own on the
test's schema and a Redis bus on the test's key prefix.

What is checked: a live owner's session is written only by its owner (the other node is told
who owns it) but read, listed and followed everywhere without being taken; a crashed owner's
sessions are taken once its lease has expired, and a paused owner that wakes believing it still
owns them is fenced off and drops them without writing; what the former owner left open (a
running turn, an approval) is closed as ``owner_lost``; a node refuses a session whose project
root it cannot see and hands it back; a leaving node hands its idle sessions over at once and
its busy ones when their turns end; a node cut off from Postgres lets its lease lapse, drops its
sessions and writes nothing until it can renew again.

Leases last two seconds. Every wait is for a condition (polled with a deadline, or an
event), never a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

import jidoka
from jidoka.cluster.node import ClusterNode
from jidoka.errors import NotOwner, ProjectRootUnavailable
from jidoka.events import Event, EventType
from jidoka.store.base import OwnershipLost
from jidoka.store.postgres_cluster import Location, NodeRow, PgCluster, close_quietly
from tests.conftest import close_on_fake_clock
from tests.helpers import PROMPTLY, until
from tests.support.openai_server import OpenAIServer, Slow, Text, ToolCalls, openai_server
from tests.support.postgres import address_of, dsn_via
from tests.support.redis import key_prefix, require_redis
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.stores("postgres")

#: A lease short enough to wait out in a test, long enough for a busy two-core host: both nodes
#: share this process's loop, and a node whose loop stalls past its margin rightly lapses.
TTL = 2.0
URLS = {"a": "http://127.0.0.1:1", "b": "http://127.0.0.1:2", "c": "http://127.0.0.1:3"}

StartNode = Callable[..., Awaitable[jidoka.Runtime]]


@pytest.fixture
async def redis_url() -> str:
    return require_redis()


@pytest.fixture
async def bus_prefix(redis_url: str) -> AsyncIterator[str]:
    async with key_prefix(redis_url) as prefix:
        yield prefix


@pytest.fixture
async def start_node(
    postgres_dsn: str, postgres_schema: str, redis_url: str, bus_prefix: str, tmp_path: Path
) -> AsyncIterator[StartNode]:
    """``await start_node("a")``: a running node of the test's cluster, closed afterwards.
    ``dsn`` points its store elsewhere (a proxy), ``clock`` gives it a clock of its own."""
    started: list[tuple[jidoka.Runtime, jidoka.FakeClock | None]] = []

    async def start(
        node_id: str,
        *,
        ttl: float = TTL,
        dsn: str | None = None,
        clock: jidoka.FakeClock | None = None,
        **settings: Any,
    ) -> jidoka.Runtime:
        settings.setdefault("shutdown_grace_seconds", 2.0)
        rt = jidoka.Runtime(
            data_dir=tmp_path / f"data-{node_id}",
            store=dsn or postgres_dsn,
            postgres_schema=postgres_schema,
            postgres_pool_size=2,
            bus=redis_url,
            bus_prefix=bus_prefix,
            node_id=node_id,
            advertise_url=URLS[node_id],
            lease_ttl=ttl,
            clock=clock,
            **settings,
        )
        await rt.start()
        started.append((rt, clock))
        return rt

    yield start
    for rt, clock in reversed(started):
        async with asyncio.timeout(PROMPTLY):
            if clock is None:
                await rt.aclose()
            else:
                await close_on_fake_clock(rt, clock)


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    async with openai_server() as server:
        yield server


def llm(server: OpenAIServer) -> dict[str, Any]:
    return {
        "provider": "openai",
        "model": "test-model",
        "base_url": server.base_url,
        "api_key_env": None,
        "max_retries": 0,
        "timeout": PROMPTLY,
    }


async def eventually(condition: Callable[[], Awaitable[bool]], what: str) -> float:
    """Poll ``condition`` until it holds (a deadline, not a sleep for synchronisation); the
    seconds it took."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(PROMPTLY):
            while True:
                if await condition():
                    return time.monotonic() - started
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


def node_of(rt: jidoka.Runtime) -> ClusterNode:
    node = rt.node
    assert node is not None, "not a node of a cluster"
    return node


async def located(rt: jidoka.Runtime, session_id: str) -> Location:
    where = await node_of(rt).locate(session_id)
    assert where is not None, f"no session {session_id}"
    return where


async def expired(rt: jidoka.Runtime, session_id: str) -> float:
    """Wait until the session's owner's lease has run out by the server's clock."""

    async def dead() -> bool:
        return not (await located(rt, session_id)).alive

    return await eventually(dead, f"the lease of {session_id}'s owner expires")


async def released(rt: jidoka.Runtime, session_id: str) -> float:
    async def free() -> bool:
        return (await located(rt, session_id)).node is None

    return await eventually(free, f"{session_id} is handed over")


async def row_of(rt: jidoka.Runtime, node_id: str) -> NodeRow:
    [row] = [row for row in await node_of(rt).nodes() if row.node_id == node_id]
    return row


async def listening(url: str, channel: str) -> None:
    """Wait until someone listens on ``channel`` (Redis says so)."""
    client = aioredis.Redis.from_url(url)
    try:

        async def heard() -> bool:
            [(_, subscribers)] = await client.pubsub_numsub(channel)
            return int(subscribers) >= 1

        await eventually(heard, f"a subscriber on {channel}")
    finally:
        await client.aclose()


async def messages(rt: jidoka.Runtime, session_id: str) -> list[str]:
    """The contents of the session's ``conversation_added`` events, read from the log."""
    log = await rt.client.read_events(session_id, limit=1000)
    return [e.data["content"] for e in log if e.type == "conversation_added"]


async def until_message(events: jidoka.Subscription, content: str) -> list[Event]:
    """Every event up to and including the ``conversation_added`` of ``content``."""
    seen = []
    async with asyncio.timeout(PROMPTLY):
        async for event in events:
            seen.append(event)
            if event.type == "conversation_added" and event.data["content"] == content:
                return seen
    raise AssertionError(f"the stream ended before the message {content!r}")


def write_call(path: str, content: str, call_id: str = "w1") -> tuple[str, str, str]:
    return (call_id, "write_file", json.dumps({"path": path, "content": content}))


# --- a live owner --------------------------------------------------------------------------------


async def test_a_live_owners_session_is_written_by_it_alone_and_read_everywhere(
    start_node: StartNode, redis_url: str, bus_prefix: str
) -> None:
    a, b = await start_node("a"), await start_node("b")
    sid = await a.client.create_session(metadata={"who": "a"})
    await a.client.send_message(sid, "user", "one")
    with pytest.raises(NotOwner) as info:
        await b.client.send_message(sid, "user", "from b")
    assert (info.value.owner, info.value.owner_url) == ("a", URLS["a"])
    assert not b.manager.is_live(sid)
    # Reads of the log and listings on b take nothing.
    assert await messages(b, sid) == ["one"]
    listed = {i.session_id: i for i in await b.client.list_sessions()}
    assert listed[sid].metadata == {"who": "a"}
    # Following it on b: what a appends reaches b through Redis.
    async with b.client.subscribe_to_session(sid) as on_b:
        await listening(redis_url, f"{bus_prefix}:s:{sid}")
        await a.client.send_message(sid, "user", "two")
        heard = await until(on_b, "conversation_added")
    assert heard.data["content"] == "two"
    where = await located(b, sid)
    assert (where.node, where.url, where.alive) == ("a", URLS["a"], True)
    assert not b.manager.is_live(sid)
    assert (node_of(b).takeovers, node_of(b).activations) == (0, 0)
    assert await messages(a, sid) == ["one", "two"]


async def test_a_session_ended_on_its_owner_is_read_and_replayed_everywhere(
    start_node: StartNode,
) -> None:
    a, b = await start_node("a"), await start_node("b")
    sid = await a.client.create_session()
    await a.client.send_message(sid, "user", "last words")
    await a.client.terminate_session(sid)
    info = await b.client.get_session_info(sid)
    assert (info.status, info.reason) == ("terminated", "requested")
    assert await messages(b, sid) == ["last words"]
    async with b.client.subscribe_to_session(sid, after_seq=0) as replay:
        async with asyncio.timeout(PROMPTLY):
            types = [event.type async for event in replay]
    assert types[-1] == "session_terminated"
    assert "conversation_added" in types
    assert (node_of(b).takeovers, node_of(b).activations) == (0, 0)
    assert (await located(b, sid)).node == "a"


async def test_nodes_asked_at_once_for_a_released_session_agree_on_one_owner(
    start_node: StartNode,
) -> None:
    """a leaves; b and c are each sent a message for every one of its sessions at the same
    time. Per session exactly one of them takes it and stores its message; the other is told
    that one's name (never refused by a fence after taking it, and nothing stored twice)."""
    a, b, c = await start_node("a"), await start_node("b"), await start_node("c")
    sids = [await a.client.create_session() for _ in range(8)]
    a.begin_leaving()
    for sid in sids:
        await released(b, sid)
    outcomes = await asyncio.gather(
        *(
            rt.client.send_message(sid, "user", name)
            for sid in sids
            for name, rt in (("b", b), ("c", c))
        ),
        return_exceptions=True,
    )
    for index, sid in enumerate(sids):
        by_b, by_c = outcomes[2 * index : 2 * index + 2]
        refused = [o for o in (by_b, by_c) if isinstance(o, BaseException)]
        assert len(refused) == 1, (sid, by_b, by_c)
        [loser] = refused
        assert type(loser) is NotOwner, loser
        winner = "c" if isinstance(by_b, BaseException) else "b"
        assert loser.owner == winner
        assert await messages(b, sid) == [winner]
        assert (await located(b, sid)).node == winner
    assert node_of(b).fence_refusals == node_of(c).fence_refusals == 0
    assert node_of(b).activations + node_of(c).activations == len(sids)


# --- a lost owner --------------------------------------------------------------------------------


async def test_a_crashed_nodes_session_is_taken_once_its_lease_has_expired(
    start_node: StartNode,
) -> None:
    a, b = await start_node("a"), await start_node("b")
    sid = await a.client.create_session()
    await a.client.send_message(sid, "user", "before")
    # A client follows the session on a, from the start, across the takeover.
    async with a.client.subscribe_to_session(sid, after_seq=0) as follower:
        membership = node_of(a).membership
        # Alive, a's heartbeat moves (by the server's clock).
        first = await row_of(b, "a")

        async def beating() -> bool:
            return (await row_of(b, "a")).heartbeat_at > first.heartbeat_at

        await eventually(beating, "a's heartbeat moves")
        # The crash: a stops renewing and does not leave.
        crashed = time.monotonic()
        await membership.aclose(leave=False)
        renewals = membership.renewals
        before = await row_of(b, "a")
        await expired(b, sid)
        await b.client.send_message(sid, "user", "after")
        taken_after = time.monotonic() - crashed
        assert membership.renewals == renewals
        row = await row_of(b, "a")
        assert (row.state, row.alive, row.heartbeat_at) == ("up", False, before.heartbeat_at)
        assert taken_after < TTL + 2
        assert b.manager.is_live(sid)
        assert node_of(b).takeovers == 1
        assert (await located(b, sid)).node == "b"
        # a knows its lease is gone: it refuses to write before asking the store.
        with pytest.raises(NotOwner, match="could not renew its lease") as info:
            await a.client.send_message(sid, "user", "zombie")
        assert not isinstance(info.value, OwnershipLost)
        assert await messages(b, sid) == ["before", "after"]
        # What b stored reached a's follower through Redis: every seq once, in order.
        seen = await until_message(follower, "after")
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert [e.seq for e in seen] == [e.seq for e in await b.client.read_events(sid)]


async def test_a_paused_owner_is_fenced_off_and_its_open_turn_closed_as_owner_lost(
    start_node: StartNode, server: OpenAIServer, project: Path
) -> None:
    """a's clock stands still (a paused process): it never renews, yet its lease looks valid
    to it. b takes the session once the lease has expired by the server's clock and closes the
    turn a left waiting for an approval; a's next append is refused by the fence and a drops
    the session, without writing anything."""
    paused = jidoka.FakeClock()
    a, b = await start_node("a", clock=paused), await start_node("b")
    server.queue(ToolCalls([write_call("src/app.py", "changed\n")]), Text(["ok"]))
    sid = await a.client.create_session(
        project_root=str(project), config={"allow_write": "ask"}, llm_config=llm(server)
    )
    async with a.client.subscribe_to_session(sid, after_seq=0) as events:
        turn = asyncio.create_task(a.client.chat(sid, "change it"))
        await until(events, "approval_requested")
    await expired(b, sid)
    assert node_of(a).membership.valid()  # by its own (stopped) clock
    info = await b.client.get_session_info(sid)  # b takes and loads it
    assert info.status == "active"  # taken over in use: it goes idle on its own timer
    assert node_of(b).takeovers == 1
    log = await b.client.read_events(sid, limit=1000)
    closed = [(e.type, e.data) for e in log[-3:]]
    run_id = log[-1].data.get("run_id")
    assert closed == [
        ("approval_decided", {"call_id": "w1", "allow": False, "reason": "owner_lost"}),
        ("agent_status", {"status": "cancelled", "reason": "owner_lost"}),
        (  # the chat's run: interrupted, never run again
            "run_completed",
            {
                "run_id": run_id,
                "status": "interrupted",
                "message": None,
                "usage": None,
                "error": None,
                "reason": "owner_lost",
            },
        ),
    ]
    # The zombie wakes: its first append is refused, and it lets the session go.
    with pytest.raises(OwnershipLost):
        await a.client.put_working_context(sid, "late", True)
    assert not a.manager.is_live(sid)
    assert node_of(a).fence_refusals == 1
    async with asyncio.timeout(PROMPTLY):  # its turn stops with the session's workers
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await turn
    assert turn.done()
    assert await b.client.read_events(sid, limit=1000) == log  # nothing of a's was stored
    assert (project / "src" / "app.py").read_text() == "def main():\n    return 42\n"
    # The session is usable at once on b, and a is now told that b owns it.
    await b.client.send_message(sid, "user", "still here")
    with pytest.raises(NotOwner) as refused:
        await a.client.send_message(sid, "user", "zombie")
    assert refused.value.owner == "b"
    assert await messages(b, sid) == ["change it", "still here"]


async def test_a_node_whose_id_was_taken_while_it_was_paused_stops_acting_at_once(
    start_node: StartNode,
) -> None:
    """a is paused past its lease and another process joins as "a" meanwhile (a restart that
    did not wait for the old one to die). When a wakes, its renewal finds the row another
    incarnation's: it drops every session and does not act as "a" again, and leaving later
    does not end the newcomer's lease."""
    paused = jidoka.FakeClock()
    a, b = await start_node("a", clock=paused), await start_node("b")
    sid = await a.client.create_session()
    node = node_of(a)
    newcomer = PgCluster(node_of(b).store, "a", "http://127.0.0.1:9")
    conn = await newcomer.connect()
    try:

        async def joined() -> bool:
            return await newcomer.register(conn, 30.0) is not None

        await eventually(joined, "a second process joins as node a once a's lease expired")
        assert newcomer.incarnation == 2
        paused.advance(TTL)  # a wakes and renews

        async def lapsed() -> bool:
            return node.membership.last_error == "another process took this node id"

        await eventually(lapsed, "a learns that its id is another process's")
        assert node.membership.lapses == 1
        assert not node.membership.valid()
        assert not a.manager.is_live(sid)
        with pytest.raises(NotOwner, match="could not renew its lease"):
            await a.client.send_message(sid, "user", "as a")
        node.membership.last_error = None
        paused.advance(TTL)  # and again: still not a member
        await eventually(lapsed, "a's next renewal is refused too")
        assert not node.membership.valid()
        await close_on_fake_clock(a, paused)
        row = await row_of(b, "a")
        assert (row.state, row.alive, row.advertise_url) == ("up", True, "http://127.0.0.1:9")
    finally:
        await close_quietly(conn)


async def test_a_session_whose_project_root_is_missing_is_refused_and_handed_back(
    start_node: StartNode, tmp_path: Path
) -> None:
    a, b = await start_node("a"), await start_node("b")
    root = tmp_path / "shared-project"
    await asyncio.to_thread(root.mkdir)
    sid = await a.client.create_session(project_root=str(root))
    a.begin_leaving()
    await released(b, sid)
    await asyncio.to_thread(root.rmdir)  # not mounted on b's host, as it were
    with pytest.raises(ProjectRootUnavailable) as info:
        await b.client.send_message(sid, "user", "hello")
    assert (info.value.node, info.value.path) == ("b", str(root))
    assert info.value.session_id == sid
    assert not b.manager.is_live(sid)
    assert (await located(b, sid)).node is None  # handed back: free for a node that sees it
    await asyncio.to_thread(root.mkdir)
    await b.client.send_message(sid, "user", "hello")
    assert (await located(b, sid)).node == "b"
    assert await messages(b, sid) == ["hello"]


# --- leaving -------------------------------------------------------------------------------------


async def test_a_leaving_node_hands_idle_sessions_over_at_once_and_busy_ones_after_their_turn(
    start_node: StartNode, server: OpenAIServer
) -> None:
    a = await start_node("a", shutdown_grace_seconds=PROMPTLY)
    b = await start_node("b")
    idle = [await a.client.create_session() for _ in range(3)]
    busy = await a.client.create_session(llm_config=llm(server))
    held = Slow(["still ", "thinking"])
    server.queue(held)
    async with a.client.subscribe_to_session(busy, after_seq=0) as events:
        turn = asyncio.create_task(a.client.chat(busy, "go"))
        await until(events, "llm_stream_chunk")
    a.begin_leaving()  # SIGTERM
    assert node_of(a).health() == (False, "node a: leaving")  # /readyz: send no more here
    handed = [await released(b, sid) for sid in idle]
    assert max(handed) < 1.0
    assert node_of(a).membership.valid()  # no lease had to run out
    for sid in idle:
        await b.client.send_message(sid, "user", "moved")
    assert (node_of(b).takeovers, node_of(b).activations) == (0, 3)
    # The running turn finishes on a; then its session goes too.
    where = await located(b, busy)
    assert where.node == "a"
    held.release.set()
    result = await asyncio.wait_for(turn, PROMPTLY)
    assert result.message.content == "still thinking"
    await released(b, busy)
    await b.client.send_message(busy, "user", "after")
    assert await messages(b, busy) == ["go", "still thinking", "after"]
    with pytest.raises(NotOwner, match="shutting down"):
        await a.client.send_message(idle[0], "user", "back on a?")


# --- a lapsed lease ------------------------------------------------------------------------------


async def test_a_node_cut_off_from_postgres_lets_its_lease_lapse_and_drops_its_sessions(
    start_node: StartNode, postgres_dsn: str
) -> None:
    async with TcpProxy(*address_of(postgres_dsn)) as proxy:
        a = await start_node("a", dsn=dsn_via(postgres_dsn, proxy.port))
        node = node_of(a)
        membership = node.membership
        sid, other = await a.client.create_session(), await a.client.create_session()
        await a.client.send_message(sid, "user", "before")
        fence = node.store.held_fence(sid)
        assert fence is not None
        cut = time.monotonic()
        await proxy.cut()

        async def lapsed() -> bool:
            return membership.lapses == 1

        await eventually(lapsed, "a's lease lapses")
        lapse_after = time.monotonic() - cut
        assert lapse_after < TTL
        # Every session dropped, without a word written.
        assert (a.manager.is_live(sid), a.manager.is_live(other)) == (False, False)
        ok, detail = node.health()
        assert not ok
        assert "lease lapsed" in detail
        # An append is refused by the lease before anything is sent to the store.
        accepted = proxy.accepted
        late = Event(EventType.CONVERSATION_ADDED, sid, 99, datetime.now(UTC), {"n": 99})
        with pytest.raises(NotOwner, match="could not renew its lease"):
            a.manager.services.append_nowait(sid, [late], None)
        assert proxy.accepted == accepted
        await proxy.restore()

        async def renewed() -> bool:
            return membership.valid()

        await eventually(renewed, "a's lease is renewed")
        assert node.health()[0]
        # The session comes back on demand, under a new fence.
        await a.client.send_message(sid, "user", "after")
        assert a.manager.is_live(sid)
        assert (node.store.held_fence(sid) or 0) > fence
        assert await messages(a, sid) == ["before", "after"]
        assert not a.manager.is_live(other)  # until someone asks for it


# --- history verbs -------------------------------------------------------------------------------


async def contents(rt: jidoka.Runtime, session_id: str) -> list[str]:
    return [m.content for m in await rt.client.get_conversation_history(session_id)]


async def test_fork_and_rewind_run_on_the_owner_and_what_they_did_moves_with_the_session(
    start_node: StartNode,
) -> None:
    """A rewind and a fork are the owner's (another node is told who owns the session, and
    the server forwards to it); a node that takes the session over folds the rewinds from
    the shared store, snapshots included; a terminated session forks on any node."""
    a = await start_node("a", snapshot_interval=3)
    b = await start_node("b", snapshot_interval=3)
    sid = await a.client.create_session()
    seqs = [(await a.client.send_message(sid, "user", f"m{i}")).seq for i in range(6)]
    await a.client.rewind_session(sid, to_seq=seqs[1])
    with pytest.raises(NotOwner):
        await b.client.rewind_session(sid, to_seq=seqs[0])
    with pytest.raises(NotOwner):
        await b.client.fork_session(sid)
    fork = await a.client.fork_session(sid, at_seq=seqs[3])
    assert await contents(a, fork) == ["m0", "m1", "m2", "m3"]
    assert (await located(b, fork)).node == "a"
    a.begin_leaving()
    await released(b, sid)
    await released(b, fork)
    assert await contents(b, sid) == ["m0", "m1"]  # taken by b: the rewind folded from the log
    await b.client.rewind_session(sid, to_seq=seqs[5])
    assert await contents(b, sid) == [f"m{i}" for i in range(6)]
    assert await contents(b, fork) == ["m0", "m1", "m2", "m3"]
    await b.client.terminate_session(fork)
    c = await start_node("c")
    again = await c.client.fork_session(fork)  # terminated: read from its stored log on c
    assert await contents(c, again) == ["m0", "m1", "m2", "m3"]
    assert (await located(c, again)).node == "c"
