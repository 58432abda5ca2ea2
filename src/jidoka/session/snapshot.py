"""A projection as bytes: for snapshots (fast loading) and saved sessions (save/restore).

The encoding is JSON with a ``format`` number, so a snapshot written by one version can be read
by the next (or refused clearly). Decoding validates everything: a corrupt snapshot raises
:class:`SnapshotError` rather than producing a half-built state.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import msgspec

from ..config import SessionConfig
from ..errors import JidokaError
from .state import (
    ActiveFile,
    Compaction,
    FileIndexEntry,
    Message,
    SessionState,
    Status,
    history_window,
    json_size,
)

__all__ = ["SNAPSHOT_FORMAT", "SnapshotError", "decode_state", "encode_state", "state_to_dict"]

SNAPSHOT_FORMAT: Final = 1


class SnapshotError(JidokaError):
    """A snapshot or saved session could not be decoded."""


class _Snapshot(msgspec.Struct, forbid_unknown_fields=True):
    format: int
    session_id: str
    seq: int
    status: Status
    created_at: datetime
    updated_at: datetime
    metadata: dict[str, Any]
    config: dict[str, Any]
    llm_config: dict[str, Any]
    project_root: str | None
    history: list[Message]
    files: list[ActiveFile]
    index: list[FileIndexEntry]
    working_context: dict[str, Any]
    reason: str | None = None
    error: str | None = None
    owner: str | None = None
    usage: tuple[int, int, int] | None = None
    usage_estimated: bool = False
    agent_status: str | None = None
    pending_approvals: list[str] = []
    #: Issue 17; absent from older snapshots (never compacted).
    compaction: Compaction | None = None
    #: Issue 18; absent from older snapshots (no run unfinished).
    runs: dict[str, str] = {}


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(_Snapshot)


def state_to_dict(state: SessionState) -> dict[str, Any]:
    """The projection as JSON-ready builtins (what :func:`encode_state` writes)."""
    builtins: dict[str, Any] = msgspec.to_builtins(_snapshot(state))
    return builtins


def _snapshot(state: SessionState) -> _Snapshot:
    assert state.created_at is not None
    assert state.updated_at is not None
    return _Snapshot(
        format=SNAPSHOT_FORMAT,
        session_id=state.session_id,
        seq=state.seq,
        status=state.status,
        created_at=state.created_at,
        updated_at=state.updated_at,
        metadata=state.metadata,
        config=state.config.to_dict(),
        llm_config=state.llm_config,
        project_root=state.project_root,
        history=state.messages(),
        files=list((state.files or {}).values()),
        index=list((state.index or {}).values()),
        working_context=dict(state.working_context or {}),
        reason=state.reason,
        error=state.error,
        owner=state.owner,
        usage=state.usage,
        usage_estimated=state.usage_estimated,
        agent_status=state.agent_status,
        pending_approvals=sorted(state.pending_approvals or ()),
        compaction=state.compaction,
        runs=dict(state.runs or {}),
    )


def encode_state(state: SessionState) -> bytes:
    return _encoder.encode(_snapshot(state))


def decode_state(raw: bytes | dict[str, Any], *, session_id: str | None = None) -> SessionState:
    """Rebuild a projection from :func:`encode_state`'s bytes (or :func:`state_to_dict`'s dict).

    ``session_id``, if given, must match the one recorded.
    """
    try:
        snap = msgspec.convert(raw, _Snapshot) if isinstance(raw, dict) else _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SnapshotError(f"corrupt session snapshot: {exc}", session_id=session_id) from None
    if snap.format != SNAPSHOT_FORMAT:
        raise SnapshotError(
            f"snapshot format {snap.format} is not supported (this version reads "
            f"{SNAPSHOT_FORMAT})",
            session_id=session_id,
        )
    if session_id is not None and snap.session_id != session_id:
        raise SnapshotError(
            f"snapshot belongs to session {snap.session_id!r}", session_id=session_id
        )
    state = SessionState(snap.session_id)
    state.seq = snap.seq
    state.status = snap.status
    state.created_at = snap.created_at
    state.updated_at = snap.updated_at
    state.metadata = snap.metadata
    state.config = SessionConfig.from_dict(snap.config, session_id=snap.session_id)
    state.llm_config = snap.llm_config
    state.project_root = snap.project_root
    if snap.history:
        state.history = history_window(snap.history, state.config.max_history)
    if snap.files:
        state.files = {f.path: f for f in snap.files}
    if snap.index:
        state.index = {e.path: e for e in snap.index}
    if snap.working_context:
        state.working_context = snap.working_context
        state.wc_sizes = {k: len(k) + json_size(v) for k, v in snap.working_context.items()}
    state.reason = snap.reason
    state.error = snap.error
    state.owner = snap.owner
    state.usage = snap.usage
    state.usage_estimated = snap.usage_estimated
    state.agent_status = snap.agent_status
    state.pending_approvals = set(snap.pending_approvals) or None
    state.compaction = snap.compaction
    state.runs = dict(snap.runs) or None
    return state
