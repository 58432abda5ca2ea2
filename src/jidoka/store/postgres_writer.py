"""The PostgreSQL store's writer: group commit over the network, fenced in the write itself.

One task owns one connection (autocommit) and sends **one statement per group**: every append
that arrived while the previous statement was in flight goes in the next one, so a hundred
sessions appending at once share one round trip and one WAL flush instead of a hundred. The
statement carries the group as arrays (``unnest``); for each session it updates the head row only
if ``last_seq`` is still the append's expected one and the ``fence`` is still the one this store
holds, inserts the events of exactly those sessions whose head it updated, and drops the
snapshots of the sessions it terminates. A single statement in autocommit mode is one
transaction: nothing of it is applied, or all of it is.

A session whose head did not match is refused alone (its neighbours are committed): the writer
reads its head back to say why, :class:`~.base.SeqConflict` (another append got there first) or
:class:`~.base.OwnershipLost` (the fence moved: another node took the session).

**Outcome unknown.** If the connection breaks while a statement is in flight, the writer cannot
know whether the server committed it. It never guesses: it reconnects and reads back, for each
session of the group, whether the append's first event is stored with this append's bytes.
Those that are stored are acknowledged; the others are sent again once (the conditional update
makes a resend safe). While the server cannot be reached, the appends that were never sent fail
at once with :class:`~.base.StoreUnavailable` (nothing stored; retry), and the ones whose outcome
is unknown wait until it is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, Final

import asyncpg

from ..errors import StoreError
from .base import OnCommitted, OwnershipLost, SeqConflict, StoreUnavailable
from .postgres_schema import UNAVAILABLE
from .postgres_sql import (
    append_one,
    group_params,
    group_statement,
    one_params,
    session_params,
    session_statement,
)

__all__ = ["PgAppend", "PgWriter"]

logger = logging.getLogger("jidoka.store.postgres")

#: The most appends one statement takes (a bound on the statement's size).
_GROUP_MAX: Final = 1024

Connect = Callable[[], Coroutine[Any, Any, asyncpg.Connection]]


class PgAppend:
    """One append: validated rows, and whom to tell once its outcome is known."""

    __slots__ = (
        "created",
        "data",
        "first",
        "future",
        "last",
        "on_done",
        "owner",
        "resent",
        "session_id",
        "status",
        "status_at",
        "times",
        "types",
    )

    def __init__(
        self,
        session_id: str,
        first: int,
        types: list[str],
        times: list[datetime],
        data: list[bytes],
        status: str | None,
        status_at: datetime | None,
        created: bool,
        owner: str | None,
        on_done: OnCommitted | None,
        future: asyncio.Future[None],
    ) -> None:
        self.session_id = session_id
        self.first = first
        self.last = first + len(types) - 1
        self.types = types
        self.times = times
        self.data = data
        self.status = status
        #: The time of the last event that changed the status (the head's ``updated_at``).
        self.status_at = status_at
        self.created = created
        self.owner = owner
        self.on_done = on_done
        self.future = future
        self.resent = False

    def settle(self, error: BaseException | None) -> None:
        if self.on_done is not None:
            try:
                self.on_done(error)
            except Exception:
                logger.exception("a commit callback failed")
        if self.future.done():
            return  # a cancelled caller: the append is settled all the same
        if error is None:
            self.future.set_result(None)
        else:
            self.future.set_exception(error)


class _Chain:
    """The appends of one session in one group, consecutive: they commit (or not) together."""

    __slots__ = ("appends", "fence", "first", "last", "session_id")

    def __init__(self, first: PgAppend, fence: int) -> None:
        self.session_id = first.session_id
        self.appends = [first]
        self.first = first.first
        self.last = first.last
        self.fence = fence  # 0: adopt whatever the head holds (see PostgresStore.held_fence)


class PgWriter:
    """The writer task and the queue of appends it commits in groups."""

    def __init__(self, schema: str, connect: Connect, *, command_timeout: float) -> None:
        self._connect = connect
        self._command_timeout = command_timeout
        self._queue: deque[PgAppend] = deque()
        self._wake = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: Appends whose commit outcome is not known yet (the connection broke under them).
        self._unknown: list[_Chain] = []
        #: The fence this store holds for each session it writes to.
        self.fences: dict[str, int] = {}
        self.commits = 0
        self.batched_requests = 0
        q = f'"{schema}"'  # checked by check_schema_name
        self._append_one = append_one(q)
        self._statements = {
            (several, creates, ends): (group_statement if several else session_statement)(
                q, creates=creates, ends=ends
            )
            for several in (False, True)
            for creates in (False, True)
            for ends in (False, True)
        }
        self._heads = (
            f"SELECT session_id, last_seq, fence FROM {q}.sessions WHERE session_id = ANY($1)"
        )
        self._firsts = (
            f"SELECT e.session_id, e.data FROM {q}.events AS e"
            " JOIN unnest($1::text[], $2::bigint[]) AS k(session_id, seq)"
            " ON e.session_id = k.session_id AND e.seq = k.seq"
        )

    def start(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="jidoka:postgres-writer"
        )

    def put(self, append: PgAppend) -> None:
        self._queue.append(append)
        self._wake.set()

    async def stop(self) -> None:
        """Commit what is queued, then stop; appends still unresolved fail as unknown."""
        self._stopping = True
        self._wake.set()
        task = self._task
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._drop_connection(graceful=True)

    # --- the loop ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue and not self._unknown:
                    if self._stopping:
                        return
                    await self._wake.wait()
                self._wake.clear()
                if self._unknown and not await self._resolve():
                    if self._stopping:
                        self._give_up()
                        return
                    self._fail_queued()
                    await self._pause()
                    continue
                group: list[PgAppend] = []
                while self._queue and len(group) < _GROUP_MAX:
                    group.append(self._queue.popleft())
                if group:
                    await self._commit(group)
        except BaseException as exc:  # a bug (or cancellation): no caller may wait forever
            error = StoreError(f"the Postgres writer stopped: {exc!r}")
            for chain in self._unknown:
                for append in chain.appends:
                    append.settle(error)
            while self._queue:
                self._queue.popleft().settle(error)
            raise

    async def _pause(self) -> None:
        """Between attempts to reach a server that is down: a second, or a new append."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self._wake.wait()

    def _chains(self, group: list[PgAppend]) -> list[_Chain]:
        chains: dict[str, _Chain] = {}
        for append in group:
            chain = chains.get(append.session_id)
            if chain is None:
                chains[append.session_id] = _Chain(append, self.fences.get(append.session_id, 0))
            elif append.first == chain.last + 1:
                chain.appends.append(append)
                chain.last = append.last
            else:  # queued behind an append that failed before it reached the writer
                append.settle(SeqConflict(append.session_id, chain.last + 1, append.first))
        return list(chains.values())

    async def _ensure_connection(self) -> asyncpg.Connection:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        self._conn = None
        conn = await self._connect()
        self._conn = conn
        return conn

    async def _commit(self, group: list[PgAppend]) -> None:
        chains = self._chains(group)
        if not chains:
            return
        try:
            conn = await self._ensure_connection()
        except StoreError as exc:
            self._fail(chains, exc)
            return
        try:
            query, params = self._statement_for(chains)
            rows = await conn.fetch(query, *params, timeout=self._command_timeout)
        except UNAVAILABLE as exc:
            # Sent, perhaps committed: find out before anyone is told anything.
            logger.warning(
                "Postgres connection lost with %d appends in flight: %s", len(group), exc
            )
            await self._drop_connection()
            self._unknown.extend(chains)
            self._wake.set()
            return
        except asyncpg.PostgresError as exc:
            # The server refused the statement as a whole (nothing applied): a bug or a
            # damaged table. Each session alone, so one bad row cannot fail its neighbours.
            if len(chains) > 1:
                logger.warning("group of %d refused (%s); retrying one by one", len(chains), exc)
                for chain in chains:
                    await self._commit(chain.appends)
                return
            self._fail(chains, StoreError(f"the store could not commit: {exc}"))
            return
        self.commits += 1
        self.batched_requests += len(group)
        await self._settle(chains, {row[0]: int(row[1]) for row in rows})

    def _statement_for(self, chains: list[_Chain]) -> tuple[str, tuple[Any, ...]]:
        """The smallest statement that covers the group (see :mod:`.postgres_sql`)."""
        creates = ends = False
        for chain in chains:
            if chain.first == 1:
                creates = True
            for append in chain.appends:
                if append.status == "terminated":
                    ends = True
        if len(chains) == 1:
            chain = chains[0]
            first = chain.appends[0]
            simple = not (creates or ends or first.created)
            if simple and len(chain.appends) == 1 and len(first.types) == 1:
                return self._append_one, one_params(chain.session_id, chain.fence, first)
            return self._statements[False, creates, ends], session_params(
                chain.session_id, chain.fence, chain.appends
            )
        return self._statements[True, creates, ends], group_params(
            [(chain.session_id, chain.fence, chain.appends) for chain in chains]
        )

    async def _settle(self, chains: list[_Chain], applied: dict[str, int]) -> None:
        refused = [chain for chain in chains if chain.session_id not in applied]
        for chain in chains:
            fence = applied.get(chain.session_id)
            if fence is None:
                continue
            self.fences[chain.session_id] = fence
            for append in chain.appends:
                if append.status == "terminated":
                    self.fences.pop(chain.session_id, None)
                append.settle(None)
        if refused:
            await self._refuse(refused)

    async def _refuse(self, chains: list[_Chain]) -> None:
        """Say why each of these sessions' heads did not match (read back, after the commit)."""
        heads: dict[str, tuple[int, int]] = {}
        try:
            conn = await self._ensure_connection()
            rows = await conn.fetch(
                self._heads, [c.session_id for c in chains], timeout=self._command_timeout
            )
            heads = {row[0]: (int(row[1]), int(row[2])) for row in rows}
        except (*UNAVAILABLE, asyncpg.PostgresError, StoreError) as exc:
            await self._drop_connection()
            logger.warning("could not read heads back to explain a refusal: %s", exc)
        for chain in chains:
            sid = chain.session_id
            head = heads.get(sid)
            error: StoreError
            if head is not None and chain.fence and head[1] != chain.fence:
                # The stale fence stays held: every later append is refused the same way,
                # until this store takes the session back (``take``) or releases it.
                error = OwnershipLost(sid, chain.fence, head[1])
            else:
                last = head[0] if head is not None else 0
                error = SeqConflict(sid, last + 1, chain.first)
            for append in chain.appends:
                append.settle(error)

    async def _resolve(self) -> bool:
        """Read back the appends whose outcome is unknown; ``False`` if the server is still out
        of reach. Stored ones are acknowledged; the others go back to the queue (once)."""
        chains = self._unknown
        try:
            conn = await self._ensure_connection()
            rows = await conn.fetch(
                self._firsts,
                [c.session_id for c in chains],
                [c.first for c in chains],
                timeout=self._command_timeout,
            )
            stored = {row[0]: bytes(row[1]) for row in rows}
        except (*UNAVAILABLE, asyncpg.PostgresError, StoreError) as exc:
            await self._drop_connection()
            logger.warning(
                "Postgres still unreachable; %d appends await their outcome: %s",
                sum(len(c.appends) for c in chains),
                exc,
            )
            return False
        self._unknown = []
        resend: list[PgAppend] = []
        for chain in chains:
            data = stored.get(chain.session_id)
            if data is not None and data == chain.appends[0].data[0]:
                for append in chain.appends:  # committed before the connection broke
                    if append.status == "terminated":
                        self.fences.pop(chain.session_id, None)
                    append.settle(None)
                continue
            for append in chain.appends:
                if append.resent:
                    append.settle(
                        StoreUnavailable(
                            f"session {append.session_id!r}: the store could not commit the "
                            "append (the connection broke twice); nothing was stored",
                            session_id=append.session_id,
                        )
                    )
                else:
                    append.resent = True
                    resend.append(append)
        self._queue.extendleft(reversed(resend))
        return True

    def _fail_queued(self) -> None:
        """The server is out of reach: what was never sent fails now (nothing stored)."""
        while self._queue:
            append = self._queue.popleft()
            append.settle(_unavailable(append.session_id))

    def _give_up(self) -> None:
        """Closing with outcomes still unknown: say so (a restart reads the log for the truth)."""
        for chain in self._unknown:
            for append in chain.appends:
                append.settle(
                    StoreUnavailable(
                        f"session {append.session_id!r}: the store closed while the outcome "
                        "of this append was unknown (the server could not be reached); the log "
                        "says whether it was stored",
                        session_id=append.session_id,
                    )
                )
        self._unknown = []
        self._fail_queued()

    def _fail(self, chains: list[_Chain], exc: StoreError) -> None:
        for chain in chains:
            for append in chain.appends:
                if isinstance(exc, StoreUnavailable):
                    append.settle(_unavailable(append.session_id, exc))
                else:
                    append.settle(
                        StoreError(
                            f"session {append.session_id!r}: {exc}", session_id=append.session_id
                        )
                    )

    async def _drop_connection(self, *, graceful: bool = False) -> None:
        """Forget the writer's connection; a broken one is torn down at once (a graceful close
        would wait on a server that may be gone)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if graceful:
            with contextlib.suppress(*UNAVAILABLE, asyncpg.PostgresError):
                await conn.close(timeout=self._command_timeout)
                return
        conn.terminate()


def _unavailable(session_id: str, cause: BaseException | None = None) -> StoreUnavailable:
    detail = f": {cause}" if cause is not None else ""
    return StoreUnavailable(
        f"session {session_id!r}: the Postgres store cannot be reached; nothing was stored, "
        f"retry{detail}",
        session_id=session_id,
    )
