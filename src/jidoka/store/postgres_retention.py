"""The PostgreSQL store's retention: removing a session's every row (``purge``) and expired
sessions and saved copies a bounded batch at a time, safe when several nodes do it at once.

A mixin of :class:`~.postgres.PostgresStore` (its pool, statements and writer), kept apart
because it is one idea of its own: what removes rows, where the rest of the store adds them.
The statements are :class:`~.postgres_sql.Statements`' (``purge``, ``lock_ended``,
``remove_ended``, ``expire_saved``): a purge locks the session's head first, so an append in
flight either committed before (and its events are deleted with the rest) or finds no head and
stores nothing; an expiry batch locks its heads ``FOR UPDATE SKIP LOCKED``, so concurrent
sweepers take disjoint batches, and the head's delete re-checks the status.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import asyncpg

from .base import LIVE_SESSIONS_PAGE, SavedSession, StoredSession
from .postgres_sql import Statements, saved_summary, stored_head

if TYPE_CHECKING:
    from .postgres_writer import PgWriter

__all__ = ["PgRetention"]

_T = TypeVar("_T")
_Lent: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"


class PgRetention:
    """``purge``, ``expire_terminated`` and ``expire_saved`` for the Postgres store."""

    # What the store provides (PostgresStore): its statements, writer and pooled ``run``.
    _q: Statements
    _writer: PgWriter

    if TYPE_CHECKING:

        async def run(
            self,
            session_id: str | None,
            run: Callable[[_Lent], Awaitable[_T]],
            *,
            retry: bool = True,
        ) -> _T: ...

    async def purge(self, session_id: str) -> bool:
        """One transaction: the head's lock first (see ``Statements``), then every row of the
        session, in every table, in one statement. Idempotent, so retried once on a broken
        connection like a read."""

        async def run(conn: _Lent) -> bool:
            async with conn.transaction():
                await conn.execute(self._q.lock_head, session_id)
                return bool(await conn.fetchval(self._q.purge, session_id))

        removed = await self.run(session_id, run)
        self._writer.fences.pop(session_id, None)
        return removed

    async def expire_terminated(
        self, before: datetime, *, limit: int = LIVE_SESSIONS_PAGE
    ) -> list[StoredSession]:
        """A batch of terminated heads locked with ``SKIP LOCKED`` (another node's sweep holds
        the ones it is removing), then their rows removed, the head's delete re-checking the
        status, in one transaction. Not retried on a broken connection: the batch may have
        been removed, and the caller must not be told of another one in its place."""
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit!r}")

        async def run(conn: _Lent) -> list[StoredSession]:
            async with conn.transaction():
                rows = await conn.fetch(self._q.lock_ended, before, limit)
                heads = [stored_head(row) for row in rows]
                if not heads:
                    return []
                ids = [head.session_id for head in heads]
                removed = {row[0] for row in await conn.fetch(self._q.remove_ended, ids)}
            return [head for head in heads if head.session_id in removed]

        return await self.run(None, run, retry=False)

    async def expire_saved(
        self, before: datetime, *, limit: int = LIVE_SESSIONS_PAGE
    ) -> list[SavedSession]:
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit!r}")

        async def run(conn: _Lent) -> list[Any]:
            return await conn.fetch(self._q.expire_saved, before, limit)

        removed = [saved_summary(row) for row in await self.run(None, run, retry=False)]
        return sorted(removed, key=lambda saved: (saved.saved_at, saved.session_id))
