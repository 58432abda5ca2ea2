"""What every session of a runtime shares: the store, the bus, the file cache, the clock.

One :class:`SessionServices` per runtime, one reference to it per session (instead of one per
service). It also keeps the store's and the bus's non-blocking calls as bound methods, looked up
once: they are called on every command, and on the memory store and bus they are most of what a
command costs besides its own work.

On a node of a cluster it also holds the node's :class:`Ownership`: every append is guarded by
the node's lease, and an append the fence refused tells the node to drop the session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..store.base import OwnershipLost

if TYPE_CHECKING:
    from ..bus.base import EventBus
    from ..cache import FileCache
    from ..clock import Clock
    from ..events import Event
    from ..store.base import OnCommitted, SessionStore
    from ..store.postgres_cluster import Taken
    from .context import TokenCounter
    from .postcommit import Step
    from .session import Session

__all__ = ["Ownership", "SessionServices"]


class Ownership(Protocol):
    """A cluster node's say over its sessions (:class:`jidoka.cluster.node.ClusterNode`)."""

    @property
    def node_id(self) -> str: ...

    def guard(self, session_id: str) -> None:
        """Raise :class:`~jidoka.errors.NotOwner` unless this node may act on sessions now."""
        ...

    def refused(self, session_id: str) -> None:
        """The fence refused an append: the session is another node's; drop it here."""
        ...

    async def take(self, session_id: str) -> Taken:
        """Make a stored session this node's before loading it."""
        ...

    async def hand_over(self, session_ids: Sequence[str]) -> None: ...


class SessionServices:
    """What every session of a runtime shares: one reference per session instead of many."""

    __slots__ = (
        "after_command",
        "append_nowait",
        "blocking",
        "bus",
        "cache",
        "clock",
        "commits_inline",
        "messages_appended",
        "on_fault",
        "ownership",
        "publish_nowait",
        "store",
        "token_counter",
    )

    def __init__(
        self,
        *,
        store: SessionStore,
        bus: EventBus,
        cache: FileCache,
        clock: Clock,
        token_counter: TokenCounter,
        blocking: Callable[..., Awaitable[Any]] = asyncio.to_thread,
        ownership: Ownership | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.cache = cache
        self.clock = clock
        self.token_counter = token_counter
        self.blocking = blocking
        #: The one way a session commits (see ``SessionStore.append_nowait``) and publishes.
        self.append_nowait: Callable[
            [str, Sequence[Event], OnCommitted | None], Awaitable[None] | None
        ] = store.append_nowait if ownership is None else self._guarded_append
        #: The node's ownership of sessions, on a node of a cluster (else ``None``).
        self.ownership = ownership
        self.publish_nowait: Callable[[Event], None] = bus.publish_nowait
        #: The store commits before ``append_nowait`` returns: a commit has no suspension point.
        self.commits_inline = store.commits_inline
        self.messages_appended = 0
        # Set by the session manager: what a committed client command does to the runtime
        # (idle timer, snapshots), and who repairs what a failed post-commit step broke.
        # Both are called from the post-commit section; neither is allowed to raise into it.
        self.after_command: Callable[[Session], None] | None = None
        self.on_fault: Callable[[Session, Step, Exception], None] | None = None

    def _guarded_append(
        self, session_id: str, events: Sequence[Event], on_done: OnCommitted | None
    ) -> Awaitable[None] | None:
        """A cluster node's append: only under a valid lease, and a refusal by the fence
        makes the node drop the session (the caller hears ``OwnershipLost``, a ``NotOwner``)."""
        ownership = self.ownership
        assert ownership is not None
        ownership.guard(session_id)

        def done(error: BaseException | None) -> None:
            if isinstance(error, OwnershipLost):
                ownership.refused(session_id)
            if on_done is not None:
                on_done(error)

        return self.store.append_nowait(session_id, events, done)
