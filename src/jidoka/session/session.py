"""A live session: its projection, its command lock, and the commands that change it.

Every command follows the same path, under the session's FIFO lock so one session's commands are
applied in the order they arrived while other sessions proceed in parallel:

1. validate the input against the current projection (bounds, paths, roles) — a refused
   command appends nothing;
2. make the event(s), numbered with the next ``seq``;
3. append them to the store (when this returns they are as durable as the store promises): the
   *commit point*, after which the command has happened;
4. the post-commit section (:func:`~.postcommit.after_commit`, one place for all of it):
   :func:`~jidoka.session.context.apply` them to the projection, publish them on the bus, the
   command's own follow-up (cache, counters) and the runtime's (idle timer, snapshots).

Nothing in step 4 may turn the command into an error: the caller would be told it failed when
its event is stored, and a client that retries would write it twice. So step 4 never raises
(each step's failure is logged with the session id and repaired where it can be: see
:class:`~.postcommit.Step`), and it runs to its end even if the caller is cancelled after the
commit.

The checks of step 1 that need no lock are in :mod:`.inputs`.

Blocking work (reading files) happens in a worker thread *before* the lock is taken.

A command from a client is *activity*: it records the time (the idle timer looks at it lazily)
and brings an idle session back to ``active`` with a ``session_status`` event first.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .._sync import FifoLock
from ..cache import FileCache
from ..clock import Clock
from ..errors import (
    InvalidArgument,
    InvalidRole,
    LimitExceeded,
    PathNotAllowed,
    SessionTerminated,
)
from ..events import Event, EventType
from ..payloads import (
    ConversationAddedData,
    ConversationClearedData,
    FileAddedData,
    FileIndexUpdatedData,
    FileRemovedData,
    SessionStatusData,
    WorkingContextUpdatedData,
    data_of,
    event_item,
)
from ..tools import reading as _files
from ..tools.sandbox import Sandbox
from .context import ContextBundle, TokenCounter, build_context
from .inputs import check_include, check_index_room, check_key, json_copy, split_index_fields
from .postcommit import Step, after_commit, report_fault
from .state import ROLES, ActiveFile, FileIndexEntry, Message, SessionState, Status, json_size
from .supervisor import Supervisor

if TYPE_CHECKING:
    from ..bus.base import EventBus
    from ..store.base import SessionStore

__all__ = ["Session", "SessionServices"]

logger = logging.getLogger("jidoka.session")


# Shared, read-only event payloads for the commonest status moves: an idle session's log then
# holds no dict of its own for them.
_STATUS_DATA: Final[dict[tuple[Status, Status], dict[str, Any]]] = {
    (a, b): data_of(SessionStatusData(status=b.value, previous=a.value))
    for a, b in (
        (Status.INITIALIZING, Status.ACTIVE),
        (Status.ACTIVE, Status.IDLE),
        (Status.IDLE, Status.ACTIVE),
        (Status.ACTIVE, Status.TERMINATING),
        (Status.IDLE, Status.TERMINATING),
    )
}


#: A store's optional non-blocking append (see ``SqliteStore.append_future``).
AppendFuture = Callable[
    [str, Sequence[Event], Callable[[BaseException | None], None]], asyncio.Future[None]
]


class SessionServices:
    """What every session of a runtime shares: one reference per session instead of many."""

    __slots__ = (
        "after_command",
        "append_future",
        "blocking",
        "bus",
        "cache",
        "clock",
        "fast_append",
        "fast_publish",
        "messages_appended",
        "on_fault",
        "publishing",
        "store",
        "token_counter",
    )

    def __init__(
        self,
        *,
        store: SessionStore,
        bus: EventBus,
        cache: FileCache,
        clock: Clock,
        token_counter: TokenCounter,
        blocking: Callable[..., Awaitable[Any]] = asyncio.to_thread,
    ) -> None:
        self.store = store
        self.bus = bus
        self.cache = cache
        self.clock = clock
        self.token_counter = token_counter
        self.blocking = blocking
        # Backends that never wait (the memory store and bus) offer synchronous twins; using
        # them keeps a command free of suspension points, which is most of its cost.
        self.fast_append: Callable[[str, Sequence[Event]], None] | None = getattr(
            store, "append_nowait", None
        )
        self.fast_publish: Callable[[Event], None] | None = getattr(bus, "publish_nowait", None)
        # Durable stores that can hand back a future let a commit avoid a task of its own.
        self.append_future: AppendFuture | None = getattr(store, "append_future", None)
        self.messages_appended = 0
        # Set by the session manager: what a committed client command does to the runtime
        # (idle timer, snapshots), and who repairs what a failed post-commit step broke.
        # Both are called from the post-commit section; neither is allowed to raise into it.
        self.after_command: Callable[[Session], None] | None = None
        self.on_fault: Callable[[Session, Step, Exception], None] | None = None
        # Publications in flight on a bus that must be awaited (strong references).
        self.publishing: set[asyncio.Task[None]] = set()


class Session:
    """One live session, created and retired by the session manager."""

    __slots__ = (
        "_drained",
        "_pending",
        "idle_since",
        "last_activity",
        "lock",
        "sandbox",
        "services",
        "snapshot_seq",
        "state",
        "supervisor",
        "terminating",
        "timer_at",
    )

    def __init__(self, state: SessionState, services: SessionServices) -> None:
        self.state = state
        self.services = services
        self.lock = FifoLock()
        self.supervisor: Supervisor | None = None
        self.sandbox: Sandbox | None = None
        now = services.clock.monotonic()
        self.last_activity = now
        self.idle_since = now
        self.timer_at: float | None = None  # `when` of this session's live timer entry
        self.terminating = False
        self.snapshot_seq = 0  # seq of the newest snapshot written (or loaded)
        self._pending = 0  # durable commits started and not finished (see commit)
        self._drained: asyncio.Future[None] | None = None

    @property
    def session_id(self) -> str:
        return self.state.session_id

    @property
    def status(self) -> Status:
        return self.state.status

    # --- the event path -------------------------------------------------------------------------

    def can_commit_nowait(self) -> bool:
        """True if a commit can happen right now, synchronously (memory store and bus, lock
        free, no earlier commit still in flight)."""
        services = self.services
        return (
            services.fast_append is not None
            and services.fast_publish is not None
            and not self.lock.locked()
            and not self.terminating
            and self._pending == 0
        )

    def transition_nowait(self, to: Status) -> None:
        """:meth:`transition` for when :meth:`can_commit_nowait` holds."""
        previous = self.state.status
        data = _STATUS_DATA.get((previous, to)) or data_of(
            SessionStatusData(status=to.value, previous=previous.value)
        )
        services = self.services
        assert services.fast_append is not None
        assert services.fast_publish is not None
        events = self._events([(EventType.SESSION_STATUS, data)])
        services.fast_append(self.state.session_id, events)
        after_commit(self, events, None, False)

    def _events(self, items: Iterable[tuple[EventType, dict[str, Any]]]) -> list[Event]:
        when = datetime.fromtimestamp(self.services.clock.time(), UTC)
        sid = self.state.session_id
        seq = self.state.seq
        events = []
        for type_, data in items:
            seq += 1
            events.append(Event(type_, sid, seq, when, data))
        return events

    async def commit(
        self,
        items: Iterable[tuple[EventType, dict[str, Any]]],
        *,
        after: Callable[[], object] | None = None,
        activity: bool = False,
    ) -> list[Event]:
        """Append the events, then run the post-commit section. The caller holds :attr:`lock`.

        An error raised here means nothing was stored. Once the store has taken the events,
        the post-commit section (:func:`~.postcommit.after_commit`: apply, publish, ``after``,
        and the runtime's ``after_command`` hook when ``activity`` says this is a client
        command) runs to its end even if the caller is cancelled meanwhile, so the projection
        never falls behind the log and nothing the command implies is skipped; and it never
        raises.
        """
        if self._pending:  # a cancelled caller's commit is still finishing
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)
        services = self.services
        sid = self.state.session_id
        events = self._events(items)
        if services.fast_append is not None and services.fast_publish is not None:
            services.fast_append(sid, events)
            after_commit(self, events, after, activity)  # no suspension point in between
            return events
        if services.append_future is not None:
            # The store calls `_committed` when the commit is done, before waking us, and
            # whether or not we are still waiting: no task and no shield needed.
            done = services.append_future(
                sid, events, functools.partial(self._committed, events, after, activity)
            )
            self._pending += 1  # only once the store has taken it (it may refuse at once)
            await done
            return events
        self._pending += 1
        task = asyncio.get_running_loop().create_task(self._commit_slow(events, after, activity))
        await asyncio.shield(task)
        return events

    async def _commit_slow(
        self, events: list[Event], after: Callable[[], object] | None, activity: bool
    ) -> None:
        try:
            await self.services.store.append(self.state.session_id, events)
        except BaseException as exc:
            self._committed(events, after, activity, exc)
            raise
        self._committed(events, after, activity, None)

    def _committed(
        self,
        events: list[Event],
        after: Callable[[], object] | None,
        activity: bool,
        error: BaseException | None,
    ) -> None:
        """A durable append finished: the post-commit section if it committed, whoever waits."""
        self._pending -= 1
        if self._pending == 0 and self._drained is not None:
            self._drained.set_result(None)
            self._drained = None
        if error is None:  # else nothing was stored: nothing follows
            after_commit(self, events, after, activity)

    def report_fault(self, step: Step, error: Exception) -> None:
        """A step after a commit failed: log it, let the runtime repair what it broke (see
        :func:`~.postcommit.report_fault`). Never raises."""
        report_fault(self, step, error)

    def ensure_writable(self) -> None:
        if self.terminating or self.state.status in (Status.TERMINATING, Status.TERMINATED):
            raise SessionTerminated(self.session_id, reason=self.state.reason or "terminating")

    async def command(
        self,
        items: list[tuple[EventType, dict[str, Any]]],
        after: Callable[[], object] | None = None,
    ) -> list[Event]:
        """Run one client command: activity, then commit. The caller holds :attr:`lock`.

        ``after`` is the command's follow-up once committed (a cache update, a counter): it
        runs in the post-commit section, so it is neither skipped by a cancellation nor able
        to fail the command. What the command returns is built from its events, not read
        back from the projection (which a failed apply would have left behind).
        """
        self.ensure_writable()
        self.last_activity = self.services.clock.monotonic()
        if self.state.status is Status.IDLE:
            items.insert(0, (EventType.SESSION_STATUS, _STATUS_DATA[Status.IDLE, Status.ACTIVE]))
        return await self.commit(items, after=after, activity=True)

    async def transition(self, to: Status, *, error: str | None = None) -> Event:
        """Commit a ``session_status`` event (the caller checked the move and holds the lock)."""
        previous = self.state.status
        data = _STATUS_DATA.get((previous, to)) if error is None else None
        if data is None:
            data = data_of(
                SessionStatusData(
                    status=to.value,
                    previous=previous.value,
                    error=msgspec.UNSET if error is None else error,
                )
            )
        (event,) = await self.commit([(EventType.SESSION_STATUS, data)])
        return event

    # --- commands -------------------------------------------------------------------------------

    async def send_message(self, role: object, content: object) -> Message:
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
        async with self.lock:
            events = await self.command(
                [event_item(ConversationAddedData(role=role, content=content))],
                self._count_message,
            )
        event = events[-1]
        return Message(event.id, role, content, event.time, event.seq)

    def _count_message(self) -> None:
        self.services.messages_appended += 1

    async def clear_conversation(self) -> int:
        async with self.lock:
            count = self.state.conversation_count
            await self.command([event_item(ConversationClearedData(count=count))])
            return count

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
            (event,) = await self.command([(EventType(str(type_)), payload)])
            return event

    # --- reads ----------------------------------------------------------------------------------

    def history(self) -> list[Message]:
        return list(self.state.history or ())

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
