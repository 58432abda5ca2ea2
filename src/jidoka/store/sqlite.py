"""The SQLite store: durable sessions in one database file, with group commit.

**Durability.** The database runs in WAL mode with ``synchronous=FULL`` (``durability="full"``,
the default): a transaction is on disk when its commit returns, so an acknowledged append
survives a crash or a power cut. ``durability="normal"`` relaxes this to ``synchronous=NORMAL``
(still safe against a crash of the process, but a power cut may lose the last transactions).

**Writes** all go through one writer thread that owns the only write connection and commits
whatever is waiting in one transaction (group commit: :mod:`.sqlite_writer`). An append is
validated on the event loop, queued, and acknowledged once the commit holding it returns.

**Reads** use a second connection in a worker thread (WAL lets readers run beside the writer).
No call blocks the event loop.

**Schema** and migrations: :mod:`.sqlite_schema`.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final, Literal

import msgspec

from ..errors import RuntimeClosed, StoreError
from ..events import EVENT_TYPES, Event, EventType
from .base import LIVE_SESSIONS_PAGE, OnCommitted, SavedSession, StoredSession, check_drop
from .heads import batch_head
from .memory_runs import check_page as _check_limit
from .sqlite_runs import SqliteRuns
from .sqlite_schema import (
    SCHEMA_VERSION,
    SchemaError,
    decode_object,
    encode,
    from_us,
    max_seq,
    migrate,
    to_us,
)
from .sqlite_writer import Append, Request, Writer

__all__ = ["DATABASE_NAME", "SCHEMA_VERSION", "SchemaError", "SqliteStore"]

DATABASE_NAME: Final = "jidoka.sqlite3"
_RUN_TABLES: Final = ("runs", "idempotency_keys")


class SqliteStore(SqliteRuns):
    """Session logs, snapshots, saved sessions and runs in one SQLite database file."""

    durable = True
    commits_inline = False  # an append waits for the writer thread's commit

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Literal["full", "normal"] = "full",
        max_database_bytes: int | None = None,
    ) -> None:
        if durability not in ("full", "normal"):
            raise ValueError(f"durability must be 'full' or 'normal', not {durability!r}")
        if max_database_bytes is not None and max_database_bytes < 128 * 1024:
            raise ValueError("max_database_bytes must be at least 128 KiB (the schema takes 96)")
        self.path = os.fspath(path)
        self.durability = durability
        self.max_database_bytes = max_database_bytes
        self._writer = Writer()
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._state: Literal["new", "open", "closed"] = "new"

    @property
    def commits(self) -> int:
        """Transactions the writer has committed."""
        return self._writer.commits

    @property
    def batched_requests(self) -> int:
        """Requests those transactions held (over ``commits``: the mean batch size)."""
        return self._writer.batched_requests

    # --- opening and closing ----------------------------------------------------------------------

    async def open(self) -> None:
        """Create or migrate the database and start the writer thread."""
        if self._state != "new":
            raise RuntimeClosed(f"the SQLite store at {self.path} was already opened")
        writer = await asyncio.to_thread(self._connect)
        try:
            await asyncio.to_thread(migrate, writer, self.path)
            self._reader = await asyncio.to_thread(self._connect)
        except BaseException:
            writer.close()
            raise
        self._writer.start(writer)
        self._state = "open"

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.durability.upper()}")
            conn.execute("PRAGMA foreign_keys=OFF")
            if self.max_database_bytes is not None:
                page = conn.execute("PRAGMA page_size").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count={self.max_database_bytes // page}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the database {self.path}: {exc}") from exc
        return conn

    async def aclose(self) -> None:
        """Finish queued writes, stop the writer, close both connections. Idempotent."""
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closed"
        await self._writer.stop()
        reader = self._reader
        if reader is not None:
            with self._read_lock:
                reader.close()

    def _check_open(self, session_id: str | None) -> None:
        if self._state != "open":
            raise RuntimeClosed(f"the SQLite store is {self._state}", session_id=session_id)

    # --- writes -----------------------------------------------------------------------------------

    async def _submit(
        self, session_id: str | None, run: Callable[[sqlite3.Connection], Any]
    ) -> Any:
        self._check_open(session_id)
        request = Request(session_id, asyncio.get_running_loop(), run=run)
        self._writer.put(request)
        return await request.future

    async def append(self, session_id: str, events: Sequence[Event]) -> None:
        waiting = self.append_nowait(session_id, events)
        if waiting is not None:
            await waiting

    def append_nowait(
        self,
        session_id: str,
        events: Sequence[Event],
        on_done: OnCommitted | None = None,
    ) -> asyncio.Future[None] | None:
        """Queue an append for the writer; the future completes once the commit holding it
        returns. ``on_done`` is called on the loop just before (see the Protocol); an empty
        batch is committed at once (``None``)."""
        self._check_open(session_id)
        batch = list(events)
        if not batch:
            if on_done is not None:
                on_done(None)
            return None
        head = batch_head(session_id, batch)
        rows = [
            (session_id, event.seq, event.type.value, to_us(event.time), encode(event.data))
            for event in batch
        ]
        append = Append(batch[0].seq, batch[-1].seq, rows, head.status, head.created, head.owner)
        request = Request(session_id, asyncio.get_running_loop(), append=append, on_done=on_done)
        self._writer.put(request)
        future: asyncio.Future[None] = request.future
        return future

    async def write_snapshot(self, session_id: str, seq: int, state: bytes) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO snapshots VALUES (?, ?, ?) ON CONFLICT (session_id, seq) DO NOTHING",
                (session_id, seq, state),
            )

        await self._submit(session_id, run)

    async def save(self, saved: SavedSession, state: bytes) -> None:
        row = (
            saved.session_id,
            to_us(saved.saved_at),
            saved.message_count,
            encode(saved.metadata),
            state,
            saved.owner,
        )

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO saved_sessions VALUES (?, ?, ?, ?, ?, ?)", row)

        await self._submit(saved.session_id, run)

    async def delete_saved(self, session_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("DELETE FROM saved_sessions WHERE session_id = ?", (session_id,))
            return cursor.rowcount > 0

        return bool(await self._submit(session_id, run))

    async def drop_events(
        self, session_id: str, event_type: EventType, *, first_seq: int, last_seq: int
    ) -> int:
        """One ``DELETE`` on the writer thread (a range of the ``(session_id, seq)`` index),
        sparing the log's last row: this store reads where a log ends from ``max(seq)``. The
        freed pages are reused by later appends; the file does not shrink (no ``VACUUM``)."""
        kind = check_drop(session_id, event_type, first_seq, last_seq)
        args = (session_id, kind.value, first_seq, last_seq, session_id)

        def run(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "DELETE FROM events WHERE session_id = ? AND type = ? AND seq BETWEEN ? AND ?"
                " AND seq < (SELECT max(seq) FROM events WHERE session_id = ?)",
                args,
            )
            return cursor.rowcount

        return int(await self._submit(session_id, run))

    #: The tables that hold rows of a session (all keyed by ``session_id``); a terminated
    #: session's are those but ``saved_sessions``.
    _SESSION_TABLES: Final = ("events", "snapshots", "saved_sessions", "sessions", *_RUN_TABLES)
    _ENDED_TABLES: Final = ("events", "snapshots", "sessions", *_RUN_TABLES)

    async def purge(self, session_id: str) -> bool:
        """One writer request, so one transaction; the writer forgets where the log ended
        (on its own thread, where that record lives), so an append after a purge starts the
        log afresh at seq 1 like any new session's."""
        writer = self._writer

        def run(conn: sqlite3.Connection) -> bool:
            writer.last_seq.pop(session_id, None)
            removed = 0
            for table in self._SESSION_TABLES:
                cursor = conn.execute(f"DELETE FROM {table} WHERE session_id = ?", (session_id,))
                removed += cursor.rowcount
            return removed > 0

        return bool(await self._submit(session_id, run))

    async def expire_terminated(
        self, before: datetime, *, limit: int = LIVE_SESSIONS_PAGE
    ) -> list[StoredSession]:
        """Found and removed in one writer request (one transaction), through the partial
        index ``sessions_ended``: only this process writes the file, so what the request finds
        terminated is still terminated when it deletes it."""
        _check_limit(limit)
        sql = self._EXPIRED
        args = (to_us(before), limit)
        writer = self._writer

        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            rows: list[tuple[Any, ...]] = conn.execute(sql, args).fetchall()
            ids = [(row[0],) for row in rows]
            for (sid,) in ids:
                writer.last_seq.pop(sid, None)
            for table in self._ENDED_TABLES:
                conn.executemany(f"DELETE FROM {table} WHERE session_id = ?", ids)
            return rows

        return self._heads(await self._submit(None, run))

    async def expire_saved(
        self, before: datetime, *, limit: int = LIVE_SESSIONS_PAGE
    ) -> list[SavedSession]:
        _check_limit(limit)
        args = (to_us(before), limit)

        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            rows: list[tuple[Any, ...]] = conn.execute(
                "SELECT session_id, saved_us, message_count, metadata, owner FROM saved_sessions"
                " WHERE saved_us < ? ORDER BY saved_us, session_id LIMIT ?",
                args,
            ).fetchall()
            conn.executemany(
                "DELETE FROM saved_sessions WHERE session_id = ?", [(row[0],) for row in rows]
            )
            return rows

        rows = await self._submit(None, run)
        return [self._saved(row) for row in rows]

    async def release(self, session_id: str) -> None:
        """Nothing to write: the log stays (audit, and the tombstone's history), and the commit
        that terminated the session dropped its snapshots and the writer's record of where its
        log ends, in the same transaction (no second ``fsync`` per termination)."""
        self._check_open(session_id)

    # --- reads ------------------------------------------------------------------------------------

    async def _read(self, session_id: str | None, run: Callable[[sqlite3.Connection], Any]) -> Any:
        self._check_open(session_id)
        reader = self._reader
        assert reader is not None

        def call() -> Any:
            with self._read_lock:
                try:
                    return run(reader)
                except sqlite3.Error as exc:
                    raise StoreError(
                        f"session {session_id!r}: the store could not be read: {exc}",
                        session_id=session_id,
                    ) from exc

        return await asyncio.to_thread(call)

    async def read_events(
        self,
        session_id: str,
        *,
        after_seq: int = 0,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> list[Event]:
        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            cursor = conn.execute(
                "SELECT seq, type, time_us, data FROM events WHERE session_id = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (session_id, after_seq, -1 if limit is None else max(limit, 0)),
            )
            if max_bytes is None:
                return cursor.fetchall()
            rows, size = [], 0
            for row in cursor:  # row by row: what is past the byte bound is never fetched
                rows.append(row)
                size += len(row[3])
                if size >= max_bytes:
                    break
            cursor.close()
            return rows

        rows: list[tuple[Any, ...]] = await self._read(session_id, run)
        events = []
        for seq, type_, time_us, data in rows:
            try:
                payload = decode_object(data)
                kind = EVENT_TYPES[type_]
            except (msgspec.DecodeError, msgspec.ValidationError, KeyError) as exc:
                raise StoreError(
                    f"session {session_id!r}: event {seq} is corrupt: {exc}",
                    session_id=session_id,
                ) from None
            events.append(Event(kind, session_id, seq, from_us(time_us), payload))
        return events

    async def last_seq(self, session_id: str) -> int:
        return int(await self._read(session_id, lambda conn: max_seq(conn, session_id)))

    async def read_snapshot(
        self, session_id: str, *, at_most: int | None = None
    ) -> tuple[int, bytes] | None:
        bound = (1 << 63) - 1 if at_most is None else at_most  # no bound: past any seq

        def run(conn: sqlite3.Connection) -> tuple[int, bytes] | None:
            row = conn.execute(
                "SELECT seq, state FROM snapshots WHERE session_id = ? AND seq <= ?"
                " ORDER BY seq DESC LIMIT 1",
                (session_id, bound),
            ).fetchone()
            return (int(row[0]), bytes(row[1])) if row else None

        result: tuple[int, bytes] | None = await self._read(session_id, run)
        return result

    #: A stored session's head: its summary row and the end of its log (the events' unique
    #: index answers ``max(seq)`` with one seek).
    _HEAD: Final = (
        "SELECT session_id, status, (SELECT max(seq) FROM events AS e"
        " WHERE e.session_id = s.session_id), owner, updated_us FROM sessions AS s"
    )

    #: A batch of expired sessions, oldest first. ``INDEXED BY``: without statistics, SQLite's
    #: planner prefers ``sessions_by_status`` for the equality on the status and then sorts
    #: every terminated session; the partial index serves the range and the order at once.
    _EXPIRED: Final = (
        _HEAD.replace("FROM sessions AS s", "FROM sessions AS s INDEXED BY sessions_ended")
        + " WHERE status = 'terminated' AND updated_us < ? ORDER BY updated_us, session_id LIMIT ?"
    )

    @staticmethod
    def _heads(rows: list[tuple[Any, ...]]) -> list[StoredSession]:
        return [
            StoredSession(sid, status, last or 0, owner, from_us(updated))
            for sid, status, last, owner, updated in rows
        ]

    async def find_session(self, session_id: str) -> StoredSession | None:
        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            sql = f"{self._HEAD} WHERE session_id = ?"
            return conn.execute(sql, (session_id,)).fetchall()

        found = self._heads(await self._read(session_id, run))
        return found[0] if found else None

    async def list_sessions(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        after: str | None = None,
        limit: int = LIVE_SESSIONS_PAGE,
    ) -> list[StoredSession]:
        """Each combination of filters reads one range of its own index (``sqlite_schema``):
        the literal ``status != 'terminated'`` is what lets SQLite use the partial ones."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        where = ["session_id > ?"]
        args: list[object] = [after or ""]
        if status is None:
            where.append("status != 'terminated'")
        else:
            where.append("status = ?")
            args.append(status)
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        sql = f"{self._HEAD} WHERE {' AND '.join(where)} ORDER BY session_id LIMIT ?"
        args.append(limit)

        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(sql, args).fetchall()

        return self._heads(await self._read(None, run))

    async def quiet_sessions(
        self,
        before: datetime,
        *,
        after: tuple[datetime, str] | None = None,
        limit: int = LIVE_SESSIONS_PAGE,
    ) -> list[StoredSession]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        start_us, start_id = (to_us(after[0]), after[1]) if after is not None else (-1, "")
        sql = (
            f"{self._HEAD} WHERE status != 'terminated' AND updated_us < ?"
            " AND (updated_us, session_id) > (?, ?) ORDER BY updated_us, session_id LIMIT ?"
        )
        args = (to_us(before), start_us, start_id, limit)

        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(sql, args).fetchall()

        return self._heads(await self._read(None, run))

    async def load_saved(self, session_id: str) -> tuple[SavedSession, bytes] | None:
        def run(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            row: tuple[Any, ...] | None = conn.execute(
                "SELECT session_id, saved_us, message_count, metadata, owner, state"
                " FROM saved_sessions WHERE session_id = ?",
                (session_id,),
            ).fetchone()
            return row

        row = await self._read(session_id, run)
        if row is None:
            return None
        return self._saved(row), bytes(row[5])

    async def list_saved(self) -> list[SavedSession]:
        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(
                "SELECT session_id, saved_us, message_count, metadata, owner FROM saved_sessions"
                " ORDER BY session_id"
            ).fetchall()

        rows: list[tuple[Any, ...]] = await self._read(None, run)
        return [self._saved(row) for row in rows]

    @staticmethod
    def _saved(row: tuple[Any, ...]) -> SavedSession:
        session_id, saved_us, count, metadata, owner = row[:5]
        try:
            meta = decode_object(metadata)
        except (msgspec.DecodeError, msgspec.ValidationError):
            meta = {}
        return SavedSession(
            session_id=session_id,
            saved_at=from_us(saved_us),
            message_count=count,
            metadata=meta,
            owner=owner,
        )

    async def ping(self) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("SELECT 1").fetchone()

        await self._read(None, run)

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path!r} {self._state}>"
