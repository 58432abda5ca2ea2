"""What a store keeps about runs beside the log: the runs index, the webhook outbox and the
idempotency keys.

A run lives in its session's log as three events (``run_queued``, ``run_started``,
``run_completed``). Finding one by id, listing a session's runs, finding the runs a restart left
unfinished, delivering webhooks and answering a retried request all need an index the log cannot
give cheaply, so every store keeps one, **derived from those events in the transaction that
appends them** (SQLite and Postgres with triggers on the events table; the memory store in its
append). Nothing else writes it, so it can never disagree with the log:

- ``run_queued`` adds the run (``queued``); if its data has an ``idempotency_key``, the key is
  recorded for the session's owner (first writer wins: a key already recorded is left as it is);
- ``run_started`` marks it ``running``;
- ``run_completed`` gives it its final status and result; if the run has a ``webhook``, the run
  enters the **outbox** (``webhook_state`` ``pending``, due at once): the outbox entry is
  written in the same transaction as the run's end, so a crash can never lose it;
- a ``conversation_added`` with an ``idempotency_key`` records the key for its message.

Nothing in an event fails its append: a field the index needs (``run_id``, ``status``,
``webhook``, ``idempotency_key``, ``request_hash``) that is missing, not a string, or holds a NUL
character (which Postgres text cannot) is taken as absent, so no run, key or outbox entry comes
of it (callers validate keys and URLs first); a NUL in a webhook error is kept as U+FFFD.

Webhook delivery then changes only the outbox columns (``claim_webhooks``,
``record_webhook``). A session's runs and keys go with the session (``purge``,
``expire_terminated``); keys older than a day are removed by ``expire_idempotency``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal, Protocol, runtime_checkable

import msgspec

__all__ = [
    "FINAL_RUN_STATUSES",
    "RUN_STATUSES",
    "IdempotencyRecord",
    "RunIndex",
    "RunRecord",
    "WebhookState",
]

#: Every status a run can have, and those it ends with.
RUN_STATUSES: Final = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
FINAL_RUN_STATUSES: Final = frozenset({"completed", "failed", "cancelled", "interrupted"})

WebhookState = Literal["pending", "delivered", "failed"]


class RunRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One run as the index holds it."""

    run_id: str
    session_id: str
    #: The session's owner when the run was queued (``None``: no principal).
    owner: str | None
    #: The seq of its ``run_queued`` event: runs of a session are ordered by it.
    seq: int
    status: str
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    #: The ``run_queued`` event's data (text, multitask, webhook, metadata ...).
    queued: dict[str, Any]
    #: The ``run_completed`` event's data, once it ended.
    completed: dict[str, Any] | None = None
    #: The outbox: ``None`` for a run without a webhook or not ended yet.
    webhook_state: WebhookState | None = None
    webhook_attempts: int = 0
    webhook_next_at: datetime | None = None
    webhook_error: str | None = None


class IdempotencyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What a request sent with an ``Idempotency-Key`` did: the run it started (``run_id``) or
    the message it sent (``seq`` of its ``conversation_added``; for a run, its ``run_queued``)."""

    owner: str | None
    key: str
    request_hash: str
    session_id: str
    seq: int
    run_id: str | None
    created_at: datetime


@runtime_checkable
class RunIndex(Protocol):
    """The part of a store that serves runs, webhooks and idempotency keys (see the module's
    docstring for how it is kept). Every store implements it beside
    :class:`~jidoka.store.base.SessionStore`."""

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run, or ``None`` if no stored run has this id."""
        ...

    async def list_runs(
        self,
        session_id: str,
        *,
        status: str | None = None,
        before_seq: int | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        """One page of the session's runs, newest first (by ``seq``), those with ``seq <
        before_seq`` if given, only those with ``status`` if given, at most ``limit``
        (below 1: ``ValueError``). Served from an index on ``(session_id, seq)``."""
        ...

    async def unfinished_runs(
        self, *, after: tuple[str, int] | None = None, limit: int = 100
    ) -> list[RunRecord]:
        """Runs ``queued`` or ``running``, by ``(session_id, seq)``, those after the cursor
        ``after``, at most ``limit``: what a restarted node looks for (a queued run must
        still run, a running one is ended ``interrupted``). Served from a partial index."""
        ...

    async def claim_webhooks(
        self, now: datetime, lease_until: datetime, *, limit: int = 100
    ) -> list[RunRecord]:
        """Take up to ``limit`` outbox entries due at ``now`` (``webhook_state`` ``pending``,
        ``webhook_next_at <= now``), oldest due first, and move their ``webhook_next_at`` to
        ``lease_until`` in the same transaction: another node claiming meanwhile does not get
        them, and an entry whose deliverer died is due again after the lease. Returned as
        they were before the claim."""
        ...

    async def record_webhook(
        self,
        run_id: str,
        *,
        state: WebhookState,
        attempts: int,
        next_at: datetime | None,
        error: str | None,
    ) -> None:
        """Record a delivery attempt's outcome: ``delivered``, ``failed`` (given up), or
        ``pending`` again (due at ``next_at``). A run that is gone (purged) is ignored."""
        ...

    async def find_idempotency(self, owner: str | None, key: str) -> IdempotencyRecord | None:
        """The request the principal ``owner`` sent with ``key``, if any is recorded (whatever
        its age: the caller decides whether it is still in force)."""
        ...

    async def expire_idempotency(self, before: datetime, *, limit: int = 500) -> int:
        """Remove up to ``limit`` keys recorded before ``before``, oldest first; how many were
        removed."""
        ...
