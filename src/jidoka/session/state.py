"""Session lifecycle: the statuses, the one transition table, and the session's configuration.

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

import re
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

from ..errors import InvalidConfig, InvalidTransition

__all__ = [
    "CONFIG_SCHEMA_VERSION",
    "REASON_ERROR",
    "REASON_REQUESTED",
    "REASON_TIMEOUT",
    "TRANSITIONS",
    "SessionCeilings",
    "SessionConfig",
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


CONFIG_SCHEMA_VERSION: Final = 1

_PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
_NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
_PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
_NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]


class SessionConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Per-session limits and behaviour. Immutable, so sessions with equal configs share one.

    Build one with :meth:`from_dict` (or ``SessionConfig(**fields).validated()``: the plain
    constructor does not check bounds); a bad field raises :class:`~jidoka.InvalidConfig`
    naming it.
    """

    #: Messages kept in the projection's history; the oldest is dropped beyond it (the log keeps
    #: every message).
    max_history: _PositiveInt = 100
    #: Active files per session; adding one more raises ``LimitExceeded``.
    max_files: _PositiveInt = 50
    #: Largest file that can be added or read into context, in bytes.
    max_file_bytes: _PositiveInt = 1_048_576
    #: Largest message content, in UTF-8 bytes.
    max_message_bytes: _PositiveInt = 262_144
    #: File index entries per session (active files and files the agent looked at).
    max_index_entries: _PositiveInt = 1_000
    #: Total JSON size of the working context, in bytes.
    max_working_context_bytes: _PositiveInt = 1_048_576
    #: Seconds without activity after which an active session becomes idle.
    idle_after_seconds: _PositiveFloat = 300.0
    #: Minutes a session may stay idle before it is terminated (reason ``timeout``); 0 disables.
    timeout_minutes: _NonNegativeFloat = 30.0
    #: Keep the session in the durable store (no effect with the memory store).
    persistence_enabled: bool = True
    #: Worker restarts allowed within ``max_restart_seconds`` before the session is terminated.
    max_restarts: _NonNegativeInt = 3
    max_restart_seconds: _PositiveFloat = 5.0
    #: Feature flags by name, for extensions.
    features: dict[str, bool] = {}
    #: The agent: model calls per turn at most (each round of tool calls takes one); past it the
    #: turn stops with an ``error`` event and ``LimitExceeded('max_iterations')``.
    max_iterations: _PositiveInt = 10
    #: What a chat (or a user message) does while a turn runs: wait its turn (``queue``), fail
    #: with ``SessionBusy`` (``reject``), or cancel the running turn first (``interrupt``).
    concurrent_turn_policy: Literal["queue", "reject", "interrupt"] = "queue"
    #: Whether the agent's tools may write files: ``False``, ``True``, or ``"ask"`` (each write
    #: emits ``approval_requested`` and waits for ``approve()``; no answer in time denies).
    allow_write: bool | Literal["ask"] = False
    approval_timeout_seconds: _PositiveFloat = 300.0
    #: Seconds one tool call may take (its blocking work runs off the event loop).
    tool_timeout_seconds: _PositiveFloat = 30.0
    #: Turns that may wait behind the running one (policy ``queue``); one more raises
    #: ``LimitExceeded('max_queued_turns')``. Each waiting turn holds its text in memory.
    max_queued_turns: _PositiveInt = 16

    @classmethod
    def from_dict(
        cls, data: object, *, session_id: str | None = None, base: SessionConfig | None = None
    ) -> SessionConfig:
        """Validate a mapping into a config; missing fields come from ``base`` (or the defaults).

        Accepts the output of :meth:`to_dict`, including its ``schema_version``.
        """
        if data is None:
            return base if base is not None else cls()
        if isinstance(data, SessionConfig):
            return data.validated(session_id=session_id)
        if not isinstance(data, dict):
            raise InvalidConfig(
                f"config must be a mapping, got {type(data).__name__}",
                field="config",
                session_id=session_id,
            )
        fields = dict(data)
        version = fields.pop("schema_version", CONFIG_SCHEMA_VERSION)
        if version != CONFIG_SCHEMA_VERSION:
            raise InvalidConfig(
                f"unsupported config schema_version {version!r} (this version reads "
                f"{CONFIG_SCHEMA_VERSION})",
                field="schema_version",
                session_id=session_id,
            )
        if base is not None and fields:
            merged = msgspec.structs.asdict(base)
            merged.update(fields)
            fields = merged
        elif base is not None:
            return base
        return convert_or_raise(fields, cls, session_id=session_id)

    def validated(self, *, session_id: str | None = None) -> SessionConfig:
        """This config if every field is within bounds, else :class:`InvalidConfig`."""
        convert_or_raise(msgspec.to_builtins(self), SessionConfig, session_id=session_id)
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping with ``schema_version``, the inverse of :meth:`from_dict`."""
        out: dict[str, Any] = {"schema_version": CONFIG_SCHEMA_VERSION}
        out.update(msgspec.to_builtins(self))
        return out


_CeilingInt = Annotated[int, msgspec.Meta(ge=1)] | None
_CeilingFloat = Annotated[float, msgspec.Meta(gt=0)] | None


class SessionCeilings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The largest value a session's config may give each of its limits: the operator's bound
    on what one client can make the runtime hold (memory, disk, time) through ``create_session``.

    One field per numeric :class:`SessionConfig` field, of the same name (``features``: how
    many flags). ``None`` lifts a ceiling. ``timeout_minutes`` 0 ("never") is always accepted:
    what idle sessions hold is bounded by ``max_sessions``, not by their timeout.
    """

    max_history: _CeilingInt = 10_000
    max_files: _CeilingInt = 1_000
    max_file_bytes: _CeilingInt = 16 * 1_048_576
    max_message_bytes: _CeilingInt = 4 * 1_048_576
    max_index_entries: _CeilingInt = 100_000
    max_working_context_bytes: _CeilingInt = 16 * 1_048_576
    idle_after_seconds: _CeilingFloat = 86_400.0
    timeout_minutes: _CeilingFloat = 10_080.0
    max_restarts: _CeilingInt = 100
    max_restart_seconds: _CeilingFloat = 3_600.0
    features: _CeilingInt = 64
    max_iterations: _CeilingInt = 100
    approval_timeout_seconds: _CeilingFloat = 86_400.0
    tool_timeout_seconds: _CeilingFloat = 3_600.0
    max_queued_turns: _CeilingInt = 256

    @classmethod
    def from_dict(cls, data: object) -> SessionCeilings:
        """Validate a mapping into ceilings; fields left out keep their defaults."""
        if isinstance(data, SessionCeilings):
            return data
        if not isinstance(data, dict):
            raise InvalidConfig(
                f"session ceilings must be a mapping, got {type(data).__name__}",
                field="session_ceilings",
            )
        return convert_or_raise(dict(data), cls)

    def check(self, config: SessionConfig, *, session_id: str | None = None) -> SessionConfig:
        """``config`` if every limit is within its ceiling, else :class:`InvalidConfig` naming
        the field, its value and the ceiling."""
        for name in self.__struct_fields__:
            ceiling: int | float | None = getattr(self, name)
            if ceiling is None:
                continue
            value = getattr(config, name)
            if name == "features":
                if len(value) > ceiling:
                    raise InvalidConfig(
                        f"config field 'features' has {len(value)} flags; this runtime allows "
                        f"at most {ceiling}",
                        field=name,
                        session_id=session_id,
                    )
                continue
            if name == "timeout_minutes" and value == 0:
                continue  # "never": see the class docstring
            if value > ceiling:
                raise InvalidConfig(
                    f"config field {name!r} is {value!r}, above this runtime's ceiling of "
                    f"{ceiling!r}",
                    field=name,
                    session_id=session_id,
                )
        return config


_T = TypeVar("_T")
_AT_PATH = re.compile(r"- at (?:`key` in )?`\$\.?([^`]*)`$")
_UNKNOWN = re.compile(r"unknown field `([^`]*)`")


def convert_or_raise(data: dict[str, Any], kind: type[_T], *, session_id: str | None = None) -> _T:
    """``msgspec.convert`` that turns a validation error into :class:`InvalidConfig`.

    The error's ``field`` is the dotted path msgspec reports (``features.x``), so callers and
    HTTP clients learn exactly which field was wrong.
    """
    try:
        return msgspec.convert(data, kind, strict=True)
    except msgspec.ValidationError as exc:
        text = str(exc)
        unknown = _UNKNOWN.search(text)
        at = _AT_PATH.search(text)
        if unknown:
            field = unknown.group(1)
        elif at and at.group(1):
            field = at.group(1)
        else:
            field = kind.__name__
        raise InvalidConfig(
            f"invalid {kind.__name__} field {field!r}: {text}", field=field, session_id=session_id
        ) from None
