"""What every session of a runtime shares: the store, the bus, the file cache, the clock.

One :class:`SessionServices` per runtime, one reference to it per session (instead of one per
service). It also keeps the store's and the bus's non-blocking calls as bound methods, looked up
once: they are called on every command, and on the memory store and bus they are most of what a
command costs besides its own work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..bus.base import EventBus
    from ..cache import FileCache
    from ..clock import Clock
    from ..events import Event
    from ..store.base import OnCommitted, SessionStore
    from .context import TokenCounter
    from .postcommit import Step
    from .session import Session

__all__ = ["SessionServices"]


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
        ] = store.append_nowait
        self.publish_nowait: Callable[[Event], None] = bus.publish_nowait
        #: The store commits before ``append_nowait`` returns: a commit has no suspension point.
        self.commits_inline = store.commits_inline
        self.messages_appended = 0
        # Set by the session manager: what a committed client command does to the runtime
        # (idle timer, snapshots), and who repairs what a failed post-commit step broke.
        # Both are called from the post-commit section; neither is allowed to raise into it.
        self.after_command: Callable[[Session], None] | None = None
        self.on_fault: Callable[[Session, Step, Exception], None] | None = None
