"""A node of a cluster leaving: its sessions are handed over to the others.

At SIGTERM a node takes no more sessions and gives up those it holds: the ones with no turn
running at once, the others as their turns end, the rest at the deadline (their turns stopped).
Each is released here (its workers stopped) before the store lets another node take it, so two
nodes never run one session's workers at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..errors import RuntimeClosed, StoreError
from .idle import IdleReaper
from .lifecycle import Lifecycle
from .registry import SessionRegistry
from .services import SessionServices

__all__ = ["hand_over"]

logger = logging.getLogger("jidoka.manager")


async def hand_over(
    services: SessionServices,
    registry: SessionRegistry,
    idle: IdleReaper,
    lifecycle: Lifecycle,
    busy: Callable[[str], bool],
    deadline: float,
) -> None:
    """Give every session of ``registry`` up to the other nodes of the cluster; ``busy(id)``
    says whether a turn runs; ``deadline`` is on ``services.clock``'s monotonic time."""
    ownership = services.ownership
    if ownership is None:
        return
    clock = services.clock
    while registry.live:
        final = clock.monotonic() >= deadline
        ready = [sid for sid in registry.live if final or not busy(sid)]
        if ready:
            sessions = [registry.live.pop(sid) for sid in ready]
            idle.prune()
            await asyncio.gather(*(lifecycle.release(s) for s in sessions))
            try:
                await ownership.hand_over(ready)
            except (StoreError, RuntimeClosed) as exc:
                # Leaving ends the lease anyway; then they are free all the same.
                logger.warning("handing %d sessions over failed: %s", len(ready), exc)
        if registry.live:
            # Turns end on their own time; look again shortly (a shutdown, not a hot path).
            await clock.sleep_until(min(deadline, clock.monotonic() + 0.05))
