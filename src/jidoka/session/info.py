"""What a client sees of a session (:class:`SessionInfo`) and what a terminated one leaves."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import msgspec

from ..config import SessionConfig
from .state import SessionState, Status

__all__ = ["SessionInfo", "Tombstone", "TokenUsage"]


class TokenUsage(msgspec.Struct, frozen=True, gc=False):
    """Tokens the session's agent used, summed over its turns.

    ``estimated`` is there (``True``) when some of the tokens were counted by the session's
    token counter instead of reported by the endpoint (a server that sends no usage, a
    cancelled or failed call); it is left out otherwise, so the measured case reads as before.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    estimated: bool | msgspec.UnsetType = msgspec.UNSET


_NO_USAGE: Final = TokenUsage()


class SessionInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A session's public description (blueprint §5), plus ``reason`` and ``project_root``."""

    session_id: str
    status: Status
    created_at: datetime
    updated_at: datetime
    metadata: dict[str, Any]
    config: SessionConfig
    llm_config: dict[str, Any]
    conversation_count: int
    error: str | None = None
    #: Why it terminated (``requested``, ``timeout``, ``error`` ...); ``None`` while live.
    reason: str | None = None
    project_root: str | None = None
    #: The principal that owns it (the server's access control); ``None`` when created in process.
    owner: str | None = None
    #: The agent's cumulative token usage (``prompt_tokens``, ``completion_tokens``,
    #: ``total_tokens``); zeros before the first turn.
    usage: TokenUsage = msgspec.field(default_factory=lambda: TokenUsage())

    @classmethod
    def of(cls, state: SessionState, *, terminating: bool = False) -> SessionInfo:
        """The description of ``state``; ``terminating``: a termination has begun (its workers
        are stopping) that the log does not hold yet, so the session reads ``terminating``."""
        assert state.created_at is not None
        assert state.updated_at is not None
        status = state.status
        if terminating and status in (Status.ACTIVE, Status.IDLE):
            status = Status.TERMINATING
        return cls(
            session_id=state.session_id,
            status=status,
            created_at=state.created_at,
            updated_at=state.updated_at,
            metadata=state.metadata,
            config=state.config,
            llm_config=state.llm_config,
            conversation_count=state.conversation_count,
            error=state.error,
            reason=state.reason,
            project_root=state.project_root,
            owner=state.owner,
            usage=(
                TokenUsage(*state.usage, estimated=True if state.usage_estimated else msgspec.UNSET)
                if state.usage is not None
                else _NO_USAGE
            ),
        )


class Tombstone:
    """What stays of a terminated session: its description, not its contents.

    It references the metadata and configs the session already had (no copies) and drops the
    history, files, index and working context. The manager keeps a bounded number of them,
    oldest dropped first (``Settings.max_tombstones``).
    """

    __slots__ = ("info",)

    def __init__(self, state: SessionState) -> None:
        self.info = SessionInfo.of(state)
