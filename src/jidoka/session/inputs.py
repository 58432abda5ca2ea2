"""Checks of what a command is given, before anything is committed.

Step 1 of every command (see :mod:`.session`): input is validated against its bounds and the
current projection, so a refused command appends nothing, and what is kept is a private copy a
caller cannot change afterwards. These checks are pure functions of their arguments (no lock,
no I/O), kept apart from the commands so each command reads as its path through the lock and the
log; each error names the session and the argument it is about.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from ..errors import InvalidArgument, LimitExceeded
from .context import CONTEXT_PARTS
from .state import SessionState, json_size

__all__ = [
    "DEFAULT_KEEP_LAST",
    "MAX_INSTRUCTIONS",
    "MAX_KEEP_LAST",
    "check_instructions",
    "check_keep_last",
    "MAX_KEY_CHARS",
    "check_include",
    "check_index_room",
    "check_key",
    "json_copy",
    "split_index_fields",
]

MAX_KEY_CHARS: Final = 256
_INDEX_FIELDS: Final = {
    "language": (str, type(None)),
    "line_count": (int,),
    "size": (int,),
    "mtime": (int, float),
    "last_accessed": (int, float, str),
}


def check_key(key: object, session_id: str) -> None:
    """A working-context key: a string of 1 to :data:`MAX_KEY_CHARS` characters."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
        raise InvalidArgument(
            f"working-context key must be a string of 1 to {MAX_KEY_CHARS} characters, "
            f"got {key!r:.80}",
            argument="key",
            session_id=session_id,
        )


def check_include(include: object, session_id: str) -> frozenset[str]:
    """The context parts ``build_context`` is asked for, all of them known."""
    if isinstance(include, str) or not isinstance(include, Iterable):
        raise InvalidArgument(
            "include must be a collection of part names", argument="include",
            session_id=session_id,
        )  # fmt: skip
    parts = frozenset(include)
    unknown = parts - frozenset(CONTEXT_PARTS)
    if unknown:
        raise InvalidArgument(
            f"unknown context parts {sorted(map(str, unknown))}; expected a subset of "
            f"{list(CONTEXT_PARTS)}",
            argument="include",
            session_id=session_id,
        )
    return parts


def check_index_room(state: SessionState, key: str) -> None:
    """A new file index entry must fit under ``max_index_entries``."""
    index = state.index or {}
    limit = state.config.max_index_entries
    if key not in index and len(index) >= limit:
        raise LimitExceeded("max_index_entries", limit, session_id=state.session_id, path=key)


def json_copy(value: object, argument: str, session_id: str) -> Any:
    """A private JSON copy of ``value`` (so callers cannot mutate the projection later)."""
    try:
        return msgspec.json.decode(msgspec.json.encode(value))
    except (TypeError, ValueError, msgspec.EncodeError) as exc:
        raise InvalidArgument(
            f"{argument} is not JSON-serialisable: {exc}",
            argument=argument,
            session_id=session_id,
        ) from None


def split_index_fields(
    fields: dict[Any, Any], session_id: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A file index update's fields: the known ones checked (and ``last_accessed`` made a
    time), the others copied into ``extra`` (16 KiB of JSON at most)."""
    known: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, value in fields.items():
        if not isinstance(name, str):
            raise InvalidArgument(
                f"file index field names must be strings, got {name!r}",
                argument="fields",
                session_id=session_id,
            )
        kinds = _INDEX_FIELDS.get(name)
        if kinds is None:
            if name in ("path", "extra"):
                raise InvalidArgument(
                    f"file index field {name!r} cannot be set",
                    argument=f"fields.{name}",
                    session_id=session_id,
                )
            extra[name] = json_copy(value, f"fields.{name}", session_id)
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, kinds)
            or (isinstance(value, int | float) and value < 0)
        ):
            raise InvalidArgument(
                f"file index field {name!r} has an invalid value {value!r:.80}",
                argument=f"fields.{name}",
                session_id=session_id,
            )
        if name == "last_accessed":
            value = _to_datetime(value, session_id)
        known[name] = value
    if json_size(extra) > 16_384:
        raise LimitExceeded("file_index_extra_bytes", 16_384, session_id=session_id)
    return known, extra


def _to_datetime(value: object, session_id: str) -> datetime:
    try:
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        assert isinstance(value, int | float)
        return datetime.fromtimestamp(value, UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise InvalidArgument(
            f"last_accessed is not a time: {exc}",
            argument="fields.last_accessed",
            session_id=session_id,
        ) from None


# --- compaction (issue 17; the compaction itself is jidoka.llm.compaction) ---

#: Messages a compaction keeps as they are unless told otherwise (the newest ones).
DEFAULT_KEEP_LAST: Final = 4
#: The most ``keep_last`` accepted (a larger one could never leave anything to summarise that
#: a history window holds).
MAX_KEEP_LAST: Final = 100_000
#: The longest ``instructions`` accepted (characters).
MAX_INSTRUCTIONS: Final = 4096


def check_keep_last(keep_last: object, session_id: str) -> int:
    """``keep_last`` as given, or ``InvalidArgument`` naming it and the session."""
    if (
        not isinstance(keep_last, int)
        or isinstance(keep_last, bool)
        or not 0 <= keep_last <= MAX_KEEP_LAST
    ):
        raise InvalidArgument(
            f"keep_last must be an integer from 0 to {MAX_KEEP_LAST}, got {keep_last!r:.40}",
            argument="keep_last",
            session_id=session_id,
        )
    return keep_last


def check_instructions(instructions: object, session_id: str) -> str | None:
    """``instructions`` (``None``, or a string of at most :data:`MAX_INSTRUCTIONS`)."""
    if instructions is None:
        return None
    if not isinstance(instructions, str) or len(instructions) > MAX_INSTRUCTIONS:
        raise InvalidArgument(
            f"instructions must be a string of at most {MAX_INSTRUCTIONS} characters or None",
            argument="instructions",
            session_id=session_id,
        )
    return instructions
