"""The events that frame a run's turn (``run_started``, ``run_completed``), made from how the
turn ended, and the agent events a run's id is stamped on.

Kept beside the turn loop (:mod:`.orchestrator`) so that the loop only says *when* a run starts
and ends; what each ending is called is decided here, in one place:

- a turn that returned is ``completed``, or, if a stop cut it short, what the stop made of it
  (``cancelled`` by a user, ``interrupted`` by another run's ``multitask: interrupt``);
- a turn that raised is ``failed``, with the error's message;
- a turn dropped before it started (the session ended, a rewind with ``cancel``) is
  ``cancelled`` with the reason, and has no message.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from ..events import EventType
from ..payloads import RunCompletedData, RunStartedData, event_item
from .tool_calls import bounded
from .turns import ChatResult, Turn

__all__ = ["RUN_TAGGED", "completed", "dropped", "failed", "started", "webhook_id"]

#: The agent events that carry the ``run_id`` of the turn they belong to.
RUN_TAGGED: Final = frozenset(
    {
        EventType.LLM_STREAM_CHUNK,
        EventType.LLM_RESPONSE,
        EventType.TOOL_CALL,
        EventType.TOOL_RESULT,
    }
)


def webhook_id(run_id: str) -> str:
    """The ``webhook-id`` of every delivery attempt of a run's webhook: one per run."""
    return f"msg_{run_id}"


def started(run_id: str) -> tuple[EventType, dict[str, Any]]:
    return event_item(RunStartedData(run_id=run_id))


def _hook(turn: Turn, data: RunCompletedData) -> RunCompletedData:
    if turn.webhook and turn.run_id is not None:
        return msgspec.structs.replace(data, webhook_id=webhook_id(turn.run_id))
    return data


def completed(turn: Turn, result: ChatResult) -> tuple[EventType, dict[str, Any]]:
    """A turn that returned (perhaps stopped: ``result.interrupted``)."""
    assert turn.run_id is not None
    message = msgspec.to_builtins(result.message)
    message["content"] = bounded(result.message.content)
    status = turn.stopped_as if result.interrupted else "completed"
    data = RunCompletedData(
        run_id=turn.run_id,
        status=status,
        message=message,
        usage=msgspec.to_builtins(result.usage),
        error=None,
        reason=turn.stop_reason if result.interrupted and turn.stop_reason else msgspec.UNSET,
        iterations=result.iterations,
        finish_reason=result.finish_reason,
    )
    return event_item(_hook(turn, data))


def failed(turn: Turn, exc: BaseException) -> tuple[EventType, dict[str, Any]]:
    assert turn.run_id is not None
    text = str(exc) or type(exc).__name__
    data = RunCompletedData(
        run_id=turn.run_id, status="failed", message=None, usage=None, error=bounded(text)
    )
    return event_item(_hook(turn, data))


def dropped(turn: Turn, reason: str) -> tuple[EventType, dict[str, Any]]:
    """A turn that never ran to its end: the session ended or a rewind dropped it."""
    assert turn.run_id is not None
    data = RunCompletedData(
        run_id=turn.run_id,
        status="cancelled",
        message=None,
        usage=None,
        error=None,
        reason=reason,
    )
    return event_item(_hook(turn, data))
