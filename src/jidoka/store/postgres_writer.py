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
from typing import Any, Final

import asyncpg

from ..errors import StoreError
from .base import OwnershipLost, SeqConflict, StoreUnavailable
from .postgres_append import Chain, PgAppend
from .postgres_schema import UNAVAILABLE
from .postgres_sql import (
    append_one,
    group_params,
    group_statement,
    one_params,
    session_params,
    session_statement,
)

__all__ = ["PgWriter"]

logger = logging.getLogger("jidoka.store.postgres")

#: The most appends one statement takes (a bound on the statement's size).
_GROUP_MAX: Final = 1024

Connect = Callable[[], Coroutine[Any, Any, asyncpg.Connection]]


class PgWriter:
    """The writer task and the queue of appends it commits in groups."""

    def __init__(
        self, schema: str, connect: Connect, *, command_timeout: float, strict: bool = False
    ) -> None:
        self._connect = connect
        #: Without a fence held for a session, refuse its appends (a cluster node writes only
        #: where it took the fence) instead of adopting the head's (``0``, a single node).
        self._no_fence = -1 if strict else 0
        self._command_timeout = command_timeout
        self._queue: deque[PgAppend] = deque()
        self._wake = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: Appends whose commit outcome is not known yet (the connection broke under them).
        self._unknown: list[Chain] = []
        #: Appends refused while an earlier append of their session had an unknown outcome:
        #: their callers were answered, their ``on_done`` waits for that outcome's (per session).
        self._held: dict[str, list[tuple[PgAppend, StoreError]]] = {}
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

    def fence_for(self, session_id: str) -> int:
        """The fence a write to the session names: the one held, else ``0`` (adopt the
        head's, a single node) or ``-1`` (refused: a cluster node writes only where it took
        the fence)."""
        return self.fences.get(session_id, self._no_fence)

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
                    for chain in self._unknown:
                        for append in chain.appends:
                            append.answer_unknown()
                    self._fail_queued()
                    await self._pause()
                    continue
                group: list[PgAppend] = []
                while self._queue and len(group) < _GROUP_MAX:
                    group.append(self._queue.popleft())
                if group:
                    try:
                        await self._commit(group)
                    except Exception as exc:  # a bug: fail this group, keep serving the others
                        logger.exception("the Postgres writer failed on a group of %d", len(group))
                        for append in group:
                            append.settle(
                                StoreError(
                                    f"session {append.session_id!r}: the store failed: {exc!r}",
                                    session_id=append.session_id,
                                )
                            )
        except BaseException as exc:  # cancellation: no caller may wait forever
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

    def _chains(self, group: list[PgAppend]) -> list[Chain]:
        chains: dict[str, Chain] = {}
        for append in group:
            chain = chains.get(append.session_id)
            if chain is None:
                chains[append.session_id] = Chain(append, self.fence_for(append.session_id))
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

    def _statement_for(self, chains: list[Chain]) -> tuple[str, tuple[Any, ...]]:
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

    async def _settle(self, chains: list[Chain], applied: dict[str, int]) -> None:
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

    async def _refuse(self, chains: list[Chain]) -> None:
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
            elif any(append.told or append.resent for append in chain.appends):
                # Not stored, and its caller was answered already (or it was sent twice):
                # it stays unstored, which is what the caller can find in the log.
                for append in chain.appends:
                    append.settle(
                        StoreUnavailable(
                            f"session {append.session_id!r}: the append (seq {append.first}) "
                            "was not stored: the connection to the store broke while it was "
                            "being committed",
                            session_id=append.session_id,
                        )
                    )
            else:  # not stored, nobody told yet: send it again (the head's check makes it safe)
                for append in chain.appends:
                    append.resent = True
                    resend.append(append)
            self._release_held(chain.session_id)
        self._queue.extendleft(reversed(resend))
        return True

    def _release_held(self, session_id: str) -> None:
        """Settle the appends held behind a session's unknown outcome, now that it is known."""
        for append, error in self._held.pop(session_id, ()):
            append.settle(error)

    def _fail_queued(self) -> None:
        """The server is out of reach: what was never sent fails now (nothing stored). An
        append behind one of its session's unknown outcomes is answered now and settled after
        that outcome, to keep the session's order."""
        doubtful = {chain.session_id for chain in self._unknown}
        while self._queue:
            append = self._queue.popleft()
            error = _unavailable(append.session_id)
            if append.session_id in doubtful:
                append.answer(error)
                self._held.setdefault(append.session_id, []).append((append, error))
            else:
                append.settle(error)

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
        for chain in self._unknown:
            self._release_held(chain.session_id)
        self._unknown = []
        self._fail_queued()

    def _fail(self, chains: list[Chain], exc: StoreError) -> None:
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
