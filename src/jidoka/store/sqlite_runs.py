"""The SQLite store's :class:`~.runs.RunIndex`: runs, the webhook outbox and idempotency keys,
read from the tables the triggers of :mod:`.sqlite_runs_schema` keep.

A mixin of :class:`~.sqlite.SqliteStore` (its reader connection and writer thread). Reads run on
the reader connection in a worker thread; the outbox's two writes (``claim_webhooks``,
``record_webhook``) and ``expire_idempotency`` are writer requests like the store's other writes,
so a claim's read and its lease are one transaction, which no other write of the file can
interleave (only this process writes it).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import msgspec

from ..errors import StoreError
from .memory_runs import check_page
from .runs import IdempotencyRecord, RunRecord, WebhookState
from .sqlite_schema import decode_object, from_us, to_us

__all__ = ["SqliteRuns"]

_RUN: Final = (
    "SELECT run_id, session_id, owner, seq, status, created_us, started_us, ended_us, queued,"
    " completed, webhook_state, webhook_attempts, webhook_next_us, webhook_error FROM runs"
)
_KEY: Final = (
    "SELECT owner, key, request_hash, session_id, seq, run_id, created_us FROM idempotency_keys"
)
#: Served by the partial index ``runs_unfinished``; the literal ``IN`` is what lets SQLite use it.
_UNFINISHED: Final = f"{_RUN} WHERE status IN ('queued', 'running')"
_DUE: Final = (
    f"{_RUN} WHERE webhook_state = 'pending' AND webhook_next_us <= ?"
    " ORDER BY webhook_next_us, run_id LIMIT ?"
)


def _time(us: int | None) -> datetime | None:
    return None if us is None else from_us(us)


def _data(raw: bytes | None, run_id: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        return decode_object(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise StoreError(f"run {run_id!r}: its stored event data is corrupt: {exc}") from None


def run_record(row: tuple[Any, ...]) -> RunRecord:
    """A ``runs`` row (:data:`_RUN`'s columns) as a :class:`RunRecord`."""
    run_id, sid, owner, seq, status, created, started, ended, queued, completed = row[:10]
    state, attempts, next_us, error = row[10:]
    return RunRecord(
        run_id=run_id,
        session_id=sid,
        owner=owner,
        seq=int(seq),
        status=status,
        created_at=from_us(created),
        started_at=_time(started),
        ended_at=_time(ended),
        queued=_data(queued, run_id) or {},
        completed=_data(completed, run_id),
        webhook_state=state,
        webhook_attempts=int(attempts),
        webhook_next_at=_time(next_us),
        webhook_error=error,
    )


class SqliteRuns:
    """``RunIndex`` for the SQLite store."""

    if TYPE_CHECKING:

        async def _read(
            self, session_id: str | None, run: Callable[[sqlite3.Connection], Any]
        ) -> Any: ...

        async def _submit(
            self, session_id: str | None, run: Callable[[sqlite3.Connection], Any]
        ) -> Any: ...

    async def get_run(self, run_id: str) -> RunRecord | None:
        def run(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            row: tuple[Any, ...] | None = conn.execute(
                f"{_RUN} WHERE run_id = ?", (run_id,)
            ).fetchone()
            return row

        row = await self._read(None, run)
        return None if row is None else run_record(row)

    async def list_runs(
        self,
        session_id: str,
        *,
        status: str | None = None,
        before_seq: int | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        """A range of ``runs_by_session`` read backwards, filtered by status."""
        check_page(limit)
        where: list[str] = ["session_id = ?"]
        args: list[object] = [session_id]
        if before_seq is not None:
            where.append("seq < ?")
            args.append(before_seq)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        sql = f"{_RUN} INDEXED BY runs_by_session WHERE {' AND '.join(where)}"
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)

        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(sql, args).fetchall()

        return [run_record(row) for row in await self._read(session_id, run)]

    async def unfinished_runs(
        self, *, after: tuple[str, int] | None = None, limit: int = 100
    ) -> list[RunRecord]:
        check_page(limit)
        sid, seq = after if after is not None else ("", -1)
        sql = f"{_UNFINISHED} AND (session_id, seq) > (?, ?) ORDER BY session_id, seq LIMIT ?"
        args = (sid, seq, limit)

        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(sql, args).fetchall()

        return [run_record(row) for row in await self._read(None, run)]

    async def claim_webhooks(
        self, now: datetime, lease_until: datetime, *, limit: int = 100
    ) -> list[RunRecord]:
        """The due entries read and leased in one writer request (one transaction)."""
        check_page(limit)
        args = (to_us(now), limit)
        lease = to_us(lease_until)

        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            rows: list[tuple[Any, ...]] = conn.execute(_DUE, args).fetchall()
            conn.executemany(
                "UPDATE runs SET webhook_next_us = ? WHERE run_id = ?",
                [(lease, row[0]) for row in rows],
            )
            return rows

        return [run_record(row) for row in await self._submit(None, run)]

    async def record_webhook(
        self,
        run_id: str,
        *,
        state: WebhookState,
        attempts: int,
        next_at: datetime | None,
        error: str | None,
    ) -> None:
        if error is not None:
            error = error.replace("\x00", "\ufffd")  # as every store keeps it (see .runs)
        args = (state, attempts, None if next_at is None else to_us(next_at), error, run_id)

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE runs SET webhook_state = ?, webhook_attempts = ?, webhook_next_us = ?,"
                " webhook_error = ? WHERE run_id = ?",
                args,
            )

        await self._submit(None, run)

    async def find_idempotency(self, owner: str | None, key: str) -> IdempotencyRecord | None:
        def run(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            row: tuple[Any, ...] | None = conn.execute(
                f"{_KEY} WHERE owner = ? AND key = ?", (owner or "", key)
            ).fetchone()
            return row

        row = await self._read(None, run)
        if row is None:
            return None
        found_owner, found_key, request_hash, sid, seq, run_id, created = row
        return IdempotencyRecord(
            owner=found_owner or None,
            key=found_key,
            request_hash=request_hash,
            session_id=sid,
            seq=int(seq),
            run_id=run_id,
            created_at=from_us(created),
        )

    async def expire_idempotency(self, before: datetime, *, limit: int = 500) -> int:
        """Oldest first through ``idempotency_keys_by_age``, in one writer request."""
        check_page(limit)
        args = (to_us(before), limit)

        def run(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "DELETE FROM idempotency_keys WHERE (owner, key) IN (SELECT owner, key"
                " FROM idempotency_keys WHERE created_us < ? ORDER BY created_us LIMIT ?)",
                args,
            )
            return cursor.rowcount

        return int(await self._submit(None, run))
