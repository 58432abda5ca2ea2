"""The SQLite store's writer: one thread, one write connection, and group commit.

Every write goes through this thread. It takes every request that is waiting when it becomes free
and commits them in *one* transaction, then wakes each caller, so a hundred sessions appending at
once share one ``fsync`` instead of paying for a hundred. An append is checked against the
writer's own record of where each log ends, so a refused one (:class:`~.base.SeqConflict`) never
touches the database and costs the others of its batch nothing; any other write runs inside a
savepoint of its own, so its refusal (a :class:`~jidoka.StoreError` it raises) is undone alone. A
failing commit (disk full, I/O error) fails every request of that batch with a
:class:`~jidoka.StoreError` naming its session, and nothing of the batch is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from ..errors import StoreError
from .base import OnCommitted, SeqConflict
from .sqlite_schema import max_seq
from .wakeup import Waker, Wakers

__all__ = ["Append", "Request", "Writer"]

logger = logging.getLogger("jidoka.store.sqlite")

#: The most requests one transaction takes.
_BATCH_MAX: Final = 2048


class Append(NamedTuple):
    """What the writer needs to append one batch of events (validated on the caller's side)."""

    first_seq: int
    last_seq: int
    rows: list[tuple[str, int, str, int, bytes]]
    status: str | None
    #: Whether the batch holds a ``session_created`` event: only then is ``owner`` written.
    created: bool
    owner: str | None


class Request:
    """One unit of work for the writer thread, with the future its caller awaits.

    An append carries its rows (the writer inserts the rows of every append in a batch with one
    statement); any other write carries a function to run on the connection.
    """

    __slots__ = ("append", "future", "loop", "on_done", "run", "session_id", "waker")

    def __init__(
        self,
        session_id: str | None,
        loop: asyncio.AbstractEventLoop,
        *,
        run: Callable[[sqlite3.Connection], Any] | None = None,
        append: Append | None = None,
        on_done: OnCommitted | None = None,
    ) -> None:
        self.session_id = session_id
        self.run = run
        self.append = append
        self.on_done = on_done
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.waker: Waker | None = None  # set by Writer.put, on the loop's thread


_STOP: Final = object()


class Writer:
    """The writer thread and the queue of requests it commits in groups."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Request | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._wakers = Wakers()
        #: Where each session's log ends, as far as this writer knows (its thread only).
        self.last_seq: dict[str, int] = {}
        self.commits = 0
        self.batched_requests = 0

    def start(self, conn: sqlite3.Connection) -> None:
        """Run the writer on ``conn`` (it closes the connection when it stops)."""
        self._thread = threading.Thread(
            target=self._write_loop, args=(conn,), name="jidoka-sqlite-writer", daemon=True
        )
        self._thread.start()

    def put(self, request: Request) -> None:
        """Queue a request; never blocks. Called on the request's event loop."""
        request.waker = self._wakers.for_loop(request.loop)
        self._queue.put(request)

    async def stop(self) -> None:
        """Commit what is queued, then stop the thread (waited for in a worker thread)."""
        self._queue.put(_STOP)
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join)
        self._wakers.close()  # only now: the thread may post to them until it ends

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                batch: list[Request] = [first]  # type: ignore[list-item]
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

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[Request]) -> None:
        results: list[tuple[Request, Any, BaseException | None]] = []
        # What this batch changed in ``last_seq`` (session, value before), to undo it if the
        # commit fails: a copy of the whole record would cost O(sessions) per commit.
        undo: list[tuple[str, int | None]] = []
        rows: list[tuple[str, int, str, int, bytes]] = []
        # (session_id, status, updated_us, owner, whether owner is to be written)
        statuses: list[tuple[str, str, int, str | None, bool]] = []
        # Sessions this batch terminates: their snapshots go in the same transaction.
        ended: list[tuple[str]] = []

        def flush() -> None:
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
            # After the heads: the runs triggers read the owner a session_created of this
            # batch records.
            if rows:
                conn.executemany(
                    "INSERT INTO events (session_id, seq, type, time_us, data)"
                    " VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                rows.clear()
            if ended:
                conn.executemany("DELETE FROM snapshots WHERE session_id = ?", ended)
                ended.clear()

        try:
            conn.execute("BEGIN IMMEDIATE")
            for request in batch:
                append = request.append
                if append is not None:
                    # Checked against the writer's own record of each log's end, so a refused
                    # append never touches the database and needs no savepoint.
                    sid = request.session_id
                    assert sid is not None
                    last = self.last_seq.get(sid)
                    if last is None:
                        last = max_seq(conn, sid)
                    undo.append((sid, self.last_seq.get(sid)))
                    if append.first_seq != last + 1:
                        self.last_seq[sid] = last
                        results.append(
                            (request, None, SeqConflict(sid, last + 1, append.first_seq))
                        )
                        continue
                    rows.extend(append.rows)
                    if append.status is not None:
                        statuses.append(
                            (sid, append.status, append.rows[-1][3], append.owner, append.created)
                        )
                    if append.status == "terminated":
                        # The log is closed: no load needs a snapshot nor this record again
                        # (a restore under the same id reads where the log ends afresh).
                        ended.append((sid,))
                        self.last_seq.pop(sid, None)
                    else:
                        self.last_seq[sid] = append.last_seq
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
            last_seq = self.last_seq
            for sid, before in reversed(undo):
                if before is None:
                    last_seq.pop(sid, None)
                else:
                    last_seq[sid] = before
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._fail_all(batch, exc)
            return
        self.commits += 1
        self.batched_requests += len(batch)
        self._resolve_all(results)

    def _fail_all(self, batch: list[Request], exc: Exception) -> None:
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

    @staticmethod
    def _resolve_all(results: list[tuple[Request, Any, BaseException | None]]) -> None:
        """Wake the callers of a batch: one hop to each event loop, not one per request
        (:mod:`.wakeup`: an eventfd where the platform has one)."""

        def settle(items: list[tuple[Request, Any, BaseException | None]]) -> None:
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

        by_waker: dict[Waker, list[tuple[Request, Any, BaseException | None]]] = {}
        for item in results:
            waker = item[0].waker
            assert waker is not None
            by_waker.setdefault(waker, []).append(item)
        for waker, items in by_waker.items():
            waker.post(settle, items)
