"""Durable sessions on the SQLite and the Postgres store: restart, save/restore, corruption; and
on SQLite alone, what is about its file: the data directory's lock, its schema versions, a full
disk (Postgres's own are in tests/unit/test_store_postgres.py and test_postgres_migration.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import jidoka
from jidoka import FakeClock, Status
from jidoka.store.base import SeqConflict
from jidoka.store.postgres import PostgresStore, is_postgres_dsn
from jidoka.store.sqlite import DATABASE_NAME, SCHEMA_VERSION, SchemaError, SqliteStore
from tests.fixtures.make_v1_database import ENDED, LIVE
from tests.helpers import drain, quiesce, until
from tests.support.postgres import execute_in_schema

pytestmark = pytest.mark.stores("sqlite", "postgres")

FIXTURES = Path(__file__).parent.parent / "fixtures"


async def tamper(data: Path, statement: str, *params: object) -> int:
    """Run ``statement`` (``?`` placeholders) on the tables of the store under test (the data
    directory's database, or the test's Postgres schema): damage done behind the store's back.
    The number of rows it touched."""
    store = os.environ["JIDOKA_STORE"]
    if is_postgres_dsn(store):
        schema = os.environ["JIDOKA_POSTGRES_SCHEMA"]
        return await execute_in_schema(store, schema, statement.replace("?", "%s"), params)
    with contextlib.closing(sqlite3.connect(data / DATABASE_NAME)) as conn, conn:
        return conn.execute(statement, params).rowcount


async def open_store_under_test(tmp_path: Path) -> SqliteStore | PostgresStore:
    store = os.environ["JIDOKA_STORE"]
    opened: SqliteStore | PostgresStore
    if is_postgres_dsn(store):
        opened = PostgresStore(store, schema=os.environ["JIDOKA_POSTGRES_SCHEMA"])
    else:
        opened = SqliteStore(tmp_path / "db.sqlite3")
    await opened.open()
    return opened


def comparable(state: dict[str, Any]) -> dict[str, Any]:
    """A projection snapshot without what a restart legitimately changes."""
    return {k: v for k, v in state.items() if k not in ("seq", "status", "updated_at")}


async def test_restart_brings_live_sessions_back_idle(
    tmp_path: Path, project: Path, clock: FakeClock
) -> None:
    data = tmp_path / "data"
    async with jidoka.Runtime(data, clock=clock) as rt:
        client = rt.client
        busy = await client.create_session(project_root=str(project), metadata={"n": 1})
        await client.add_file(busy, "src/app.py")
        await client.update_file_index(busy, "README.md", {"summary": "docs"})
        await client.put_working_context(busy, "plan", {"step": 2})
        for n in range(7):
            await client.send_message(busy, "user", f"message {n}")
        quiet = await client.create_session(config={"idle_after_seconds": 5})
        ended = await client.create_session(metadata={"kept": True}, owner="alice")
        await client.send_message(ended, "user", "before the end")
        await client.terminate_session(ended, reason="finished")
        async with client.subscribe_to_all_sessions() as events:
            clock.advance(5)
            await until(events, "session_status", status="idle")
        before = {sid: rt.manager.get(sid).state.snapshot() for sid in (busy, quiet)}

    async with jidoka.Runtime(data, clock=clock) as rt:
        client = rt.client
        listed = await client.list_sessions()
        assert [(i.session_id, i.status) for i in listed] == [
            (busy, Status.IDLE),
            (quiet, Status.IDLE),
        ]
        for sid in (busy, quiet):
            after = rt.manager.get(sid).state.snapshot()
            assert comparable(after) == comparable(before[sid])
        assert [m.content for m in await client.get_conversation_history(busy)][-1] == "message 6"
        assert await client.get_working_context(busy, "plan") == {"step": 2}
        assert [f.path for f in await client.get_active_files(busy)] == ["src/app.py"]
        index = {e.path: e for e in await client.get_file_index(busy)}
        assert index["README.md"].extra == {"summary": "docs"}
        # A session terminated before the restart is not live, but not forgotten either: its
        # log still tells what became of it (the tombstone contract survives the restart).
        gone = await client.get_session_info(ended)
        assert (gone.status, gone.reason, gone.owner) == (Status.TERMINATED, "finished", "alice")
        assert (gone.metadata, gone.conversation_count) == ({"kept": True}, 1)
        with pytest.raises(jidoka.SessionTerminated):
            await client.send_message(ended, "user", "too late")
        with pytest.raises(jidoka.InvalidTransition):
            await client.terminate_session(ended)
        with pytest.raises(jidoka.SessionNotFound):  # right shape, never existed
            await client.get_session_info("01ZZZZZZZZZZZZZZZZZZZZZZZZ")
        await client.send_message(busy, "user", "after the restart")  # usable, seq continues
        stored = await rt.read_events(busy)
        assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
        assert stored[-2].data == {"status": "active", "previous": "idle"}


async def test_loading_is_lazy(tmp_path: Path, clock: FakeClock) -> None:
    data = tmp_path / "data"
    async with jidoka.Runtime(data, clock=clock) as rt:
        ids = [await rt.client.create_session() for _ in range(20)]
    async with jidoka.Runtime(data, clock=clock) as rt:
        manager = rt.manager
        assert manager.live_count() == 0  # nothing loaded, nothing even listed
        await rt.client.send_message(ids[3], "user", "wake up")
        assert set(manager._live) == {ids[3]}
        clock.advance(300)
        await quiesce(rt)
        assert set(manager._live) == {ids[3]}  # nobody asked for the others
        # One default time-out after the start, the sweep loads the quiet ones: they time out.
        async with rt.client.subscribe_to_all_sessions() as events:
            clock.advance(30 * 60 - 300)
            ended: list[jidoka.Event] = []
            while len(ended) < 19:
                ended.append(await until(events, "session_terminated"))
        assert {e.session_id for e in ended} == set(ids) - {ids[3]}
        assert {e.data.get("reason") for e in ended} == {"timeout"}
        assert manager.is_live(ids[3])  # idle since 300: its time-out is later


async def test_listing_by_owner_loads_only_the_owners_page(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A server lists one principal's sessions: after a restart, that loads the page it
    returns and nothing of anyone else's (the store knows each recovered session's owner)."""
    data = tmp_path / "data"
    alice: list[str] = []
    bob: list[str] = []
    async with jidoka.Runtime(data, clock=clock) as rt:
        for _ in range(30):  # interleaved: the two owners' ids alternate
            alice.append(await rt.client.create_session(owner="alice"))
            bob.append(await rt.client.create_session(owner="bob"))
    async with jidoka.Runtime(data, clock=clock) as rt:
        manager = rt.manager
        assert manager.live_count() == 0  # nothing loaded yet

        page = await manager.list_sessions(owner="alice", limit=5)
        assert [(i.session_id, i.owner, i.status) for i in page] == [
            (sid, "alice", Status.IDLE) for sid in alice[:5]
        ]
        assert set(manager._live) == set(alice[:5])  # the page, and none of bob's

        assert await manager.owner_of(bob[0]) == "bob"  # answered without loading it
        assert not manager.is_live(bob[0])

        page = await manager.list_sessions(owner="alice", limit=5, after=alice[4])
        assert [i.session_id for i in page] == alice[5:10]
        everything = await manager.list_sessions(owner="alice")
        assert [i.session_id for i in everything] == alice
        assert not any(manager.is_live(sid) for sid in bob)
        assert manager.live_ids() == frozenset(alice)  # bob's are in the store alone
        assert [s.session_id for s in await rt.store.list_sessions(owner="bob")] == bob

        idle = await manager.list_sessions("idle", owner="bob", limit=3)
        assert [i.session_id for i in idle] == bob[:3]
        assert await manager.list_sessions(owner="mallory") == []
        assert set(manager._live) == {*alice, *bob[:3]}


