"""``Idempotency-Key``: a retried request that creates something (a run, a message) answers what
the first one created instead of creating it again.

A key belongs to a principal (the session's owner) and stays in force for
:data:`IDEMPOTENCY_TTL`. What it did is recorded by the store in the transaction that commits the
run's or the message's event (:mod:`jidoka.store.runs`), so the record and the effect cannot be
separated by a crash, a restart or another node: a retry finds it wherever it lands. Two copies
of one request arriving at once on the node that owns the session are serialised here
(:meth:`Idempotency.hold`), so the second finds the first's record. The same key sent with a
different request is refused (``InvalidArgument`` naming ``idempotency_key``: 422), as the
first request's answer would be the wrong one for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

from ..errors import InvalidArgument
from ..store.runs import IdempotencyRecord, RunIndex

__all__ = ["IDEMPOTENCY_TTL", "Idempotency", "check_key", "request_hash"]

#: How long a key answers for its first request.
IDEMPOTENCY_TTL: Final = timedelta(hours=24)

#: What a key may be: printable ASCII without spaces, 1-255 characters (a UUID fits).
_KEY: Final = re.compile(r"[\x21-\x7e]{1,255}")
_encoder: Final = msgspec.json.Encoder(order="sorted")


def check_key(key: object, session_id: str | None) -> str | None:
    """The key, checked (``None``: none given)."""
    if key is None:
        return None
    if not isinstance(key, str) or _KEY.fullmatch(key) is None:
        raise InvalidArgument(
            "idempotency_key must be 1-255 printable ASCII characters without spaces, "
            f"got {key!r:.60}",
            argument="idempotency_key",
            session_id=session_id,
        )
    return key


def request_hash(verb: str, session_id: str, fields: dict[str, Any]) -> str:
    """A digest of what the request asked for (its verb, session and arguments)."""
    body = _encoder.encode({"verb": verb, "session_id": session_id, **fields})
    return hashlib.sha256(body).hexdigest()


class Idempotency:
    """Finds the record of a key, and keeps two copies of a request from running at once."""

    def __init__(self, index: RunIndex, now: Any) -> None:
        self._index = index
        #: The wall clock, as seconds since the epoch.
        self._now = now
        self._held: dict[tuple[str | None, str], asyncio.Lock] = {}

    @asynccontextmanager
    async def hold(self, owner: str | None, key: str) -> AsyncIterator[None]:
        """While the caller looks the key up and acts on it, another caller of the same key
        waits (at most one lock per key in flight: it goes when nobody holds or waits)."""
        slot = (owner, key)
        lock = self._held.get(slot)
        if lock is None:
            lock = self._held[slot] = asyncio.Lock()
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and self._held.get(slot) is lock:
                del self._held[slot]

    async def find(
        self, owner: str | None, key: str, digest: str, session_id: str
    ) -> IdempotencyRecord | None:
        """The record of the key's first request if it is in force and asked the same; ``None``
        if there is none (or it expired); ``InvalidArgument`` if it asked something else."""
        record = await self._index.find_idempotency(owner, key)
        if record is None:
            return None
        now = datetime.fromtimestamp(self._now(), UTC)
        if record.created_at < now - IDEMPOTENCY_TTL:
            return None
        if record.request_hash != digest:
            raise InvalidArgument(
                f"idempotency_key {key!r:.60} was used for a different request "
                "(a key stands for one request for 24 hours)",
                argument="idempotency_key",
                session_id=session_id,
            )
        return record
