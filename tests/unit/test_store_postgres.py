"""What only the Postgres store promises, beyond the contract suite (test_store_contract.py):
several stores on one schema (what several nodes are), fences, the schema's version.

Every test has a schema of its own (the ``postgres_schema`` fixture), dropped afterwards; without
a server they are skipped (failed on CI).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg import sql

from jidoka.errors import StoreError
from jidoka.events import Event, EventType
from jidoka.store.base import OwnershipLost, SchemaError, SeqConflict
from jidoka.store.postgres import SCHEMA_VERSION, PostgresStore

A, B = "A" * 26, "B" * 26
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def events(session_id: str, first: int, count: int, *, by: str = "") -> list[Event]:
    return [
        Event(
            EventType.CONVERSATION_ADDED,
            session_id,
            seq,
            T0,
            {"role": "user", "content": f"{by}{seq}"},
        )
        for seq in range(first, first + count)
    ]


@pytest.fixture
async def stores(postgres_dsn: str, postgres_schema: str) -> AsyncIterator[list[PostgresStore]]:
    """Two stores on one schema: two nodes sharing a database."""
    async with AsyncExitStack() as stack:
        opened = []
        for _ in range(2):
            store = PostgresStore(postgres_dsn, schema=postgres_schema, pool_size=2)
            await store.open()
            stack.push_async_callback(store.aclose)
            opened.append(store)
        yield opened


async def contents(store: PostgresStore, session_id: str) -> list[tuple[int, str]]:
    return [(e.seq, e.data["content"]) for e in await store.read_events(session_id)]


async def test_open_creates_the_schema_and_a_reopened_store_finds_the_log(
    postgres_dsn: str, postgres_schema: str
) -> None:
    store = PostgresStore(postgres_dsn, schema=postgres_schema)
    await store.open()
    try:
        await store.append(A, events(A, 1, 3))
    finally:
        await store.aclose()
    again = PostgresStore(postgres_dsn, schema=postgres_schema)
    await again.open()
    try:
        assert await contents(again, A) == [(1, "1"), (2, "2"), (3, "3")]
        await again.append(A, events(A, 4, 1))  # adopts the head's fence: one node
        assert await again.last_seq(A) == 4
    finally:
        await again.aclose()


@pytest.mark.parametrize("name", ["Upper", "with-dash", "1digit", 'x"; DROP SCHEMA public; --'])
async def test_a_schema_name_that_would_need_quoting_is_refused(
    postgres_dsn: str, name: str
) -> None:
    with pytest.raises(ValueError, match="schema name"):
        PostgresStore(postgres_dsn, schema=name)


async def test_a_second_store_conflicts_on_the_same_seq(stores: list[PostgresStore]) -> None:
    """Without any take: the unique (session, seq) alone refuses the second writer, whole."""
    first, second = stores
    await first.append(A, events(A, 1, 3, by="first:"))
    with pytest.raises(SeqConflict) as info:
        await second.append(A, events(A, 2, 2, by="second:"))
    assert (info.value.expected, info.value.got) == (4, 2)
    await second.append(A, events(A, 4, 1, by="second:"))  # the next seq is its to take
    assert await contents(first, A) == [(1, "first:1"), (2, "first:2"), (3, "first:3"),
                                        (4, "second:4")]  # fmt: skip


async def test_take_raises_the_fence_and_the_former_holder_is_refused(
    stores: list[PostgresStore],
) -> None:
    old, new = stores
    await old.append(A, events(A, 1, 2, by="old:"))
    held = old.held_fence(A)
    assert held is not None
    assert new.held_fence(A) is None
    fence = await new.take(A)
    assert fence > held
    assert new.held_fence(A) == fence
    with pytest.raises(OwnershipLost) as info:
        await old.append(A, events(A, 3, 1, by="old:"))
    assert isinstance(info.value, StoreError)
    assert (info.value.session_id, info.value.held, info.value.current) == (A, held, fence)
    # The same through the session's commit path: on_done is told, nothing is stored.
    told: list[BaseException | None] = []
    waiting = old.append_nowait(A, events(A, 3, 1, by="old:"), told.append)
    assert waiting is not None
    with pytest.raises(OwnershipLost):
        await waiting
    assert len(told) == 1
    assert isinstance(told[0], OwnershipLost)
    assert await new.last_seq(A) == 2
    await new.append(A, events(A, 3, 1, by="new:"))
    assert await contents(old, A) == [(1, "old:1"), (2, "old:2"), (3, "new:3")]


async def test_only_the_fence_holder_drops_stream_chunks(
    stores: list[PostgresStore], postgres_dsn: str, postgres_schema: str
) -> None:
    """A turn runs on the node that owns its session, and so does the drop of its chunks: a
    former holder, or a cluster node that never took the session, deletes nothing."""
    old, new = stores
    chunk = EventType.LLM_STREAM_CHUNK
    log = [*events(A, 1, 1), *(Event(chunk, A, seq, T0, {"text": "x"}) for seq in (2, 3))]
    await old.append(A, [*log, *events(A, 4, 1)])
    fence = await new.take(A)
    with pytest.raises(OwnershipLost) as info:
        await old.drop_events(A, chunk, first_seq=1, last_seq=4)
    assert (info.value.held, info.value.current) == (1, fence)
    node = PostgresStore(postgres_dsn, schema=postgres_schema, pool_size=1, node_id="n1")
    await node.open()
    try:
        with pytest.raises(OwnershipLost) as info:
            await node.drop_events(A, chunk, first_seq=1, last_seq=4)
        assert (info.value.held, info.value.current) == (0, fence)
    finally:
        await node.aclose()
    assert [e.seq for e in await new.read_events(A)] == [1, 2, 3, 4]
    assert await new.drop_events(A, chunk, first_seq=1, last_seq=4) == 2
    assert [e.seq for e in await old.read_events(A)] == [1, 4]
    assert (await old.last_seq(A), await new.last_seq(A)) == (4, 4)


async def test_take_of_an_unknown_session_is_an_error(stores: list[PostgresStore]) -> None:
    with pytest.raises(StoreError):
        await stores[0].take(B)
    assert stores[0].held_fence(B) is None


async def test_the_former_holder_stays_fenced_off(stores: list[PostgresStore]) -> None:
    """Refused once, refused again: a node that lost a session cannot write to it by trying
    once more (at the seq the log now expects), only by taking it back."""
    old, new = stores
    await old.append(A, events(A, 1, 1, by="old:"))
    await new.take(A)
    with pytest.raises(OwnershipLost):
        await old.append(A, events(A, 2, 1, by="old:"))
    with pytest.raises(OwnershipLost):
        await old.append(A, events(A, 2, 1, by="old:"))
    assert await contents(new, A) == [(1, "old:1")]
    await old.take(A)  # taking it back is the way to write again
    await old.append(A, events(A, 2, 1, by="old:"))
    with pytest.raises(OwnershipLost):
        await new.append(A, events(A, 3, 1, by="new:"))


async def test_fencing_race(stores: list[PostgresStore]) -> None:
    """Round after round, one store takes the session (sometimes both take it at once), then
    both append at the same seq at the same moment: exactly one append wins, the holder's;
    the other is refused (OwnershipLost, or SeqConflict once the holder got there first), and
    the log has each seq once, from the winner."""
    rng = random.Random(15)
    await stores[0].append(A, events(A, 1, 1, by="0:"))
    await stores[1].append(A, events(A, 2, 1, by="1:"))  # both now hold a fence
    expected = [(1, "0:1"), (2, "1:2")]
    seq = 3
    for _ in range(120):
        takers = rng.choice([[0], [1], [0, 1]])
        fences = await asyncio.gather(*(stores[n].take(A) for n in takers))
        holder = takers[fences.index(max(fences))]
        order = [0, 1] if rng.random() < 0.5 else [1, 0]
        outcomes = await asyncio.gather(
            *(stores[n].append(A, events(A, seq, 1, by=f"{n}:")) for n in order),
            return_exceptions=True,
        )
        won = [n for n, outcome in zip(order, outcomes, strict=True) if outcome is None]
        lost = [outcome for outcome in outcomes if outcome is not None]
        assert won == [holder], (takers, fences, order, outcomes)
        assert len(lost) == 1
        assert isinstance(lost[0], OwnershipLost | SeqConflict), lost[0]
        expected.append((seq, f"{holder}:{seq}"))
        seq += 1
    assert await contents(stores[0], A) == expected


async def test_two_stores_racing_without_takes_never_both_win(
    stores: list[PostgresStore],
) -> None:
    """On one node's terms (both adopt the head's fence): the seq alone decides, exactly one
    append wins each seq, the other gets SeqConflict."""
    await stores[0].append(A, events(A, 1, 1, by="0:"))
    await stores[1].append(A, events(A, 2, 1, by="1:"))
    for seq in range(3, 103):
        outcomes = await asyncio.gather(
            *(store.append(A, events(A, seq, 1, by=f"{n}:")) for n, store in enumerate(stores)),
            return_exceptions=True,
        )
        assert sorted(type(outcome).__name__ for outcome in outcomes) == [
            "NoneType",
            "SeqConflict",
        ], outcomes
    stored = await contents(stores[0], A)
    assert [seq for seq, _ in stored] == list(range(1, 103))


async def test_a_newer_schema_is_refused(postgres_dsn: str, postgres_schema: str) -> None:
    store = PostgresStore(postgres_dsn, schema=postgres_schema)
    await store.open()
    await store.aclose()
    async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("UPDATE {}.jidoka_meta SET value = '999' WHERE key = 'schema_version'").format(
                sql.Identifier(postgres_schema)
            )
        )
    newer = PostgresStore(postgres_dsn, schema=postgres_schema)
    with pytest.raises(SchemaError) as info:
        await newer.open()
    message = str(info.value)
    assert postgres_schema in message
    assert "999" in message
    assert "newer" in message
    await newer.aclose()


async def test_a_schema_holding_other_tables_is_refused(
    postgres_dsn: str, postgres_schema: str
) -> None:
    """A name that is already someone else's schema: refused, and nothing is added to it."""
    async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as conn:
        name = sql.Identifier(postgres_schema)
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(name))
        await conn.execute(sql.SQL("CREATE TABLE {}.invoices (id int)").format(name))
        store = PostgresStore(postgres_dsn, schema=postgres_schema)
        with pytest.raises(SchemaError, match="not a Jidoka schema"):
            await store.open()
        await store.aclose()
        cursor = await conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (postgres_schema,)
        )
        assert [row[0] for row in await cursor.fetchall()] == ["invoices"]