async def test_a_restored_session_keeps_its_owner_across_a_restart(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A restored session's ``session_created`` carries its owner in the saved copy."""
    data = tmp_path / "data"
    async with jidoka.Runtime(data, clock=clock) as rt:
        sid = await rt.client.create_session(owner="carol")
        other = await rt.client.create_session(owner="dave")
        await rt.client.save_session(sid)
        await rt.client.terminate_session(sid)
        await rt.client.restore_session(sid)
    async with jidoka.Runtime(data, clock=clock) as rt:
        manager = rt.manager
        assert await manager.owner_of(sid) == "carol"
        assert not manager.is_live(sid)
        assert [i.session_id for i in await manager.list_sessions(owner="carol")] == [sid]
        assert not manager.is_live(other)
        assert (await manager.info(sid)).owner == "carol"  # what the loaded session says


async def test_snapshot_plus_tail_equals_live(tmp_path: Path, clock: FakeClock) -> None:
    data = tmp_path / "data"
    async with jidoka.Runtime(data, clock=clock, snapshot_interval=5) as rt:
        sid = await rt.client.create_session(config={"max_history": 4})
        for n in range(23):
            await rt.client.send_message(sid, "user", str(n))
            await rt.client.put_working_context(sid, "n", n)
        await rt.manager.wait_background()  # snapshots are written in the background
        live = rt.manager.get(sid).state.snapshot()
        snapshot = await rt.store.read_snapshot(sid)
        assert snapshot is not None
        assert snapshot[0] > 40
    async with jidoka.Runtime(data, clock=clock) as rt:
        await rt.client.get_session_info(sid)
        session = rt.manager.get(sid)
        assert session.snapshot_seq == snapshot[0]
        assert comparable(session.state.snapshot()) == comparable(live)


async def test_save_terminate_restore_round_trip(
    tmp_path: Path, project: Path, clock: FakeClock
) -> None:
    data = tmp_path / "data"
    async with jidoka.Runtime(data, clock=clock) as rt:
        client = rt.client
        sid = await client.create_session(
            project_root=str(project), metadata={"title": "keep me"}, llm_config={"model": "m"}
        )
        await client.add_file(sid, "src/app.py")
        await client.put_working_context(sid, "k", [1, 2])
        for n in range(3):
            await client.send_message(sid, "user", f"m{n}")
        saved = await client.save_session(sid)
        assert (saved.session_id, saved.message_count, saved.metadata) == (
            sid,
            3,
            {"title": "keep me"},
        )
        before = rt.manager.get(sid).state.snapshot()
        await client.terminate_session(sid)
        assert [s.session_id for s in await client.list_saved_sessions()] == [sid]

    async with jidoka.Runtime(data, clock=clock) as rt:  # the copy outlives a restart
        client = rt.client
        (listed,) = await client.list_saved_sessions()
        assert listed == saved
        info = await client.restore_session(sid)
        assert (info.session_id, info.status) == (sid, Status.ACTIVE)
        assert comparable(rt.manager.get(sid).state.snapshot()) == comparable(before)
        assert [f.path for f in await client.get_active_files(sid)] == ["src/app.py"]
        assert info.llm_config == {"model": "m"}
        with pytest.raises(jidoka.SessionExists) as exists:
            await client.restore_session(sid)
        assert exists.value.session_id == sid
        message = await client.send_message(sid, "user", "second life")
        events = await rt.read_events(sid)
        assert [e.seq for e in events] == list(range(1, message.seq + 1))  # one log, continued
        await client.delete_saved_session(sid)
        assert await client.list_saved_sessions() == []
        with pytest.raises(jidoka.SessionNotFound):
            await client.delete_saved_session(sid)
        with pytest.raises(jidoka.SessionNotFound):
            await client.restore_session("0" * 26)


async def test_timeout_saves_then_terminates(tmp_path: Path, clock: FakeClock) -> None:
    async with jidoka.Runtime(tmp_path / "data", clock=clock) as rt:
        client = rt.client
        config = {"idle_after_seconds": 1, "timeout_minutes": 1}
        sid = await client.create_session(config=config, metadata={"who": "sleepy"})
        await client.send_message(sid, "user", "remember me")
        async with client.subscribe_to_session(sid) as events:
            clock.advance(1)
            await until(events, "session_status", status="idle")
            clock.advance(60)
            tail = await drain(events)
        assert tail[-1].data["reason"] == "timeout"
        (saved,) = await client.list_saved_sessions()
        assert (saved.session_id, saved.message_count) == (sid, 1)
        await client.restore_session(sid)
        history = await client.get_conversation_history(sid)
        assert [m.content for m in history] == ["remember me"]


async def test_persistence_disabled_timeout_does_not_save(tmp_path: Path, clock: FakeClock) -> None:
    async with jidoka.Runtime(tmp_path / "data", clock=clock) as rt:
        config = {"idle_after_seconds": 1, "timeout_minutes": 1, "persistence_enabled": False}
        sid = await rt.client.create_session(config=config)
        async with rt.client.subscribe_to_session(sid) as events:
            clock.advance(1)
            await until(events, "session_status", status="idle")
            clock.advance(60)
            await drain(events)
        assert await rt.client.list_saved_sessions() == []


async def test_corrupt_session_fails_alone(tmp_path: Path, clock: FakeClock) -> None:
    data = tmp_path / "data"
    async with jidoka.Runtime(data, clock=clock) as rt:
        good = await rt.client.create_session()
        bad = await rt.client.create_session(owner="alice")
        await rt.client.send_message(bad, "user", "soon unreadable")
        await rt.client.send_message(good, "user", "fine")
    touched = await tamper(data, "UPDATE events SET data = ? WHERE session_id = ? AND seq = 3",
                           b"{no", bad)  # fmt: skip
    assert touched == 1
    async with jidoka.Runtime(data, clock=clock) as rt:
        info = await rt.client.get_session_info(bad)
        assert (info.status, info.reason) == (Status.TERMINATED, "error")
        assert info.error is not None
        assert "corrupt" in info.error
        assert info.owner == "alice"  # the tombstone keeps the owner the store recorded
        assert [i.session_id for i in await rt.client.list_sessions(owner="alice")] == [bad]
        with pytest.raises(jidoka.SessionTerminated):
            await rt.client.send_message(bad, "user", "x")
        assert [m.content for m in await rt.client.get_conversation_history(good)] == ["fine"]
        assert [i.session_id for i in await rt.client.list_sessions("idle")] == [good]
    async with jidoka.Runtime(data, clock=clock) as rt:  # marked terminated: not retried
        assert [i.session_id for i in await rt.client.list_sessions()] == [good]
        stored = await rt.store.find_session(bad)
        assert stored is not None
        assert stored.status == "terminated"


async def test_corrupt_snapshot_falls_back_to_the_log(tmp_path: Path, clock: FakeClock) -> None:
    data = tmp_path / "data"
    async with jidoka.Runtime(data, clock=clock, snapshot_interval=2) as rt:
        sid = await rt.client.create_session()
        for n in range(5):
            await rt.client.send_message(sid, "user", str(n))
        await rt.manager.wait_background()
    # Every snapshot of the session (one per two events, all kept).
    assert await tamper(data, "UPDATE snapshots SET state = ?", b"\x00") >= 2
    async with jidoka.Runtime(data, clock=clock) as rt:
        history = await rt.client.get_conversation_history(sid)
        assert [m.content for m in history] == ["0", "1", "2", "3", "4"]


@pytest.mark.stores("sqlite")  # a data directory's lock; runtimes share a Postgres database
async def test_second_runtime_on_same_data_dir_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    data = tmp_path / "data"
    async with jidoka.Runtime(data, clock=clock):
        with pytest.raises(jidoka.DataDirLocked) as locked:
            async with jidoka.Runtime(data, clock=clock):
                pass
        assert str(data) in str(locked.value)
        code = (
            "import asyncio, jidoka\n"
            "async def main():\n"
            f"    async with jidoka.Runtime({str(data)!r}):\n"
            "        pass\n"
            "try:\n"
            "    asyncio.run(main())\n"
            "except jidoka.DataDirLocked as exc:\n"
            "    print('LOCKED', exc.data_dir)\n"
        )
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert result.stdout.strip() == f"LOCKED {data}", result.stderr
    async with jidoka.Runtime(data, clock=clock):  # released on close
        pass


@pytest.mark.stores("sqlite")  # Postgres: test_postgres_migration.py
async def test_migrates_a_version_1_database(tmp_path: Path, clock: FakeClock) -> None:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(FIXTURES / "v1.sqlite3", data / DATABASE_NAME)
    async with jidoka.Runtime(data, clock=clock) as rt:
        assert [i.session_id for i in await rt.client.list_sessions()] == [LIVE]
        history = await rt.client.get_conversation_history(LIVE)
        assert [(m.role, m.content) for m in history] == [
            ("user", "written by version 1"),
            ("assistant", "and migrated"),
        ]
        assert await rt.client.get_working_context(LIVE, "plan") == ["migrate"]
        info = await rt.client.get_session_info(LIVE)
        assert info.metadata == {"origin": "v1"}
        assert str(info.created_at) == "2026-01-01 00:00:01+00:00"
        assert [e.seq for e in await rt.read_events(LIVE)] == [1, 2, 3, 4, 5, 6]
        assert ENDED not in rt.manager.live_ids()
    with sqlite3.connect(data / DATABASE_NAME) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT owner FROM sessions").fetchall() == [(None,), (None,)]


#: The tables of schema versions 2 and 3 as they were; 3 added ``saved_sessions.owner``.
_SCHEMA_V2_V3 = """
CREATE TABLE events (
    session_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL,
    time_us INTEGER NOT NULL, data BLOB NOT NULL, UNIQUE (session_id, seq)
);
CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY, status TEXT NOT NULL, updated_us INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX sessions_live ON sessions (status) WHERE status != 'terminated';
CREATE TABLE snapshots (session_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, state BLOB NOT NULL);
CREATE TABLE saved_sessions (
    session_id TEXT PRIMARY KEY, saved_us INTEGER NOT NULL, message_count INTEGER NOT NULL,
    metadata BLOB NOT NULL, state BLOB NOT NULL{saved_owner}
);
"""


@pytest.mark.stores("sqlite")  # SQLite's versions 2 and 3 (Postgres started at 1 with owners)
@pytest.mark.parametrize("version", [2, 3])
async def test_migration_records_the_owners_of_live_sessions(tmp_path: Path, version: int) -> None:
    """Version 4 keeps each session's owner beside its status; migrating fills it in from the
    session's latest ``session_created`` (a restored one's saved copy), and data that does not
    decode leaves it unknown instead of failing the migration."""
    alice, restored, nobody, corrupt, ended = (f"01KDVDNA00V3F1XTVRE000000{n}" for n in range(5))

    def created(**data: object) -> bytes:
        return json.dumps({"status": "initializing", **data}).encode()

    terminated = json.dumps({"reason": "requested", "error": None}).encode()
    events = [
        (alice, 1, "session_created", created(owner="alice")),
        (alice, 2, "session_status", b'{"status": "active", "previous": "initializing"}'),
        (restored, 1, "session_created", created(owner="someone before")),
        (restored, 2, "session_terminated", terminated),
        (restored, 3, "session_created", created(state={"owner": "carol"}, restored_from="x")),
        (nobody, 1, "session_created", created()),
        (corrupt, 1, "session_created", b"{not json"),
        (ended, 1, "session_created", created(owner="erin")),
        (ended, 2, "session_terminated", terminated),
    ]
    statuses = {alice: "active", restored: "initializing", nobody: "initializing",
                corrupt: "initializing", ended: "terminated"}  # fmt: skip
    path = tmp_path / "old.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(_SCHEMA_V2_V3.format(saved_owner=", owner TEXT" if version == 3 else ""))
        conn.executemany(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
            [(sid, seq, type_, seq, data) for sid, seq, type_, data in events],
        )
        conn.executemany("INSERT INTO sessions VALUES (?, ?, 0)", statuses.items())
        conn.execute(f"PRAGMA user_version = {version}")
        conn.commit()

    store = SqliteStore(path)
    await store.open()
    try:
        live = await store.list_sessions()
    finally:
        await store.aclose()
    assert [(s.session_id, s.status, s.owner) for s in live] == [
        (alice, "active", "alice"),
        (restored, "initializing", "carol"),
        (nobody, "initializing", None),
        (corrupt, "initializing", None),
    ]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        owner = conn.execute("SELECT owner FROM sessions WHERE session_id = ?", (ended,))
        assert owner.fetchone() == ("erin",)
        assert conn.execute("SELECT owner FROM saved_sessions").fetchall() == []


@pytest.mark.stores("sqlite")  # Postgres: tests/unit/test_store_postgres.py
async def test_newer_schema_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    data = tmp_path / "data"
    async with jidoka.Runtime(data, clock=clock):
        pass
    with sqlite3.connect(data / DATABASE_NAME) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaError, match="newer"):
        async with jidoka.Runtime(data, clock=clock):
            pass
    async with jidoka.Runtime(tmp_path / "other", clock=clock):  # the lock was released
        pass


