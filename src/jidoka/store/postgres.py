"""The PostgreSQL store: sessions in a database many nodes can share, group-committed and fenced.

**Writes.** Appends go through one writer connection that sends every append waiting while its
previous statement was in flight as one statement (group commit over the network, see
:mod:`.postgres_writer`); an append is acknowledged once the statement holding it has committed.
Each append names the first seq it expects and the **fence** this store holds for the session;
the head row is updated only if both still match, in the same statement as the insert, so two
writers can never both win and a node that lost a session can never write to it again.

**Fences.** A session created through this store starts at fence 1, and this store holds it. A
store that writes to a session it did not create adopts the fence the head holds on its first
append (on one node nothing else writes); :meth:`PostgresStore.take` raises the fence, which is
what a node taking a session over does: from then on the former holder's appends are refused
with :class:`~.base.OwnershipLost`. A store opened for a cluster node (``node_id``) never adopts:
it writes only to sessions it created or took (:mod:`.postgres_cluster`), and the sessions it
creates are recorded as this node's.

**Reads** (and the rarer writes: snapshots, saved copies) use a connection pool; a read that
meets a broken connection is tried once more on a fresh one (a server restart leaves every
pooled connection broken).

**Outages.** A server that cannot be reached makes calls fail with
:class:`~.base.StoreUnavailable` (HTTP 503) within about ``connect_timeout``; nothing is half
applied; the store reconnects by itself on the next call.

**Start-up** reads nothing but the schema version: sessions are found by id and listed through
indexes (:meth:`find_session`, :meth:`list_sessions`), never read all at once.

Everything runs on the event loop the store was opened on (no thread). The driver is asyncpg:
against psycopg 3 on the group statement it spent about half the CPU per call, which is what
bounds both the one-session and the many-session rate here (``docs/performance.md``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Final, Literal, TypeAlias, TypeVar

import asyncpg
import msgspec

from ..errors import RuntimeClosed, StoreError
from ..events import EVENT_TYPES, Event, EventType
from .base import (
    LIVE_SESSIONS_PAGE,
    OnCommitted,
    OwnershipLost,
    SavedSession,
    SchemaError,
    StoredSession,
    StoreUnavailable,
    check_drop,
)
from .heads import batch_head
from .postgres_append import PgAppend
from .postgres_retention import PgRetention
from .postgres_runs import PgRuns, RunStatements
from .postgres_schema import SCHEMA_VERSION, UNAVAILABLE, check_schema_name, migrate
from .postgres_sql import Statements, saved_summary, stored_head
from .postgres_writer import PgWriter
from .sqlite_schema import decode_object, encode

__all__ = ["SCHEMA_VERSION", "PostgresStore", "SchemaError", "is_postgres_dsn"]

_T = TypeVar("_T")
_Conn = asyncpg.Connection
_Pool = asyncpg.Pool
#: A connection lent by the pool (what the read and snapshot functions run on).
_Lent: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"

#: Rows one page of a byte-bounded replay reads at a time.
_READ_PAGE: Final = 256


def is_postgres_dsn(value: str) -> bool:
    """Whether a ``store`` setting names a PostgreSQL database."""
    return value.startswith(("postgresql://", "postgres://"))


class PostgresStore(PgRetention, PgRuns):
    """Session logs, snapshots, saved sessions and runs in one schema of a PostgreSQL database."""

    durable = True
    commits_inline = False

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "jidoka",
        pool_size: int = 8,
        connect_timeout: float = 5.0,
        command_timeout: float = 30.0,
        application_name: str = "jidoka",
        node_id: str | None = None,
    ) -> None:
        if not isinstance(dsn, str) or not dsn:
            raise ValueError("the Postgres DSN must be a non-empty string")
        if not isinstance(pool_size, int) or not 1 <= pool_size <= 1000:
            raise ValueError(f"pool_size must be between 1 and 1000, not {pool_size!r}")
        if not connect_timeout > 0 or not command_timeout > 0:
            raise ValueError("connect_timeout and command_timeout must be positive")
        self.dsn = dsn
        self.schema = check_schema_name(schema)
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.application_name = application_name
        #: The cluster node this store writes for (``None``: a single node, which adopts fences).
        self.node_id = node_id
        self._writer = PgWriter(
            schema,
            self._connect_writer,
            command_timeout=command_timeout,
            strict=node_id is not None,
        )
        self._pool: _Pool | None = None
        self._state: Literal["new", "open", "closed"] = "new"
        self._q = Statements(f'"{self.schema}"')
        self._rq = RunStatements(f'"{self.schema}"')

    @property
    def commits(self) -> int:
        """Group statements the writer has committed."""
        return self._writer.commits

    @property
    def batched_requests(self) -> int:
        """Appends those statements held (over ``commits``: the mean group size)."""
        return self._writer.batched_requests

    # --- opening and closing ----------------------------------------------------------------------

    def _settings(self, role: str) -> dict[str, str]:
        settings = {
            "application_name": f"{self.application_name}-{role}",
            # A half-open connection (a cut network) is noticed within ~15 s even when idle.
            "tcp_keepalives_idle": "5",
            "tcp_keepalives_interval": "2",
            "tcp_keepalives_count": "3",
        }
        if self.node_id is not None:
            # The default of ``sessions.node``: a session created here is this node's.
            settings["jidoka.node"] = self.node_id
        return settings

    async def connect(self, role: str) -> _Conn:
        """A connection of its own for ``role`` (the cluster's heartbeats), outside the pool;
        the caller closes it."""
        self._check_open(None)
        return await self._connect(role)

    async def _connect(self, role: str) -> _Conn:
        try:
            async with asyncio.timeout(self.connect_timeout):
                conn: _Conn = await asyncpg.connect(
                    self.dsn, timeout=self.connect_timeout, server_settings=self._settings(role)
                )
                return conn
        except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"cannot connect to Postgres ({self._where()}): {exc}") from exc

    async def _connect_writer(self) -> _Conn:
        return await self._connect("writer")

    def _where(self) -> str:
        """Where the database is, for messages (never the DSN: it may hold a password)."""
        try:
            rest = self.dsn.split("://", 1)[1]
            host = rest.rsplit("@", 1)[-1].split("?", 1)[0]
        except IndexError:
            return "an unreadable DSN"
        return host or "the local socket"

    async def open(self) -> None:
        """Create or migrate the schema, start the writer and the read pool."""
        if self._state != "new":
            raise RuntimeClosed(f"the Postgres store {self.schema!r} was already opened")
        conn = await self._connect("migrate")
        try:
            await migrate(conn, self.schema)
        finally:
            conn.terminate()
        writer = await self._connect("writer")
        try:
            async with asyncio.timeout(self.connect_timeout):
                pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=1,
                    max_size=self.pool_size,
                    timeout=self.connect_timeout,
                    server_settings=self._settings("reader"),
                )
        except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
            writer.terminate()
            raise StoreUnavailable(f"cannot connect to Postgres ({self._where()}): {exc}") from exc
        except BaseException:
            writer.terminate()
            raise
        self._pool = pool
        self._writer.start(writer)
        self._state = "open"

    async def aclose(self) -> None:
        """Commit queued appends, stop the writer, close the pool. Idempotent."""
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closed"
        try:
            await self._writer.stop()
        finally:
            pool, self._pool = self._pool, None
            if pool is not None:
                try:
                    async with asyncio.timeout(self.connect_timeout):
                        await pool.close()
                except (*UNAVAILABLE, asyncpg.PostgresError):
                    pool.terminate()

    def _check_open(self, session_id: str | None) -> None:
        if self._state != "open":
            raise RuntimeClosed(
                f"the Postgres store {self.schema!r} is {self._state}", session_id=session_id
            )

    # --- the pool ---------------------------------------------------------------------------------

    async def run(
        self, session_id: str | None, run: Callable[[_Lent], Awaitable[_T]], *, retry: bool = True
    ) -> _T:
        """Run ``run`` on a pooled connection; once more on a fresh one if that one was broken
        (only for idempotent work: ``retry``). Bounded by ``connect_timeout`` to get a
        connection plus ``command_timeout`` to run."""
        self._check_open(session_id)
        pool = self._pool
        assert pool is not None
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(self.command_timeout + self.connect_timeout):
                    async with pool.acquire(timeout=self.connect_timeout) as conn:
                        return await run(conn)
            except UNAVAILABLE as exc:
                if attempt == 2 or not retry:
                    raise self._unavailable(session_id, exc) from exc
            except asyncpg.PostgresError as exc:
                raise StoreError(
                    f"session {session_id!r}: the Postgres store refused the request: {exc}",
                    session_id=session_id,
                ) from exc
        raise AssertionError("unreachable")

    def _unavailable(self, session_id: str | None, exc: BaseException) -> StoreUnavailable:
        about = f"session {session_id!r}: " if session_id else ""
        detail = str(exc) or type(exc).__name__
        return StoreUnavailable(
            f"{about}the Postgres store cannot be reached ({self._where()}): {detail}",
            session_id=session_id,
        )

    async def fetch(self, session_id: str | None, query: str, *args: Any) -> list[Any]:
        """``query``'s rows, read on a pooled connection (retried once on a broken one)."""

        async def run(conn: _Lent) -> list[Any]:
            return await conn.fetch(query, *args)

        return await self.run(session_id, run)

    async def fetchrow(self, session_id: str | None, query: str, *args: Any) -> Any:
        rows = await self.fetch(session_id, query, *args)
        return rows[0] if rows else None

    # --- appends ----------------------------------------------------------------------------------

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
        """Queue an append for the writer (see the Protocol); an empty batch is done at once."""
        self._check_open(session_id)
        if not events:
            if on_done is not None:
                on_done(None)
            return None
        head = batch_head(session_id, events)
        types = [event.type.value for event in events]
        times = [event.time for event in events]
        data = [encode(event.data) for event in events]
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writer.put(
            PgAppend(session_id, events[0].seq, types, times, data, head, on_done, future)
        )
        return future

    # --- fences -----------------------------------------------------------------------------------

    def held_fence(self, session_id: str) -> int | None:
        """The fence this store holds for the session (``None``: none yet; its first append
        adopts the head's)."""
        return self._writer.fences.get(session_id)

    async def take(self, session_id: str) -> int:
        """Raise the session's fence and hold the new one: whoever held it before can no longer
        append (:class:`~.base.OwnershipLost`). What a node taking a session over does."""

        async def run(conn: _Lent) -> int | None:
            fence = await conn.fetchval(self._q.take, session_id)
            return None if fence is None else int(fence)

        fence = await self.run(session_id, run, retry=False)
        if fence is None:
            raise StoreError(
                f"session {session_id!r}: no such session in the store", session_id=session_id
            )
        self._writer.fences[session_id] = fence
        return fence

    def hold_fence(self, session_id: str, fence: int) -> None:
        """Hold ``fence`` for the session: what a cluster node does once it has taken it."""
        self._writer.fences[session_id] = fence

    def forget_fence(self, session_id: str) -> int | None:
        """Stop holding the session's fence (this node no longer writes to it); the one held."""
        return self._writer.fences.pop(session_id, None)

    async def release(self, session_id: str) -> None:
        """The session terminated: forget its fence (the log stays, for audit and recall)."""
        self._check_open(session_id)
        self._writer.fences.pop(session_id, None)

    # --- other writes -----------------------------------------------------------------------------

    async def write_snapshot(self, session_id: str, seq: int, state: bytes) -> None:
        async def run(conn: _Lent) -> None:
            await conn.execute(self._q.snapshot, session_id, seq, state)

        await self.run(session_id, run)

    async def save(self, saved: SavedSession, state: bytes) -> None:
        params = (
            saved.session_id,
            saved.saved_at,
            saved.message_count,
            encode(saved.metadata),
            saved.owner,
            state,
        )

        async def run(conn: _Lent) -> None:
            await conn.execute(self._q.save, *params)

        await self.run(saved.session_id, run)

    async def delete_saved(self, session_id: str) -> bool:
        async def run(conn: _Lent) -> bool:
            status = await conn.execute(self._q.delete_saved, session_id)
            return status != "DELETE 0"

        return await self.run(session_id, run)

    # --- reads ------------------------------------------------------------------------------------

    async def read_events(
        self,
        session_id: str,
        *,
        after_seq: int = 0,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> list[Event]:
        wanted = None if limit is None else max(limit, 0)
        if wanted == 0:
            self._check_open(session_id)
            return []
        if max_bytes is None:
            rows = await self.fetch(session_id, self._q.events, session_id, after_seq, wanted)
            return self._events(session_id, rows)
        # Bounded by bytes: pages of a few hundred rows, stopping once the bound is reached.
        out: list[Event] = []
        size = 0
        after = after_seq
        while True:
            page = _READ_PAGE if wanted is None else min(_READ_PAGE, wanted - len(out))
            rows = await self.fetch(session_id, self._q.events, session_id, after, page)
            for row in rows:
                out.extend(self._events(session_id, [row]))
                size += len(row[3])
                if size >= max_bytes or (wanted is not None and len(out) >= wanted):
                    return out
            if len(rows) < page:
                return out
            after = int(rows[-1][0])

    @staticmethod
    def _events(session_id: str, rows: list[Any]) -> list[Event]:
        events = []
        for seq, type_, time, data in rows:
            try:
                payload = decode_object(data)
                kind = EVENT_TYPES[type_]
            except (msgspec.DecodeError, msgspec.ValidationError, KeyError) as exc:
                raise StoreError(
                    f"session {session_id!r}: event {seq} is corrupt: {exc}", session_id=session_id
                ) from None
            events.append(Event(kind, session_id, seq, time, payload))
        return events

    async def drop_events(
        self, session_id: str, event_type: EventType, *, first_seq: int, last_seq: int
    ) -> int:
        """One ``DELETE`` fenced like an append (:attr:`Statements.drop`), on the pool: the
        rows it deletes are committed ones, so it never waits on the writer's appends."""
        kind = check_drop(session_id, event_type, first_seq, last_seq)
        held = self._writer.fence_for(session_id)
        args = (session_id, kind.value, first_seq, last_seq, held)
        fence, dropped = await self.fetchrow(session_id, self._q.drop, *args)
        if fence is not None and held != 0 and fence != held:
            raise OwnershipLost(session_id, max(held, 0), int(fence))
        return int(dropped)

    async def last_seq(self, session_id: str) -> int:
        rows = await self.fetch(session_id, self._q.head, session_id)
        return int(rows[0][2]) if rows else 0

    async def read_snapshot(
        self, session_id: str, *, at_most: int | None = None
    ) -> tuple[int, bytes] | None:
        bound = (1 << 63) - 1 if at_most is None else at_most
        rows = await self.fetch(session_id, self._q.read_snapshot, session_id, bound)
        return (int(rows[0][0]), bytes(rows[0][1])) if rows else None

    async def find_session(self, session_id: str) -> StoredSession | None:
        rows = await self.fetch(session_id, self._q.head, session_id)
        return stored_head(rows[0]) if rows else None

    async def list_sessions(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        after: str | None = None,
        limit: int = LIVE_SESSIONS_PAGE,
    ) -> list[StoredSession]:
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit!r}")
        query = self._q.listing(owner is not None, status is not None)
        params: list[Any] = [] if owner is None else [owner]
        if status is not None:
            params.append(status)
        params += [after or "", limit]
        return [stored_head(row) for row in await self.fetch(None, query, *params)]

    async def quiet_sessions(
        self,
        before: datetime,
        *,
        after: tuple[datetime, str] | None = None,
        limit: int = LIVE_SESSIONS_PAGE,
    ) -> list[StoredSession]:
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit!r}")
        if after is None:
            rows = await self.fetch(None, self._q.quiet_first, before, limit)
        else:
            rows = await self.fetch(None, self._q.quiet_after, before, after[0], after[1], limit)
        return [stored_head(row) for row in rows]

    async def load_saved(self, session_id: str) -> tuple[SavedSession, bytes] | None:
        rows = await self.fetch(session_id, self._q.load_saved, session_id)
        if not rows:
            return None
        return saved_summary(rows[0]), bytes(rows[0][5])

    async def list_saved(self) -> list[SavedSession]:
        return [saved_summary(row) for row in await self.fetch(None, self._q.list_saved)]

    async def ping(self) -> None:
        async def run(conn: _Lent) -> None:
            await conn.execute("SELECT 1")

        await self.run(None, run)

    def __repr__(self) -> str:
        return f"<PostgresStore {self.schema!r} at {self._where()} {self._state}>"
