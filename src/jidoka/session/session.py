"""A live session: its projection, its command lock, and the commands that change it.

Every command follows the same path, under the session's FIFO lock so one session's commands are
applied in the order they arrived while other sessions proceed in parallel:

1. validate the input against the current projection (bounds, paths, roles) — a refused
   command appends nothing;
2. make the event(s), numbered with the next ``seq``;
3. append them to the store (when this returns they are as durable as the store promises): the
   *commit point*, after which the command has happened;
4. the post-commit section (:meth:`Session._after_commit`, one place for all of it):
   :func:`~jidoka.session.context.apply` them to the projection, publish them on the bus, the
   command's own follow-up (cache, counters) and the runtime's (idle timer, snapshots).

Nothing in step 4 may turn the command into an error: the caller would be told it failed when
its event is stored, and a client that retries would write it twice. So step 4 never raises
(each step's failure is logged with the session id and repaired where it can be: see
:class:`Step`), and it runs to its end even if the caller is cancelled after the commit.

Blocking work (reading files) happens in a worker thread *before* the lock is taken.

A command from a client is *activity*: it records the time (the idle timer looks at it lazily)
and brings an idle session back to ``active`` with a ``session_status`` event first.
"""

from __future__ import annotations

import asyncio
import enum
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
from ..tools.sandbox import Sandbox
from . import files as _files
from .context import (
    CONTEXT_PARTS,
    ROLES,
    ActiveFile,
    ContextBundle,
    FileIndexEntry,
    Message,
    SessionState,
    TokenCounter,
    apply,
    build_context,
    json_size,
)
from .state import Status
from .supervisor import Supervisor

if TYPE_CHECKING:
    from ..bus.base import EventBus
    from ..store.base import SessionStore

__all__ = ["Session", "SessionServices", "Step"]

logger = logging.getLogger("jidoka.session")


