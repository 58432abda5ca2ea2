"""The SQLite store: durable sessions in one database file, with group commit.

**Durability.** The database runs in WAL mode with ``synchronous=FULL`` (``durability="full"``,
the default): a transaction is on disk when its commit returns, so an acknowledged append
survives a crash or a power cut. ``durability="normal"`` relaxes this to ``synchronous=NORMAL``
(still safe against a crash of the process, but a power cut may lose the last transactions).

**Group commit.** All writes go through one writer thread that owns the only write connection.
It takes every request that is waiting when it becomes free and commits them in *one*
transaction, then wakes each caller. A caller's ``append`` therefore returns only after the
commit that holds its events, yet a hundred sessions appending at once share one ``fsync``
instead of paying for a hundred. Each request runs inside its own savepoint, so one request's
conflict (:class:`~jidoka.store.base.SeqConflict`) does not undo the others in its batch; a
failing commit (disk full, I/O error) fails every request of that batch with a
:class:`~jidoka.StoreError` naming its session, and nothing of the batch is stored.

**Reads** use a second connection in a worker thread (WAL lets readers run beside the writer).
No call blocks the event loop.

**Schema.** ``PRAGMA user_version`` records the schema version. Opening an older database
migrates it forward in one transaction; a newer one is refused with a clear error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, NamedTuple

import msgspec

from ..errors import RuntimeClosed, StoreError
from ..events import EVENT_TYPES, Event, EventType
from .base import SavedSession, SeqConflict, StoredSession

__all__ = ["SCHEMA_VERSION", "SchemaError", "SqliteStore"]

logger = logging.getLogger("jidoka.store.sqlite")

SCHEMA_VERSION: Final = 4
DATABASE_NAME: Final = "jidoka.sqlite3"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_BATCH_MAX: Final = 2048

_SCHEMA: Final = """
CREATE TABLE events (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    time_us INTEGER NOT NULL,
    data BLOB NOT NULL,
    UNIQUE (session_id, seq)
);
CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    updated_us INTEGER NOT NULL,
    owner TEXT
) WITHOUT ROWID;
CREATE INDEX sessions_live ON sessions (status) WHERE status != 'terminated';
CREATE TABLE snapshots (
    session_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    state BLOB NOT NULL
);
CREATE TABLE saved_sessions (
    session_id TEXT PRIMARY KEY,
    saved_us INTEGER NOT NULL,
    message_count INTEGER NOT NULL,
    metadata BLOB NOT NULL,
    state BLOB NOT NULL,
    owner TEXT
);
"""


class SchemaError(StoreError):
    """The database's schema version is newer than this version of Jidoka understands."""


def _to_us(when: datetime) -> int:
    return (when - _EPOCH) // _MICROSECOND


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


_encode: Final = msgspec.json.Encoder().encode
_decode_object: Final = msgspec.json.Decoder(dict[str, Any]).decode


def _max_seq(conn: sqlite3.Connection, session_id: str) -> int:
    row = conn.execute("SELECT max(seq) FROM events WHERE session_id = ?", (session_id,)).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _status_after(status: str | None, event: Event) -> str | None:
    if event.type == EventType.SESSION_CREATED or event.type == EventType.SESSION_STATUS:
        value = event.data.get("status")
        return value if isinstance(value, str) else status
    if event.type == EventType.SESSION_TERMINATED:
        return "terminated"
    return status


def _created_owner(data: dict[str, Any]) -> str | None:
    """The owner a ``session_created`` event's data records: its own ``owner`` for a new
    session, its saved copy's (``state``) for a restored one; ``None`` for anything else, so a
    malformed event never stops a write or a migration (loading the session will judge it)."""
    saved = data.get("state")
    if saved is not None:
        owner = saved.get("owner") if isinstance(saved, dict) else None
    else:
        owner = data.get("owner")
    return owner if isinstance(owner, str) else None


class _Append(NamedTuple):
    """What the writer needs to append one batch of events (validated on the caller's side)."""

    first_seq: int
    last_seq: int
    rows: list[tuple[str, int, str, int, bytes]]
    status: str | None
    #: Whether the batch holds a ``session_created`` event: only then is ``owner`` written.
    created: bool
    owner: str | None


class _Request:
    """One unit of work for the writer thread, with the future its caller awaits.

    An append carries its rows (the writer inserts the rows of every append in a batch with one
    statement); any other write carries a function to run on the connection.
    """

    __slots__ = ("append", "future", "loop", "on_done", "run", "session_id")

    def __init__(
        self,
        session_id: str | None,
        loop: asyncio.AbstractEventLoop,
        *,
        run: Callable[[sqlite3.Connection], Any] | None = None,
        append: _Append | None = None,
        on_done: Callable[[BaseException | None], None] | None = None,
    ) -> None:
        self.session_id = session_id
        self.run = run
        self.append = append
        self.on_done = on_done
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()


