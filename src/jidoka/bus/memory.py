"""The in-process event bus: topics are sets of subscriptions held in this process.

Publishing is synchronous under the hood (a dict lookup and one non-blocking ``offer`` per
subscriber), so it costs nothing when nobody listens and never waits on a slow consumer; the
slow-consumer policy itself is :class:`~jidoka.bus.base.Subscription`'s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from ..errors import RuntimeClosed
from ..events import Event
from .base import EventReader, Subscription
from .topics import Topics

__all__ = ["MemoryBus"]


class MemoryBus:
    """Per-session and global topics in memory."""

    def __init__(
        self,
        *,
        reader: EventReader | None = None,
        queue_size: int = 1_000,
        now: Callable[[], float],
        keeps_logs: bool = False,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.queue_size = queue_size
        self._reader = reader
        #: Whether ``reader``'s store keeps a session's log after it ends (see ``finish``).
        self._keeps_logs = keeps_logs
        self._now = now
        self._local = Topics()
        self._closed = False
        self.published = 0
        self.lost = 0

    async def publish(self, event: Event) -> None:
        self.publish_nowait(event)

    def publish_nowait(self, event: Event) -> None:
        """Deliver at once; the memory bus never has to wait."""
        self.published += 1
        self._local.deliver(event)

    @asynccontextmanager
    async def subscribe(
        self, session_id: str | None, *, after_seq: int | None = None
    ) -> AsyncIterator[Subscription]:
        if self._closed:
            raise RuntimeClosed("the event bus is closed", session_id=session_id)
        subscription = Subscription(
            session_id,
            queue_size=self.queue_size,
            reader=self._reader,
            now=self._now,
            after_seq=after_seq,
            on_lost=self._count_lost,
            keeps_logs=self._keeps_logs,
        )
        self._local.add(session_id, subscription)
        try:
            yield subscription
        finally:
            subscription.close()
            self._local.discard(session_id, subscription)

    def _count_lost(self, count: int) -> None:
        self.lost += count

    async def close_session(self, session_id: str) -> None:
        for subscription in self._local.pop(session_id):
            await subscription.finish()

    def subscriber_count(self, session_id: str | None = None) -> int:
        """Subscriptions on one session's topic, or on the global topic with ``None``."""
        return self._local.count(session_id)

    def health(self) -> tuple[bool, str]:
        return (not self._closed, "memory" if not self._closed else "closed")

    def topics(self) -> frozenset[str]:
        """Sessions that have at least one subscription."""
        return frozenset(self._local.sessions)

    async def aclose(self) -> None:
        self._closed = True
        self._local.close_all()
