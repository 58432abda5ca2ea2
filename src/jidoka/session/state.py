"""Session lifecycle: the statuses and the one transition table.

The lifecycle (blueprint §4)::

    initializing ──► active ◄──► idle
         │              │          │
         │              └──► terminating ◄──┘
         │                       │
         └──────────────────► terminated

``initializing → terminated`` is a start-up failure. Every other move raises
:class:`~jidoka.InvalidTransition`. The table lives here and nowhere else.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from ..errors import InvalidTransition

__all__ = [
    "REASON_ERROR",
    "REASON_REQUESTED",
    "REASON_TIMEOUT",
    "TRANSITIONS",
    "Status",
    "check_transition",
]


class Status(StrEnum):
    INITIALIZING = "initializing"
    ACTIVE = "active"
    IDLE = "idle"
    TERMINATING = "terminating"
    TERMINATED = "terminated"


TRANSITIONS: Final[dict[Status, frozenset[Status]]] = {
    Status.INITIALIZING: frozenset({Status.ACTIVE, Status.TERMINATED}),
    Status.ACTIVE: frozenset({Status.IDLE, Status.TERMINATING}),
    Status.IDLE: frozenset({Status.ACTIVE, Status.TERMINATING}),
    Status.TERMINATING: frozenset({Status.TERMINATED}),
    Status.TERMINATED: frozenset(),
}


def check_transition(session_id: str, from_status: str, to_status: str) -> Status:
    """Return ``to_status`` as a :class:`Status` if the move is allowed, else raise."""
    try:
        src, dst = Status(from_status), Status(to_status)
    except ValueError:
        raise InvalidTransition(session_id, from_status, to_status) from None
    if dst not in TRANSITIONS[src]:
        raise InvalidTransition(session_id, src.value, dst.value)
    return dst


#: Termination reasons the runtime itself uses (clients may give their own).
REASON_REQUESTED: Final = "requested"
REASON_TIMEOUT: Final = "timeout"
REASON_ERROR: Final = "error"
