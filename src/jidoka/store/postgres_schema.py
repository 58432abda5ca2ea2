"""The PostgreSQL store's schema: its tables and indexes, and migrations.

Everything lives in one schema of its own (``jidoka`` by default), so a DBA sees at a glance what
belongs to Jidoka, and tests give every run a schema of its own. The schema's version is a row of
``jidoka_meta``. Opening migrates an older schema forward in one transaction, under an advisory
lock taken for that schema, so two processes starting at once never both create or migrate it
(the second waits, then finds it done); a newer schema is refused with :class:`SchemaError`.

Why these tables:

- ``sessions`` is each session's *head*: the last seq, the status, the owner principal and the
  **fence**. Every append updates it with a condition on ``last_seq`` and ``fence`` in the same
  statement as the insert of its events, which is what makes two writers unable to both win and
  a former owner unable to write once the fence moved. ``fillfactor`` leaves room on each page so
  that this per-append update is a HOT update (no index column changes on an ordinary append).
- Partial indexes serve the listings (by owner and status, live ones only by default) and the
  lookups by id, so no start-up and no page reads every session.
- ``events`` is the log, keyed ``(session_id, seq)``; ``data`` is the event's JSON as UTF-8 bytes
  (exactly what was written: ``convert_from(data, 'UTF8')::jsonb`` queries it ad hoc).
- ``nodes`` (version 2) is the cluster's membership: one row per node, its address and the lease
  it renews (``expires_at``, on the server's clock, never a node's). ``sessions.node`` names the
  node that owns a live session; it defaults to the inserting connection's ``jidoka.node``
  setting, so the writer's creation statements need not know about clusters. A session whose
  node's lease has expired (or that was released: ``node`` null) may be taken by any node,
  which raises its fence in the same statement. ``jidoka_meta.cluster_secret`` signs the
  requests nodes forward to each other (whoever can read it can write the sessions anyway).
- ``stream_tickets`` (version 2) holds a cluster's outstanding stream tickets (their digests):
  a browser may be given a ticket by one node and open its stream on another, and spending one
  is a ``DELETE … RETURNING``, single-use across every node.
- Two indexes (version 3) serve retention: the terminated sessions by ``updated_at`` and the
  saved copies by ``saved_at``, so each expiry batch reads one index range.
- ``runs`` and ``idempotency_keys`` (version 4) are the runs index, webhook outbox and
  idempotency keys, kept by a trigger on ``events`` (:mod:`.postgres_runs_schema`).
"""

from __future__ import annotations

import re
from typing import Final

import asyncpg

from .base import SchemaError, StoreUnavailable
from .postgres_runs_schema import V4_RUNS

__all__ = ["SCHEMA_VERSION", "UNAVAILABLE", "check_schema_name", "migrate"]

#: What asyncpg raises when the server cannot be reached or dropped the connection (as opposed
#: to refusing a statement): the call may be retried once the server is back.
UNAVAILABLE: Final = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
    # The client's protocol state no longer matches the server's (an operation cut short):
    # the connection is unusable, like a broken one.
    asyncpg.exceptions.InternalClientError,
)

SCHEMA_VERSION: Final = 4

_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")

#: Version 1, as one script. ``{schema}`` is the quoted schema name.
_V1: Final = """
CREATE TABLE {schema}.jidoka_meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE {schema}.sessions (
    session_id text PRIMARY KEY,
    last_seq bigint NOT NULL,
    status text NOT NULL,
    owner text,
    fence bigint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 80);
CREATE INDEX sessions_live ON {schema}.sessions (session_id) WHERE status <> 'terminated';
CREATE INDEX sessions_owner_live ON {schema}.sessions (owner, session_id)
    WHERE status <> 'terminated';
CREATE INDEX sessions_status ON {schema}.sessions (status, session_id);
CREATE INDEX sessions_owner_status ON {schema}.sessions (owner, status, session_id);
CREATE INDEX sessions_quiet ON {schema}.sessions (updated_at, session_id)
    WHERE status <> 'terminated';
CREATE TABLE {schema}.events (
    session_id text NOT NULL,
    seq bigint NOT NULL,
    type text NOT NULL,
    time timestamptz NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (session_id, seq)
);
CREATE TABLE {schema}.snapshots (
    session_id text NOT NULL,
    seq bigint NOT NULL,
    state bytea NOT NULL,
    PRIMARY KEY (session_id, seq)
);
CREATE TABLE {schema}.saved_sessions (
    session_id text PRIMARY KEY,
    saved_at timestamptz NOT NULL,
    message_count integer NOT NULL,
    metadata bytea NOT NULL,
    owner text,
    state bytea NOT NULL
);
"""

