"""Retention on one Postgres database shared by several sweepers (the nodes of a cluster): they
take disjoint batches, every expired session is removed and reported exactly once, a session
restored meanwhile and the live ones are left alone, and a purge also removes what the cluster
keeps per session (the head's owner node and fence, the session's stream tickets). Rows are
counted with psycopg, in every table of the schema that keys rows by session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import jidoka
from jidoka import FakeClock
from jidoka.events import Event, EventType
from jidoka.store.postgres import PostgresStore
from tests.conftest import close_on_fake_clock
from tests.helpers import until
from tests.integration.test_retention import _postgres_rows
from tests.support.postgres import execute_in_schema

pytestmark = pytest.mark.stores("postgres")

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def sid_of(n: int) -> str:
    return f"01{n:024d}"


async def _session(store: PostgresStore, sid: str, *, ended: datetime | None) -> None:
    log = [
        Event(EventType.SESSION_CREATED, sid, 1, T0, {"status": "initializing"}),
        Event(EventType.CONVERSATION_ADDED, sid, 2, T0, {"role": "user", "content": "x"}),
    ]
    await store.append(sid, log)
    await store.write_snapshot(sid, 2, b"state")
    if ended is not None:
        end = Event(EventType.SESSION_TERMINATED, sid, 3, ended, {"reason": "requested"})
        await store.append(sid, [end])


@pytest.fixture
async def stores(postgres_dsn: str, postgres_schema: str) -> AsyncIterator[list[PostgresStore]]:
    async with AsyncExitStack() as stack:
        opened = []
        for _ in range(3):
            store = PostgresStore(postgres_dsn, schema=postgres_schema)
            await store.open()
            stack.push_async_callback(store.aclose)
            opened.append(store)
        yield opened


async def test_sweepers_at_once_take_disjoint_batches_and_leave_nothing(
    stores: list[PostgresStore], postgres_dsn: str, postgres_schema: str, store_backend: str
) -> None:
    writer, *sweepers = stores
    ended = [sid_of(n) for n in range(60)]
    live = [sid_of(n) for n in range(100, 105)]
    for n, sid in enumerate(ended):
        await _session(writer, sid, ended=T0 + timedelta(seconds=n))
    for sid in live:
        await _session(writer, sid, ended=None)
    # One ended session is restored before the sweep: live again, never expired.
    restored = ended.pop()
    again = Event(
        EventType.SESSION_CREATED, restored, 4, T0, {"status": "initializing", "state": {}}
    )
    await writer.append(restored, [again])
    cutoff = T0 + timedelta(days=1)

    async def sweep(store: PostgresStore) -> list[str]:
        removed: list[str] = []
        while batch := await store.expire_terminated(cutoff, limit=7):
            removed += [head.session_id for head in batch]
        return removed

    # Several rounds at once (twice the sweepers' work): whatever the interleaving, each
    # session is removed by one of them, and a later pass finds nothing.
    first, second = await asyncio.gather(*(sweep(store) for store in sweepers))
    assert not set(first) & set(second)
    assert sorted(first + second) == sorted(ended)
    assert await asyncio.gather(*(sweep(store) for store in sweepers)) == [[], []]
    for sid in ended:
        counts = await _postgres_rows(postgres_dsn, postgres_schema, sid)
        assert not any(counts.values()), (sid, counts)
    for sid in [*live, restored]:
        counts = await _postgres_rows(postgres_dsn, postgres_schema, sid)
        assert counts["events"] >= 2
        assert counts["sessions"] == 1


async def test_a_purge_removes_what_the_cluster_keeps_for_the_session(
    stores: list[PostgresStore], postgres_dsn: str, postgres_schema: str, store_backend: str
) -> None:
    store = stores[0]
    sid, other = sid_of(1), sid_of(2)
    for each in (sid, other):
        await _session(store, each, ended=None)
        await execute_in_schema(
            postgres_dsn,
            postgres_schema,
            "UPDATE sessions SET node = 'n1', fence = fence + 1 WHERE session_id = %s",
            (each,),
        )
        await execute_in_schema(
            postgres_dsn,
            postgres_schema,
            "INSERT INTO stream_tickets VALUES (%s, 'alice', %s, now() + interval '1 minute')",
            (each.encode(), f"/v1/sessions/{each}/events"),
        )
    await store.save(jidoka.SavedSession(session_id=sid, saved_at=T0, message_count=1,
                                         metadata={}), b"copy")  # fmt: skip
    assert await store.purge(sid) is True
    counts = await _postgres_rows(postgres_dsn, postgres_schema, sid)
    assert set(counts) >= {"events", "sessions", "snapshots", "saved_sessions", "stream_tickets"}
    assert not any(counts.values()), counts
    kept = await _postgres_rows(postgres_dsn, postgres_schema, other)
    assert (kept["sessions"], kept["stream_tickets"], kept["events"]) == (1, 1, 2)
    assert await store.purge(sid) is False


async def test_two_runtimes_sweeping_at_once_report_each_session_once(
    stores: list[PostgresStore], store_backend: str
) -> None:
    """Two runtimes on one database (two nodes' sweeps): every expired session gets exactly
    one ``session_purged``, from whichever node removed it."""
    clock = FakeClock()
    settings: dict[str, Any] = {
        "terminated_ttl": 60.0,
        "retention_batch": 3,
        "retention_sweep_seconds": 3600.0,
    }
    async with AsyncExitStack() as stack:
        runtimes = []
        for store in stores[1:]:
            rt = jidoka.Runtime(store=store, clock=clock, shutdown_grace_seconds=2.0, **settings)
            await rt.start()
            stack.push_async_callback(close_on_fake_clock, rt, clock)
            runtimes.append(rt)
        first = runtimes[0].client
        ended = [await first.create_session() for _ in range(20)]
        for sid in ended:
            await first.terminate_session(sid)
        keep = await first.create_session(config={"timeout_minutes": 0})
        clock.advance(120)
        streams = [
            await stack.enter_async_context(rt.client.subscribe_to_all_sessions())
            for rt in runtimes
        ]
        done = await asyncio.gather(*(rt.manager.retention.sweep() for rt in runtimes))
        assert sum(sessions for sessions, _ in done) == len(ended)
        reported: list[str] = []
        for stream, (count, _) in zip(streams, done, strict=True):
            for _ in range(count):
                reported.append((await until(stream, "session_purged")).session_id)
        assert sorted(reported) == sorted(ended)
        assert [await rt.manager.retention.sweep() for rt in runtimes] == [(0, 0), (0, 0)]
        assert (await first.get_session_info(keep)).status in ("active", "idle", "initializing")
