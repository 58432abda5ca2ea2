"""The memory store's runs index, webhook outbox and idempotency keys (:mod:`.runs`), kept by
:meth:`MemoryRunIndex.derive` as each batch is appended, so they change with the log at once.

Not durable, like the rest of the memory store. A terminated session's runs are dropped with its
log (``forget``), except those whose webhook is still to be delivered: they go once it settles.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

import msgspec

from ..events import Event, EventType
from .heads import created_owner
from .runs import FINAL_RUN_STATUSES, IdempotencyRecord, RunRecord, WebhookState

__all__ = ["MemoryRunIndex"]

#: The event types the index is derived from.
_DERIVED: Final = frozenset(
    {
        EventType.SESSION_CREATED,
        EventType.RUN_QUEUED,
        EventType.RUN_STARTED,
        EventType.RUN_COMPLETED,
        EventType.CONVERSATION_ADDED,
    }
)

_replace = msgspec.structs.replace


def _text(value: object) -> str | None:
    """``value`` if it is a string a durable store can hold as text (no NUL character)."""
    return value if isinstance(value, str) and "\x00" not in value else None


def check_page(limit: object) -> None:
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit!r}")


class MemoryRunIndex:
    """Runs by id, each session's run ids in order, the principals' idempotency keys."""

    def __init__(self) -> None:
        self._runs: dict[str, RunRecord] = {}
        self._by_session: dict[str, list[str]] = {}
        self._owners: dict[str, str | None] = {}
        self._keys: dict[tuple[str | None, str], IdempotencyRecord] = {}
        #: Sessions forgotten while a run of theirs still had a webhook to deliver.
        self._released: set[str] = set()

    def derive(self, session_id: str, events: Sequence[Event]) -> None:
        """Apply an appended batch (called by the store's append, after its checks). One set
        lookup per event that is none of the few that matter: the path of every append."""
        for event in events:
            kind = event.type
            if kind not in _DERIVED:
                continue
            if kind is EventType.CONVERSATION_ADDED:
                if "idempotency_key" in event.data:
                    self._key(session_id, event, None)
            elif kind is EventType.SESSION_CREATED:
                self._owners[session_id] = created_owner(event.data)
            elif kind is EventType.RUN_QUEUED:
                self._queued(session_id, event)
            elif kind is EventType.RUN_STARTED:
                self._started(event)
            else:
                self._completed(event)

    def _started(self, event: Event) -> None:
        run = self._runs.get(_text(event.data.get("run_id")) or "")
        if run is not None:
            self._runs[run.run_id] = _replace(run, status="running", started_at=event.time)

    def _queued(self, session_id: str, event: Event) -> None:
        data = event.data
        run_id = _text(data.get("run_id"))
        if not run_id:
            return  # malformed: nothing to index (the append itself never fails on it)
        run = RunRecord(
            run_id=run_id,
            session_id=session_id,
            owner=self._owners.get(session_id),
            seq=event.seq,
            status="queued",
            created_at=event.time,
            queued=dict(data),
        )
        self._runs[run.run_id] = run
        self._by_session.setdefault(session_id, []).append(run.run_id)
        if "idempotency_key" in data:
            self._key(session_id, event, run.run_id)

    def _completed(self, event: Event) -> None:
        data = event.data
        run = self._runs.get(_text(data.get("run_id")) or "")
        status = _text(data.get("status"))
        if run is None or status is None:
            return
        webhook = bool(_text(run.queued.get("webhook")))
        self._runs[run.run_id] = _replace(
            run,
            status=status,
            ended_at=event.time,
            completed=dict(data),
            webhook_state="pending" if webhook else None,
            webhook_next_at=event.time if webhook else None,
        )

    def _key(self, session_id: str, event: Event, run_id: str | None) -> None:
        owner = self._owners.get(session_id)
        name, digest = (
            _text(event.data["idempotency_key"]),
            _text(event.data.get("request_hash", "")),
        )
        if name is None or digest is None:
            return  # not a key every store can hold (see .runs)
        key = (owner, name)
        if key in self._keys:
            return  # first writer wins
        self._keys[key] = IdempotencyRecord(
            owner=owner,
            key=name,
            request_hash=digest,
            session_id=session_id,
            seq=event.seq,
            run_id=run_id,
            created_at=event.time,
        )

    def forget(self, session_id: str, *, keep_outbox: bool) -> None:
        """Drop the session's runs and keys (``purge``, expiry, or its log freed at the end:
        then, with ``keep_outbox``, runs with a webhook still pending stay until it settles)."""
        ids = self._by_session.pop(session_id, [])
        kept = []
        for run_id in ids:
            run = self._runs.get(run_id)
            if keep_outbox and run is not None and run.webhook_state == "pending":
                kept.append(run_id)
                continue
            self._runs.pop(run_id, None)
        if kept:
            self._by_session[session_id] = kept
            self._released.add(session_id)
        else:
            self._owners.pop(session_id, None)
            self._released.discard(session_id)
        if not keep_outbox:
            for key in [k for k, rec in self._keys.items() if rec.session_id == session_id]:
                del self._keys[key]

    def clear(self) -> None:
        self._runs.clear()
        self._by_session.clear()
        self._owners.clear()
        self._keys.clear()
        self._released.clear()

    # --- RunIndex -------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> RunRecord | None:
        return self._runs.get(run_id)

    async def list_runs(
        self,
        session_id: str,
        *,
        status: str | None = None,
        before_seq: int | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        check_page(limit)
        page: list[RunRecord] = []
        for run_id in reversed(self._by_session.get(session_id, ())):
            run = self._runs.get(run_id)
            if run is None or (before_seq is not None and run.seq >= before_seq):
                continue
            if status is not None and run.status != status:
                continue
            page.append(run)
            if len(page) >= limit:
                break
        return page

    async def unfinished_runs(
        self, *, after: tuple[str, int] | None = None, limit: int = 100
    ) -> list[RunRecord]:
        check_page(limit)
        found = sorted(
            (run.session_id, run.seq, run)
            for run in self._runs.values()
            if run.status not in FINAL_RUN_STATUSES
            and (after is None or (run.session_id, run.seq) > after)
        )
        return [run for _, _, run in found[:limit]]

    async def claim_webhooks(
        self, now: datetime, lease_until: datetime, *, limit: int = 100
    ) -> list[RunRecord]:
        check_page(limit)
        due = sorted(
            (run.webhook_next_at, run.run_id, run)
            for run in self._runs.values()
            if run.webhook_state == "pending"
            and run.webhook_next_at is not None
            and run.webhook_next_at <= now
        )[:limit]
        for _, run_id, run in due:
            self._runs[run_id] = _replace(run, webhook_next_at=lease_until)
        return [run for _, _, run in due]

    async def record_webhook(
        self,
        run_id: str,
        *,
        state: WebhookState,
        attempts: int,
        next_at: datetime | None,
        error: str | None,
    ) -> None:
        run = self._runs.get(run_id)
        if run is None:
            return
        self._runs[run_id] = _replace(
            run,
            webhook_state=state,
            webhook_attempts=attempts,
            webhook_next_at=next_at,
            webhook_error=None if error is None else error.replace("\x00", "\ufffd"),
        )
        if state != "pending" and run.session_id in self._released:
            self._runs.pop(run_id, None)
            ids = self._by_session.get(run.session_id, [])
            if run_id in ids:
                ids.remove(run_id)
            if not ids:
                self._by_session.pop(run.session_id, None)
                self._released.discard(run.session_id)
                self._owners.pop(run.session_id, None)

    async def find_idempotency(self, owner: str | None, key: str) -> IdempotencyRecord | None:
        return self._keys.get((owner, key))

    async def expire_idempotency(self, before: datetime, *, limit: int = 500) -> int:
        check_page(limit)
        old = sorted(
            (rec.created_at, k) for k, rec in self._keys.items() if rec.created_at < before
        )[:limit]
        for _, k in old:
            del self._keys[k]
        return len(old)
