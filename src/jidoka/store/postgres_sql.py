"""The statements the PostgreSQL writer sends, and the parameters each one takes.

One statement per group is the design (:mod:`.postgres_writer`); which statement depends on what
the group holds, because the server's cost is in the parts a statement carries, not in its rows:
measured on this machine, appending one event to an existing session with a bare conditional
``UPDATE`` plus ``INSERT`` costs the same as a plain ``INSERT`` of the event, while the general
form (rows as arrays, a branch for new sessions, a branch dropping the snapshots of terminated
ones) costs a fifth more. So the writer picks the smallest statement that covers the group:

- :func:`append_one`: one session, one event, no creation, no termination (the quiet store's
  commonest append: a message awaited after another);
- :func:`session_statement`: one session, any events;
- :func:`group_statement`: several sessions.

Every form applies a session's events only if its head row still has the expected ``last_seq``
and the fence this store holds (``0``: adopt the head's), and returns ``(session_id, fence)`` for
each session it applied, in one statement (so one transaction in autocommit mode).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .base import SavedSession, StoredSession
from .sqlite_schema import decode_object

if TYPE_CHECKING:
    from .postgres_append import PgAppend

__all__ = [
    "Statements",
    "append_one",
    "group_params",
    "group_statement",
    "one_params",
    "saved_summary",
    "session_params",
    "session_statement",
    "stored_head",
]

#: ``updated_at`` moves only with the status (to the time of the event that changed it): an
#: ordinary append then changes no indexed column of the head, so its update is a HOT one.
_HEAD_SET: Final = """
    SET last_seq = {last},
        status = coalesce(nullif({status}, ''), h.status),{owner}
        updated_at = {updated}"""

_OWNER_SET: Final = (
    "\n        owner = CASE WHEN {created} THEN nullif({owner}, '') ELSE h.owner END,"
)


def _head_set(last: str, status: str, created: str | None, owner: str | None, updated: str) -> str:
    owner_set = "" if created is None else _OWNER_SET.format(created=created, owner=owner)
    return _HEAD_SET.format(last=last, status=status, owner=owner_set, updated=updated)


def append_one(schema: str) -> str:
    """One event onto an existing session. Parameters: session, expected last seq, fence,
    seq, status or '', type, time, data (:func:`one_params`)."""
    return f"""
WITH upd AS (
    UPDATE {schema}.sessions AS h{
        _head_set("$4", "$5", None, None, "CASE WHEN $5 = '' THEN h.updated_at ELSE $7 END")
    }
    WHERE h.session_id = $1 AND h.last_seq = $2 AND ($3 = 0 OR h.fence = $3)
    RETURNING h.fence
),
ev AS (
    INSERT INTO {schema}.events (session_id, seq, type, time, data)
    SELECT $1, $4, $6, $7, $8 FROM upd
)
SELECT $1::text, fence FROM upd
"""


def session_statement(schema: str, *, creates: bool, ends: bool) -> str:
    """One session's events. Parameters (:func:`session_params`): session, expected last seq,
    fence, new last seq, status or '', whether a ``session_created`` is among them, its owner
    or '', then the events' seqs, types, times and data as arrays, and the time of the last event
    that changed the status (or ``NULL``). ``creates``: the statement
    may create the head (expected 0); ``ends``: it drops the session's snapshots if it ends."""
    ok = "upd"
    parts = [
        f"""upd AS (
    UPDATE {schema}.sessions AS h{_head_set("$4", "$5", "$6", "$7", "coalesce($12, h.updated_at)")}
    WHERE h.session_id = $1 AND h.last_seq = $2 AND $2 > 0 AND ($3 = 0 OR h.fence = $3)
    RETURNING h.session_id, h.fence, h.status
)"""
    ]
    if creates:
        parts.append(f"""ins AS (
    INSERT INTO {schema}.sessions AS h
        (session_id, last_seq, status, owner, fence, created_at, updated_at)
    SELECT $1, $4, coalesce(nullif($5, ''), 'initializing'), nullif($7, ''), 1,
           coalesce($12, ($10::timestamptz[])[1]), coalesce($12, ($10::timestamptz[])[1])
    WHERE $2 = 0
    ON CONFLICT (session_id) DO NOTHING
    RETURNING h.session_id, h.fence, h.status
)""")
        parts.append("ok AS (SELECT * FROM upd UNION ALL SELECT * FROM ins)")
        ok = "ok"
    parts.append(f"""ev AS (
    INSERT INTO {schema}.events (session_id, seq, type, time, data)
    SELECT {ok}.session_id, e.seq, e.type, e.time, e.data
    FROM {ok}, unnest($8::bigint[], $9::text[], $10::timestamptz[], $11::bytea[])
        AS e(seq, type, time, data)
)""")
    if ends:
        parts.append(f"""ended AS (
    DELETE FROM {schema}.snapshots
    WHERE session_id = $1 AND EXISTS (SELECT 1 FROM {ok} WHERE status = 'terminated')
)""")
    return "WITH " + ",\n".join(parts) + f"\nSELECT session_id, fence FROM {ok}\n"


