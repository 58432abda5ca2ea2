"""A session's history as the store holds it: the projection at any seq, and what a rewind or
a fork of it needs.

Every point in a session is addressed by its seq. The projection at seq ``k`` is the fold of the
log's events ``1..k``; a ``session_rewound`` among them is folded with the projection at *its*
``to_seq``, which is found the same way (a rewind always points back, so this ends). The fold
starts at the newest snapshot at or before the seq it needs when the store has one, so the
projection at ``k`` costs one snapshot plus the events after it, however long the log.

Nothing here writes: :class:`~.manager.SessionManager` commits the rewind (``session_rewound``)
or the fork (a new session whose ``session_created`` carries the projection).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Final

import msgspec

from ..errors import JidokaError, StoreError
from ..events import Event, EventType
from ..store.base import SessionStore
from .projection import apply_stored, rewind_to
from .snapshot import SnapshotError, decode_state
from .state import SessionState

__all__ = ["WRITING_TOOLS", "project", "touched_paths"]

logger = logging.getLogger("jidoka.history")

#: The tools whose calls change files on disk (what a rewind names and leaves alone).
WRITING_TOOLS: Final = frozenset({"write_file", "edit_file"})

#: Events read from the store at once while folding (and about this many bytes).
_PAGE: Final = 1_000
_PAGE_BYTES: Final = 1 << 20


class _PathArgument(msgspec.Struct):
    path: str | None = None


_path_of: Final = msgspec.json.Decoder(_PathArgument).decode


async def project(
    store: SessionStore, session_id: str, *, upto: int | None = None
) -> tuple[SessionState, int]:
    """The session's projection at seq ``upto`` (its last seq if ``None``), and the seq of the
    snapshot the fold started from (0: none).

    Raises :class:`~jidoka.StoreError` if the store cannot be read and ``ValueError`` (or the
    error a corrupt event raises) if the log cannot be folded: the caller says which session.
    A snapshot that cannot be decoded is skipped (the log is folded from its start instead).
    """
    state: SessionState | None = None
    snapshot_seq = 0
    try:
        snapshot = await store.read_snapshot(session_id, at_most=upto)
    except StoreError as exc:
        logger.warning("session %s: snapshot unreadable (%s); folding its log", session_id, exc)
        snapshot = None
    if snapshot is not None:
        try:
            state = decode_state(snapshot[1], session_id=session_id)
            snapshot_seq = state.seq
        except SnapshotError as exc:
            logger.warning("session %s: %s; folding its whole log", session_id, exc)
    if state is None:
        state = SessionState(session_id)
    ended = False
    while not ended and (upto is None or state.seq < upto):
        if upto is None:
            # The tail after the snapshot (about ``snapshot_interval`` events at most), in one
            # read: a load is on the path of every takeover, so it costs one query, not two.
            page = await store.read_events(session_id, after_seq=state.seq)
            ended = True
        else:
            page = await store.read_events(
                session_id,
                after_seq=state.seq,
                limit=min(_PAGE, upto - state.seq),
                max_bytes=_PAGE_BYTES,
            )
            ended = not page
        for event in page:
            if upto is not None and event.seq > upto:
                if state.seq:  # past a gap of dropped stream chunks (they changed nothing)
                    state.seq = upto
                ended = True
                break
            if event.type == EventType.SESSION_REWOUND:
                target, _ = await project(store, session_id, upto=event.data["to_seq"])
                rewind_to(state, event, target)
            else:
                apply_stored(state, event)  # past gaps of dropped stream chunks
    if upto is not None and state.seq != upto:
        raise ValueError(
            f"session {session_id!r}: the log ends at seq {state.seq}, before seq {upto}"
        )
    return state, snapshot_seq


def touched_paths(events: Iterable[Event]) -> list[str]:
    """The paths the ``write_file``/``edit_file`` calls among ``events`` wrote (those whose
    result is not an error), sorted, each once: what a rewind over them leaves on disk as it
    is."""
    asked: dict[str, str] = {}
    paths: set[str] = set()
    for event in events:
        data = event.data
        if event.type == EventType.TOOL_CALL and data.get("name") in WRITING_TOOLS:
            try:
                path = _path_of(data.get("arguments", ""))
            except (msgspec.DecodeError, msgspec.ValidationError, JidokaError):
                continue  # cut or malformed arguments: the call never ran
            if path.path:
                asked[data.get("call_id", "")] = path.path
        elif event.type == EventType.TOOL_RESULT and not data.get("is_error", True):
            path_written = asked.pop(data.get("call_id", ""), None)
            if path_written is not None:
                paths.add(path_written)
    return sorted(paths)