MAX_KEY_CHARS: Final = 256
_INDEX_FIELDS: Final = {
    "language": (str, type(None)),
    "line_count": (int,),
    "size": (int,),
    "mtime": (int, float),
    "last_accessed": (int, float, str),
}
# Shared, read-only event payloads for the commonest status moves: an idle session's log then
# holds no dict of its own for them.
_STATUS_DATA: Final[dict[tuple[Status, Status], dict[str, Any]]] = {
    (a, b): {"status": b.value, "previous": a.value}
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


class Step(enum.StrEnum):
    """The steps that run after a commit, as named in the log when one fails.

    A failure is reported (:meth:`Session.report_fault`) and never raised; the runtime's
    ``on_fault`` hook then repairs what the failure left broken: a projection that missed
    events is rebuilt from the log (``APPLY``), an idle timer is re-armed (``IDLE_TIMER``).
    The others leave nothing to repair in the session (a subscriber that missed a published
    event, a cache entry not written, a metric not counted); the log says what was lost.
    """

    APPLY = "applying the events to the projection"
    PUBLISH = "publishing an event"
    FOLLOW_UP = "the command's follow-up (cache, counters)"
    IDLE_TIMER = "re-arming the idle timer"
    SNAPSHOT = "scheduling a snapshot"
    TELEMETRY = "recording telemetry"
    WORKERS = "stopping the workers"
    STREAMS = "ending the event streams"
    RELEASE = "releasing the stored log"


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
        data = _STATUS_DATA.get((previous, to)) or {"status": to.value, "previous": previous}
        services = self.services
        assert services.fast_append is not None
        assert services.fast_publish is not None
        events = self._events([(EventType.SESSION_STATUS, data)])
        services.fast_append(self.state.session_id, events)
        self._after_commit(events, None, False)

    def _events(self, items: Iterable[tuple[str, dict[str, Any]]]) -> list[Event]:
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
        items: Iterable[tuple[str, dict[str, Any]]],
        *,
        after: Callable[[], object] | None = None,
        activity: bool = False,
    ) -> list[Event]:
        """Append the events, then run the post-commit section. The caller holds :attr:`lock`.

        An error raised here means nothing was stored. Once the store has taken the events,
        the post-commit section (:meth:`_after_commit`: apply, publish, ``after``, and the
        runtime's ``after_command`` hook when ``activity`` says this is a client command) runs
        to its end even if the caller is cancelled meanwhile, so the projection never falls
        behind the log and nothing the command implies is skipped; and it never raises.
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
            self._after_commit(events, after, activity)  # no suspension point in between
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
            self._after_commit(events, after, activity)

    def _after_commit(
        self, events: list[Event], after: Callable[[], object] | None, activity: bool
    ) -> None:
        """Everything that follows a durable append, in one place. Never raises.

        When this runs the events are in the log: the command has happened, whatever fails
        now. So each step is guarded on its own, and a failure is reported (logged with the
        session id, and handed to the runtime's ``on_fault`` hook to repair what it broke)
        rather than raised into a caller who would take a stored command for a failed one.
        Only ``Exception`` is caught; ``CancelledError`` and the like pass. Nothing here
        awaits, so a cancellation of the caller cannot stop it halfway.

        1. **Apply** each event to the projection. ``apply`` is pure and the command was
           validated against the projection before its commit, so a failure here is a bug, and
           the projection no longer matches the log. Its ``seq`` still moves to the last event
           (the next commit must be numbered after what is stored); the runtime then rebuilds
           the projection from the log, under the session's lock, or terminates the session
           with ``error`` if the log cannot be replayed either (``SessionManager._rebuild``).
           Until then, reads may see the state from before the event.
        2. **Publish** each event (one failing costs subscribers that event, not the others).
        3. The command's own **follow-up** (``after``: the file cache, counters).
        4. For a client command, the runtime's ``after_command`` hook (idle timer, snapshot).
        """
        state = self.state
        try:
            for event in events:
                apply(state, event)
        except Exception as exc:
            last = events[-1]
            if state.seq < last.seq:
                state.seq, state.updated_at = last.seq, last.time
            self.report_fault(Step.APPLY, exc)
        services = self.services
        publish = services.fast_publish
        if publish is None:
            self._publish_later(events)
        else:
            for event in events:
                try:
                    publish(event)
                except Exception as exc:
                    self.report_fault(Step.PUBLISH, exc)
        if after is not None:
            try:
                after()
            except Exception as exc:
                self.report_fault(Step.FOLLOW_UP, exc)
        if activity and services.after_command is not None:
            try:
                services.after_command(self)
            except Exception as exc:  # the hook guards its own steps: a last resort
                self.report_fault(Step.IDLE_TIMER, exc)

    def _publish_later(self, events: list[Event]) -> None:
        """Publish on a bus that must be awaited, in a task of its own: neither the caller
        nor the store's callback waits for it."""
        bus = self.services.bus

        async def publish_all() -> None:
            for event in events:
                try:
                    await bus.publish(event)
                except Exception as exc:
                    self.report_fault(Step.PUBLISH, exc)

        tasks = self.services.publishing
        task = asyncio.get_running_loop().create_task(
            publish_all(), name=f"jidoka:{self.state.session_id}:publish"
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def report_fault(self, step: Step, error: Exception) -> None:
        """A step after a commit failed: log it with the session id, let the runtime repair
        what it broke. Never raises: the post-commit section calls it, and must not."""
        sid = self.state.session_id
        logger.error(
            "session %s: %s failed after its events were committed; the command stands (%r)",
            sid,
            step,
            error,
            exc_info=error,
            extra={"session_id": sid, "step": step.name.lower()},
        )
        hook = self.services.on_fault
        if hook is not None:
            try:
                hook(self, step, error)
            except Exception:
                logger.exception(
                    "session %s: repairing after %s failed", sid, step, extra={"session_id": sid}
                )

    def ensure_writable(self) -> None:
        if self.terminating or self.state.status in (Status.TERMINATING, Status.TERMINATED):
            raise SessionTerminated(self.session_id, reason=self.state.reason or "terminating")

    async def command(
        self,
        items: list[tuple[str, dict[str, Any]]],
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
            data = {"status": to.value, "previous": previous.value}
            if error is not None:
                data["error"] = error
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
                [(EventType.CONVERSATION_ADDED, {"role": role, "content": content})],
                self._count_message,
            )
        event = events[-1]
        return Message(event.id, role, content, event.time, event.seq)

    def _count_message(self) -> None:
        self.services.messages_appended += 1

    async def clear_conversation(self) -> int:
        async with self.lock:
            count = self.state.conversation_count
            await self.command([(EventType.CONVERSATION_CLEARED, {"count": count})])
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
            self._check_index_room(facts.path)
            data = {
                "path": facts.path,
                "size": facts.size,
                "mtime": facts.mtime_ns / 1e9,
                "line_count": facts.line_count,
                "language": facts.language,
            }
            cache = functools.partial(
                self.services.cache.put,
                self.session_id, facts.path, facts.text, facts.size, facts.mtime_ns,
            )  # fmt: skip
            event = (await self.command([(EventType.FILE_ADDED, data)], cache))[-1]
            return ActiveFile(facts.path, event.time, event.seq)

    async def remove_file(self, path: object) -> bool:
        """Remove an active file; ``False`` (and no event) if it was not active."""
        key = await self._key(path)
        async with self.lock:
            self.ensure_writable()
            if key not in (self.state.files or {}):
                return False
            forget = functools.partial(self.services.cache.invalidate, self.session_id, key)
            await self.command([(EventType.FILE_REMOVED, {"path": key})], forget)
            return True

    async def update_file_index(self, path: object, fields: object) -> FileIndexEntry:
        if not isinstance(fields, dict):
            raise InvalidArgument(
                "fields must be a mapping", argument="fields", session_id=self.session_id
            )
        known, extra = self._split_index_fields(fields)
        key = await self._key(path)
        async with self.lock:
            self.ensure_writable()
            self._check_index_room(key)
            current = (self.state.index or {}).get(key) or FileIndexEntry(path=key)
            entry = msgspec.structs.replace(current, **known)
            if extra:
                merged = {**current.extra, **extra}
                entry = msgspec.structs.replace(entry, extra=merged)
            encoded = msgspec.to_builtins(entry)
            await self.command([(EventType.FILE_INDEX_UPDATED, {"path": key, "entry": encoded})])
            # What apply makes of the event, whatever became of apply.
            return msgspec.convert(encoded, FileIndexEntry)

    async def put_working_context(self, key: object, value: object) -> None:
        self._check_key(key)
        assert isinstance(key, str)
        value = self._json_copy(value, "value")
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
            data = {"key": key, "value": value}
            await self.command([(EventType.WORKING_CONTEXT_UPDATED, data)])

    async def delete_working_context(self, key: object) -> bool:
        self._check_key(key)
        async with self.lock:
            self.ensure_writable()
            if key not in (self.state.working_context or {}):
                return False
            data = {"key": key, "value": None, "deleted": True}
            await self.command([(EventType.WORKING_CONTEXT_UPDATED, data)])
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
        payload = self._json_copy(data, "data")
        if not isinstance(payload, dict):
            raise InvalidArgument(
                "event data must be a JSON object", argument="data", session_id=self.session_id
            )
        async with self.lock:
            (event,) = await self.command([(str(type_), payload)])
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
        self._check_key(key)
        if key not in context:
            return default
        return msgspec.json.decode(msgspec.json.encode(context[key]))

    async def build_context(
        self, include: object, max_tokens: object, counter: TokenCounter | None = None
    ) -> ContextBundle:
        parts = self._check_include(include)
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
            _stat_all, sandbox, paths
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
                _read_all, sandbox, missing, self.state.config.max_file_bytes
            )
            for facts in read:
                if facts is not None:
                    texts[facts.path] = facts.text
                    cache.put(self.session_id, facts.path, facts.text, facts.size, facts.mtime_ns)
        return texts

    # --- validation helpers -----------------------------------------------------------------------

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

    def _check_index_room(self, key: str) -> None:
        index = self.state.index or {}
        limit = self.state.config.max_index_entries
        if key not in index and len(index) >= limit:
            raise LimitExceeded("max_index_entries", limit, session_id=self.session_id, path=key)

    def _check_key(self, key: object) -> None:
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
            raise InvalidArgument(
                f"working-context key must be a string of 1 to {MAX_KEY_CHARS} characters, "
                f"got {key!r:.80}",
                argument="key",
                session_id=self.session_id,
            )

    def _check_include(self, include: object) -> frozenset[str]:
        if isinstance(include, str) or not isinstance(include, Iterable):
            raise InvalidArgument(
                "include must be a collection of part names", argument="include",
                session_id=self.session_id,
            )  # fmt: skip
        parts = frozenset(include)
        unknown = parts - frozenset(CONTEXT_PARTS)
        if unknown:
            raise InvalidArgument(
                f"unknown context parts {sorted(map(str, unknown))}; expected a subset of "
                f"{list(CONTEXT_PARTS)}",
                argument="include",
                session_id=self.session_id,
            )
        return parts

    def _json_copy(self, value: object, argument: str) -> Any:
        """A private JSON copy of ``value`` (so callers cannot mutate the projection later)."""
        try:
            return msgspec.json.decode(msgspec.json.encode(value))
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            raise InvalidArgument(
                f"{argument} is not JSON-serialisable: {exc}",
                argument=argument,
                session_id=self.session_id,
            ) from None

    def _split_index_fields(self, fields: dict[Any, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        known: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for name, value in fields.items():
            if not isinstance(name, str):
                raise InvalidArgument(
                    f"file index field names must be strings, got {name!r}",
                    argument="fields",
                    session_id=self.session_id,
                )
            kinds = _INDEX_FIELDS.get(name)
            if kinds is None:
                if name in ("path", "extra"):
                    raise InvalidArgument(
                        f"file index field {name!r} cannot be set",
                        argument=f"fields.{name}",
                        session_id=self.session_id,
                    )
                extra[name] = self._json_copy(value, f"fields.{name}")
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, kinds)
                or (isinstance(value, int | float) and value < 0)
            ):
                raise InvalidArgument(
                    f"file index field {name!r} has an invalid value {value!r:.80}",
                    argument=f"fields.{name}",
                    session_id=self.session_id,
                )
            if name == "last_accessed":
                value = _to_datetime(value, self.session_id)
            known[name] = value
        if json_size(extra) > 16_384:
            raise LimitExceeded("file_index_extra_bytes", 16_384, session_id=self.session_id)
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


def _stat_all(sandbox: Sandbox, paths: list[str]) -> list[tuple[int, int] | None]:
    return [_files.stat_file(sandbox, path) for path in paths]


def _read_all(sandbox: Sandbox, paths: list[str], max_bytes: int) -> list[_files.FileFacts | None]:
    out: list[_files.FileFacts | None] = []
    for path in paths:
        try:
            out.append(_files.read_file(sandbox, path, max_bytes))
        except (OSError, PathNotAllowed, LimitExceeded):
            out.append(None)  # changed since it was added; the context skips it
    return out