#: Version 2: cluster membership and session ownership (one index: a node's live sessions).
_V2: Final = """
ALTER TABLE {schema}.sessions
    ADD COLUMN node text DEFAULT nullif(current_setting('jidoka.node', true), '');
CREATE INDEX sessions_node_live ON {schema}.sessions (node, session_id)
    WHERE status <> 'terminated' AND node IS NOT NULL;
CREATE TABLE {schema}.nodes (
    node_id text PRIMARY KEY,
    advertise_url text NOT NULL,
    incarnation bigint NOT NULL,
    state text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE TABLE {schema}.stream_tickets (
    digest bytea PRIMARY KEY,
    principal text,
    path text,
    expires_at timestamptz NOT NULL
);
CREATE INDEX stream_tickets_expiry ON {schema}.stream_tickets (expires_at);
INSERT INTO {schema}.jidoka_meta VALUES
    ('cluster_secret', replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));
"""

#: Version 3 (history): a session keeps every snapshot (one per ``snapshot_interval`` events),
#: so the projection at any seq -- a rewind's, a fork's -- costs the snapshot before it plus the
#: events between. (A schema created at version 3 or later has the key from the start.)
_V3_SNAPSHOTS: Final = """
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'snapshots_pkey'
               AND conrelid = '{schema}.snapshots'::regclass
               AND array_length(conkey, 1) = 1) THEN
        ALTER TABLE {schema}.snapshots DROP CONSTRAINT snapshots_pkey;
        ALTER TABLE {schema}.snapshots ADD PRIMARY KEY (session_id, seq);
    END IF;
END $$;
"""

#: Version 3 (retention): expired sessions and saved copies are found by index, a bounded
#: batch at a time, however much else is stored.
_V3_RETENTION: Final = """
CREATE INDEX sessions_ended ON {schema}.sessions (updated_at, session_id)
    WHERE status = 'terminated';
CREATE INDEX saved_sessions_age ON {schema}.saved_sessions (saved_at, session_id);
"""

#: Each step takes the schema from version ``n - 1`` to ``n``; index 0 creates version 1.
_STEPS: Final[tuple[str, ...]] = (_V1, _V2, _V3_SNAPSHOTS + _V3_RETENTION, V4_RUNS)


def check_schema_name(schema: str) -> str:
    """``schema`` if it is a plain lower-case identifier: it is written into statements
    (double-quoted), so nothing else may pass."""
    if not isinstance(schema, str) or not _NAME.fullmatch(schema):
        raise ValueError(
            f"the Postgres schema name must be lower-case letters, digits and '_' (at most 63, "
            f"not starting with a digit), not {schema!r}"
        )
    return schema


async def migrate(conn: asyncpg.Connection, schema: str) -> int:
    """Create or migrate ``schema`` to :data:`SCHEMA_VERSION` in one transaction; return the
    version found."""
    quoted = f'"{check_schema_name(schema)}"'
    try:
        async with conn.transaction():
            # One lock per schema name, held until this transaction ends.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"jidoka:{schema}"
            )
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
            version = await _version(conn, schema)
            if version > SCHEMA_VERSION:
                raise SchemaError(
                    f"the Postgres schema {schema!r} has Jidoka schema version {version}, newer "
                    f"than this version of Jidoka supports ({SCHEMA_VERSION}); upgrade Jidoka"
                )
            if version == 0 and await conn.fetchval(
                "SELECT count(*) FROM pg_tables WHERE schemaname = $1", schema
            ):
                raise SchemaError(
                    f"the Postgres schema {schema!r} is not a Jidoka schema (it has other "
                    "tables); choose another schema name"
                )
            for step in _STEPS[version:]:
                await conn.execute(step.replace("{schema}", quoted))
            if version < SCHEMA_VERSION:
                await conn.execute(
                    f"INSERT INTO {quoted}.jidoka_meta VALUES ('schema_version', $1)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    str(SCHEMA_VERSION),
                )
            return version
    except UNAVAILABLE as exc:
        raise StoreUnavailable(f"cannot prepare the Postgres schema {schema!r}: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise SchemaError(f"cannot prepare the Postgres schema {schema!r}: {exc}") from exc


async def _version(conn: asyncpg.Connection, schema: str) -> int:
    if await conn.fetchval("SELECT to_regclass($1)", f'"{schema}".jidoka_meta') is None:
        return 0
    found = await conn.fetchval(
        f"SELECT value FROM \"{schema}\".jidoka_meta WHERE key = 'schema_version'"
    )
    if found is None:
        raise SchemaError(f"the Postgres schema {schema!r} has no schema version recorded")
    try:
        return int(found)
    except ValueError:
        raise SchemaError(
            f"the Postgres schema {schema!r} records an unreadable version {found!r}"
        ) from None
