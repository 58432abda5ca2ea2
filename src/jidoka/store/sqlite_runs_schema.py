"""The SQLite store's runs index, webhook outbox and idempotency keys (schema version 7): two
tables, and the triggers on ``events`` that keep them (:mod:`.runs` says what each event does).

The trigger runs inside the statement that inserts an event, so the index commits with the
events that made it, in the writer's transaction, and the writer needs no code for it. Its
``WHEN`` on the event's type lets any other event by with a few comparisons, plus the call SQLite
makes to any row trigger (about a microsecond a row here, kept that low by a trigger program of
one statement: the work is in a second trigger, on a view). A ``conversation_added`` costs a
byte search for ``"idempotency_key"`` in its data more (the JSON is parsed only when found: a
message's append is the hot path). Nothing in an event's data fails the append: a run id
or a key already recorded is left as it is (``INSERT OR IGNORE``; first writer wins), and a field
that is missing, not a string or holds a NUL character is taken as absent (as every store does:
:mod:`.runs`).

Times are integer microseconds like the other tables'; ``queued``/``completed`` are the events'
data, the JSON bytes as written. ``idempotency_keys.owner`` is ``''`` for a session with no
principal (``NOT NULL``, so the unique ``(owner, key)`` also holds for the anonymous principal;
a principal is never the empty string).
"""

from __future__ import annotations

import sqlite3
from typing import Final

__all__ = ["RUNS_SCHEMA", "create_runs"]

#: The event's data as text, for the JSON functions (events store it as a BLOB).
_D: Final = "CAST(NEW.data AS TEXT)"
_OWNER: Final = "(SELECT owner FROM sessions WHERE session_id = NEW.session_id)"


def _text(field: str) -> str:
    """The data's string ``field``: ``NULL`` if it is absent, not a string, or holds a NUL
    character. ``json_extract`` would cut such a string at the NUL, so the value, quoted again,
    must be what the data holds (the writer's encoding is compact and escapes as
    ``json_quote`` does: the contract suite holds both to that)."""
    value = f"json_extract({_D}, '$.{field}')"
    return (
        f"CASE WHEN json_type({_D}, '$.{field}') = 'text'"
        f" AND instr({_D}, '\"{field}\":' || json_quote({value})) > 0 THEN {value} END"
    )


def _key() -> str:
    """Record the event's idempotency key, if it has one, for the session's owner: a message's,
    or a run's that has an id (a request hash that is there must be a string too)."""
    present = f"json_type({_D}, '$.request_hash') IS NOT NULL"
    digest = f"CASE WHEN {present} THEN {_text('request_hash')} ELSE '' END"
    run_id = f"CASE WHEN NEW.type = 'run_queued' THEN {_text('run_id')} END"
    return f"""
    INSERT OR IGNORE INTO idempotency_keys
        (owner, key, request_hash, session_id, seq, run_id, created_us)
    SELECT coalesce({_OWNER}, ''), k, h, NEW.session_id, NEW.seq, r, NEW.time_us
    FROM (SELECT {_text("idempotency_key")} AS k, {digest} AS h, {run_id} AS r)
    WHERE k IS NOT NULL AND h IS NOT NULL
        AND (NEW.type = 'conversation_added' OR r IS NOT NULL);"""


#: Every statement of version 7, in order (triggers hold ``;``, so not one script).
RUNS_SCHEMA: Final[tuple[str, ...]] = (
    """CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    owner TEXT,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    started_us INTEGER,
    ended_us INTEGER,
    queued BLOB NOT NULL,
    completed BLOB,
    webhook_url TEXT,
    webhook_state TEXT,
    webhook_attempts INTEGER NOT NULL DEFAULT 0,
    webhook_next_us INTEGER,
    webhook_error TEXT
) WITHOUT ROWID""",
    "CREATE INDEX runs_by_session ON runs (session_id, seq)",
    "CREATE INDEX runs_unfinished ON runs (session_id, seq) WHERE status IN ('queued', 'running')",
    "CREATE INDEX runs_outbox ON runs (webhook_next_us, run_id) WHERE webhook_state = 'pending'",
    """CREATE TABLE idempotency_keys (
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    run_id TEXT,
    created_us INTEGER NOT NULL,
    PRIMARY KEY (owner, key)
) WITHOUT ROWID""",
    "CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_us)",
    "CREATE INDEX idempotency_keys_by_session ON idempotency_keys (session_id)",
    # What the work is done on: inserting into this view runs ``derive_runs`` (it holds no row).
    "CREATE VIEW run_events AS SELECT session_id, seq, type, time_us, data FROM events WHERE 0",
    f"""CREATE TRIGGER derive_runs INSTEAD OF INSERT ON run_events
BEGIN
    INSERT OR IGNORE INTO runs
        (run_id, session_id, owner, seq, status, created_us, queued, webhook_url)
    SELECT {_text("run_id")}, NEW.session_id, {_OWNER}, NEW.seq, 'queued', NEW.time_us,
           NEW.data, nullif({_text("webhook")}, '')
    WHERE NEW.type = 'run_queued';{_key()}
    UPDATE runs SET status = 'running', started_us = NEW.time_us
    WHERE NEW.type = 'run_started' AND run_id = {_text("run_id")};
    UPDATE runs SET status = {_text("status")}, ended_us = NEW.time_us,
        completed = NEW.data,
        webhook_state = CASE WHEN webhook_url IS NOT NULL THEN 'pending' END,
        webhook_next_us = CASE WHEN webhook_url IS NOT NULL THEN NEW.time_us END
    WHERE NEW.type = 'run_completed' AND run_id = {_text("run_id")}
        AND {_text("status")} IS NOT NULL;
END""",
    # The one trigger on ``events``: SQLite calls a row trigger's program for every row, its
    # ``WHEN`` included, and the call costs with the size of the program; this one's is an
    # insert into the view, whose trigger is called only for the rows it is about.
    """CREATE TRIGGER events_runs AFTER INSERT ON events
WHEN NEW.type = 'run_queued' OR NEW.type = 'run_started' OR NEW.type = 'run_completed'
    OR (NEW.type = 'conversation_added'
        AND instr(NEW.data, CAST('"idempotency_key"' AS BLOB)) > 0)
BEGIN
    INSERT INTO run_events VALUES (NEW.session_id, NEW.seq, NEW.type, NEW.time_us, NEW.data);
END""",
)


def create_runs(conn: sqlite3.Connection) -> None:
    """Create version 7's tables, indexes and triggers (inside the caller's transaction)."""
    for statement in RUNS_SCHEMA:
        conn.execute(statement)
