"""Cluster membership and session ownership in the PostgreSQL store's schema (version 2).

Postgres is the only authority a cluster has: a node's lease is its row of ``nodes`` with an
``expires_at`` computed by the server's clock (``now()``), never by a node's, and a session's
owner is the ``node`` column of its head row, next to the **fence** every append checks. So:

- a node renews one row, whatever the number of sessions it owns (``O(nodes)`` renewals);
- taking a session is one statement that checks the session is free (no owner, the owner is this
  node's id, or the owner's lease has expired or it left) and that *this* node's lease is valid,
  then names this node and raises the fence, under the head row's lock: two nodes taking the
  same session serialise, and the loser is told who won;
- from the moment the fence moves, the former owner's appends are refused in their own statement
  (:class:`~.base.OwnershipLost`), however long it slept and whatever it believes.

Heartbeats run on a connection of their own: a pool busy with reads must not starve the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Final, NamedTuple

import asyncpg

from ..errors import StoreError
from .base import StoredSession, StoreUnavailable
from .postgres_schema import UNAVAILABLE

if TYPE_CHECKING:
    from .postgres import PostgresStore

__all__ = ["NODE_ID", "Location", "NodeRow", "PgCluster", "Taken", "check_node_id"]

#: What a node id may be: it travels in headers, metrics labels and log lines.
NODE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def check_node_id(node_id: object) -> str:
    if not isinstance(node_id, str) or not NODE_ID.fullmatch(node_id):
        raise ValueError(
            "a node id is 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or "
            f"digit, not {node_id!r}"
        )
    return node_id


class Taken(NamedTuple):
    """What an attempt to take a session found. ``fence`` is set if this node now owns it;
    otherwise ``owner``/``owner_url`` name the live node that does (``status`` ``None``: no
    such session)."""

    fence: int | None
    status: str | None
    #: The node that owned it before (``None``: released, or never owned by a node).
    previous: str | None
    owner: str | None = None
    owner_url: str | None = None
    #: The session's head as the take found it (``None``: no such session): what loading it
    #: needs, so a takeover reads the head once.
    head: StoredSession | None = None


class Location(NamedTuple):
    """Where a session lives: its owner node, that node's address and whether its lease is
    valid now (by the server's clock)."""

    status: str
    node: str | None
    url: str | None
    alive: bool
    #: Seconds the owner's lease has left (by the server's clock; 0 when not alive).
    lease_left: float = 0.0


class NodeRow(NamedTuple):
    node_id: str
    advertise_url: str
    state: str
    alive: bool
    started_at: datetime
    heartbeat_at: datetime
    #: Seconds since its last heartbeat, by the server's clock.
    heartbeat_age: float
    owned: int


class PgCluster:
    """The membership and ownership statements for one node of a store's schema."""

    def __init__(self, store: PostgresStore, node_id: str, advertise_url: str) -> None:
        self.store = store
        self.node_id = check_node_id(node_id)
        self.advertise_url = advertise_url
        self.incarnation = 0
        s = f'"{store.schema}"'
        self._register = f"""
INSERT INTO {s}.nodes AS n (node_id, advertise_url, incarnation, state, expires_at)
VALUES ($1, $2, 1, 'up', now() + make_interval(secs => $3))
ON CONFLICT (node_id) DO UPDATE SET
    advertise_url = excluded.advertise_url, incarnation = n.incarnation + 1, state = 'up',
    started_at = now(), heartbeat_at = now(), expires_at = excluded.expires_at
WHERE n.state <> 'up' OR n.expires_at < now()
RETURNING n.incarnation"""
        self._lease_left = f"""
SELECT extract(epoch FROM expires_at - now())::float8 FROM {s}.nodes
WHERE node_id = $1 AND state = 'up'"""
        self._renew = f"""
UPDATE {s}.nodes SET heartbeat_at = now(), expires_at = now() + make_interval(secs => $3)
WHERE node_id = $1 AND incarnation = $2 AND state = 'up'
RETURNING extract(epoch FROM expires_at - now())::float8"""
        self._leave = f"""
UPDATE {s}.nodes SET state = 'down', expires_at = now()
WHERE node_id = $1 AND incarnation = $2"""
        self._take = f"""
WITH me AS (
    SELECT 1 FROM {s}.nodes
    WHERE node_id = $2 AND incarnation = $3 AND state = 'up' AND expires_at > now()
), cur AS (
    SELECT h.session_id, h.node, h.status, h.last_seq, h.owner, h.updated_at
    FROM {s}.sessions AS h
    WHERE h.session_id = $1
    FOR UPDATE
), own AS (
    -- The owner's lease is looked up apart from the lock: a taker that waited for another
    -- one's lock finds the row as the other left it, and must judge *that* owner. (Joined in
    -- the locking query, the recheck after the wait kept the first, null-extended join row:
    -- a session taken meanwhile looked free, and both takers won in turn.)
    SELECT cur.session_id, cur.node, cur.status, cur.last_seq, cur.owner, cur.updated_at,
           n.advertise_url,
           (cur.node IS NULL OR cur.node = $2 OR n.node_id IS NULL OR n.state <> 'up'
            OR n.expires_at <= now()) AS free
    FROM cur LEFT JOIN {s}.nodes AS n ON n.node_id = cur.node
), upd AS (
    UPDATE {s}.sessions AS h SET fence = h.fence + 1, node = $2
    FROM own
    WHERE h.session_id = own.session_id AND own.free AND own.status <> 'terminated'
      AND EXISTS (SELECT 1 FROM me)
    RETURNING h.fence
)
SELECT own.status, own.node, own.free, (SELECT fence FROM upd), own.advertise_url,
       EXISTS (SELECT 1 FROM me), own.last_seq, own.owner, own.updated_at
FROM own"""
        self._locate = f"""
SELECT h.status, h.node, n.advertise_url,
       coalesce(n.state = 'up' AND n.expires_at > now(), false),
       greatest(coalesce(extract(epoch FROM n.expires_at - now())::float8, 0), 0)
FROM {s}.sessions AS h LEFT JOIN {s}.nodes AS n ON n.node_id = h.node
WHERE h.session_id = $1"""
        self._hand_over = f"""
UPDATE {s}.sessions AS h SET node = NULL
FROM unnest($2::text[], $3::bigint[]) AS k(session_id, fence)
WHERE h.session_id = k.session_id AND h.node = $1 AND h.fence = k.fence"""
        self._nodes = f"""
SELECT n.node_id, n.advertise_url, n.state, n.state = 'up' AND n.expires_at > now(),
       n.started_at, n.heartbeat_at,
       extract(epoch FROM now() - n.heartbeat_at)::float8,
       (SELECT count(*) FROM {s}.sessions AS h
        WHERE h.node = n.node_id AND h.status <> 'terminated')
FROM {s}.nodes AS n ORDER BY n.node_id"""
        self._secret = f"SELECT value FROM {s}.jidoka_meta WHERE key = 'cluster_secret'"
        # Issued only below both bounds, counted among the tickets not expired; the answer is
        # the counts before the insert (a count at a bound: refused).
        self._issue = f"""
WITH counts AS (
    SELECT count(*) FILTER (WHERE principal IS NOT DISTINCT FROM $2) AS mine, count(*) AS total
    FROM {s}.stream_tickets WHERE expires_at > now()
), ins AS (
    INSERT INTO {s}.stream_tickets (digest, principal, path, expires_at)
    SELECT $1, $2, $3, now() + make_interval(secs => $4) FROM counts
    WHERE mine < $5 AND total < $6
    RETURNING 1
)
SELECT mine, total, EXISTS (SELECT 1 FROM ins) FROM counts"""
        self._purge_tickets = f"DELETE FROM {s}.stream_tickets WHERE expires_at <= now()"
        self._redeem = f"""
DELETE FROM {s}.stream_tickets WHERE digest = $1
RETURNING principal, path, expires_at > now()"""

    # --- membership ---------------------------------------------------------------------------

    async def register(self, conn: asyncpg.Connection, ttl: float) -> float | None:
        """Join: claim this node id's row with a fresh lease. ``None`` if another process holds
        the id under a lease that has not expired (a node restarted at once after a crash, or
        a second node given the same id): the caller waits and tries again. Otherwise the
        seconds the new lease has left."""
        incarnation = await conn.fetchval(self._register, self.node_id, self.advertise_url, ttl)
        if incarnation is None:
            return None
        self.incarnation = int(incarnation)
        return ttl

    async def lease_left(self, conn: asyncpg.Connection) -> float | None:
        """Seconds the id's current lease has left (``None``: nobody holds it)."""
        left = await conn.fetchval(self._lease_left, self.node_id)
        return None if left is None else float(left)

    async def renew(self, conn: asyncpg.Connection, ttl: float) -> float | None:
        """Renew this node's lease; the seconds it now has, or ``None`` if the row is no longer
        this incarnation's (another process took the id: this one must stop at once)."""
        left = await conn.fetchval(self._renew, self.node_id, self.incarnation, ttl)
        return None if left is None else float(left)

    async def leave(self, conn: asyncpg.Connection) -> None:
        """Leave: the lease ends now, so every session still named after this node is free."""
        await conn.execute(self._leave, self.node_id, self.incarnation)

    # --- ownership ----------------------------------------------------------------------------

    async def take(self, session_id: str) -> Taken:
        """Take the session if it is free (see the module's docstring); on success the store
        holds the new fence, which every later append of this node carries."""
        store = self.store

        async def run(conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record]) -> Taken:
            row = await conn.fetchrow(self._take, session_id, self.node_id, self.incarnation)
            if row is None:
                return Taken(None, None, None)
            status, node, free, fence, url, me, last_seq, principal, updated_at = row
            head = StoredSession(session_id, status, int(last_seq), principal, updated_at)
            if fence is not None:
                return Taken(int(fence), status, node, head=head)
            if status != "terminated" and free and not me:
                raise StoreUnavailable(
                    f"session {session_id!r}: node {self.node_id!r} holds no valid lease, so it "
                    "cannot take sessions (its heartbeats are not reaching Postgres)",
                    session_id=session_id,
                )
            return Taken(None, status, node, None if free else node, None if free else url, head)

        taken = await store.run(session_id, run, retry=False)
        if taken.fence is not None:
            store.hold_fence(session_id, taken.fence)
        return taken

    async def locate(self, session_id: str) -> Location | None:
        row = await self.store.fetchrow(session_id, self._locate, session_id)
        if row is None:
            return None
        status, node, url, alive, left = row
        return Location(status, node, url, bool(alive), float(left) if alive else 0.0)

    async def hand_over(self, sessions: Sequence[tuple[str, int]]) -> None:
        """Release sessions this node stops serving (``(id, fence)`` each): any node may take
        them at once, without waiting for this node's lease to run out. A session whose fence
        moved meanwhile is another node's already and is left alone."""
        if not sessions:
            return
        ids = [sid for sid, _ in sessions]
        fences = [fence for _, fence in sessions]

        async def run(conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record]) -> None:
            await conn.execute(self._hand_over, self.node_id, ids, fences)

        await self.store.run(None, run)

    async def nodes(self) -> list[NodeRow]:
        rows = await self.store.fetch(None, self._nodes)
        return [
            NodeRow(
                node_id=row[0],
                advertise_url=row[1],
                state=row[2],
                alive=bool(row[3]),
                started_at=row[4],
                heartbeat_at=row[5],
                heartbeat_age=float(row[6]),
                owned=int(row[7]),
            )
            for row in rows
        ]

    async def secret(self) -> str:
        rows = await self.store.fetch(None, self._secret)
        if not rows or not rows[0][0]:
            raise StoreError(f"the Postgres schema {self.store.schema!r} has no cluster secret")
        return str(rows[0][0])

    # --- stream tickets -----------------------------------------------------------------------

    async def issue_ticket(
        self,
        digest: bytes,
        principal: str | None,
        path: str | None,
        *,
        ttl: float,
        max_per_principal: int,
        max_total: int,
    ) -> tuple[int, int, bool]:
        """Keep a ticket's digest if both bounds allow: ``(the principal's outstanding
        tickets, everyone's, kept)``, counted before it."""

        async def run(
            conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record],
        ) -> tuple[int, int, bool]:
            await conn.execute(self._purge_tickets)
            row = await conn.fetchrow(
                self._issue, digest, principal, path, ttl, max_per_principal, max_total
            )
            assert row is not None
            return int(row[0]), int(row[1]), bool(row[2])

        return await self.store.run(None, run, retry=False)

    async def redeem_ticket(self, digest: bytes) -> tuple[str | None, str | None, bool] | None:
        """Spend a ticket: ``(principal, path, still valid)``, or ``None`` if unknown/spent."""

        async def run(
            conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record],
        ) -> tuple[str | None, str | None, bool] | None:
            row = await conn.fetchrow(self._redeem, digest)
            return None if row is None else (row[0], row[1], bool(row[2]))

        return await self.store.run(None, run, retry=False)

    async def connect(self) -> asyncpg.Connection:
        """A connection of the membership's own (heartbeats)."""
        return await self.store.connect("membership")


async def close_quietly(conn: asyncpg.Connection | None) -> None:
    if conn is None:
        return
    with contextlib.suppress(*UNAVAILABLE, asyncpg.PostgresError):
        async with asyncio.timeout(1.0):
            await conn.close()
    if not conn.is_closed():
        conn.terminate()
