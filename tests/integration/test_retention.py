"""Issue 17, retention and purge: ``purge_session`` removes every stored row of a session (on
each store, through ``Client`` and ``RemoteClient``), and the retention sweep removes expired
terminated sessions and saved copies on the fake clock, never a live session, harmlessly twice.
Rows are counted in the database itself: the SQLite file through ``sqlite3``, Postgres through
``psycopg``, every table that has a ``session_id`` column (and the stream tickets by path)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import jidoka
from jidoka import FakeClock, SessionNotFound
from jidoka.bus.base import Subscription
from jidoka.events import Event, EventType
from jidoka.payloads import SessionPurgedData, payload_of
from jidoka.remote import RemoteClient
from jidoka.store.memory import MemoryStore
from jidoka.store.sqlite import DATABASE_NAME
from tests.conftest import close_on_fake_clock
from tests.helpers import quiesce, until
from tests.integration.test_durability import tamper

TTL = 3600.0
SAVED_TTL = 7200.0


async def stored_rows(runtime: jidoka.Runtime, sid: str) -> dict[str, int]:
    """Rows of ``sid`` in every table of the store that keys rows by session (and its stream
    tickets), read from the database directly; for the memory store, what it holds."""
    store = runtime.store
    if isinstance(store, MemoryStore):
        saved = await store.load_saved(sid)
        return {
            "logs": int(sid in store.sessions()),
            "snapshots": int(await store.read_snapshot(sid) is not None),
            "saved": int(saved is not None),
        }
    settings = runtime.settings
    if settings.store == "sqlite":
        return await asyncio.to_thread(_sqlite_rows, Path(settings.data_dir) / DATABASE_NAME, sid)
    return await _postgres_rows(settings.store, settings.postgres_schema, sid)


def _sqlite_rows(path: Path, sid: str) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        counts = {}
        for table in tables:
            columns = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            if "session_id" in columns:
                query = f"SELECT count(*) FROM {table} WHERE session_id = ?"
                counts[table] = conn.execute(query, (sid,)).fetchone()[0]
        return counts
    finally:
        conn.close()


async def _postgres_rows(dsn: str, schema: str, sid: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT table_name FROM information_schema.columns"
            " WHERE table_schema = %s AND column_name = 'session_id'",
            (schema,),
        )
        tables = [row[0] for row in await cursor.fetchall()]
        counts = {}
        for table in tables:
            query = sql.SQL("SELECT count(*) FROM {}.{} WHERE session_id = %s").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            counts[table] = (await (await conn.execute(query, (sid,))).fetchone() or [0])[0]
        query = sql.SQL("SELECT count(*) FROM {}.stream_tickets WHERE path LIKE %s").format(
            sql.Identifier(schema)
        )
        row = await (await conn.execute(query, (f"/v1/sessions/{sid}/%",))).fetchone()
        counts["stream_tickets"] = row[0] if row else 0
        return counts


def _nothing(counts: dict[str, int]) -> bool:
    return bool(counts) and not any(counts.values())


async def _lively(client: Any, project: Path, **config: Any) -> str:
    """A session with messages (past a snapshot), an active file and a working-context key."""
    sid: str = await client.create_session(project_root=str(project), config=config or None)
    for n in range(4):
        await client.send_message(sid, "user", f"message {n}")
    await client.add_file(sid, "src/app.py")
    await client.put_working_context(sid, "k", [1])
    return sid


async def _next_purged(events: Subscription) -> Event:
    return await until(events, EventType.SESSION_PURGED.value)


async def test_purge_removes_every_row_of_a_live_session(
    client: jidoka.Client | RemoteClient, runtime: jidoka.Runtime, project: Path
) -> None:
    sid = await _lively(client, project)
    other = await _lively(client, project)
    await client.save_session(sid)
    await quiesce(runtime)
    before = await stored_rows(runtime, sid)
    assert sum(before.values()) > 0
    before_seq = len(await runtime.client.read_events(sid, limit=1000)) + 3  # + its termination
    async with runtime.client.subscribe_to_all_sessions() as everyone:
        await client.purge_session(sid)
        purged = await _next_purged(everyone)
    assert (purged.session_id, purged.data) == (sid, {"reason": "requested", "owner": None})
    assert payload_of(purged) == SessionPurgedData(reason="requested", owner=None)
    assert purged.seq == (0 if isinstance(runtime.store, MemoryStore) else before_seq)
    await quiesce(runtime)
    assert _nothing(await stored_rows(runtime, sid)), await stored_rows(runtime, sid)
    with pytest.raises(SessionNotFound):
        await client.get_session_info(sid)
    with pytest.raises(SessionNotFound):
        await client.purge_session(sid)  # twice: nothing left to purge
    assert sid not in runtime.manager.tombstone_ids()
    assert sid not in runtime.cache.sessions()
    assert all(s.session_id != sid for s in await client.list_saved_sessions())
    # The other session is untouched.
    assert len(await client.get_conversation_history(other)) == 4
    assert sum((await stored_rows(runtime, other)).values()) > 0


async def test_purge_of_a_terminated_session(
    client: jidoka.Client | RemoteClient, runtime: jidoka.Runtime, project: Path
) -> None:
    sid = await _lively(client, project)
    await client.terminate_session(sid)
    await client.purge_session(sid)
    with pytest.raises(SessionNotFound):
        await client.get_session_info(sid)
    await quiesce(runtime)
    assert _nothing(await stored_rows(runtime, sid))


async def test_purge_refuses_what_cannot_name_a_session(
    client: jidoka.Client | RemoteClient,
) -> None:
    for bad in ("", "not-an-id", "01ZZZZZZZZZZZZZZZZZZZZZZZZ"):
        with pytest.raises(SessionNotFound):
            await client.purge_session(bad)


@asynccontextmanager
async def retaining(clock: FakeClock, **settings: Any) -> AsyncIterator[jidoka.Runtime]:
    """A runtime (on the store under test) with retention on: sweeps every minute, two
    sessions a batch (so a pass takes several), a snapshot every two events."""
    rt = jidoka.Runtime(
        clock=clock,
        shutdown_grace_seconds=2.0,
        terminated_ttl=TTL,
        saved_ttl=SAVED_TTL,
        retention_sweep_seconds=60.0,
        retention_batch=2,
        snapshot_interval=2,
        **settings,
    )
    await rt.start()
    try:
        yield rt
    finally:
        await close_on_fake_clock(rt, clock)


async def _advance(rt: jidoka.Runtime, clock: FakeClock, seconds: float) -> None:
    """Move the clock a minute at a time (so every timer fires in order) and let it act."""
    while seconds > 0:
        step = min(seconds, 60.0)
        clock.advance(step)
        seconds -= step
        await quiesce(rt)


async def test_the_sweep_removes_expired_sessions_and_never_a_live_one(
    clock: FakeClock, project: Path, store_backend: str
) -> None:
    async with retaining(clock) as rt:
        client = rt.client
        ended = [await _lively(client, project) for _ in range(5)]
        live = [await _lively(client, project, timeout_minutes=0) for _ in range(2)]
        await client.save_session(ended[0])
        await client.save_session(live[0])
        for sid in ended:
            await client.terminate_session(sid)
        await quiesce(rt)
        async with client.subscribe_to_all_sessions() as everyone:
            await _advance(rt, clock, TTL - 120)  # not yet
            for sid in ended:
                assert (await client.get_session_info(sid)).status == "terminated"
            await _advance(rt, clock, 180)
            purged = [await _next_purged(everyone) for _ in ended]
        assert sorted(e.session_id for e in purged) == sorted(ended)
        assert {e.data["reason"] for e in purged} == {"expired"}
        for sid in ended:
            with pytest.raises(SessionNotFound):
                await client.get_session_info(sid)
            rows = await stored_rows(rt, sid)
            # Only the saved copy stays: it expires by saved_ttl, not with its session.
            kept = {"saved_sessions": 1} if sid == ended[0] else {}
            if isinstance(rt.store, MemoryStore):
                kept = {"saved": 1} if sid == ended[0] else {}
            assert {t: n for t, n in rows.items() if n} == kept, (sid, rows)
        for sid in live:
            info = await client.get_session_info(sid)
            assert info.status in ("active", "idle")
            assert len(await client.get_conversation_history(sid)) == 4
        # Twice: nothing left to do, nothing else touched.
        assert await rt.manager.retention.sweep() == (0, 0)
        # The saved copies expire by their own age: only the copies go.
        await _advance(rt, clock, SAVED_TTL - TTL)
        saved = {s.session_id for s in await client.list_saved_sessions()}
        assert saved == set()
        assert len(await client.get_conversation_history(live[0])) == 4
        assert (await client.get_session_info(live[0])).status in ("active", "idle")
        if not isinstance(rt.store, MemoryStore):
            assert _nothing(await stored_rows(rt, ended[0]))


async def test_retention_is_off_by_default(
    runtime: jidoka.Runtime, clock: FakeClock, project: Path
) -> None:
    assert runtime.settings.terminated_ttl is None
    assert runtime.settings.saved_ttl is None
    sid = await _lively(runtime.client, project)
    await runtime.client.save_session(sid)
    await runtime.client.terminate_session(sid)
    clock.advance(365 * 86400.0)
    await quiesce(runtime)
    assert await runtime.manager.retention.sweep() == (0, 0)
    assert (await runtime.client.get_session_info(sid)).status == "terminated"
    assert [s.session_id for s in await runtime.client.list_saved_sessions()] == [sid]


@pytest.mark.stores("sqlite", "postgres")
async def test_a_session_found_corrupt_is_purged_too(tmp_path: Path, clock: FakeClock) -> None:
    """A session that cannot be loaded (buried as terminated with ``error``) can still be
    purged: that is what is left to do with it."""
    data = tmp_path / "data"
    async with jidoka.Runtime(data, clock=clock) as rt:
        bad = await rt.client.create_session()
        await rt.client.send_message(bad, "user", "soon unreadable")
    statement = "UPDATE events SET data = ? WHERE session_id = ? AND seq = 3"
    assert await tamper(data, statement, b"{no", bad) == 1
    async with jidoka.Runtime(data, clock=clock) as rt:
        await rt.client.purge_session(bad)
        with pytest.raises(SessionNotFound):
            await rt.client.get_session_info(bad)
        assert _nothing(await stored_rows(rt, bad))
