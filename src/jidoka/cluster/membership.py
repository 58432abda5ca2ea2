"""This node's lease: joining the cluster, renewing, noticing when the lease can no longer be
trusted, and leaving.

The lease is a row in Postgres whose expiry the *server* computes (``now() + ttl``). Other nodes
take this node's sessions once that expiry has passed by the server's clock, so this node must
stop acting on them before then by its own. It keeps a conservative local deadline: the
monotonic time at which it *sent* its last successful renewal, plus the lease the server
granted, minus a margin. Since the server computed the expiry after the request left, the local
deadline always falls before the server's; with the margin it falls early enough that a node
which cannot renew (Postgres unreachable, its loop stalled) stops writing and stops starting
tools before anyone else may take over. When the deadline passes, :attr:`on_lapse` runs once
(the manager drops every session it holds, without writing); renewing later makes the node a
member again, and its sessions come back on demand (taken anew, with new fences).

The fences make this a matter of liveness, not safety: even a node that never noticed would
have its appends refused once another node took a session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final, Literal

import asyncpg

from ..clock import Clock
from ..errors import NotOwner, StoreError
from ..store.postgres_cluster import PgCluster, close_quietly
from ..store.postgres_schema import UNAVAILABLE

__all__ = ["Membership"]

logger = logging.getLogger("jidoka.cluster")

#: Renewals per lease period.
_RENEWALS_PER_TTL: Final = 3


def lease_margin(ttl: float) -> float:
    """How long before the server's expiry this node stops acting: a fifth of the lease, at
    least a quarter of a second (clock rate differences, a delayed renewal's answer)."""
    return max(ttl / 5, min(0.25, ttl / 2))


class Membership:
    """Joins, renews on a connection of its own, and says whether this node may act."""

    def __init__(
        self,
        cluster: PgCluster,
        *,
        ttl: float,
        clock: Clock,
        on_lapse: Callable[[], None],
    ) -> None:
        if not ttl > 0:
            raise ValueError(f"the lease TTL must be positive, not {ttl!r}")
        self.cluster = cluster
        self.ttl = ttl
        self.margin = lease_margin(ttl)
        self._clock = clock
        self.on_lapse = on_lapse
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._valid_until = 0.0
        self._lapsed = True
        self._state: Literal["new", "member", "closed"] = "new"
        self.renewals = 0
        self.lapses = 0
        self.last_error: str | None = None

    @property
    def node_id(self) -> str:
        return self.cluster.node_id

    # --- joining and leaving --------------------------------------------------------------------

    async def start(self) -> None:
        """Join. If another process holds this node id under a lease that has not expired (this
        node restarted at once after a crash), wait for that lease to run out: two processes
        must never act as one node."""
        deadline = self._clock.monotonic() + self.ttl * 3 + 5
        while True:
            sent = self._clock.monotonic()
            conn = await self._connection()
            granted = await self.cluster.register(conn, self.ttl)
            if granted is not None:
                self._granted(sent, granted)
                break
            left = await self.cluster.lease_left(conn) or 0.0
            if self._clock.monotonic() > deadline:
                raise StoreError(
                    f"node id {self.node_id!r} is held by another live process (its lease "
                    "keeps being renewed); give every node its own --node-id"
                )
            logger.warning(
                "node id %s: the previous holder's lease has %.1f s left; waiting for it",
                self.node_id,
                left,
            )
            await self._clock.sleep_until(self._clock.monotonic() + min(max(left, 0.05), 1.0))
        self._state = "member"
        self._task = asyncio.get_running_loop().create_task(
            self._renew_forever(), name=f"jidoka:lease:{self.node_id}"
        )

    async def aclose(self, *, leave: bool = True) -> None:
        """Stop renewing; with ``leave``, end the lease now so other nodes take this node's
        sessions at once (a graceful shutdown). Idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            if leave and self.cluster.incarnation:
                with contextlib.suppress(*UNAVAILABLE, asyncpg.PostgresError, StoreError):
                    async with asyncio.timeout(max(self.ttl, 1.0)):
                        conn = await self._connection()
                        await self.cluster.leave(conn)
        finally:
            self._valid_until = 0.0
            held, self._conn = self._conn, None
            await close_quietly(held)

    # --- the lease ------------------------------------------------------------------------------

    def valid(self) -> bool:
        """Whether this node may act on its sessions now (by its own conservative deadline)."""
        return self._clock.monotonic() < self._valid_until

    def check(self, session_id: str) -> None:
        """Raise :class:`NotOwner` unless the lease is valid: before an append, before a tool."""
        if not self._clock.monotonic() < self._valid_until:
            raise NotOwner(
                session_id,
                f"node {self.node_id!r} could not renew its lease in time, so it does not act on "
                "its sessions until it can; retry (another node may take the session)",
            )

    def health(self) -> tuple[bool, str]:
        """``(ok, detail)`` for the readiness probe."""
        if self._state != "member":
            return False, f"node {self.node_id}: {self._state}"
        if not self.valid():
            return False, f"node {self.node_id}: lease lapsed ({self.last_error or 'renewing'})"
        left = self._valid_until - self._clock.monotonic()
        return True, f"node {self.node_id}: lease valid for {left:.1f} s"

    def _granted(self, sent: float, granted: float) -> None:
        self._valid_until = sent + granted - self.margin
        self.renewals += 1
        self.last_error = None
        if self._lapsed:
            self._lapsed = False
            if self.lapses:
                logger.warning("node %s: lease renewed; serving again", self.node_id)

    def _lapse(self) -> None:
        if self._lapsed:
            return
        self._lapsed = True
        self.lapses += 1
        logger.error(
            "node %s: lease not renewed in time (%s); dropping every session it holds",
            self.node_id,
            self.last_error or "no answer",
        )
        try:
            self.on_lapse()
        except Exception:  # a bug in the callback must not stop the renewals
            logger.exception("node %s: dropping sessions after a lapse failed", self.node_id)

    async def _connection(self) -> asyncpg.Connection:
        conn = self._conn
        if conn is None or conn.is_closed():
            self._conn = None
            conn = await self.cluster.connect()
            self._conn = conn
        return conn

    async def _renew_forever(self) -> None:
        interval = self.ttl / _RENEWALS_PER_TTL
        clock = self._clock
        next_at = clock.monotonic() + interval
        while True:
            # Wake for the next renewal, or at the deadline if that comes first.
            wake = min(next_at, self._valid_until) if not self._lapsed else next_at
            await clock.sleep_until(wake)
            if not self._lapsed and not self.valid():
                self._lapse()
            if clock.monotonic() < next_at:
                continue
            next_at = clock.monotonic() + interval
            await self._renew_once()

    async def _renew_once(self) -> None:
        sent = self._clock.monotonic()
        try:
            # Never longer than the lease has left: a renewal that answers after the deadline
            # is worth nothing, and the loop must get to noticing the lapse.
            budget = max(self._valid_until - sent, self.ttl / _RENEWALS_PER_TTL)
            async with asyncio.timeout(budget):
                conn = await self._connection()
                granted = await self.cluster.renew(conn, self.ttl)
                if granted is None:
                    # The row is another incarnation's (this node was presumed dead and its id
                    # taken): drop everything, then join afresh.
                    self.last_error = "another process took this node id"
                    self._valid_until = 0.0
                    self._lapse()
                    granted = await self.cluster.register(conn, self.ttl)
                    if granted is None:
                        return
            self._granted(sent, granted)
        except (*UNAVAILABLE, asyncpg.PostgresError, StoreError) as exc:
            self.last_error = str(exc) or type(exc).__name__
            logger.warning("node %s: lease renewal failed: %s", self.node_id, self.last_error)
            held, self._conn = self._conn, None
            await close_quietly(held)
