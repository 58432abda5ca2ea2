"""Saved sessions: named, self-contained copies a live session can be brought back from.

A saved copy is not the log: it is the projection at one moment, written apart from the live
sessions (the store keeps one per session id, a newer save replacing it), so it survives the
session's termination and the release of its log. Restoring one makes a live session with the
same id again, through the same commits as a creation (:class:`~.lifecycle.Lifecycle`), its
``session_created`` event carrying the saved state. The idle reaper saves a session before it
times out when its config asks for it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from ..errors import SessionExists, SessionNotFound
from ..payloads import SessionCreatedData, data_of
from ..store.base import SavedSession
from ..telemetry import Telemetry
from .info import SessionInfo
from .lifecycle import Lifecycle
from .persistence import CorruptSession, saved_copy
from .recovery import Recovery
from .registry import SessionRegistry
from .session import Session, SessionServices
from .snapshot import SnapshotError, decode_state, state_to_dict
from .spans import guarded_span
from .state import SessionState, Status

__all__ = ["SavedSessions"]


class SavedSessions:
    """Saves, restores, lists and deletes saved copies of sessions."""

    def __init__(
        self,
        services: SessionServices,
        telemetry: Telemetry,
        registry: SessionRegistry,
        lifecycle: Lifecycle,
        recovery: Recovery,
    ) -> None:
        self._services = services
        self._telemetry = telemetry
        self._registry = registry
        self._lifecycle = lifecycle
        self._recovery = recovery

    async def save(self, session: Session) -> SavedSession:
        """Write a named, self-contained copy of a live session (replacing an older one)."""
        with guarded_span(self._telemetry, "save_session", session.session_id):
            async with session.lock:
                session.ensure_writable()
                when = datetime.fromtimestamp(self._services.clock.time(), UTC)
                summary, state = saved_copy(session.state, when)
            await self._services.store.save(summary, state)
        return summary

    async def restore(self, session_id: object) -> SessionInfo:
        """Bring a saved session back as a live session with the same id."""
        registry = self._registry
        registry.check_open()
        if not isinstance(session_id, str):
            raise SessionNotFound(repr(session_id))
        if registry.known(session_id):
            raise SessionExists(session_id)
        store = self._services.store
        with guarded_span(self._telemetry, "restore_session", session_id):
            stored = await store.find_session(session_id)
            if stored is not None and stored.status != Status.TERMINATED.value:
                raise SessionExists(session_id)  # live in the store, not loaded here yet
            found = await store.load_saved(session_id)
            if found is None:
                raise SessionNotFound(session_id)
            summary, raw = found
            try:
                saved = decode_state(raw, session_id=session_id)
            except SnapshotError as exc:
                raise CorruptSession(str(exc), session_id=session_id) from exc
            registry.reserve()
            try:
                if registry.known(session_id):
                    raise SessionExists(session_id)
                state = SessionState(session_id)
                state.seq = await store.last_seq(session_id)
                session = Session(state, self._services)
                created = data_of(
                    SessionCreatedData(
                        status=Status.INITIALIZING.value,
                        restored_from=summary.saved_at.isoformat(),
                        state=state_to_dict(saved),
                    )
                )
            except BaseException:
                registry.unreserve()
                raise
            await self._lifecycle.open(session, created, None, f"jidoka:{session_id}:restore")
        rebuilding = self._recovery.rebuilding(session_id)
        if rebuilding is not None:  # an apply failed: answer with what the log says
            await asyncio.wait({rebuilding})
        return SessionInfo.of(session.state)

    async def list_saved(self, owner: str | None) -> list[SavedSession]:
        self._registry.check_open()
        saved = await self._services.store.list_saved()
        return saved if owner is None else [s for s in saved if s.owner == owner]

    async def owner_of(self, session_id: object) -> str | None:
        """The owner recorded in a saved copy; ``SessionNotFound`` if there is no copy."""
        self._registry.check_open()
        loaded = (
            await self._services.store.load_saved(session_id)
            if isinstance(session_id, str)
            else None
        )
        if loaded is None:
            raise SessionNotFound(session_id if isinstance(session_id, str) else repr(session_id))
        return loaded[0].owner

    async def delete(self, session_id: object) -> None:
        self._registry.check_open()
        if not isinstance(session_id, str) or not await self._services.store.delete_saved(
            session_id
        ):
            raise SessionNotFound(session_id if isinstance(session_id, str) else repr(session_id))
