"""The client verbs as the network sees them: the in-process :class:`~jidoka.Client`'s methods,
scoped to a principal.

Both the HTTP routes and the WebSocket commands call these, so ownership is checked in exactly one
place: a session (or a saved copy) that belongs to another principal answers
:class:`~jidoka.SessionNotFound`, the same as one that does not exist, so ids cannot be probed.
With auth off there is one anonymous principal and every session is visible.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ..client import Client
from ..errors import InvalidArgument, JidokaError, SessionNotFound
from ..events import Event, EventType
from ..llm.orchestrator import ChatResult
from ..problems import KeyNotFound
from ..session.context import CONTEXT_PARTS, ActiveFile, ContextBundle, FileIndexEntry, Message
from ..session.info import SessionInfo
from ..session.manager import REASON_REQUESTED, SessionManager
from ..store.base import SavedSession
from ..tools.sandbox import ProjectRoot, resolve_project_root

__all__ = ["KeyNotFound", "Operations"]

_MISSING: Any = object()


class Operations:
    """One principal-scoped method per client verb."""

    __slots__ = ("_auth", "_projects_dir", "client", "manager")

    def __init__(
        self,
        client: Client,
        manager: SessionManager,
        *,
        auth_enabled: bool,
        projects_dir: str | None = None,
    ) -> None:
        self.client = client
        self.manager = manager
        self._auth = auth_enabled
        self._projects_dir = projects_dir

    async def _project_root(self, project_root: str | None) -> str | None:
        """``project_root`` confined to the server's projects directory, if it has one.

        Resolved once: the containment check and the canonical path come from the same
        resolution, confirmed by a walk that follows no link. The result is marked as checked
        (:class:`~jidoka.tools.sandbox.ProjectRoot`), so the manager re-checks it without
        resolving it again: a symlink swapped into its path in between is refused, not followed
        out of the projects directory."""
        if self._projects_dir is None or project_root is None:
            return project_root
        if not isinstance(project_root, str):
            raise InvalidArgument("project_root must be a string", argument="project_root")
        root = await asyncio.to_thread(
            resolve_project_root, project_root, within=self._projects_dir
        )
        return ProjectRoot(root)

    async def owned(self, principal: str | None, session_id: object) -> str:
        """``session_id`` if ``principal`` may use it, else :class:`SessionNotFound`."""
        if not isinstance(session_id, str):
            raise SessionNotFound(repr(session_id))
        if self._auth and await self.manager.owner_of(session_id) != principal:
            raise SessionNotFound(session_id)
        return session_id

    async def owned_saved(self, principal: str | None, session_id: object) -> str:
        if not isinstance(session_id, str):
            raise SessionNotFound(repr(session_id))
        if self._auth and await self.manager.saved_owner(session_id) != principal:
            raise SessionNotFound(session_id)
        return session_id

    def _owner(self, principal: str | None) -> str | None:
        return principal if self._auth else None

    # --- lifecycle ------------------------------------------------------------------------------

    async def create_session(
        self,
        principal: str | None,
        *,
        metadata: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        llm_config: dict[str, Any] | None = None,
        project_root: str | None = None,
    ) -> SessionInfo:
        sid = await self.client.create_session(
            metadata=metadata,
            config=config,
            llm_config=llm_config,
            project_root=await self._project_root(project_root),
            owner=self._owner(principal),
        )
        return await self.client.get_session_info(sid)

    async def get_session_info(self, principal: str | None, *, session_id: str) -> SessionInfo:
        return await self.client.get_session_info(await self.owned(principal, session_id))

    async def list_sessions(
        self,
        principal: str | None,
        *,
        status: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[SessionInfo]:
        return await self.client.list_sessions(
            status, limit=limit, after=after, owner=self._owner(principal)
        )

    async def terminate_session(
        self, principal: str | None, *, session_id: str, reason: str = REASON_REQUESTED
    ) -> SessionInfo:
        sid = await self.owned(principal, session_id)
        return await self.client.terminate_session(sid, reason=reason)

    async def save_session(self, principal: str | None, *, session_id: str) -> SavedSession:
        return await self.client.save_session(await self.owned(principal, session_id))

    async def restore_session(self, principal: str | None, *, session_id: str) -> SessionInfo:
        return await self.client.restore_session(await self.owned_saved(principal, session_id))

    async def list_saved_sessions(self, principal: str | None) -> list[SavedSession]:
        return await self.client.list_saved_sessions(owner=self._owner(principal))

    async def delete_saved_session(self, principal: str | None, *, session_id: str) -> None:
        await self.client.delete_saved_session(await self.owned_saved(principal, session_id))

    # --- conversation, files, context -------------------------------------------------------------

    async def send_message(
        self, principal: str | None, *, session_id: str, role: str, content: str
    ) -> Message:
        return await self.client.send_message(
            await self.owned(principal, session_id), role, content
        )

    async def get_conversation_history(
        self, principal: str | None, *, session_id: str
    ) -> list[Message]:
        return await self.client.get_conversation_history(await self.owned(principal, session_id))

    async def clear_conversation(self, principal: str | None, *, session_id: str) -> int:
        return await self.client.clear_conversation(await self.owned(principal, session_id))

    async def add_file(self, principal: str | None, *, session_id: str, path: str) -> ActiveFile:
        return await self.client.add_file(await self.owned(principal, session_id), path)

    async def remove_file(self, principal: str | None, *, session_id: str, path: str) -> bool:
        return await self.client.remove_file(await self.owned(principal, session_id), path)

    async def get_active_files(self, principal: str | None, *, session_id: str) -> list[ActiveFile]:
        return await self.client.get_active_files(await self.owned(principal, session_id))

    async def get_file_index(
        self, principal: str | None, *, session_id: str
    ) -> list[FileIndexEntry]:
        return await self.client.get_file_index(await self.owned(principal, session_id))

    async def update_file_index(
        self, principal: str | None, *, session_id: str, path: str, fields: dict[str, Any]
    ) -> FileIndexEntry:
        return await self.client.update_file_index(
            await self.owned(principal, session_id), path, fields
        )

    async def put_working_context(
        self, principal: str | None, *, session_id: str, key: str, value: Any
    ) -> None:
        await self.client.put_working_context(await self.owned(principal, session_id), key, value)

    async def get_working_context(
        self, principal: str | None, *, session_id: str, key: str | None = None
    ) -> Any:
        sid = await self.owned(principal, session_id)
        if key is None:
            return await self.client.get_working_context(sid)
        value = await self.client.get_working_context(sid, key, _MISSING)
        if value is _MISSING:
            raise KeyNotFound(sid, key)
        return value

    async def delete_working_context(
        self, principal: str | None, *, session_id: str, key: str
    ) -> bool:
        return await self.client.delete_working_context(
            await self.owned(principal, session_id), key
        )

    async def build_context(
        self,
        principal: str | None,
        *,
        session_id: str,
        include: Iterable[str] | None = None,
        max_tokens: int | None = None,
    ) -> ContextBundle:
        return await self.client.build_context(
            await self.owned(principal, session_id),
            CONTEXT_PARTS if include is None else include,
            max_tokens,
        )

    # --- the agent ------------------------------------------------------------------------------

    async def chat(self, principal: str | None, *, session_id: str, text: str) -> ChatResult:
        return await self.client.chat(await self.owned(principal, session_id), text)

    async def submit_chat(
        self, principal: str | None, *, session_id: str, text: str
    ) -> asyncio.Future[ChatResult]:
        return await self.client.submit_chat(await self.owned(principal, session_id), text)

    async def cancel(self, principal: str | None, *, session_id: str) -> bool:
        return await self.client.cancel(await self.owned(principal, session_id))

    async def approve(
        self, principal: str | None, *, session_id: str, call_id: str, allow: bool = True
    ) -> None:
        await self.client.approve(await self.owned(principal, session_id), call_id, allow)

    # --- event visibility -----------------------------------------------------------------------

    def visibility(self, principal: str | None) -> Callable[[Event], Awaitable[bool]]:
        """A filter for one global-stream subscriber: does this event belong to ``principal``?

        A ``session_created`` event names its owner (a restored one, inside its saved state),
        so the answer never depends on whether the session is registered yet; later events ask
        the manager once per session. Only a positive or a definite negative answer is kept.
        """
        if not self._auth:
            return _always
        known: dict[str, bool] = {}

        async def visible(event: Event) -> bool:
            sid = event.session_id
            if not sid:
                return True  # a loss marker of the stream itself
            mine = known.get(sid)
            if mine is None:
                if event.type == EventType.SESSION_CREATED:
                    data = event.data
                    state = data.get("state")
                    owner = state.get("owner") if isinstance(state, dict) else data.get("owner")
                    mine = owner == principal
                else:
                    try:
                        mine = await self.manager.owner_of(sid) == principal
                    except JidokaError:
                        return False  # not known (yet): decide again on its next event
                known[sid] = mine
            if event.type == EventType.SESSION_TERMINATED:
                known.pop(sid, None)
            return mine

        return visible


async def _always(event: Event) -> bool:
    return True