def group_statement(schema: str, *, creates: bool, ends: bool) -> str:
    """Several sessions' events. Parameters (:func:`group_params`): one array per head column
    (session, expected last seq, fence, new last seq, status or '', created, owner or ''), then
    one per event column (session, seq, type, time, data), then the heads' status times."""
    ok = "upd"
    parts = [
        """b AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[],
                         $6::bool[], $7::text[], $13::timestamptz[])
        AS b(session_id, expected, fence, last_seq, status, created, owner, status_at)
)""",
        f"""upd AS (
    UPDATE {schema}.sessions AS h{
            _head_set(
                "b.last_seq",
                "b.status",
                "b.created",
                "b.owner",
                "coalesce(b.status_at, h.updated_at)",
            )
        }
    FROM b
    WHERE h.session_id = b.session_id AND h.last_seq = b.expected AND b.expected > 0
      AND (b.fence = 0 OR h.fence = b.fence)
    RETURNING h.session_id, h.fence, h.status
)""",
    ]
    if creates:
        parts.append(f"""ins AS (
    INSERT INTO {schema}.sessions AS h
        (session_id, last_seq, status, owner, fence, created_at, updated_at)
    SELECT b.session_id, b.last_seq, coalesce(nullif(b.status, ''), 'initializing'),
           nullif(b.owner, ''), 1, coalesce(b.status_at, now()), coalesce(b.status_at, now())
    FROM b WHERE b.expected = 0
    ON CONFLICT (session_id) DO NOTHING
    RETURNING h.session_id, h.fence, h.status
)""")
        parts.append("ok AS (SELECT * FROM upd UNION ALL SELECT * FROM ins)")
        ok = "ok"
    parts.append(f"""ev AS (
    INSERT INTO {schema}.events (session_id, seq, type, time, data)
    SELECT e.session_id, e.seq, e.type, e.time, e.data
    FROM unnest($8::text[], $9::bigint[], $10::text[], $11::timestamptz[], $12::bytea[])
        AS e(session_id, seq, type, time, data)
    WHERE e.session_id IN (SELECT session_id FROM {ok})
)""")
    if ends:
        parts.append(f"""ended AS (
    DELETE FROM {schema}.snapshots
    WHERE session_id IN (SELECT session_id FROM {ok} WHERE status = 'terminated')
)""")
    return "WITH " + ",\n".join(parts) + f"\nSELECT session_id, fence FROM {ok}\n"


def one_params(session_id: str, fence: int, append: PgAppend) -> tuple[Any, ...]:
    """:func:`append_one`'s parameters."""
    return (
        session_id, append.first - 1, fence, append.first, append.status or "",
        append.types[0], append.times[0], append.data[0],
    )  # fmt: skip


def session_params(session_id: str, fence: int, appends: Sequence[PgAppend]) -> tuple[Any, ...]:
    """:func:`session_statement`'s parameters."""
    status = ""
    status_at: datetime | None = None
    is_created = False
    owner = ""
    seqs: list[int] = []
    types: list[str] = []
    times: list[datetime] = []
    data: list[bytes] = []
    for append in appends:
        if append.status is not None:
            status, status_at = append.status, append.status_at
        if append.created:
            is_created, owner = True, append.owner or ""
        seqs.extend(range(append.first, append.last + 1))
        types.extend(append.types)
        times.extend(append.times)
        data.extend(append.data)
    return (
        session_id, appends[0].first - 1, fence, appends[-1].last, status, is_created, owner,
        seqs, types, times, data, status_at,
    )  # fmt: skip


