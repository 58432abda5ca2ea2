"""The PostgreSQL store's :class:`~.runs.RunIndex`: runs, the webhook outbox and idempotency
keys, read from the tables the trigger of :mod:`.postgres_runs_schema` keeps.

A mixin of :class:`~.postgres.PostgresStore` (its pooled ``run``). Reads are retried once on a
broken connection like the store's other reads; the outbox's writes are not (a claim may have
committed). ``claim_webhooks`` is safe with several nodes on one database: it locks the due
rows ``FOR UPDATE SKIP LOCKED`` and moves their ``webhook_next_at`` to the lease in the same
statement, so two claims never get the same entry; a row another claim has just leased is
re-checked against the new ``webhook_next_at`` and skipped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar

import asyncpg
import msgspec

from ..errors import StoreError
from .memory_runs import check_page
from .runs import IdempotencyRecord, RunRecord, WebhookState
from .sqlite_schema import decode_object

__all__ = ["PgRuns", "RunStatements"]

_T = TypeVar("_T")
_Lent: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"

_COLUMNS: Final = (
    "run_id, session_id, owner, seq, status, created_at, started_at, ended_at, queued,"
    " completed, webhook_state, webhook_attempts, webhook_next_at, webhook_error"
)


def _data(raw: bytes | None, run_id: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        return decode_object(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise StoreError(f"run {run_id!r}: its stored event data is corrupt: {exc}") from None


def _run(row: Any) -> RunRecord:
    run_id = row[0]
    return RunRecord(
        run_id=run_id,
        session_id=row[1],
        owner=row[2],
        seq=int(row[3]),
        status=row[4],
        created_at=row[5],
        started_at=row[6],
        ended_at=row[7],
        queued=_data(row[8], run_id) or {},
        completed=_data(row[9], run_id),
        webhook_state=row[10],
        webhook_attempts=int(row[11]),
        webhook_next_at=row[12],
        webhook_error=row[13],
    )


class RunStatements:
    """The statements, with the quoted schema ``s`` written in once."""

    def __init__(self, s: str) -> None:
        run = f"SELECT {_COLUMNS} FROM {s}.runs"
        self.get = f"{run} WHERE run_id = $1"
        # A range of runs_by_session read backwards (the bound on seq is an index condition
        # in a generic plan too); $2/$3 are null for "no filter".
        self.page = (
            f"{run} WHERE session_id = $1 AND seq < coalesce($2::bigint, {(1 << 63) - 1})"
            " AND ($3::text IS NULL OR status = $3) ORDER BY seq DESC LIMIT $4"
        )
        # Served by the partial index runs_unfinished.
        self.unfinished = (
            f"{run} WHERE status IN ('queued', 'running') AND (session_id, seq) > ($1, $2)"
            " ORDER BY session_id, seq LIMIT $3"
        )
        # The due rows are locked first (another claim's are skipped), then leased; the rows
        # come back as they were before.
        self.claim = f"""
WITH due AS (
    SELECT {_COLUMNS} FROM {s}.runs
    WHERE webhook_state = 'pending' AND webhook_next_at <= $1
    ORDER BY webhook_next_at, run_id LIMIT $3
    FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE {s}.runs AS r SET webhook_next_at = $2 FROM due WHERE r.run_id = due.run_id
)
SELECT {_COLUMNS} FROM due ORDER BY webhook_next_at, run_id"""
        self.record = (
            f"UPDATE {s}.runs SET webhook_state = $2, webhook_attempts = $3,"
            " webhook_next_at = $4, webhook_error = $5 WHERE run_id = $1"
        )
        self.key = (
            "SELECT owner, key, request_hash, session_id, seq, run_id, created_at"
            f" FROM {s}.idempotency_keys WHERE owner = $1 AND key = $2"
        )
        self.expire_keys = f"""
WITH old AS (
    SELECT owner, key FROM {s}.idempotency_keys WHERE created_at < $1
    ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED
)
DELETE FROM {s}.idempotency_keys AS k USING old WHERE k.owner = old.owner AND k.key = old.key"""


class PgRuns:
    """``RunIndex`` for the Postgres store."""

    # What the store provides (PostgresStore): these statements and its pooled ``run``.
    _rq: RunStatements

    if TYPE_CHECKING:

        async def run(
            self,
            session_id: str | None,
            run: Callable[[_Lent], Awaitable[_T]],
            *,
            retry: bool = True,
        ) -> _T: ...

    async def _rows(self, session_id: str | None, query: str, *args: Any) -> list[Any]:
        async def run(conn: _Lent) -> list[Any]:
            return await conn.fetch(query, *args)

        return await self.run(session_id, run)

    async def get_run(self, run_id: str) -> RunRecord | None:
        if "\x00" in run_id:
            return None  # text cannot hold it: no run has such an id
        rows = await self._rows(None, self._rq.get, run_id)
        return _run(rows[0]) if rows else None

    async def list_runs(
        self,
        session_id: str,
        *,
        status: str | None = None,
        before_seq: int | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        check_page(limit)
        query = self._rq.page
        rows = await self._rows(session_id, query, session_id, before_seq, status, limit)
        return [_run(row) for row in rows]

    async def unfinished_runs(
        self, *, after: tuple[str, int] | None = None, limit: int = 100
    ) -> list[RunRecord]:
        check_page(limit)
        sid, seq = after if after is not None else ("", -1)
        rows = await self._rows(None, self._rq.unfinished, sid, seq, limit)
        return [_run(row) for row in rows]

    async def claim_webhooks(
        self, now: datetime, lease_until: datetime, *, limit: int = 100
    ) -> list[RunRecord]:
        check_page(limit)
        query = self._rq.claim

        async def run(conn: _Lent) -> list[Any]:
            return await conn.fetch(query, now, lease_until, limit)

        return [_run(row) for row in await self.run(None, run, retry=False)]

    async def record_webhook(
        self,
        run_id: str,
        *,
        state: WebhookState,
        attempts: int,
        next_at: datetime | None,
        error: str | None,
    ) -> None:
        if "\x00" in run_id:
            return  # no run has such an id
        query = self._rq.record
        if error is not None:
            error = error.replace("\x00", "\ufffd")  # text cannot hold a NUL

        async def run(conn: _Lent) -> None:
            await conn.execute(query, run_id, state, attempts, next_at, error)

        await self.run(None, run)  # the same values again: safe to retry

    async def find_idempotency(self, owner: str | None, key: str) -> IdempotencyRecord | None:
        if "\x00" in key or (owner is not None and "\x00" in owner):
            return None  # never recorded (see .runs)
        rows = await self._rows(None, self._rq.key, owner or "", key)
        if not rows:
            return None
        found_owner, found_key, request_hash, sid, seq, run_id, created_at = rows[0]
        return IdempotencyRecord(
            owner=found_owner or None,
            key=found_key,
            request_hash=request_hash,
            session_id=sid,
            seq=int(seq),
            run_id=run_id,
            created_at=created_at,
        )

    async def expire_idempotency(self, before: datetime, *, limit: int = 500) -> int:
        check_page(limit)
        query = self._rq.expire_keys

        async def run(conn: _Lent) -> int:
            status = await conn.execute(query, before, limit)
            return int(status.split()[-1])  # "DELETE n"

        return await self.run(None, run, retry=False)