async def test_stores_opening_a_fresh_schema_at_once_create_it_once(
    postgres_dsn: str, postgres_schema: str
) -> None:
    """Four stores open one missing schema at the same moment: the advisory lock makes one of
    them create it and the others find it done; every one of them then serves."""
    opened = [PostgresStore(postgres_dsn, schema=postgres_schema, pool_size=1) for _ in range(4)]
    try:
        await asyncio.gather(*(store.open() for store in opened))
        for n, store in enumerate(opened):
            sid = chr(ord("A") + n) * 26
            await store.append(sid, events(sid, 1, 1))
        async with await psycopg.AsyncConnection.connect(postgres_dsn) as conn:
            cursor = await conn.execute(
                sql.SQL(
                    "SELECT key, value FROM {}.jidoka_meta WHERE key = 'schema_version'"
                ).format(sql.Identifier(postgres_schema))
            )
            assert await cursor.fetchall() == [("schema_version", str(SCHEMA_VERSION))]
            cursor = await conn.execute(
                sql.SQL("SELECT count(*) FROM {}.sessions").format(sql.Identifier(postgres_schema))
            )
            assert await cursor.fetchone() == (4,)
    finally:
        for store in opened:
            await store.aclose()


async def test_a_version_3_schema_gains_the_runs_index(
    postgres_dsn: str, postgres_schema: str
) -> None:
    """Version 4's step adds the runs tables and the trigger that keeps them: the sessions a
    version 3 schema holds stay and go on, and their run events are indexed from then on."""
    store = PostgresStore(postgres_dsn, schema=postgres_schema)
    await store.open()
    created = Event(EventType.SESSION_CREATED, A, 1, T0, {"status": "idle", "owner": "alice"})
    await store.append(A, [created])
    await store.aclose()
    name = sql.Identifier(postgres_schema)
    async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as conn:
        for statement in (  # back to what version 3 had
            "DROP TRIGGER derive_runs ON {}.events",
            "DROP FUNCTION {}.derive_runs()",
            "DROP FUNCTION {}.json_data(bytea)",
            "DROP FUNCTION {}.json_text(json)",
            "DROP TABLE {}.runs",
            "DROP TABLE {}.idempotency_keys",
            "UPDATE {}.jidoka_meta SET value = '3' WHERE key = 'schema_version'",
        ):
            await conn.execute(sql.SQL(statement).format(name))
    store = PostgresStore(postgres_dsn, schema=postgres_schema)
    await store.open()
    try:
        data = {"run_id": "r1", "text": "go", "multitask": "reject", "idempotency_key": "k"}
        await store.append(A, [Event(EventType.RUN_QUEUED, A, 2, T0, data)])
        run = await store.get_run("r1")
        assert run is not None
        assert (run.session_id, run.owner, run.seq, run.status) == (A, "alice", 2, "queued")
        key = await store.find_idempotency("alice", "k")
        assert key is not None
        assert (key.run_id, key.seq) == ("r1", 2)
    finally:
        await store.aclose()
    async with await psycopg.AsyncConnection.connect(postgres_dsn) as conn:
        cursor = await conn.execute(
            sql.SQL("SELECT value FROM {}.jidoka_meta WHERE key = 'schema_version'").format(name)
        )
        assert await cursor.fetchone() == (str(SCHEMA_VERSION),) == ("4",)
