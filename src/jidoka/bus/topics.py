"""This process's subscriptions, by topic: what every bus delivers to once an event is here.

A bus differs in how an event reaches the process (at once in memory, over Redis between nodes);
from there on, every bus does the same: offer it to the subscriptions of its session's topic
and, for a lifecycle event, to those of the global topic. :class:`Topics` is that part, kept once.
"""

from __future__ import annotations

from ..events import GLOBAL_EVENT_TYPES, Event
from .base import Subscription

__all__ = ["Topics"]


class Topics:
    """Subscriptions per session, and on the global topic (``everyone``)."""

    __slots__ = ("everyone", "sessions")

    def __init__(self) -> None:
        self.sessions: dict[str, set[Subscription]] = {}
        self.everyone: set[Subscription] = set()

    def deliver(self, event: Event) -> None:
        """Offer ``event`` to its session's subscriptions, and a lifecycle event to everyone's
        (never waits: see the slow-consumer policy of :class:`Subscription`)."""
        subscribers = self.sessions.get(event.session_id)
        if subscribers:
            for subscription in subscribers:
                subscription.offer(event)
        if self.everyone and event.type in GLOBAL_EVENT_TYPES:
            for subscription in self.everyone:
                subscription.offer(event)

    def add(self, session_id: str | None, subscription: Subscription) -> bool:
        """Hold ``subscription`` (on the global topic with ``None``); whether it opened a
        session's topic (a bus across processes starts listening for it then)."""
        if session_id is None:
            self.everyone.add(subscription)
            return False
        topic = self.sessions.get(session_id)
        opened = topic is None
        if topic is None:
            topic = self.sessions[session_id] = set()
        topic.add(subscription)
        return opened

    def discard(self, session_id: str | None, subscription: Subscription) -> bool:
        """Let go of ``subscription``; whether that closed its session's topic (the last one)."""
        if session_id is None:
            self.everyone.discard(subscription)
            return False
        topic = self.sessions.get(session_id)
        if topic is None:
            return False
        topic.discard(subscription)
        if topic:
            return False
        del self.sessions[session_id]
        return True

    def pop(self, session_id: str) -> set[Subscription]:
        """The session's subscriptions, no longer held (its session ended)."""
        return self.sessions.pop(session_id, set())

    def count(self, session_id: str | None) -> int:
        if session_id is None:
            return len(self.everyone)
        return len(self.sessions.get(session_id, ()))

    def close_all(self) -> None:
        """End every subscription after what it has queued, and hold none."""
        for topic in [*self.sessions.values(), self.everyone]:
            for subscription in topic:
                subscription.close()
        self.sessions.clear()
        self.everyone.clear()
