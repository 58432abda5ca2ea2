"""The SQLite store finds, lists and sweeps sessions through indexes (schema versions 5 and 6), on a
new database and on one migrated from every older version; version 7 adds the runs index."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jidoka.events import Event, EventType
from jidoka.store import sqlite_runs
from jidoka.store.sqlite import SCHEMA_VERSION, SqliteStore

pytestmark = pytest.mark.stores("sqlite")

FIXTURES = Path(__file__).parent.parent / "fixtures"
INDEXES = {
    "sessions_live",
    "sessions_by_status",
    "sessions_by_owner",
    "sessions_by_owner_status",
    "sessions_quiet",
}
#: What retention reads through (schema version 6).
RETENTION_INDEXES = {"sessions_ended", "saved_sessions_by_age"}


def retention_plans(path: Path) -> list[str]:
    """How SQLite finds a batch of expired sessions and of expired saved copies."""
    ended = SqliteStore._EXPIRED
    saved = (
        "SELECT session_id, saved_us, message_count, metadata, owner FROM saved_sessions"
        " WHERE saved_us < ? ORDER BY saved_us, session_id LIMIT 5"
    )
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [
            " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))
            for sql, args in ((ended, (1, 5)), (saved, (1,)))
        ]


def plans(path: Path) -> list[str]:
    """How SQLite reads the ``sessions`` table for each query the store makes of it."""
    head = SqliteStore._HEAD
    queries: list[tuple[str, tuple[object, ...]]] = [
        (f"{head} WHERE session_id = ?", ("x",)),
        (f"{head} WHERE session_id > ? AND status != 'terminated'", ("",)),
        (f"{head} WHERE session_id > ? AND status = ?", ("", "idle")),
        (f"{head} WHERE session_id > ? AND status != 'terminated' AND owner = ?", ("", "a")),
        (f"{head} WHERE session_id > ? AND status = ? AND owner = ?", ("", "idle", "a")),
    ]
    order = " ORDER BY session_id LIMIT 5"
    out = []
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for sql, args in queries:
            rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}{order}", args).fetchall()
            out.append(" | ".join(row[3] for row in rows))
        quiet = (
            f"{head} WHERE status != 'terminated' AND updated_us < ?"
            " AND (updated_us, session_id) > (?, ?) ORDER BY updated_us, session_id LIMIT 5"
        )
        rows = conn.execute(f"EXPLAIN QUERY PLAN {quiet}", (1, -1, "")).fetchall()
        out.append(" | ".join(row[3] for row in rows))
    return out


async def open_and_close(path: Path) -> None:
    store = SqliteStore(path)
    await store.open()
    await store.aclose()


#: What version 7 added (dropping them takes a database back to version 6).
RUN_TRIGGERS = ("events_runs", "derive_runs")
RUN_TABLES = ("runs", "idempotency_keys")


def drop_runs(conn: sqlite3.Connection) -> None:
    for trigger in RUN_TRIGGERS:
        conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute("DROP VIEW run_events")
    for table in RUN_TABLES:
        conn.execute(f"DROP TABLE {table}")


@pytest.mark.parametrize("origin", ["new", "v1"])
async def test_every_read_of_sessions_is_an_index_range(tmp_path: Path, origin: str) -> None:
    """No plan scans the table or sorts: a page costs the same among a million sessions."""
    path = tmp_path / "db.sqlite3"
    if origin == "v1":
        shutil.copy(FIXTURES / "v1.sqlite3", path)
    await open_and_close(path)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        names = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")
        }
    assert names >= INDEXES | RETENTION_INDEXES
    for plan in [*plans(path), *retention_plans(path)]:
        assert plan.startswith(("SEARCH s USING", "SEARCH saved_sessions USING")), plan
        assert "SCAN" not in plan, plan
        assert "TEMP B-TREE" not in plan, plan


async def test_a_version_4_database_gains_the_indexes(tmp_path: Path) -> None:
    """Version 4 had one index on the status alone: migrating replaces it, in one step."""
    path = tmp_path / "v4.sqlite3"
    await open_and_close(path)
    with contextlib.closing(sqlite3.connect(path)) as conn:  # back to what version 4 had
        drop_runs(conn)
        for name in INDEXES | RETENTION_INDEXES:
            conn.execute(f"DROP INDEX {name}")
        conn.execute("CREATE INDEX sessions_live ON sessions (status) WHERE status != 'terminated'")
        conn.execute(
            "INSERT INTO sessions VALUES ('01KDVDNA00V3F1XTVRE0000000', 'idle', 5, 'alice')"
        )
        conn.execute("PRAGMA user_version = 4")
        conn.commit()
    store = SqliteStore(path)
    await store.open()
    try:
        [found] = await store.list_sessions(owner="alice", status="idle")
        assert (found.session_id, found.updated_at is not None) == (
            "01KDVDNA00V3F1XTVRE0000000",
            True,
        )
    finally:
        await store.aclose()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'sessions_live'").fetchone()
    assert "(session_id)" in sql[0]
    assert all(plan.startswith("SEARCH s USING") for plan in plans(path))


async def test_a_version_5_database_keeps_its_snapshots_and_then_keeps_them_all(
    tmp_path: Path,
) -> None:
    """Version 6 keys snapshots by seq too (the projection at any seq starts from one):
    migrating keeps the one snapshot each session had."""
    path = tmp_path / "v5.sqlite3"
    await open_and_close(path)
    sid = "01KDVDNA00V3F1XTVRE0000000"
    with contextlib.closing(sqlite3.connect(path)) as conn:  # back to what version 5 had
        drop_runs(conn)
        for name in RETENTION_INDEXES:
            conn.execute(f"DROP INDEX {name}")
        conn.execute("DROP TABLE snapshots")
        conn.execute(
            "CREATE TABLE snapshots (session_id TEXT PRIMARY KEY, seq INTEGER NOT NULL,"
            " state BLOB NOT NULL)"
        )
        conn.execute("INSERT INTO snapshots VALUES (?, 500, ?)", (sid, b"five hundred"))
        conn.execute("PRAGMA user_version = 5")
        conn.commit()
    store = SqliteStore(path)
    await store.open()
    try:
        assert await store.read_snapshot(sid) == (500, b"five hundred")
        await store.write_snapshot(sid, 1000, b"a thousand")
        assert await store.read_snapshot(sid) == (1000, b"a thousand")
        assert await store.read_snapshot(sid, at_most=999) == (500, b"five hundred")
    finally:
        await store.aclose()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7


async def test_a_version_5_database_gains_the_retention_indexes(tmp_path: Path) -> None:
    """Version 6's step adds retention's two indexes, and nothing else changes."""
    path = tmp_path / "v5.sqlite3"
    await open_and_close(path)
    with contextlib.closing(sqlite3.connect(path)) as conn:  # back to what version 5 had
        drop_runs(conn)
        for name in RETENTION_INDEXES:
            conn.execute(f"DROP INDEX {name}")
        conn.execute("PRAGMA user_version = 5")
        conn.commit()
    await open_and_close(path)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
        names = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")
        }
    assert names >= INDEXES | RETENTION_INDEXES
    for plan in retention_plans(path):
        assert plan.startswith("SEARCH"), plan
        assert "TEMP B-TREE" not in plan, plan


async def test_a_version_6_database_gains_the_runs_index(tmp_path: Path) -> None:
    """Version 7's step adds the runs tables and their triggers; the sessions stay, and run
    events appended after the migration are indexed, read through the partial indexes."""
    path = tmp_path / "v6.sqlite3"
    await open_and_close(path)
    sid = "01KDVDNA00V3F1XTVRE0000000"
    with contextlib.closing(sqlite3.connect(path)) as conn:  # back to what version 6 had
        drop_runs(conn)
        conn.execute("INSERT INTO sessions VALUES (?, 'idle', 5, 'alice')", (sid,))
        conn.execute(
            "INSERT INTO events VALUES (?, 1, 'session_created', 5, ?)",
            (sid, b'{"status": "initializing", "owner": "alice"}'),
        )
        conn.execute("PRAGMA user_version = 6")
        conn.commit()
    store = SqliteStore(path)
    await store.open()
    try:
        [found] = await store.list_sessions(owner="alice")
        assert found.session_id == sid
        data = {"run_id": "r1", "text": "go", "multitask": "reject", "idempotency_key": "k"}
        when = datetime(2026, 1, 1, tzinfo=UTC)
        await store.append(sid, [Event(EventType.RUN_QUEUED, sid, 2, when, data)])
        run = await store.get_run("r1")
        assert run is not None
        assert (run.session_id, run.owner, run.status) == (sid, "alice", "queued")
        key = await store.find_idempotency("alice", "k")
        assert key is not None
        assert key.run_id == "r1"
    finally:
        await store.aclose()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
        triggers = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")
        }
        assert triggers == set(RUN_TRIGGERS)
        run_plans = [
            " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))
            for sql, args in (
                (sqlite_runs._UNFINISHED + " AND (session_id, seq) > (?, ?)"
                 " ORDER BY session_id, seq LIMIT 5", ("", -1)),
                (sqlite_runs._DUE, (1, 5)),
            )
        ]  # fmt: skip
    for plan in run_plans:
        assert plan.startswith("SEARCH"), plan
        assert "TEMP B-TREE" not in plan, plan