def group_params(
    chains: Sequence[tuple[str, int, Sequence[PgAppend]]],
) -> tuple[list[Any], ...]:
    """:func:`group_statement`'s parameters, from ``(session, fence, appends)`` per session."""
    sids: list[str] = []
    expected: list[int] = []
    fences: list[int] = []
    lasts: list[int] = []
    statuses: list[str] = []
    created: list[bool] = []
    owners: list[str] = []
    status_times: list[datetime | None] = []
    e_sids: list[str] = []
    e_seqs: list[int] = []
    e_types: list[str] = []
    e_times: list[datetime] = []
    e_data: list[bytes] = []
    for sid, fence, appends in chains:
        status = ""
        status_at: datetime | None = None
        is_created = False
        owner = ""
        for append in appends:
            if append.status is not None:
                status, status_at = append.status, append.status_at
            if append.created:
                is_created, owner = True, append.owner or ""
            count = len(append.types)
            e_sids.extend([sid] * count)
            e_seqs.extend(range(append.first, append.last + 1))
            e_types.extend(append.types)
            e_times.extend(append.times)
            e_data.extend(append.data)
        sids.append(sid)
        expected.append(appends[0].first - 1)
        fences.append(fence)
        lasts.append(appends[-1].last)
        statuses.append(status)
        created.append(is_created)
        owners.append(owner)
        status_times.append(status_at)
    return (
        sids, expected, fences, lasts, statuses, created, owners,
        e_sids, e_seqs, e_types, e_times, e_data, status_times,
    )  # fmt: skip


