"""The in-process client: the public API of blueprint §5.

A :class:`Client` is a thin facade over the runtime's session manager: it validates arguments,
names the session in every error, and opens spans. It holds no state of its own, so any number
of them can share a runtime; get one from :attr:`jidoka.Runtime.client`. ``RemoteClient`` has
the same methods over HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from ._client_runs import RunMethods
from .bus.base import EventBus, Subscription
from .config import LLMConfig
from .errors import InvalidArgument, SessionBusy, SessionNotFound, SessionTerminated
from .events import Event
from .llm.agents import AgentPool
from .llm.orchestrator import ChatResult
from .runs.service import Runs
from .scoped import ScopedClient
from .session.branching import Rewound
from .session.context import CONTEXT_PARTS, ContextBundle
from .session.info import SessionInfo
from .session.inputs import DEFAULT_KEEP_LAST, check_instructions, check_keep_last
from .session.manager import REASON_REQUESTED, SessionManager
from .session.state import ActiveFile, FileIndexEntry, Message
from .store.base import SavedSession
from .wire import ClusterNode as ClusterNodeInfo
from .wire import ClusterStatus, Compacted

if TYPE_CHECKING:
    from .cluster.node import ClusterNode

__all__ = ["Client"]


class Client(RunMethods):
    """Create, drive and watch sessions of one runtime."""

    __slots__ = ("_agents", "_bus", "_manager", "_node", "_runs")

    def __init__(
        self,
        manager: SessionManager,
        bus: EventBus,
        agents: AgentPool,
        runs: Runs,
        node: ClusterNode | None = None,
    ) -> None:
        self._manager = manager
        self._bus = bus
        self._agents = agents
        self._runs = runs
        self._node = node

    def scoped(self, principal: str | None, *, projects_dir: str | None = None) -> ScopedClient:
        """This client as ``principal`` may use it: only its own sessions are visible, and the
        sessions it creates are its own (what the server runs each request on). ``None`` is
        the anonymous principal, which sees every session. ``projects_dir`` confines the
        ``project_root`` of the sessions it creates."""
        return ScopedClient(self, self._manager, principal, projects_dir=projects_dir)

    # --- lifecycle ------------------------------------------------------------------------------

    async def create_session(
        self,
        *,
        metadata: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        llm_config: dict[str, Any] | None = None,
        project_root: str | None = None,
        owner: str | None = None,
    ) -> str:
        """Create a session and return its id. ``config`` overrides the runtime's session
        defaults field by field; ``project_root`` (a directory) is where its files live;
        ``owner`` names the principal it belongs to (the server sets it from the caller's
        token and shows each principal only its own sessions)."""
        if isinstance(llm_config, dict) and llm_config:
            LLMConfig.from_dict(llm_config)  # a typo fails now, not at the first chat
        return await self._manager.create(
            metadata=metadata,
            config=config,
            llm_config=llm_config,
            project_root=project_root,
            owner=owner,
        )

    async def get_session_info(self, session_id: str) -> SessionInfo:
        """The session's description; also answers for terminated sessions (tombstones)."""
        return await self._manager.info(session_id)

    async def list_sessions(
        self,
        status: str | None = None,
        *,
        limit: int | None = None,
        after: str | None = None,
        owner: str | None = None,
    ) -> list[SessionInfo]:
        """Sessions in creation order, optionally only those with ``status`` (or ``owner``);
        page with ``after`` (the last id of the previous page) and ``limit``."""
        return await self._manager.list_sessions(status, limit=limit, after=after, owner=owner)

    async def terminate_session(
        self, session_id: str, *, reason: str = REASON_REQUESTED
    ) -> SessionInfo:
        """Terminate a session: its workers are awaited, its subscriptions end after the final
        events, and a tombstone remains. Terminating it again raises ``InvalidTransition``."""
        return await self._manager.terminate(session_id, reason=reason)

    async def purge_session(self, session_id: str) -> None:
        """Remove everything stored for a session: a live one is terminated first (reason
        ``purged``), then its log, snapshots, saved copy and head are deleted and its tombstone
        and cache entries dropped; ``session_purged`` goes out on the global stream. Afterwards
        :meth:`get_session_info` raises ``SessionNotFound``, as does a second purge."""
        await self._manager.retention.purge(session_id)

    # --- saved sessions -------------------------------------------------------------------------

    async def save_session(self, session_id: str) -> SavedSession:
        """Write a named, self-contained copy of the session (config, metadata, llm_config,
        project_root, history, files, index, working context) that outlives termination."""
        return await self._manager.save(session_id)

    async def restore_session(self, session_id: str) -> SessionInfo:
        """Bring a saved session back as a live session with the same id (``SessionExists``
        if that id is live)."""
        return await self._manager.restore(session_id)

    async def list_saved_sessions(self, *, owner: str | None = None) -> list[SavedSession]:
        """Saved copies: ``session_id``, ``saved_at``, ``message_count``, ``metadata``,
        ``owner``; optionally only those of ``owner``."""
        return await self._manager.list_saved(owner)

    async def cluster_status(self) -> ClusterStatus:
        """The nodes of the cluster this runtime is a node of (their addresses, whether their
        leases are valid, how many sessions each owns); no nodes on a single node."""
        self._manager.check_open()
        node = self._node
        if node is None:
            return ClusterStatus(node_id=None, lease_ttl=None, nodes=[])
        rows = await node.nodes()
        return ClusterStatus(
            node_id=node.node_id,
            lease_ttl=node.membership.ttl,
            nodes=[
                ClusterNodeInfo(
                    node_id=row.node_id,
                    advertise_url=row.advertise_url,
                    state=row.state,
                    alive=row.alive,
                    started_at=row.started_at,
                    heartbeat_at=row.heartbeat_at,
                    heartbeat_age=round(row.heartbeat_age, 3),
                    owned_sessions=row.owned,
                )
                for row in rows
            ],
        )

    async def delete_saved_session(self, session_id: str) -> None:
        """Delete a saved copy (``SessionNotFound`` if there is none)."""
        await self._manager.delete_saved(session_id)

    # --- history --------------------------------------------------------------------------------

    async def fork_session(
        self,
        session_id: str,
        *,
        at_seq: int | None = None,
        metadata: dict[str, Any] | None = None,
        owner: str | None = None,
    ) -> str:
        """A new session whose conversation, files, index, working context, config,
        llm_config and project_root are the source's at ``at_seq`` (default: its last seq);
        returns its id. The source is unchanged; a terminated one is read from its stored log.
        ``metadata`` replaces the source's; ``owner`` names the fork's principal. A turn that
        was running at that seq is closed in the fork (``agent_status: cancelled``, reason
        ``forked``)."""
        return await self._manager.branching.fork(
            session_id, at_seq=at_seq, metadata=metadata, owner=owner
        )

    async def rewind_session(
        self, session_id: str, *, to_seq: int, cancel: bool = False
    ) -> Rewound:
        """Make the session's projection (history, files, index, working context) what it was
        at ``to_seq``; the log keeps every event, and a ``session_rewound`` event records it.
        ``SessionBusy`` while a turn runs, unless ``cancel``, which stops it (and drops queued
        turns) first. Files on disk are not changed: the answer's ``touched_paths`` are those
        the rewound range's tools wrote."""
        session = await self._manager.session(session_id)
        sid = session.session_id
        agent = self._agents.get(sid)
        if agent is not None and agent.busy:
            if not cancel:
                raise SessionBusy(sid)
            await agent.stop_all()

        def busy() -> bool:
            current = self._agents.get(sid)
            return current is not None and current.busy

        return await self._manager.branching.rewind(sid, to_seq, busy)

    # --- the agent ------------------------------------------------------------------------------

    async def chat(self, session_id: str, text: str) -> ChatResult:
        """Run one agent turn: append ``text`` as a user message, let the model answer (calling
        tools on the project as it needs), return the final assistant message with its usage.

        Progress streams as events while it runs. Cancelling this call does not stop the turn
        (it belongs to the session); :meth:`cancel` does.
        """
        with self._manager.telemetry.span(
            "chat", session_id if isinstance(session_id, str) else None
        ):
            return await self._runs.chat(session_id, text)

    async def submit_chat(self, session_id: str, text: str) -> asyncio.Future[ChatResult]:
        """Queue one agent turn and return as soon as it is queued, with a future of what
        :meth:`chat` would return: for callers that answer before the turn ends (the HTTP API's
        202). A turn that cannot be queued raises here (``SessionBusy``, ``LimitExceeded``
        past ``max_queued_turns``), so the caller can say so."""
        return await self._runs.submit(session_id, text)

    async def cancel(self, session_id: str) -> bool:
        """Stop the session's running turn (its partial answer is kept, marked interrupted);
        ``False`` if no turn was running."""
        session = await self._manager.session(session_id)
        agent = self._agents.get(session.session_id)
        return agent.cancel() if agent is not None else False

    async def approve(self, session_id: str, call_id: str, allow: bool = True) -> None:
        """Answer an ``approval_requested`` event: let the write happen, or not."""
        session = await self._manager.session(session_id)
        agent = self._agents.get(session.session_id)
        if agent is None:
            raise InvalidArgument(
                f"no write is waiting for approval under call id {call_id!r}",
                argument="call_id",
                session_id=session.session_id,
            )
        agent.approve(call_id, allow)

    # --- conversation ---------------------------------------------------------------------------

    async def send_message(
        self,
        session_id: str,
        role: str,
        content: str,
        *,
        idempotency_key: str | None = None,
    ) -> Message:
        """Append a message (``user``, ``assistant`` or ``system``); returns it with its seq.

        A user message that arrives while the agent runs a turn follows the session's
        ``concurrent_turn_policy`` (wait for the turn, ``SessionBusy``, or interrupt it). A
        retry with the same ``idempotency_key`` (within 24 hours) returns the first message
        instead of sending it again."""
        if role == "user" and self._agents.get(session_id) is not None:
            await self._agents.before_user_message(await self._manager.session(session_id))
        if idempotency_key is not None:
            return await self._runs.send_message(session_id, role, content, idempotency_key)
        message: Message = await self._manager.run(
            session_id, "send_message", lambda s: s.send_message(role, content)
        )
        return message

    async def get_conversation_history(self, session_id: str, view: str = "full") -> list[Message]:
        """The messages in the session's window (the newest ``max_history``), oldest first.

        ``view="compacted"``: what the model sees of them since the latest compaction (its
        summary as a leading ``system`` message, then the messages after it); ``full`` (the
        default) shows every message, compacted or not."""
        return (await self._manager.session(session_id)).history(view)

    async def compact_session(
        self,
        session_id: str,
        *,
        instructions: str | None = None,
        keep_last: int = DEFAULT_KEEP_LAST,
    ) -> Compacted:
        """Summarise the conversation before its newest ``keep_last`` messages with the
        session's own model (``instructions`` tell it what to keep), so the context carries
        the summary and those messages from now on. The log and the full history keep every
        message. ``SessionBusy`` while a turn runs; ``InvalidArgument`` if there is nothing
        to summarise; a failed summary raises (``LLMError``) and changes nothing but an
        ``error`` event."""
        sid = session_id if isinstance(session_id, str) else repr(session_id)
        keep = check_keep_last(keep_last, sid)
        text = check_instructions(instructions, sid)
        session = await self._manager.session(session_id)
        with self._manager.telemetry.span("compact_session", session.session_id):
            event = await self._agents.compact(session, keep, text)
        data = event.data
        return Compacted(
            seq=event.seq,
            summary=data["summary"],
            first_seq=data["first_seq"],
            last_seq=data["last_seq"],
            tokens_before=data["tokens_before"],
            tokens_after=data["tokens_after"],
        )

    async def clear_conversation(self, session_id: str) -> int:
        """Empty the history; returns how many messages it held."""
        count: int = await self._manager.run(
            session_id, "clear_conversation", lambda s: s.clear_conversation()
        )
        return count

    # --- files ----------------------------------------------------------------------------------

    async def add_file(self, session_id: str, path: str) -> ActiveFile:
        """Make a file under the session's project root active (and index it)."""
        active: ActiveFile = await self._manager.run(
            session_id, "add_file", lambda s: s.add_file(path)
        )
        return active

    async def remove_file(self, session_id: str, path: str) -> bool:
        """Remove an active file; ``False`` if it was not active. Its index entry stays."""
        removed: bool = await self._manager.run(
            session_id, "remove_file", lambda s: s.remove_file(path)
        )
        return removed

    async def get_active_files(self, session_id: str) -> list[ActiveFile]:
        return (await self._manager.session(session_id)).active_files()

    async def get_file_index(self, session_id: str) -> list[FileIndexEntry]:
        return (await self._manager.session(session_id)).file_index()

    async def update_file_index(
        self, session_id: str, path: str, fields: dict[str, Any]
    ) -> FileIndexEntry:
        """Merge ``fields`` into a file's index entry (``language``, ``line_count``, ``size``,
        ``mtime``, ``last_accessed``; any other key is kept in ``extra``)."""
        entry: FileIndexEntry = await self._manager.run(
            session_id, "update_file_index", lambda s: s.update_file_index(path, fields)
        )
        return entry

    # --- working context ------------------------------------------------------------------------

    async def put_working_context(self, session_id: str, key: str, value: Any) -> None:
        """Store a JSON value under ``key`` (a private copy is kept)."""
        await self._manager.run(
            session_id, "put_working_context", lambda s: s.put_working_context(key, value)
        )

    async def get_working_context(
        self, session_id: str, key: str | None = None, default: Any = None
    ) -> Any:
        """The value under ``key`` (``default`` if absent), or the whole mapping if no key."""
        return (await self._manager.session(session_id)).working_context(key, default)

    async def delete_working_context(self, session_id: str, key: str) -> bool:
        """Remove ``key``; ``False`` if it was not there."""
        deleted: bool = await self._manager.run(
            session_id, "delete_working_context", lambda s: s.delete_working_context(key)
        )
        return deleted

    async def build_context(
        self,
        session_id: str,
        include: Iterable[str] = CONTEXT_PARTS,
        max_tokens: int | None = None,
    ) -> ContextBundle:
        """Pack conversation, file excerpts, index and working context within ``max_tokens``
        (see :func:`jidoka.session.context.build_context` for the order)."""
        session = await self._manager.session(session_id)
        with self._manager.telemetry.span("build_context", session.session_id):
            return await session.build_context(include, max_tokens)

    # --- events ---------------------------------------------------------------------------------

    async def read_events(
        self, session_id: str, *, after_seq: int = 0, limit: int = 100
    ) -> list[Event]:
        """Up to ``limit`` of the session's stored events after ``after_seq``, oldest first.

        The log itself, page by page, for a client that catches up or audits without holding
        a stream open; a terminated session's history stays readable where the store keeps
        logs (SQLite; the memory store frees them). A page is bounded in bytes too
        (``subscriber_page_bytes``), so it may hold fewer than ``limit``: read on from the last
        event's ``seq`` until a page comes back empty.
        """
        for name, value, low in (("after_seq", after_seq, 0), ("limit", limit, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InvalidArgument(
                    f"{name} must be an integer >= {low}, got {value!r}",
                    argument=name,
                    session_id=session_id if isinstance(session_id, str) else None,
                )
        manager = self._manager
        if manager.clustered and isinstance(session_id, str) and not manager.is_live(session_id):
            # A node of a cluster reads the log it does not hold without taking the session.
            await manager.owner_of(session_id)  # SessionNotFound if there is none
            sid = session_id
        else:
            sid = (await manager.info(session_id)).session_id
        return await manager.services.store.read_events(
            sid,
            after_seq=after_seq,
            limit=limit,
            max_bytes=self._manager.settings.subscriber_page_bytes,
        )

    @asynccontextmanager
    async def subscribe_to_session(
        self, session_id: str, *, after_seq: int | None = None
    ) -> AsyncIterator[Subscription]:
        """Every event of one session, as an async iterator; leaving the block unsubscribes.

        With ``after_seq``, stored events after it are replayed first (no gap, no repeat). A
        session that has ended meanwhile still has those to tell: the stream replays what the
        store holds after ``after_seq`` and ends (without a position, there is nothing to wait
        for and ``SessionTerminated`` is raised), as the HTTP event stream does.
        """
        if after_seq is not None and (
            not isinstance(after_seq, int) or isinstance(after_seq, bool) or after_seq < 0
        ):
            raise InvalidArgument(
                f"after_seq must be a non-negative integer, got {after_seq!r}",
                argument="after_seq",
                session_id=session_id,
            )
        manager = self._manager
        if manager.clustered and isinstance(session_id, str) and not manager.is_live(session_id):
            # A node of a cluster follows a session another node owns through the bus, from
            # the store's head: nothing is taken, and events come from the owner via Redis.
            stored = await manager.stored(session_id)
            if stored is None:
                raise SessionNotFound(session_id)
            if stored.status != "terminated":
                start = stored.last_seq if after_seq is None else after_seq
                async with self._bus.subscribe(session_id, after_seq=start) as subscription:
                    yield subscription
                return
        try:
            session = await self._manager.session(session_id)
        except SessionTerminated:
            if after_seq is None:
                raise
            services = self._manager.services
            store = services.store
            page_bytes = self._manager.settings.subscriber_page_bytes

            async def read(sid: str, after: int, limit: int) -> list[Event]:
                return await store.read_events(
                    sid, after_seq=after, limit=limit, max_bytes=page_bytes
                )

            yield Subscription.ended(
                session_id,
                after_seq=after_seq,
                reader=read,
                queue_size=self._manager.settings.subscriber_queue_size,
                now=services.clock.time,
            )
            return
        if after_seq is None and manager.clustered:
            # A position from the start: if the session moves to another node, its events
            # come over the bus, and a subscription with a position can see any gap in them.
            after_seq = session.state.seq
        async with self._bus.subscribe(session.session_id, after_seq=after_seq) as subscription:
            yield subscription

    @asynccontextmanager
    async def subscribe_to_all_sessions(self) -> AsyncIterator[Subscription]:
        """The lifecycle events (created, status, terminated) of every session."""
        self._manager.check_open()
        async with self._bus.subscribe(None) as subscription:
            yield subscription
