"""Listing sessions: what this node holds, merged with the pages of the store's index.

A node holds in memory the sessions it has loaded (their status there is the truth), the ones
being created, and the tombstones of those that ended. A durable store holds more: every session
it kept, most of them not loaded after a restart. A listing walks both in id (= creation)
order: the node's ids by the status and owner they have in memory, and the store's pages by
the status and owner it recorded (``SessionStore.list_sessions``, served from an index, so a
page costs the same among a million sessions), each id once. Every id on the way is answered
by the session itself (loaded if it was not: what a page returns is loaded, nothing else) and
checked again against the filters, since a stored session's status changes when it loads (an
``active`` one comes back ``idle``) and a loaded one's may differ from what the store says.

Which stored statuses can match a listing: an unfiltered one takes every stored session not
terminated; ``idle`` takes stored ``idle`` and ``active`` ones (both load as ``idle``); the
others take none from the store (a stored session never loads as ``active``, ``initializing``
or ``terminating``, and ended sessions are listed from the tombstones, as before the restart).
A store that is not durable holds nothing this node has not loaded, so it is not paged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Final

from ..errors import SessionNotFound, SessionTerminated
from ..store.base import SessionStore
from .info import SessionInfo
from .registry import SessionRegistry
from .state import Status

__all__ = ["list_sessions"]

#: The most sessions read from the store at a time.
_PAGE: Final = 500
#: The most sessions a listing loads at once.
_LOADS: Final = 16


class _StorePages:
    """The ids one filter of the store's index yields, in order, a page at a time."""

    def __init__(
        self,
        store: SessionStore,
        status: str | None,
        owner: str | None,
        after: str | None,
        size: int,
    ) -> None:
        self._store = store
        self._status = status
        self._owner = owner
        self._after = after
        self._size = size
        self._page: list[str] = []
        self._index = 0
        self._done = False

    async def peek(self) -> str | None:
        """The next id (``None`` once there are no more), reading a page if needed."""
        if self._index == len(self._page) and not self._done:
            page = await self._store.list_sessions(
                owner=self._owner, status=self._status, after=self._after, limit=self._size
            )
            self._page = [stored.session_id for stored in page]
            self._index = 0
            self._done = len(page) < self._size
            if page:
                self._after = page[-1].session_id
        return self._page[self._index] if self._index < len(self._page) else None

    def advance(self) -> None:
        self._index += 1


async def list_sessions(
    registry: SessionRegistry,
    store: SessionStore,
    info: Callable[[str], Awaitable[SessionInfo]],
    status: object,
    *,
    limit: int | None,
    after: str | None,
    owner: str | None,
) -> list[SessionInfo]:
    """One page of a listing (see the module's docstring); ``info`` answers for a session by
    id, loading it if needed."""
    wanted = registry.listing_filter(status, limit=limit, after=after)
    held = registry.page(wanted, after=after, owner=owner)
    stored_statuses: list[str | None] = []
    if store.durable:
        if wanted is None:
            stored_statuses = [None]
        elif wanted is Status.IDLE:
            stored_statuses = [Status.IDLE.value, Status.ACTIVE.value]
    size = min(limit, _PAGE) if limit is not None else _PAGE
    pages = [_StorePages(store, s, owner, after, size) for s in stored_statuses]
    position = 0

    async def next_id() -> str | None:
        """The smallest next id among the node's and each store page's; each taken once."""
        nonlocal position
        heads = [await page.peek() for page in pages]
        candidates = [sid for sid in heads if sid is not None]
        if position < len(held):
            candidates.append(held[position])
        if not candidates:
            return None
        sid = min(candidates)
        if position < len(held) and held[position] == sid:
            position += 1
        for page, head in zip(pages, heads, strict=True):
            if head == sid:
                page.advance()
        return sid

    gate = asyncio.Semaphore(_LOADS)

    async def answer(sid: str) -> SessionInfo | None:
        async with gate:
            with contextlib.suppress(SessionTerminated, SessionNotFound):  # gone, or corrupt
                return await info(sid)
            return None

    out: list[SessionInfo] = []
    while limit is None or len(out) < limit:
        # As many ids as the page still needs, answered together: a session not loaded yet is
        # loaded (a few store round trips), and a page of them loads at once, not in a row.
        batch: list[str] = []
        while len(batch) < (size if limit is None else limit - len(out)):
            sid = await next_id()
            if sid is None:
                break
            batch.append(sid)
        if not batch:
            break
        answers = await asyncio.gather(*(answer(sid) for sid in batch))
        # Checked again: what the session says once loaded is the truth.
        out.extend(
            found
            for found in answers
            if found is not None
            and (owner is None or found.owner == owner)
            and (wanted is None or found.status is wanted)
        )
    return out
