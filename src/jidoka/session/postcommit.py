"""The post-commit section: everything that follows a session's durable append, in one place.

Kept apart from :mod:`.session` because it obeys one rule the commands do not: once the store
has taken a command's events the command has happened, so nothing here may raise into its
caller (who would take a stored command for a failed one and retry it), and nothing here
awaits (so a cancellation of the caller cannot stop it halfway). Each step is guarded on its
own; a failure is reported (:func:`report_fault`: logged with the session id, then handed to
the runtime's ``on_fault`` hook, which repairs what it broke) instead of raised. The steps and
what a failure of each costs are named by :class:`Step`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..events import Event
from .projection import apply

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Step", "after_commit", "report_fault"]

logger = logging.getLogger("jidoka.session")


class Step(enum.StrEnum):
    """The steps that run after a commit, as named in the log when one fails.

    A failure is reported (:func:`report_fault`) and never raised; the runtime's ``on_fault``
    hook then repairs what the failure left broken: a projection that missed events is rebuilt
    from the log (``APPLY``), an idle timer is re-armed (``IDLE_TIMER``). The others leave
    nothing to repair in the session (a subscriber that missed a published event, a cache entry
    not written, a metric not counted); the log says what was lost.
    """

    APPLY = "applying the events to the projection"
    PUBLISH = "publishing an event"
    FOLLOW_UP = "the command's follow-up (cache, counters)"
    IDLE_TIMER = "re-arming the idle timer"
    SNAPSHOT = "scheduling a snapshot"
    TELEMETRY = "recording telemetry"
    WORKERS = "stopping the workers"
    STREAMS = "ending the event streams"
    RELEASE = "releasing the stored log"


def after_commit(
    session: Session, events: list[Event], after: Callable[[], object] | None, activity: bool
) -> None:
    """Everything that follows a durable append of ``events`` to ``session``'s log. Never
    raises.

    When this runs the events are in the log: the command has happened, whatever fails
    now. So each step is guarded on its own, and a failure is reported (logged with the
    session id, and handed to the runtime's ``on_fault`` hook to repair what it broke)
    rather than raised into a caller who would take a stored command for a failed one.
    Only ``Exception`` is caught; ``CancelledError`` and the like pass. Nothing here
    awaits, so a cancellation of the caller cannot stop it halfway.

    1. **Apply** each event to the projection. ``apply`` is pure and the command was
       validated against the projection before its commit, so a failure here is a bug, and
       the projection no longer matches the log. Its ``seq`` still moves to the last event
       (the next commit must be numbered after what is stored); the runtime then rebuilds
       the projection from the log, under the session's lock, or terminates the session
       with ``error`` if the log cannot be replayed either (``Recovery.rebuild_soon``).
       Until then, reads may see the state from before the event.
    2. **Publish** each event, without waiting (``EventBus.publish_nowait``; one failing
       costs subscribers that event, not the others).
    3. The command's own **follow-up** (``after``: the file cache, counters).
    4. For a client command, the runtime's ``after_command`` hook (idle timer, snapshot).
    """
    state = session.state
    try:
        for event in events:
            apply(state, event)
    except Exception as exc:
        last = events[-1]
        if state.seq < last.seq:
            state.seq, state.updated_at = last.seq, last.time
        report_fault(session, Step.APPLY, exc)
    services = session.services
    publish = services.publish_nowait
    for event in events:
        try:
            publish(event)
        except Exception as exc:
            report_fault(session, Step.PUBLISH, exc)
    if after is not None:
        try:
            after()
        except Exception as exc:
            report_fault(session, Step.FOLLOW_UP, exc)
    if activity and services.after_command is not None:
        try:
            services.after_command(session)
        except Exception as exc:  # the hook guards its own steps: a last resort
            report_fault(session, Step.IDLE_TIMER, exc)


def report_fault(session: Session, step: Step, error: Exception) -> None:
    """A step after a commit failed: log it with the session id, let the runtime repair
    what it broke. Never raises: the post-commit section calls it, and must not."""
    sid = session.state.session_id
    logger.error(
        "session %s: %s failed after its events were committed; the command stands (%r)",
        sid,
        step,
        error,
        exc_info=error,
        extra={"session_id": sid, "step": step.name.lower()},
    )
    hook = session.services.on_fault
    if hook is not None:
        try:
            hook(session, step, error)
        except Exception:
            logger.exception(
                "session %s: repairing after %s failed", sid, step, extra={"session_id": sid}
            )
