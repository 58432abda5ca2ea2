"""The one event type of Jidoka, and its JSON form.

Every change to a session is an :class:`Event`: it is what the store keeps, what subscribers
receive and what a reconnecting client replays. Field names follow CloudEvents (``id``, ``type``,
``source``, ``time``) plus ``session_id`` and ``seq``; ``seq`` is per session, starts at 1 and is
strictly increasing with no gaps.

``id`` and ``source`` are derived from ``session_id`` and ``seq`` rather than stored: an event has
exactly one identity, a replayed event has the same ``id`` as the original (so consumers can
de-duplicate), and an idle session's log costs two strings fewer per event.

``data`` is a plain JSON object, of the shape :mod:`jidoka.payloads` gives for each type (what
builds an event builds that Struct; ``docs/events.md`` is the table). Events are shared between
the store and every subscriber, so treat ``data`` as read-only.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

import msgspec

from .errors import InvalidArgument

__all__ = [
    "EVENT_TYPES",
    "GLOBAL_EVENT_TYPES",
    "Event",
    "EventType",
    "decode_event",
    "encode_event",
]

SPEC_VERSION: Final = "1.0"


class EventType(StrEnum):
    """Event type names (the contract of blueprint §6), plus ``events_dropped``."""

    SESSION_CREATED = "session_created"
    SESSION_STATUS = "session_status"
    SESSION_TERMINATED = "session_terminated"
    #: The projection went back to what it was at ``to_seq`` (the log keeps every event).
    SESSION_REWOUND = "session_rewound"
    CONVERSATION_ADDED = "conversation_added"
    CONVERSATION_CLEARED = "conversation_cleared"
    FILE_ADDED = "file_added"
    FILE_REMOVED = "file_removed"
    FILE_INDEX_UPDATED = "file_index_updated"
    WORKING_CONTEXT_UPDATED = "working_context_updated"
    LLM_STREAM_CHUNK = "llm_stream_chunk"
    LLM_RESPONSE = "llm_response"
    TOOL_CALL = "tool_call"
    TOOL_RESULT = "tool_result"
    AGENT_STATUS = "agent_status"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_DECIDED = "approval_decided"
    ERROR = "error"
    #: The conversation before ``last_seq`` is summarised (issue 17): the log keeps every message.
    CONTEXT_COMPACTED = "context_compacted"
    #: A background run (issue 18): taken (``run_queued``), begun (``run_started``), ended
    #: (``run_completed`` with its status). A chat is a run too.
    RUN_QUEUED = "run_queued"
    RUN_STARTED = "run_started"
    RUN_COMPLETED = "run_completed"
    #: Not part of any session's log: a marker a subscription yields when it had to skip events
    #: it could not recover (see :mod:`jidoka.bus.memory`). ``seq`` is the last seq skipped.
    EVENTS_DROPPED = "events_dropped"
    #: Not part of any session's log either: the session's stored rows were removed (a purge, or
    #: retention), published on the global stream once it is done. ``seq`` is the last seq its
    #: log had (0 if only a saved copy was left).
    SESSION_PURGED = "session_purged"


#: Each type by its wire name: a dict lookup, cheaper than ``EventType(name)`` for a store that
#: reads types back as text.
EVENT_TYPES: Final[Mapping[str, EventType]] = MappingProxyType(
    {kind.value: kind for kind in EventType}
)

#: The lifecycle events that also go to the global stream (``subscribe_to_all_sessions``).
GLOBAL_EVENT_TYPES: Final = frozenset(
    {
        EventType.SESSION_CREATED,
        EventType.SESSION_STATUS,
        EventType.SESSION_TERMINATED,
        EventType.SESSION_PURGED,
    }
)


class Event(msgspec.Struct, frozen=True, gc=False):
    """One change to one session.

    ``time`` is a timezone-aware UTC datetime. ``type`` is an :class:`EventType` (a ``str``
    too, so it compares equal to its wire name).
    """

    type: EventType
    session_id: str
    seq: int
    time: datetime
    data: dict[str, Any] = {}

    @property
    def id(self) -> str:
        """Unique and stable: ``<session_id>-<seq>`` (session ids never contain ``-``)."""
        return f"{self.session_id}-{self.seq}"

    @property
    def source(self) -> str:
        """The CloudEvents ``source``: the session's path in the HTTP API."""
        return f"/v1/sessions/{self.session_id}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON object form (what :func:`encode_event` writes), as Python values."""
        return {
            "specversion": SPEC_VERSION,
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "time": self.time,
            "session_id": self.session_id,
            "seq": self.seq,
            "data": self.data,
        }


class _WireEvent(msgspec.Struct, frozen=True):
    """The JSON layout; ``id``/``source`` are written for consumers and ignored when read back.

    ``type`` must be an :class:`EventType`: a name this version does not know is malformed.
    """

    type: EventType
    session_id: str
    seq: int
    time: datetime
    data: dict[str, Any] = {}
    specversion: str = SPEC_VERSION
    id: str | None = None
    source: str | None = None


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(_WireEvent)


def encode_event(event: Event) -> bytes:
    """Encode an event as one JSON object (UTF-8 bytes)."""
    return _encoder.encode(event.to_dict())


def decode_event(raw: bytes | str) -> Event:
    """Decode :func:`encode_event`'s output; raise :class:`~jidoka.InvalidArgument` if malformed."""
    try:
        wire = _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeError) as exc:
        raise InvalidArgument(f"malformed event: {exc}", argument="event") from exc
    if wire.seq < 1 and not (wire.type == EventType.EVENTS_DROPPED and not wire.session_id):
        # The global stream's loss marker is the one event with no session and seq 0.
        raise InvalidArgument(f"malformed event: seq {wire.seq} < 1", argument="event")
    if wire.time.tzinfo is None:
        raise InvalidArgument("malformed event: time has no timezone", argument="event")
    return Event(wire.type, wire.session_id, wire.seq, wire.time, wire.data)