_STOP: Final = object()


class SqliteStore:
    """Session logs, snapshots and saved sessions in one SQLite database file."""

    durable = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Literal["full", "normal"] = "full",
        max_database_bytes: int | None = None,
    ) -> None:
        if durability not in ("full", "normal"):
            raise ValueError(f"durability must be 'full' or 'normal', not {durability!r}")
        if max_database_bytes is not None and max_database_bytes < 64 * 1024:
            raise ValueError("max_database_bytes must be at least 64 KiB")
        self.path = os.fspath(path)
        self.durability = durability
        self.max_database_bytes = max_database_bytes
        self._queue: queue.SimpleQueue[_Request | object] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._last_seq: dict[str, int] = {}  # writer thread only
        self._state: Literal["new", "open", "closed"] = "new"
        self.commits = 0
        self.batched_requests = 0

    # --- opening and closing ----------------------------------------------------------------------

    async def open(self) -> None:
        """Create or migrate the database and start the writer thread."""
        if self._state != "new":
            raise RuntimeClosed(f"the SQLite store at {self.path} was already opened")
        writer = await asyncio.to_thread(self._connect)
        try:
            await asyncio.to_thread(_migrate, writer, self.path)
            self._reader = await asyncio.to_thread(self._connect)
        except BaseException:
            writer.close()
            raise
        self._writer = threading.Thread(
            target=self._write_loop, args=(writer,), name="jidoka-sqlite-writer", daemon=True
        )
        self._writer.start()
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
        self._queue.put(_STOP)
        writer = self._writer
        if writer is not None:
            await asyncio.to_thread(writer.join)
        reader = self._reader
        if reader is not None:
            with self._read_lock:
                reader.close()

    def _check_open(self, session_id: str | None) -> None:
        if self._state != "open":
            raise RuntimeClosed(f"the SQLite store is {self._state}", session_id=session_id)

    # --- the writer -------------------------------------------------------------------------------

    async def _submit(
        self, session_id: str | None, run: Callable[[sqlite3.Connection], Any]
    ) -> Any:
        self._check_open(session_id)
        request = _Request(session_id, asyncio.get_running_loop(), run=run)
        self._queue.put(request)
        return await request.future

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                batch: list[_Request] = [first]  # type: ignore[list-item]
                stop = False
                while len(batch) < _BATCH_MAX:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    batch.append(item)  # type: ignore[arg-type]
                self._commit_batch(conn, batch)
                if stop:
                    return
        finally:
            conn.close()

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[_Request]) -> None:
        results: list[tuple[_Request, Any, BaseException | None]] = []
        saved_last_seq = dict(self._last_seq)
        rows: list[tuple[str, int, str, int, bytes]] = []
        # (session_id, status, updated_us, owner, whether owner is to be written)
        statuses: list[tuple[str, str, int, str | None, bool]] = []

        def flush() -> None:
            if rows:
                conn.executemany(
                    "INSERT INTO events (session_id, seq, type, time_us, data)"
                    " VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                rows.clear()
            if statuses:
                # One statement for every summary row, in the order of the appends: the owner
                # changes only with a session_created event and is kept by every other update.
                conn.executemany(
                    "INSERT INTO sessions (session_id, status, updated_us, owner)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (session_id) DO UPDATE"
                    " SET status = excluded.status, updated_us = excluded.updated_us,"
                    " owner = CASE WHEN ? THEN excluded.owner ELSE sessions.owner END",
                    statuses,
                )
                statuses.clear()

        try:
            conn.execute("BEGIN IMMEDIATE")
            for request in batch:
                append = request.append
                if append is not None:
                    # Checked against the writer's own record of each log's end, so a refused
                    # append never touches the database and needs no savepoint.
                    sid = request.session_id
                    assert sid is not None
                    last = self._last_seq.get(sid)
                    if last is None:
                        last = _max_seq(conn, sid)
                    if append.first_seq != last + 1:
                        self._last_seq[sid] = last
                        results.append(
                            (request, None, SeqConflict(sid, last + 1, append.first_seq))
                        )
                        continue
                    rows.extend(append.rows)
                    if append.status is not None:
                        statuses.append(
                            (sid, append.status, append.rows[-1][3], append.owner, append.created)
                        )
                    self._last_seq[sid] = append.last_seq
                    results.append((request, None, None))
                    continue
                assert request.run is not None
                flush()
                conn.execute("SAVEPOINT request")
                try:
                    value = request.run(conn)
                except StoreError as exc:  # this request's own refusal
                    conn.execute("ROLLBACK TO request")
                    conn.execute("RELEASE request")
                    results.append((request, None, exc))
                    continue
                conn.execute("RELEASE request")
                results.append((request, value, None))
            flush()
            conn.execute("COMMIT")
        except Exception as exc:  # disk full, I/O error, or a bug: fail the batch, keep serving
            self._last_seq = saved_last_seq
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            logger.error("commit of %d requests failed: %s", len(batch), exc)
            self._resolve_all(
                [
                    (
                        request,
                        None,
                        StoreError(
                            f"session {request.session_id!r}: the store could not commit: {exc}",
                            session_id=request.session_id,
                        ),
                    )
                    for request in batch
                ]
            )
            return
        self.commits += 1
        self.batched_requests += len(batch)
        self._resolve_all(results)

    @staticmethod
    def _resolve_all(results: list[tuple[_Request, Any, BaseException | None]]) -> None:
        """Wake the callers of a batch: one hop to each event loop, not one per request."""

        def settle(items: list[tuple[_Request, Any, BaseException | None]]) -> None:
            for request, value, error in items:
                if request.on_done is not None:
                    try:
                        request.on_done(error)
                    except Exception:
                        logger.exception("a commit callback failed")
                if request.future.done():
                    continue  # cancelled caller; the work is done (or not) all the same
                if error is not None:
                    request.future.set_exception(error)
                else:
                    request.future.set_result(value)

        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Request, Any, BaseException | None]]]
        by_loop = {}
        for item in results:
            by_loop.setdefault(item[0].loop, []).append(item)
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(settle, items)

    # --- writes -----------------------------------------------------------------------------------

    async def append(self, session_id: str, events: Sequence[Event]) -> None:
        await self.append_future(session_id, events)

    def append_future(
        self,
        session_id: str,
        events: Sequence[Event],
        on_done: Callable[[BaseException | None], None] | None = None,
    ) -> asyncio.Future[None]:
        """Queue an append; the future completes once the commit holding it returns.

        Runs on the event loop and never waits. ``on_done(error)`` is called on the loop when
        the commit has succeeded (``None``) or failed, before the future is resolved and even
        if the future was cancelled meanwhile: the session layer applies events there, so a
        cancelled caller can never leave the projection behind the log.
        """
        self._check_open(session_id)
        loop = asyncio.get_running_loop()
        batch = list(events)
        if not batch:
            done: asyncio.Future[None] = loop.create_future()
            done.set_result(None)
            if on_done is not None:
                on_done(None)
            return done
        first = batch[0].seq
        status = None
        created = False
        owner = None
        rows = []
        for offset, event in enumerate(batch):
            if event.session_id != session_id or event.seq != first + offset:
                raise SeqConflict(session_id, first + offset, event.seq)
            rows.append(
                (session_id, event.seq, event.type.value, _to_us(event.time), _encode(event.data))
            )
            status = _status_after(status, event)
            if event.type == EventType.SESSION_CREATED:
                created, owner = True, _created_owner(event.data)
        append = _Append(first, batch[-1].seq, rows, status, created, owner)
        request = _Request(session_id, loop, append=append, on_done=on_done)
        self._queue.put(request)
        return request.future

    async def write_snapshot(self, session_id: str, seq: int, state: bytes) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO snapshots VALUES (?, ?, ?) ON CONFLICT (session_id) DO UPDATE"
                " SET seq = excluded.seq, state = excluded.state WHERE excluded.seq > seq",
                (session_id, seq, state),
            )

        await self._submit(session_id, run)

    async def save(self, saved: SavedSession, state: bytes) -> None:
        row = (
            saved.session_id,
            _to_us(saved.saved_at),
            saved.message_count,
            _encode(saved.metadata),
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

    async def release(self, session_id: str) -> None:
        """The log stays (audit, and the tombstone's history); only the writer's cache goes."""
        self._check_open(session_id)

        def run(conn: sqlite3.Connection) -> None:
            self._last_seq.pop(session_id, None)
            conn.execute("DELETE FROM snapshots WHERE session_id = ?", (session_id,))

        await self._submit(session_id, run)

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
                payload = _decode_object(data)
                kind = EVENT_TYPES[type_]
            except (msgspec.DecodeError, msgspec.ValidationError, KeyError) as exc:
                raise StoreError(
                    f"session {session_id!r}: event {seq} is corrupt: {exc}",
                    session_id=session_id,
                ) from None
            events.append(Event(kind, session_id, seq, _from_us(time_us), payload))
        return events

    async def last_seq(self, session_id: str) -> int:
        return int(await self._read(session_id, lambda conn: _max_seq(conn, session_id)))

    async def read_snapshot(self, session_id: str) -> tuple[int, bytes] | None:
        def run(conn: sqlite3.Connection) -> tuple[int, bytes] | None:
            row = conn.execute(
                "SELECT seq, state FROM snapshots WHERE session_id = ?", (session_id,)
            ).fetchone()
            return (int(row[0]), bytes(row[1])) if row else None

        result: tuple[int, bytes] | None = await self._read(session_id, run)
        return result

    async def live_sessions(self) -> list[StoredSession]:
        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(
                "SELECT session_id, status, (SELECT max(seq) FROM events AS e"
                " WHERE e.session_id = s.session_id), owner FROM sessions AS s"
                " WHERE status != 'terminated' ORDER BY session_id"
            ).fetchall()

        rows: list[tuple[Any, ...]] = await self._read(None, run)
        return [StoredSession(sid, status, last or 0, owner) for sid, status, last, owner in rows]

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
            meta = _decode_object(metadata)
        except (msgspec.DecodeError, msgspec.ValidationError):
            meta = {}
        return SavedSession(
            session_id=session_id,
            saved_at=_from_us(saved_us),
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


# --- schema ---------------------------------------------------------------------------------------


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring the database to :data:`SCHEMA_VERSION` in one transaction (or refuse)."""
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"the database {path} has schema version {version}, newer than this version "
                f"of Jidoka supports ({SCHEMA_VERSION}); upgrade Jidoka to open it"
            )
        if version == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            if version == 0:
                tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                if tables:
                    raise SchemaError(f"{path} is not a Jidoka database (it has other tables)")
                _execute_script(conn, _SCHEMA)
            elif version == 1:
                _migrate_from_v1(conn)  # rebuilds every table in its current form
            else:
                # Each step takes the schema one version further, in order.
                if version < 3:
                    # v3: saved sessions record the principal that owns them.
                    conn.execute("ALTER TABLE saved_sessions ADD COLUMN owner TEXT")
                if version < 4:
                    # v4: so do live sessions, so the owner is known without loading them.
                    conn.execute("ALTER TABLE sessions ADD COLUMN owner TEXT")
                    _backfill_session_owners(conn)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise StoreError(f"cannot prepare the database {path}: {exc}") from exc


def _execute_script(conn: sqlite3.Connection, script: str) -> None:
    """Run DDL statements one by one (``executescript`` would commit our transaction)."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _backfill_session_owners(conn: sqlite3.Connection) -> None:
    """Fill ``sessions.owner`` from each session's latest ``session_created`` event (what the
    writer records from version 4 on). Data that does not decode leaves the owner ``NULL``:
    the migration never fails on it, and loading that session will report it as corrupt."""
    rows = conn.execute(
        "SELECT e.session_id, e.data FROM events AS e JOIN"
        " (SELECT session_id, max(seq) AS seq FROM events WHERE type = ? GROUP BY session_id)"
        " AS c ON e.session_id = c.session_id AND e.seq = c.seq",
        (EventType.SESSION_CREATED.value,),
    ).fetchall()
    owners = []
    for session_id, data in rows:
        try:
            owner = _created_owner(_decode_object(data))
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError):  # not JSON bytes
            continue
        if owner is not None:
            owners.append((owner, session_id))
    conn.executemany("UPDATE sessions SET owner = ? WHERE session_id = ?", owners)


def _migrate_from_v1(conn: sqlite3.Connection) -> None:
    """Version 1 kept only ``events(session_id, seq, type, time TEXT, data TEXT)``.

    Later versions store times as integer microseconds and data as JSON bytes, and add the
    ``sessions`` summary (status, owner), snapshots and saved sessions: the tables are built
    in their current form and the summary is computed from the events.
    """
    conn.execute("ALTER TABLE events RENAME TO events_v1")
    _execute_script(conn, _SCHEMA)
    rows = conn.execute(
        "SELECT session_id, seq, type, time, data FROM events_v1 ORDER BY session_id, seq"
    ).fetchall()
    status: dict[str, tuple[str | None, int, int]] = {}
    owners: dict[str, str | None] = {}
    for session_id, seq, type_, time_text, data in rows:
        when = datetime.fromisoformat(time_text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        raw = data.encode() if isinstance(data, str) else bytes(data)
        conn.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?)", (session_id, seq, type_, _to_us(when), raw)
        )
        try:
            payload = _decode_object(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            payload = {}
        previous = status.get(session_id, (None, 0, 0))[0]
        event = Event(type_, session_id, seq, when, payload)
        status[session_id] = (_status_after(previous, event), seq, _to_us(when))
        if type_ == EventType.SESSION_CREATED:
            owners[session_id] = _created_owner(payload)
    for session_id, (state, _last_seq, updated) in status.items():
        conn.execute(
            "INSERT INTO sessions (session_id, status, updated_us, owner) VALUES (?, ?, ?, ?)",
            (session_id, state or "active", updated, owners.get(session_id)),
        )
    conn.execute("DROP TABLE events_v1")
