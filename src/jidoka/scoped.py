"""A client scoped to one principal: what the server's routes and WebSocket ops run on.

The server shows each principal only its own sessions. :class:`ScopedClient` is the one place
that rule lives: a verb's :class:`~jidoka.verbs.Scope` says what it names, and
:meth:`ScopedClient.run` checks that before the verb runs. A session (or a saved copy) that
belongs to another principal answers :class:`~jidoka.SessionNotFound`, the same as one that does
not exist, so ids cannot be probed. The principal ``None`` is the anonymous one of a server
without auth: every session is visible to it and none is filtered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .errors import InvalidArgument, JidokaError, SessionNotFound
from .events import Event, EventType
from .tools.sandbox import ProjectRoot, resolve_project_root
from .verbs import Scope, Verb

if TYPE_CHECKING:
    from .client import Client
    from .session.manager import SessionManager

__all__ = ["ScopedClient"]


class ScopedClient:
    """``client`` as ``principal`` may use it; get one from :meth:`jidoka.Client.scoped`.

    ``projects_dir``, if given, confines the ``project_root`` of the sessions it creates (a
    server's ``--projects-dir``). Cheap to make: one per request or socket.
    """

    __slots__ = ("_manager", "_projects_dir", "client", "principal")

    def __init__(
        self,
        client: Client,
        manager: SessionManager,
        principal: str | None,
        *,
        projects_dir: str | None = None,
    ) -> None:
        self.client = client
        self._manager = manager
        self.principal = principal
        self._projects_dir = projects_dir

    @property
    def owner(self) -> str | None:
        """The ``owner`` a listing filters on (``None``: all, for the anonymous principal)."""
        return self.principal

    async def run(self, verb: Verb, args: Any) -> Any:
        """Run ``verb`` on ``args`` (its argument struct) once its scope allows it."""
        if verb.call is None:
            raise InvalidArgument(f"{verb.name} is not a client verb", argument="op")
        if verb.scope is Scope.SESSION:
            await self.owned(args.session_id)
        elif verb.scope is Scope.SAVED:
            await self.owned_saved(args.session_id)
        return await verb.call(self, args)

    async def owned(self, session_id: object) -> str:
        """``session_id`` if the principal may use it, else :class:`SessionNotFound`."""
        if not isinstance(session_id, str):
            raise SessionNotFound(repr(session_id))
        if self.principal is not None and await self._manager.owner_of(session_id) != (
            self.principal
        ):
            raise SessionNotFound(session_id)
        return session_id

    async def owned_saved(self, session_id: object) -> str:
        """``session_id`` if it names a saved copy of the principal's, else
        :class:`SessionNotFound`."""
        if not isinstance(session_id, str):
            raise SessionNotFound(repr(session_id))
        if self.principal is not None and await self._manager.saved_owner(session_id) != (
            self.principal
        ):
            raise SessionNotFound(session_id)
        return session_id

    async def create_session(
        self,
        *,
        metadata: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        llm_config: dict[str, Any] | None = None,
        project_root: str | None = None,
    ) -> str:
        """A session owned by the principal, its ``project_root`` within ``projects_dir``."""
        return await self.client.create_session(
            metadata=metadata,
            config=config,
            llm_config=llm_config,
            project_root=await self._project_root(project_root),
            owner=self.principal,
        )

    async def fork_session(
        self,
        session_id: str,
        *,
        at_seq: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """A fork of one of the principal's sessions, owned by the principal."""
        return await self.client.fork_session(
            session_id, at_seq=at_seq, metadata=metadata, owner=self.principal
        )

    async def _project_root(self, project_root: str | None) -> str | None:
        """``project_root`` confined to the projects directory, if there is one.

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

    def visibility(self) -> Callable[[Event], Awaitable[bool]]:
        """A filter for one global-stream subscriber: does this event belong to the principal?

        A ``session_created`` event names its owner (a restored one, inside its saved state),
        so the answer never depends on whether the session is registered yet; later events ask
        the manager once per session. Only a positive or a definite negative answer is kept.
        """
        if self.principal is None:
            return _always
        principal = self.principal
        manager = self._manager
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
                elif event.type == EventType.SESSION_PURGED:
                    # The session is gone (the manager cannot tell): the event names its owner.
                    return bool(event.data.get("owner") == principal)
                else:
                    try:
                        mine = await manager.owner_of(sid) == principal
                    except JidokaError:
                        return False  # not known (yet): decide again on its next event
                known[sid] = mine
            if event.type in (EventType.SESSION_TERMINATED, EventType.SESSION_PURGED):
                known.pop(sid, None)
            return mine

        return visible


async def _always(event: Event) -> bool:
    return True