@pytest.mark.stores("sqlite")  # Postgres: tests/unit/test_store_postgres.py (foreign tables)
async def test_foreign_database_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / DATABASE_NAME) as conn:
        conn.execute("CREATE TABLE mine (x)")
    with pytest.raises(jidoka.StoreError, match="not a Jidoka database"):
        async with jidoka.Runtime(data, clock=clock):
            pass


@pytest.mark.stores("sqlite")  # max_database_bytes; Postgres's failed commits: its outages
async def test_full_database_fails_the_batch_and_applies_nothing(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with jidoka.Runtime(tmp_path / "data", clock=clock, max_database_bytes=128 * 1024) as rt:
        client = rt.client
        ids = [await client.create_session() for _ in range(4)]
        big = "x" * 8_000
        failures: list[jidoka.StoreError] = []
        for _ in range(40):
            results = await asyncio.gather(
                *(client.send_message(sid, "user", big) for sid in ids), return_exceptions=True
            )
            failures += [r for r in results if isinstance(r, jidoka.StoreError)]
            if failures:
                break
        assert failures, "the database never filled up"
        assert {f.session_id for f in failures} <= set(ids)
        assert all(f.session_id is not None and f.session_id in str(f) for f in failures)
        for sid in ids:
            history = await client.get_conversation_history(sid)
            logged = [e for e in await rt.read_events(sid) if e.type == "conversation_added"]
            assert len(history) == len(logged)  # the projection matches the disk
        info = await client.get_session_info(ids[0])
        assert info.status is Status.ACTIVE


async def test_group_commit_shares_transactions(tmp_path: Path, clock: FakeClock) -> None:
    async with jidoka.Runtime(tmp_path / "data", clock=clock) as rt:
        client = rt.client
        ids = [await client.create_session() for _ in range(100)]
        store = rt.store
        commits = store.commits  # type: ignore[attr-defined]

        async def twenty(sid: str) -> None:
            for n in range(20):
                await client.send_message(sid, "user", str(n))

        await asyncio.gather(*(twenty(sid) for sid in ids))
        used = store.commits - commits  # type: ignore[attr-defined]
        assert used < 2000 / 4, f"{used} commits for 2000 appends"
        for sid in ids:
            assert [m.content for m in await client.get_conversation_history(sid)] == [
                str(n) for n in range(20)
            ]


async def test_closed_store_refuses_every_command_without_hanging(
    tmp_path: Path, clock: FakeClock
) -> None:
    store = await open_store_under_test(tmp_path)
    async with jidoka.Runtime(store=store, clock=clock) as rt:
        sid = await rt.client.create_session()
        await store.aclose()
        for _ in range(2):  # the second must not wait for the first
            with pytest.raises(jidoka.RuntimeClosed):
                await asyncio.wait_for(rt.client.send_message(sid, "user", "x"), 10)


async def test_a_queued_load_of_a_session_a_client_loaded_first_does_nothing(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The sweep queues a load; a client that loads the session first must not turn the
    queued load into a failure ("background task failed") when it finally runs."""
    data = tmp_path / "data"
    async with jidoka.Runtime(data, clock=clock) as rt:
        sid = await rt.client.create_session()
    async with jidoka.Runtime(data, clock=clock) as rt:
        manager = rt.manager
        assert not manager.is_live(sid)  # in the store alone until asked for
        await rt.client.get_session_info(sid)  # the client loads it
        assert manager.is_live(sid)
        await manager._load_quietly(sid)  # the sweep's queued load, arriving late
        assert manager.is_live(sid)
        await rt.client.terminate_session(sid)
        await manager._load_quietly(sid)  # and after it ended


async def test_one_session_s_concurrent_appends_share_commits(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Many callers appending to one session queue behind the commit in flight: they share
    transactions, keep the order they were sent in, and each gets its own seq."""
    async with jidoka.Runtime(tmp_path / "data", clock=clock) as rt:
        client = rt.client
        sid = await client.create_session(config={"max_history": 500})
        store = rt.store
        commits = store.commits  # type: ignore[attr-defined]
        sent = await asyncio.gather(*(client.send_message(sid, "user", str(n)) for n in range(200)))
        used = store.commits - commits  # type: ignore[attr-defined]
        assert used < 200 / 4, f"{used} commits for 200 appends to one session"
        assert [m.content for m in sent] == [str(n) for n in range(200)]
        assert [m.seq for m in sent] == list(range(sent[0].seq, sent[0].seq + 200))
        history = await client.get_conversation_history(sid)
        assert [(m.content, m.seq) for m in history] == [(m.content, m.seq) for m in sent]
    async with jidoka.Runtime(tmp_path / "data", clock=clock) as rt:  # and they are on disk
        assert [m.content for m in await rt.client.get_conversation_history(sid)] == [
            str(n) for n in range(200)
        ]


@pytest.mark.stores("sqlite")  # fills the disk (max_database_bytes); Postgres: outage tests
async def test_appends_queued_behind_a_failed_commit_fail_and_nothing_is_lost(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A commit that fails (the database is full) fails the appends of the same session
    queued behind it, saying so: what a caller was told is stored is stored, what it was told
    failed is not, and the projection matches the log."""
    async with jidoka.Runtime(tmp_path / "data", clock=clock, max_database_bytes=128 * 1024) as rt:
        client = rt.client
        sid = await client.create_session()
        big = "x" * 8_000
        stored: list[jidoka.Message] = []
        failed: list[jidoka.StoreError] = []
        for round_ in range(40):
            results = await asyncio.gather(
                *(client.send_message(sid, "user", f"{round_}.{n} {big}") for n in range(8)),
                return_exceptions=True,
            )
            stored += [r for r in results if isinstance(r, jidoka.Message)]
            failed += [r for r in results if isinstance(r, jidoka.StoreError)]
            assert all(isinstance(r, jidoka.Message | jidoka.StoreError) for r in results)
            if failed:
                break
        assert failed, "the database never filled up"
        assert all(f.session_id == sid and sid in str(f) for f in failed)
        behind = [f for f in failed if isinstance(f, SeqConflict)]
        assert all("an earlier append of this session failed" in str(f) for f in behind)
        logged = [e for e in await rt.read_events(sid) if e.type == "conversation_added"]
        assert [e.data["content"] for e in logged] == [m.content for m in stored]
        history = await client.get_conversation_history(sid)
        assert [(m.content, m.seq) for m in history] == [(m.content, m.seq) for m in stored]


async def test_a_queued_append_whose_caller_is_cancelled_still_lands_before_the_next_command(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Appends queued behind one another are the store's once queued: cancelling their callers
    stores and applies them all the same, and the next command that reads the projection
    (``clear_conversation`` counts the messages it clears) sees every one of them."""
    async with jidoka.Runtime(tmp_path / "data", clock=clock) as rt:
        client = rt.client
        sid = await client.create_session()
        senders = [asyncio.create_task(client.send_message(sid, "user", str(n))) for n in range(20)]
        await asyncio.sleep(0)  # every sender has queued its append (the lock is free)
        for task in senders:
            task.cancel()
        cleared = await client.clear_conversation(sid)
        assert cleared == 20
        await asyncio.gather(*senders, return_exceptions=True)
        logged = await rt.read_events(sid)
        added = [e.data["content"] for e in logged if e.type == "conversation_added"]
        assert added == [str(n) for n in range(20)]
        assert logged[-1].type == "conversation_cleared"
        assert logged[-1].data["count"] == 20


async def test_a_durable_session_s_window_keeps_messages_not_events(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The log is on disk, so the window holds each message once committed rather than the
    event (and its data dict) that added it."""
    async with jidoka.Runtime(tmp_path / "data", clock=clock) as rt:
        sid = await rt.client.create_session()
        for text in ("a", "b"):
            await rt.client.send_message(sid, "user", text)
        window = rt.manager.get(sid).state.history
        assert window is not None
        assert [type(m) for m in window] == [jidoka.Message, jidoka.Message]
