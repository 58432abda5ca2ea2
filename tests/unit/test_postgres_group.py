"""The Postgres writer's group commit: what one statement holds, who is refused, and an append
whose reply was lost after the server committed it (read back, never guessed).

Appends queued in one go on the loop (``append_nowait`` without awaiting between them) reach the
writer together, so they share one statement: the ``commits`` counter shows it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime

import pytest

from jidoka.events import Event, EventType
from jidoka.store.base import (
    CommitOutcomeUnknown,
    OnCommitted,
    OwnershipLost,
    SeqConflict,
    StoreUnavailable,
)
from jidoka.store.postgres import PostgresStore
from tests.support.postgres import address_of, dsn_via
from tests.support.tcp_proxy import TcpProxy

T0 = datetime(2026, 1, 1, tzinfo=UTC)
N, E, T, X, Y = ("N" * 26, "E" * 26, "T" * 26, "X" * 26, "Y" * 26)


def message(sid: str, seq: int, text: str = "") -> Event:
    return Event(
        EventType.CONVERSATION_ADDED, sid, seq, T0, {"role": "user", "content": text or str(seq)}
    )


def created(sid: str, owner: str | None = None) -> list[Event]:
    data: dict[str, object] = {"status": "initializing", "metadata": {}, "owner": owner}
    return [
        Event(EventType.SESSION_CREATED, sid, 1, T0, data),
        Event(
            EventType.SESSION_STATUS, sid, 2, T0, {"status": "active", "previous": "initializing"}
        ),
    ]


def terminated(sid: str, first: int) -> list[Event]:
    return [
        Event(
            EventType.SESSION_STATUS, sid, first, T0, {"status": "terminated", "previous": "idle"}
        ),
        Event(EventType.SESSION_TERMINATED, sid, first + 1, T0, {"reason": "user", "error": None}),
    ]


@pytest.fixture
async def store(postgres_dsn: str, postgres_schema: str) -> AsyncIterator[PostgresStore]:
    instance = PostgresStore(postgres_dsn, schema=postgres_schema)
    await instance.open()
    yield instance
    await instance.aclose()


def on_done(told: list[BaseException | None], done: asyncio.Event) -> OnCommitted:
    """An ``on_done`` that records what it is told and says so."""

    def call(error: BaseException | None) -> None:
        told.append(error)
        done.set()

    return call


async def settled(*waiting: Awaitable[None] | None) -> list[BaseException | None]:
    """What each append came to (Postgres never commits inline: each gives an awaitable)."""
    pending = [w for w in waiting if w is not None]
    assert len(pending) == len(waiting)
    return list(await asyncio.gather(*pending, return_exceptions=True))


async def test_one_statement_commits_a_mixed_group(store: PostgresStore) -> None:
    await store.append(E, created(E))
    await store.append(T, created(T))
    await store.append(X, created(X))
    await store.write_snapshot(T, 2, b"state")
    before = store.commits
    waiting = [
        store.append_nowait(N, created(N, owner="alice")),  # a new session
        store.append_nowait(E, [message(E, 3)]),  # an ordinary append
        store.append_nowait(E, [message(E, 4), message(E, 5)]),  # queued behind it
        store.append_nowait(T, terminated(T, 3)),  # an end: its snapshot goes too
        store.append_nowait(X, [message(X, 7)]),  # a stale seq: refused alone
    ]
    results = await settled(*waiting)
    assert store.commits == before + 1  # one statement for the whole group
    assert results[:4] == [None, None, None, None]
    assert isinstance(results[4], SeqConflict)
    assert results[4].expected == 3
    assert [e.seq for e in await store.read_events(E)] == [1, 2, 3, 4, 5]
    head = await store.find_session(N)
    assert head is not None
    assert (head.status, head.owner, head.last_seq) == ("active", "alice", 2)
    ended = await store.find_session(T)
    assert ended is not None
    assert ended.status == "terminated"
    assert await store.read_snapshot(T) is None
    assert await store.last_seq(X) == 2


async def test_a_new_session_whose_id_exists_is_refused_alone(store: PostgresStore) -> None:
    await store.append(E, created(E))
    results = await settled(store.append_nowait(E, created(E)), store.append_nowait(N, created(N)))
    assert isinstance(results[0], SeqConflict)
    assert results[0].expected == 3
    assert results[1] is None


async def test_ownership_lost_fails_only_that_session(
    store: PostgresStore, postgres_dsn: str, postgres_schema: str
) -> None:
    await store.append(E, created(E))
    await store.append(Y, created(Y))
    other = PostgresStore(postgres_dsn, schema=postgres_schema)
    await other.open()
    try:
        assert await other.take(Y) == 2
        results = await settled(
            store.append_nowait(E, [message(E, 3)]), store.append_nowait(Y, [message(Y, 3)])
        )
        assert results[0] is None
        lost = results[1]
        assert isinstance(lost, OwnershipLost)
        assert (lost.held, lost.current) == (1, 2)
        assert store.held_fence(Y) == 1  # still the stale one: refused again until it takes
        await other.append(Y, [message(Y, 3, "the new owner's")])
    finally:
        await other.aclose()
    assert [e.data["content"] for e in await store.read_events(Y, after_seq=2)] == [
        "the new owner's"
    ]


async def test_a_store_adopts_the_fence_of_a_session_it_did_not_create(
    store: PostgresStore, postgres_dsn: str, postgres_schema: str
) -> None:
    await store.append(E, created(E))
    await store.take(E)
    await store.take(E)
    other = PostgresStore(postgres_dsn, schema=postgres_schema)
    await other.open()
    try:
        assert other.held_fence(E) is None
        await other.append(E, [message(E, 3)])
        assert other.held_fence(E) == 3
    finally:
        await other.aclose()


async def test_a_reply_lost_after_the_commit_is_read_back(
    postgres_dsn: str, postgres_schema: str
) -> None:
    """The server commits, the connection dies before the writer hears of it: the append is
    acknowledged after the writer reconnects and finds it stored (not stored twice, not failed)."""
    host, port = address_of(postgres_dsn)
    async with TcpProxy(host, port) as proxy:
        store = PostgresStore(
            dsn_via(postgres_dsn, proxy.port),
            schema=postgres_schema,
            connect_timeout=1.0,
            command_timeout=1.0,
        )
        await store.open()
        try:
            await store.append(E, created(E))
            # Once, so the one-event statement is prepared: muted, a statement not prepared yet
            # would wait for its description and never be executed.
            await store.append(E, [message(E, 3, "warm")])
            proxy.mute()  # the statement reaches the server; its answer never comes back
            told: list[BaseException | None] = []
            done = asyncio.Event()
            waiting = store.append_nowait(E, [message(E, 4, "sent once")], on_done(told, done))
            assert waiting is not None
            # The writer gives up on the reply after command_timeout and cannot reconnect while
            # the proxy is muted: the caller is told the outcome is unknown (not that it failed).
            with pytest.raises(CommitOutcomeUnknown, match="whether it was stored"):
                await asyncio.wait_for(waiting, 30)
            assert told == []  # the session is not told anything yet: nobody knows
            await proxy.restore()
            await asyncio.wait_for(done.wait(), 30)
            assert told == [None]  # read back: it was stored
            events = await store.read_events(E)
            assert [e.seq for e in events] == [1, 2, 3, 4]
            assert events[3].data["content"] == "sent once"
            await store.append(E, [message(E, 5)])  # and it serves on
        finally:
            await store.aclose()


async def test_an_append_never_sent_is_found_unstored_once_the_server_is_back(
    postgres_dsn: str, postgres_schema: str
) -> None:
    host, port = address_of(postgres_dsn)
    async with TcpProxy(host, port) as proxy:
        store = PostgresStore(
            dsn_via(postgres_dsn, proxy.port),
            schema=postgres_schema,
            connect_timeout=1.0,
            command_timeout=1.0,
        )
        await store.open()
        try:
            await store.append(E, created(E))
            proxy.stall()  # nothing reaches the server
            told: list[BaseException | None] = []
            done = asyncio.Event()
            waiting = store.append_nowait(E, [message(E, 3)], on_done(told, done))
            assert waiting is not None
            with pytest.raises(CommitOutcomeUnknown):
                await asyncio.wait_for(waiting, 30)
            # Meanwhile a new append fails at once, nothing stored: the server is out of reach.
            with pytest.raises(StoreUnavailable, match="cannot be reached"):
                await asyncio.wait_for(store.append(N, created(N)), 30)
            await proxy.restore()
            await asyncio.wait_for(done.wait(), 30)
            # Read back: not stored. Its caller was told "unknown", so it is not sent again
            # behind the caller's back: it stays unstored, as the log says.
            assert len(told) == 1
            assert isinstance(told[0], StoreUnavailable)
            assert "was not stored" in str(told[0])
            assert [e.seq for e in await store.read_events(E)] == [1, 2]
            assert await store.find_session(N) is None
            await store.append(E, [message(E, 3)])  # the same seq, now: it serves on
        finally:
            await store.aclose()