class Statements:
    """The store's other statements (reads, snapshots, saved copies, fences), with the quoted
    schema ``s`` written in once (its name is checked by ``check_schema_name``)."""

    def __init__(self, s: str) -> None:
        self.events = (
            f"SELECT seq, type, time, data FROM {s}.events WHERE session_id = $1 AND seq > $2"
            " ORDER BY seq LIMIT $3"
        )
        head = f"SELECT session_id, status, last_seq, owner, updated_at FROM {s}.sessions"
        self.head = f"{head} WHERE session_id = $1"
        # Served by the partial index sessions_quiet, oldest first.
        self.quiet_first = (
            f"{head} WHERE status <> 'terminated' AND updated_at < $1"
            " ORDER BY updated_at, session_id LIMIT $2"
        )
        self.quiet_after = (
            f"{head} WHERE status <> 'terminated' AND updated_at < $1"
            " AND (updated_at, session_id) > ($2, $3) ORDER BY updated_at, session_id LIMIT $4"
        )
        # A turn's stream chunks, dropped once it has ended (``drop_events``): only while the
        # fence is the one held ($5; 0 adopts, as an append does) and never the log's last
        # event (``last_seq`` stays). The head's fence comes back, to tell a refusal apart.
        self.drop = (
            f"WITH h AS (SELECT last_seq, fence FROM {s}.sessions WHERE session_id = $1),"
            f" d AS (DELETE FROM {s}.events AS e USING h WHERE e.session_id = $1"
            " AND e.seq BETWEEN $3 AND $4 AND e.type = $2 AND e.seq < h.last_seq"
            " AND ($5 = 0 OR h.fence = $5) RETURNING 1)"
            " SELECT (SELECT fence FROM h), (SELECT count(*) FROM d)"
        )
        self.take = (
            f"UPDATE {s}.sessions SET fence = fence + 1 WHERE session_id = $1 RETURNING fence"
        )
        self.read_snapshot = (
            f"SELECT seq, state FROM {s}.snapshots WHERE session_id = $1 AND seq <= $2"
            " ORDER BY seq DESC LIMIT 1"
        )
        # A snapshot of a session whose log is closed (terminated meanwhile) is not kept.
        self.snapshot = (
            f"INSERT INTO {s}.snapshots (session_id, seq, state)"
            f" SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM {s}.sessions"
            "  WHERE session_id = $1 AND status = 'terminated')"
            " ON CONFLICT (session_id, seq) DO NOTHING"
        )
        self.save = (
            f"INSERT INTO {s}.saved_sessions"
            " (session_id, saved_at, message_count, metadata, owner, state)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (session_id) DO UPDATE SET"
            " saved_at = excluded.saved_at, message_count = excluded.message_count,"
            " metadata = excluded.metadata, owner = excluded.owner, state = excluded.state"
        )
        self.delete_saved = f"DELETE FROM {s}.saved_sessions WHERE session_id = $1"
        self.load_saved = (
            "SELECT session_id, saved_at, message_count, metadata, owner, state"
            f" FROM {s}.saved_sessions WHERE session_id = $1"
        )
        self.list_saved = (
            "SELECT session_id, saved_at, message_count, metadata, owner"
            f" FROM {s}.saved_sessions ORDER BY session_id"
        )
        # Retention. A session's rows (its runs and idempotency keys too) are removed under
        # its head's lock, taken first (an append in flight then either committed before, and
        # its events are seen by the deletes, or finds no head and stores nothing). Its stream
        # tickets (path ``/v1/sessions/<id>/...``, jidoka.server.tickets) go with it.
        self.lock_head = f"SELECT 1 FROM {s}.sessions WHERE session_id = $1 FOR UPDATE"
        self.purge = f"""
WITH ev AS (DELETE FROM {s}.events WHERE session_id = $1 RETURNING 1),
sn AS (DELETE FROM {s}.snapshots WHERE session_id = $1 RETURNING 1),
sv AS (DELETE FROM {s}.saved_sessions WHERE session_id = $1 RETURNING 1),
rn AS (DELETE FROM {s}.runs WHERE session_id = $1),
ik AS (DELETE FROM {s}.idempotency_keys WHERE session_id = $1),
tk AS (
    DELETE FROM {s}.stream_tickets
    WHERE path LIKE '/v1/sessions/%' AND split_part(path, '/', 4) = $1
),
hd AS (DELETE FROM {s}.sessions WHERE session_id = $1 RETURNING 1)
SELECT EXISTS (SELECT 1 FROM hd) OR EXISTS (SELECT 1 FROM ev) OR EXISTS (SELECT 1 FROM sn)
    OR EXISTS (SELECT 1 FROM sv)"""
        # Expiry: a batch of terminated heads, locked; heads another sweeper holds are skipped
        # (it is removing them), so concurrent sweepers take disjoint batches.
        self.lock_ended = (
            f"{head} WHERE status = 'terminated' AND updated_at < $1"
            " ORDER BY updated_at, session_id LIMIT $2 FOR UPDATE SKIP LOCKED"
        )
        self.remove_ended = f"""
WITH ev AS (DELETE FROM {s}.events WHERE session_id = ANY($1::text[])),
sn AS (DELETE FROM {s}.snapshots WHERE session_id = ANY($1::text[])),
rn AS (DELETE FROM {s}.runs WHERE session_id = ANY($1::text[])),
ik AS (DELETE FROM {s}.idempotency_keys WHERE session_id = ANY($1::text[])),
tk AS (
    DELETE FROM {s}.stream_tickets
    WHERE path LIKE '/v1/sessions/%' AND split_part(path, '/', 4) = ANY($1::text[])
)
DELETE FROM {s}.sessions WHERE session_id = ANY($1::text[]) AND status = 'terminated'
RETURNING session_id"""
        self.expire_saved = f"""
DELETE FROM {s}.saved_sessions WHERE session_id IN (
    SELECT session_id FROM {s}.saved_sessions WHERE saved_at < $1
    ORDER BY saved_at, session_id LIMIT $2 FOR UPDATE SKIP LOCKED
) AND saved_at < $1
RETURNING session_id, saved_at, message_count, metadata, owner"""
        self._listings: dict[tuple[bool, bool], str] = {}
        for by_owner in (False, True):
            for by_status in (False, True):
                where = ["owner = $1"] if by_owner else []
                if by_status:
                    where.append(f"status = ${len(where) + 1}")
                else:
                    where.append("status <> 'terminated'")
                n = len([w for w in where if "$" in w])
                where.append(f"session_id > ${n + 1}")
                self._listings[by_owner, by_status] = (
                    f"{head} WHERE " + " AND ".join(where) + f" ORDER BY session_id LIMIT ${n + 2}"
                )

    def listing(self, by_owner: bool, by_status: bool) -> str:
        return self._listings[by_owner, by_status]


def stored_head(row: Any) -> StoredSession:
    """A ``sessions`` row (:attr:`Statements.head`'s columns) as a :class:`StoredSession`."""
    session_id, status, last_seq, owner, updated_at = row
    return StoredSession(session_id, status, int(last_seq), owner, updated_at)


def saved_summary(row: Any) -> SavedSession:
    """A ``saved_sessions`` row's summary columns (unreadable metadata reads as empty)."""
    session_id, saved_at, count, metadata, owner = row[:5]
    try:
        meta = decode_object(metadata)
    except (msgspec.DecodeError, msgspec.ValidationError):
        meta = {}
    return SavedSession(
        session_id=session_id,
        saved_at=saved_at,
        message_count=int(count),
        metadata=meta,
        owner=owner,
    )
