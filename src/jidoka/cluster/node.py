"""What being one node of a cluster adds to a runtime: owning sessions, and giving them up.

The session manager asks a :class:`ClusterNode` before it loads a stored session (:meth:`take`:
the session becomes this node's, with a new fence, or :class:`~jidoka.errors.NotOwner` names the
live node that has it), guards every append with the lease (:meth:`guard`), and hears from it
when a session must be dropped without a word written: the fence moved under an append (another
node took the session) or the lease lapsed (every session). Leaving (SIGTERM) hands sessions
over: the idle ones at once, the others as their running turns end, within the shutdown grace.

Postgres holds every fact (:mod:`jidoka.store.postgres_cluster`); this object holds counters and
the callbacks that connect those facts to the manager.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Final

from ..clock import Clock
from ..errors import NotOwner
from ..store.postgres import PostgresStore
from ..store.postgres_cluster import Location, NodeRow, PgCluster, Taken
from .membership import Membership

__all__ = ["DEFAULT_LEASE_TTL", "ClusterNode"]

logger = logging.getLogger("jidoka.cluster")

#: Seconds a node's lease lasts without renewal (``--lease-ttl``).
DEFAULT_LEASE_TTL: Final = 10.0


class ClusterNode:
    """One node's ownership of sessions in a store shared by several nodes."""

    def __init__(
        self,
        store: PostgresStore,
        *,
        node_id: str,
        advertise_url: str,
        ttl: float,
        clock: Clock,
    ) -> None:
        self.store = store
        self.pg = PgCluster(store, node_id, advertise_url)
        self.membership = Membership(self.pg, ttl=ttl, clock=clock, on_lapse=self._lapsed)
        #: Drop one session without writing (set by the session manager).
        self.drop: Callable[[str], None] = lambda session_id: None
        #: Drop every session without writing (set by the session manager).
        self.drop_all: Callable[[], None] = lambda: None
        self.leaving = False
        #: The cluster's secret (read from the store at start): signs forwarded requests.
        self.secret = ""
        self.takeovers = 0
        self.activations = 0
        self.fence_refusals = 0
        self.handed_over = 0
        #: Commands the server sent on to their session's owner (counted by the forwarder).
        self.forwards = 0

    @property
    def node_id(self) -> str:
        return self.pg.node_id

    @property
    def advertise_url(self) -> str:
        return self.pg.advertise_url

    async def start(self) -> None:
        self.secret = await self.pg.secret()
        await self.membership.start()

    async def aclose(self) -> None:
        """Leave: the lease ends now (every session still named after this node is free)."""
        await self.membership.aclose(leave=True)

    # --- owning -------------------------------------------------------------------------------

    def guard(self, session_id: str) -> None:
        """Before an append or a tool: :class:`NotOwner` unless this node may act now."""
        self.membership.check(session_id)

    async def take(self, session_id: str) -> Taken:
        """Make the session this node's (see :meth:`PgCluster.take`), or raise
        :class:`NotOwner` naming the live node that owns it. A session that does not exist or
        has ended is not taken (``fence`` ``None``, ``status`` says which)."""
        if self.leaving:
            raise NotOwner(session_id, f"node {self.node_id!r} is shutting down; retry")
        self.membership.check(session_id)
        taken = await self.pg.take(session_id)
        if taken.fence is None:
            if taken.owner is not None and taken.status != "terminated":
                raise NotOwner(session_id, owner=taken.owner, owner_url=taken.owner_url)
            return taken
        if taken.previous is not None and taken.previous != self.node_id:
            self.takeovers += 1
            logger.warning(
                "session %s: taken over from node %s (fence %d)",
                session_id,
                taken.previous,
                taken.fence,
                extra={"session_id": session_id},
            )
        else:
            self.activations += 1
        return taken

    def refused(self, session_id: str) -> None:
        """An append of this node was refused by the fence: another node owns the session now.
        Drop it here, without writing."""
        self.fence_refusals += 1
        self.store.forget_fence(session_id)
        self.drop(session_id)

    async def hand_over(self, session_ids: Sequence[str]) -> None:
        """Let other nodes take these sessions at once (this node stopped serving them)."""
        held = []
        for sid in session_ids:
            fence = self.store.forget_fence(sid)
            if fence is not None:
                held.append((sid, fence))
        await self.pg.hand_over(held)
        self.handed_over += len(held)

    def _lapsed(self) -> None:
        self.drop_all()

    # --- asking ---------------------------------------------------------------------------------

    async def locate(self, session_id: str) -> Location | None:
        return await self.pg.locate(session_id)

    async def nodes(self) -> list[NodeRow]:
        return await self.pg.nodes()

    def health(self) -> tuple[bool, str]:
        if self.leaving:
            return False, f"node {self.node_id}: leaving"
        return self.membership.health()
