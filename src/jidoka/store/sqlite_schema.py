"""The SQLite store's schema: its tables, how a row's values are encoded, and migrations.

``PRAGMA user_version`` records the schema version. Opening an older database migrates it forward
in one transaction (:func:`migrate`); a newer one is refused with :class:`SchemaError`. The
helpers that turn an event into its row and its ``sessions`` summary live here too, because the
writer and the migrations must agree on them.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

from ..errors import StoreError
from ..events import Event, EventType
from .base import SchemaError
from .heads import created_owner, status_after
from .sqlite_runs_schema import create_runs

__all__ = [
    "SCHEMA_VERSION",
    "SchemaError",
    "created_owner",
    "decode_object",
    "encode",
    "from_us",
    "max_seq",
    "migrate",
    "status_after",
    "to_us",
]

SCHEMA_VERSION: Final = 7
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)

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
CREATE TABLE snapshots (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (session_id, seq)
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


#: The indexes the ``sessions`` table is read through (version 5): a session found or listed,
#: or the quiet ones found, costs one index range however many sessions are stored (and however
#: many of them are terminated: the partial indexes hold only the others).
_SESSION_INDEXES: Final = """
CREATE INDEX sessions_live ON sessions (session_id) WHERE status != 'terminated';
CREATE INDEX sessions_by_status ON sessions (status, session_id);
CREATE INDEX sessions_by_owner ON sessions (owner, session_id) WHERE status != 'terminated';
CREATE INDEX sessions_by_owner_status ON sessions (owner, status, session_id);
CREATE INDEX sessions_quiet ON sessions (updated_us, session_id) WHERE status != 'terminated';
"""


#: Version 6's snapshots table, keyed by seq too, filled from version 5's (one per session).
_SNAPSHOTS_V6: Final = """
ALTER TABLE snapshots RENAME TO snapshots_v5;
CREATE TABLE snapshots (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (session_id, seq)
);
INSERT INTO snapshots SELECT session_id, seq, state FROM snapshots_v5;
DROP TABLE snapshots_v5;
"""

#: The indexes retention reads through (version 6): the terminated sessions by when they ended,
#: and the saved copies by age, so an expiry batch is one index range however much is stored.
_RETENTION_INDEXES: Final = """
CREATE INDEX sessions_ended ON sessions (updated_us, session_id) WHERE status = 'terminated';
CREATE INDEX saved_sessions_by_age ON saved_sessions (saved_us, session_id);
"""


def to_us(when: datetime) -> int:
    """A time as integer microseconds since the epoch (how rows store it)."""
    return (when - _EPOCH) // _MICROSECOND


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


encode: Final = msgspec.json.Encoder().encode
decode_object: Final = msgspec.json.Decoder(dict[str, Any]).decode


def max_seq(conn: sqlite3.Connection, session_id: str) -> int:
    row = conn.execute("SELECT max(seq) FROM events WHERE session_id = ?", (session_id,)).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def migrate(conn: sqlite3.Connection, path: str) -> None:
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
                _execute_script(conn, _SESSION_INDEXES)
                _execute_script(conn, _RETENTION_INDEXES)
                create_runs(conn)
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
                if version < 5:
                    # v5: sessions are found, listed and swept through indexes, not read whole
                    # at start-up (v2-v4's index on the status alone is replaced).
                    conn.execute("DROP INDEX IF EXISTS sessions_live")
                    _execute_script(conn, _SESSION_INDEXES)
                if version < 6:
                    # v6: a session keeps every snapshot (one per ``snapshot_interval``
                    # events), so the projection at any seq -- a rewind's, a fork's -- costs
                    # the snapshot before it plus the events between; and (retention) expired
                    # sessions and saved copies are found by index.
                    _execute_script(conn, _SNAPSHOTS_V6)
                    _execute_script(conn, _RETENTION_INDEXES)
                if version < 7:
                    # v7: the runs index, webhook outbox and idempotency keys, kept by
                    # triggers on ``events`` (:mod:`.sqlite_runs_schema`). No log written
                    # before v7 holds a run event, so there is nothing to derive.
                    create_runs(conn)
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
            owner = created_owner(decode_object(data))
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
    _execute_script(conn, _SESSION_INDEXES)
    _execute_script(conn, _RETENTION_INDEXES)
    create_runs(conn)
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
            "INSERT INTO events VALUES (?, ?, ?, ?, ?)", (session_id, seq, type_, to_us(when), raw)
        )
        try:
            payload = decode_object(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            payload = {}
        previous = status.get(session_id, (None, 0, 0))[0]
        event = Event(type_, session_id, seq, when, payload)
        status[session_id] = (status_after(previous, event), seq, to_us(when))
        if type_ == EventType.SESSION_CREATED:
            owners[session_id] = created_owner(payload)
    for session_id, (state, _last_seq, updated) in status.items():
        conn.execute(
            "INSERT INTO sessions (session_id, status, updated_us, owner) VALUES (?, ?, ?, ?)",
            (session_id, state or "active", updated, owners.get(session_id)),
        )
    conn.execute("DROP TABLE events_v1")
