"""What a client sees of a run (:class:`RunInfo`), made from the store's :class:`RunRecord`.

The same struct is the answer of ``start_run``/``get_run``/``list_runs``/``cancel_run``, the body
of the webhook a run's end sends, and what ``join_run`` waits for, so a client reads one shape.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from ..session.info import TokenUsage
from ..session.state import Message
from ..store.runs import RunRecord

__all__ = ["RunInfo", "RunPage", "WebhookStatus", "run_info"]


class WebhookStatus(msgspec.Struct, frozen=True, kw_only=True):
    """How the run's webhook is doing: ``pending`` (not delivered yet: ``attempts`` made so
    far, ``error`` the last failure), ``delivered`` or ``failed`` (given up)."""

    url: str
    state: str | None
    attempts: int = 0
    error: str | None = None


class RunInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One run: ``status`` is ``queued``, ``running``, ``completed``, ``failed``,
    ``cancelled`` or ``interrupted``. Once it ended, ``message`` is the final assistant
    message (the partial answer of a cancelled or interrupted turn), ``usage`` its tokens,
    ``error`` why it failed, ``reason`` why it was interrupted or cancelled."""

    run_id: str
    session_id: str
    status: str
    text: str
    multitask: str
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    message: Message | None = None
    usage: TokenUsage | None = None
    error: str | None = None
    reason: str | None = None
    metadata: dict[str, Any] = {}
    webhook: WebhookStatus | None = None


class RunPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of a session's runs, newest first; ``next_cursor`` (``null`` on the last page)
    is the ``cursor`` of the next one."""

    runs: list[RunInfo]
    next_cursor: str | None = None


def run_info(record: RunRecord) -> RunInfo:
    """The client's view of a stored run."""
    queued = record.queued
    done = record.completed or {}
    message = done.get("message")
    usage = done.get("usage")
    url = queued.get("webhook")
    return RunInfo(
        run_id=record.run_id,
        session_id=record.session_id,
        status=record.status,
        text=str(queued.get("text", "")),
        multitask=str(queued.get("multitask", "")),
        created_at=record.created_at,
        started_at=record.started_at,
        ended_at=record.ended_at,
        message=msgspec.convert(message, Message) if message else None,
        usage=msgspec.convert(usage, TokenUsage) if usage else None,
        error=done.get("error"),
        reason=done.get("reason"),
        metadata=dict(queued.get("metadata") or {}),
        webhook=None
        if not url
        else WebhookStatus(
            url=str(url),
            state=record.webhook_state,
            attempts=record.webhook_attempts,
            error=record.webhook_error,
        ),
    )
