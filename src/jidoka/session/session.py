"""A live session's commands and reads: what a client can ask of one session.

Each command checks its input (the checks that need no lock are in :mod:`.inputs`), takes the
session's lock, checks again against the projection, and commits its events through the one
commit path of :class:`~.core.SessionCore` (where the commit point and the post-commit section are
described). Reads answer from the projection.

Blocking work (reading files) happens in a worker thread *before* the lock is taken.

A command from a client is *activity*: it records the time (the idle timer looks at it lazily)
and brings an idle session back to ``active`` with a ``session_status`` event first.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from ..errors import (
    InvalidArgument,
    InvalidRole,
    JidokaError,
    LimitExceeded,
    PathNotAllowed,
    SessionBusy,
)
from ..events import Event, EventType
from ..payloads import (
    AgentStatusData,
    ContextCompactedData,
    ConversationAddedData,
    ConversationClearedData,
    FileAddedData,
    FileIndexUpdatedData,
    FileRemovedData,
    WorkingContextUpdatedData,
    event_item,
)
from ..tools import reading as _files
from ..tools.sandbox import Sandbox
from .context import ContextBundle, TokenCounter, build_context
from .core import SessionCore
from .inputs import check_include, check_index_room, check_key, json_copy, split_index_fields
from .services import SessionServices
from .state import ROLES, ActiveFile, Compaction, FileIndexEntry, Message, Status, json_size

__all__ = ["CompactionConflict", "Session", "SessionServices"]

#: What ``get_conversation_history`` can show: every message of the window, or what the model
#: sees of it since a compaction (the summary, then the messages after it).
HISTORY_VIEWS = ("full", "compacted")


class CompactionConflict(SessionBusy):
    """The conversation changed under a compaction (cleared, rewound, compacted by another
    caller) while its summary was being made: nothing was stored; try again. Travels as
    :class:`~jidoka.SessionBusy` (409)."""

    def __init__(self, session_id: str) -> None:
        JidokaError.__init__(
            self,
            f"session {session_id!r}: the conversation changed while it was being compacted; "
            "nothing was stored, try again",
            session_id=session_id,
        )


class Session(SessionCore):
    """One live session, created and retired by the session manager. Its state and commit path
    are :class:`~.core.SessionCore`'s; what is here is what clients ask of it."""

    __slots__ = ()

    # --- commands -------------------------------------------------------------------------------

    async def send_message(
        self, role: object, content: object, idempotency: tuple[str, str] | None = None
    ) -> Message:
        """Append a message; ``idempotency`` is the ``(key, request digest)`` it was sent
        with, recorded in its event (see :mod:`jidoka.runs.idempotency`)."""
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRole(self.session_id, role)
        if not isinstance(content, str):
            raise InvalidArgument(
                f"content must be a string, got {type(content).__name__}",
                argument="content",
                session_id=self.session_id,
            )
        limit = self.state.config.max_message_bytes
        if len(content) * 4 > limit:  # cheap test first: at most 4 UTF-8 bytes per character
            size = len(content.encode("utf-8", "surrogatepass"))
            if size > limit:
                raise LimitExceeded(
                    "max_message_bytes", limit, session_id=self.session_id, actual=size
                )
        # Queued behind this session's commits still in flight, if any (nothing it checks
        # depends on them): many senders to one session share commits.
        lock = self.lock
        if not lock.try_acquire_to_append():
            await lock.acquire_to_append()
        try:
            if lock.pending and self.state.status is not Status.ACTIVE:
                await lock.settled()  # see queue_command
            if idempotency is None:
                # ConversationAddedData's fields, as a dict at once: the path of every message,
                # where the payload's sparse-field filtering would be a measurable cost.
                item = (EventType.CONVERSATION_ADDED, {"role": role, "content": content})
            else:
                item = event_item(
                    ConversationAddedData(
                        role=role,
                        content=content,
                        idempotency_key=idempotency[0],
                        request_hash=idempotency[1],
                    )
                )
            events, waiting = self.queue_command(
                [item],
                self._count_message,
            )
        finally:
            lock.release()
        if waiting is not None:
            await self.settle(waiting)
        event = events[-1]
        return Message(event.id, role, content, event.time, event.seq)

    def _count_message(self) -> None:
        self.services.messages_appended += 1

    async def clear_conversation(self) -> int:
        async with self.lock:
            count = self.state.conversation_count
            await self.command([event_item(ConversationClearedData(count=count))])
            return count

    async def record_compaction(
        self, data: ContextCompactedData, previous: Compaction | None, status: AgentStatusData
    ) -> Event:
        """Store a compaction the agent made (:mod:`jidoka.llm.compaction`), and the agent's
        ``status`` after it in the same commit; planned when ``previous`` was the latest one:
        refused (:class:`CompactionConflict`) if the conversation has changed under it
        since, other than by new messages. The ``context_compacted`` event is returned."""
        async with self.lock:
            self.ensure_writable()
            state = self.state
            if state.compaction is not previous or not any(
                m.seq == data.last_seq for m in state.messages()
            ):
                raise CompactionConflict(self.session_id)
            events = await self.command([event_item(data), event_item(status)])
            return events[-2]

    async def add_file(self, path: object) -> ActiveFile:
        sandbox = self._sandbox(path)
        config = self.state.config
        facts: _files.FileFacts = await self.services.blocking(
            _files.read_file, sandbox, path, config.max_file_bytes
        )
        async with self.lock:
            self.ensure_writable()
            files = self.state.files or {}
            if facts.path not in files and len(files) >= config.max_files:
                raise LimitExceeded(
                    "max_files", config.max_files, session_id=self.session_id, path=facts.path
                )
            check_index_room(self.state, facts.path)
            data = FileAddedData(
                path=facts.path,
                size=facts.size,
                mtime=facts.mtime_ns / 1e9,
                line_count=facts.line_count,
                language=facts.language,
            )
            cache = functools.partial(
                self.services.cache.put,
                self.session_id, facts.path, facts.text, facts.size, facts.mtime_ns,
            )  # fmt: skip
            event = (await self.command([event_item(data)], cache))[-1]
            return ActiveFile(facts.path, event.time, event.seq)

    async def remove_file(self, path: object) -> bool:
        """Remove an active file; ``False`` (and no event) if it was not active."""
        key = await self._key(path)
        async with self.lock:
            self.ensure_writable()
            if key not in (self.state.files or {}):
                return False
            forget = functools.partial(self.services.cache.invalidate, self.session_id, key)
            await self.command([event_item(FileRemovedData(path=key))], forget)
            return True

    async def update_file_index(self, path: object, fields: object) -> FileIndexEntry:
        if not isinstance(fields, dict):
            raise InvalidArgument(
                "fields must be a mapping", argument="fields", session_id=self.session_id
            )
        known, extra = split_index_fields(fields, self.session_id)
        key = await self._key(path)
        async with self.lock:
            self.ensure_writable()
            check_index_room(self.state, key)
            current = (self.state.index or {}).get(key) or FileIndexEntry(path=key)
            entry = msgspec.structs.replace(current, **known)
            if extra:
                merged = {**current.extra, **extra}
                entry = msgspec.structs.replace(entry, extra=merged)
            encoded = msgspec.to_builtins(entry)
            await self.command([event_item(FileIndexUpdatedData(path=key, entry=encoded))])
            # What apply makes of the event, whatever became of apply.
            return msgspec.convert(encoded, FileIndexEntry)

    async def put_working_context(self, key: object, value: object) -> None:
        check_key(key, self.session_id)
        assert isinstance(key, str)
        value = json_copy(value, "value", self.session_id)
        size = len(key) + json_size(value)
        limit = self.state.config.max_working_context_bytes
        async with self.lock:
            self.ensure_writable()
            sizes = self.state.wc_sizes or {}
            total = sum(sizes.values()) - sizes.get(key, 0) + size
            if total > limit:
                raise LimitExceeded(
                    "max_working_context_bytes", limit, session_id=self.session_id, actual=total
                )
            data = WorkingContextUpdatedData(key=key, value=value)
            await self.command([event_item(data)])

    async def delete_working_context(self, key: object) -> bool:
        check_key(key, self.session_id)
        async with self.lock:
            self.ensure_writable()
            if key not in (self.state.working_context or {}):
                return False
            data = WorkingContextUpdatedData(key=key, value=None, deleted=True)
            await self.command([event_item(data)])
            return True

    async def append_event(self, type_: object, data: object) -> Event:
        """Append an event of a type the runtime does not interpret (agent and tool events).

        For extensions and the LLM layer; it counts as activity.
        """
        if type_ not in (
            EventType.LLM_STREAM_CHUNK,
            EventType.LLM_RESPONSE,
            EventType.TOOL_CALL,
            EventType.TOOL_RESULT,
            EventType.AGENT_STATUS,
            EventType.APPROVAL_REQUESTED,
            EventType.APPROVAL_DECIDED,
            EventType.ERROR,
            EventType.RUN_QUEUED,
            EventType.RUN_STARTED,
            EventType.RUN_COMPLETED,
        ):
            raise InvalidArgument(
                f"event type {type_!r} cannot be appended directly",
                argument="type",
                session_id=self.session_id,
            )
        payload = json_copy(data, "data", self.session_id)
        if not isinstance(payload, dict):
            raise InvalidArgument(
                "event data must be a JSON object", argument="data", session_id=self.session_id
            )
        async with self.lock:
            # An idle session's command brings it back first (its session_status comes before).
            return (await self.command([(EventType(str(type_)), payload)]))[-1]

    async def record_ending(self, items: list[tuple[EventType, dict[str, Any]]]) -> None:
        """What a worker commits as it stops while the session terminates (the runs it ends):
        no client command (it is no activity, and a terminating session refuses those), and
        still before the termination, which waits for the workers to stop."""
        async with self.lock:
            await self.commit(items)

    # --- reads ----------------------------------------------------------------------------------

    def history(self, view: object = "full") -> list[Message]:
        """The window's messages (``full``), or what the model sees of them (``compacted``:
        the latest compaction's summary as a ``system`` message, then the messages after
        it; the same as ``full`` for a session never compacted)."""
        if view == "full":
            return self.state.messages()
        if view == "compacted":
            return self.state.compacted_messages()
        raise InvalidArgument(
            f"view must be one of {', '.join(HISTORY_VIEWS)}, got {view!r:.40}",
            argument="view",
            session_id=self.session_id,
        )

    def active_files(self) -> list[ActiveFile]:
        return list((self.state.files or {}).values())

    def file_index(self) -> list[FileIndexEntry]:
        return list((self.state.index or {}).values())

    def working_context(self, key: object | None = None, default: Any = None) -> Any:
        context = self.state.working_context or {}
        if key is None:
            return msgspec.json.decode(msgspec.json.encode(context))
        check_key(key, self.session_id)
        if key not in context:
            return default
        return msgspec.json.decode(msgspec.json.encode(context[key]))

    async def build_context(
        self, include: object, max_tokens: object, counter: TokenCounter | None = None
    ) -> ContextBundle:
        parts = check_include(include, self.session_id)
        if max_tokens is not None and (
            not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
        ):
            raise InvalidArgument(
                f"max_tokens must be a positive integer or None, got {max_tokens!r}",
                argument="max_tokens",
                session_id=self.session_id,
            )
        texts: dict[str, str] | None = None
        if "files" in parts and self.state.files:
            texts = await self._file_texts(list(self.state.files))
        return build_context(
            self.state,
            include=parts,
            max_tokens=max_tokens,
            file_texts=texts,
            counter=counter or self.services.token_counter,
        )

    async def _file_texts(self, paths: list[str]) -> dict[str, str]:
        """Current text of active files: the cache where its stamps still match, else the disk."""
        sandbox = self._sandbox()
        cache = self.services.cache
        stamps: list[tuple[int, int] | None] = await self.services.blocking(
            _files.stat_all, sandbox, paths
        )
        texts: dict[str, str] = {}
        missing: list[str] = []
        for path, stamp in zip(paths, stamps, strict=True):
            if stamp is None:
                cache.invalidate(self.session_id, path)
                continue
            text = cache.get(self.session_id, path, stamp[0], stamp[1])
            if text is None:
                missing.append(path)
            else:
                texts[path] = text
        if missing:
            read: list[_files.FileFacts | None] = await self.services.blocking(
                _files.read_all, sandbox, missing, self.state.config.max_file_bytes
            )
            for facts in read:
                if facts is not None:
                    texts[facts.path] = facts.text
                    cache.put(self.session_id, facts.path, facts.text, facts.size, facts.mtime_ns)
        return texts

    # --- paths --------------------------------------------------------------------------------

    def _sandbox(self, path: object = "") -> Sandbox:
        if self.sandbox is None:
            root = self.state.project_root
            if root is None:
                shown = path if isinstance(path, str) else repr(path)
                raise PathNotAllowed(self.session_id, shown, "the session has no project_root")
            self.sandbox = Sandbox(root, self.session_id)
        return self.sandbox

    async def _key(self, path: object) -> str:
        sandbox = self._sandbox(path)
        key, _ = await self.services.blocking(sandbox.resolve, path)
        return str(key)
