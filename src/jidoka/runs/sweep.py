"""The runs' periodic pass: sessions with unfinished runs nobody here holds are loaded (their
recovery ends a run that was running, their queued runs run), and idempotency keys past their
24 hours are removed, a bounded batch at a time.

At start-up the pass runs at once (a restarted node resumes its runs without waiting for a
request); then every ``interval`` seconds, so that on a cluster the queued runs of a node that
died are resumed by a live node even if nobody touches their session (another node's session is
left alone: taking it is refused while its owner's lease holds).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Final

from ..clock import Clock
from ..session.background import BackgroundTasks
from ..session.periodic import PeriodicPass
from ..store.runs import RunIndex
from .idempotency import IDEMPOTENCY_TTL
from .service import Runs

__all__ = ["RUN_SWEEP_INTERVAL", "RunSweep"]

logger = logging.getLogger("jidoka.runs")

#: Seconds between two passes.
RUN_SWEEP_INTERVAL: Final = 30.0
#: Keys removed per statement, and statements per pass at most.
_KEY_BATCH: Final = 500
_KEY_BATCHES: Final = 20


class RunSweep(PeriodicPass):
    """See the module's docstring."""

    WHAT = "the runs' sweep"
    enabled = True

    def __init__(
        self,
        runs: Runs,
        index: RunIndex,
        clock: Clock,
        tasks: BackgroundTasks,
        *,
        interval: float = RUN_SWEEP_INTERVAL,
    ) -> None:
        super().__init__(clock, tasks, name="jidoka:run-sweep", first_delay=0.0, interval=interval)
        self._runs = runs
        self._index = index
        self._wall = clock

    async def sweep(self) -> tuple[int, int]:
        """One pass: (sessions loaded, keys removed)."""
        loaded = await self._runs.recover()
        before = datetime.fromtimestamp(self._wall.time(), UTC) - IDEMPOTENCY_TTL
        removed = 0
        for _ in range(_KEY_BATCHES):
            count = await self._index.expire_idempotency(before, limit=_KEY_BATCH)
            removed += count
            if count < _KEY_BATCH:
                break
        if loaded or removed:
            logger.info("runs' sweep: %d sessions resumed, %d keys expired", loaded, removed)
        return loaded, removed
