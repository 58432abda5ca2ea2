"""Steering a session's history: a fork at a seq, a rewind to a seq.

Both start from the projection at a point of the log (:func:`.history.project`) and leave the log
as it is:

- a **fork** is a new session whose ``session_created`` carries the source's projection at the
  seq (``state``, as a restored session's does) and names where it came from (``forked_from``).
  At the source's last seq a live source's projection is copied as it is in memory, so a fork
  at the head costs the size of the projection, not of the history. The source is not touched;
- a **rewind** appends ``session_rewound {to_seq, from_seq, touched_paths}``: from then on the
  projection is what it was at ``to_seq`` (:func:`~.projection.apply` copies it from the
  projection there), while ``read_events`` and every event stream still hold every earlier
  event. Files the rewound range's tools wrote stay as they are on disk; the event names them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from ..errors import (
    InvalidArgument,
    JidokaError,
    SessionBusy,
    SessionTerminated,
    StoreError,
)
from ..events import Event, EventType
from ..payloads import (
    AgentStatusData,
    ApprovalDecidedData,
    SessionCreatedData,
    SessionRewoundData,
    data_of,
    event_item,
)
from ..store.base import CommitOutcomeUnknown
from ..telemetry import Telemetry
from .history import project, touched_paths
from .lifecycle import Lifecycle
from .recovery import Recovery
from .registry import SessionRegistry
from .session import Session, SessionServices
from .snapshot import state_to_dict
from .spans import guarded_span
from .state import SessionState, Status

__all__ = ["REASON_FORKED", "Branching", "Rewound"]

#: Why a fork's turn is closed (a turn running at the seq it was forked at).
REASON_FORKED: Final = "forked"

#: The agent statuses of a turn under way (a fork at such a seq closes the turn).
_TURN_RUNNING: Final = frozenset({"thinking", "calling_tool", "compacting"})

#: Events read at once while naming the paths a rewound range wrote.
_PAGE: Final = 1_000
_PAGE_BYTES: Final = 1 << 20


class Rewound(msgspec.Struct, frozen=True, kw_only=True):
    """What a rewind did: the ``session_rewound`` event's seq and data."""

    session_id: str
    #: The seq of the ``session_rewound`` event.
    seq: int
    to_seq: int
    from_seq: int
    #: Paths the rewound range's ``write_file``/``edit_file`` calls wrote; unchanged on disk.
    touched_paths: list[str]


class Branching:
    """Forks and rewinds (the manager's helpers hold the rest)."""

    def __init__(
        self,
        services: SessionServices,
        telemetry: Telemetry,
        registry: SessionRegistry,
        lifecycle: Lifecycle,
        recovery: Recovery,
        session: Callable[[object], Awaitable[Session]],
    ) -> None:
        self._session = session  # the live session, loaded if need be
        self._find = recovery.find  # a stored session's head
        self._services = services
        self._telemetry = telemetry
        self._registry = registry
        self._lifecycle = lifecycle

    # --- fork -------------------------------------------------------------------------------------

    async def fork(
        self,
        session_id: object,
        *,
        at_seq: object = None,
        metadata: object = None,
        owner: str | None = None,
    ) -> str:
        """Create a session (owned by ``owner``) from ``session_id``'s projection at
        ``at_seq`` (``None``: its last seq); a terminated source is read from its stored log.
        Returns the fork's id."""
        registry = self._registry
        registry.check_open()
        source_id = session_id if isinstance(session_id, str) else repr(session_id)
        live: Session | None
        try:
            live = await self._session(session_id)
            last_seq = live.state.seq
        except SessionTerminated:
            stored = await self._find(source_id)
            if stored is None:
                raise
            live, last_seq = None, stored.last_seq
        seq = _checked_seq(source_id, "at_seq", at_seq, last_seq, default=last_seq)
        meta = (
            None
            if metadata is None
            else self._lifecycle.json_object(metadata, "metadata", self._lifecycle.max_metadata)
        )
        with guarded_span(self._telemetry, "fork_session", source_id) as span:
            started = self._services.clock.monotonic()
            copied, pending, agent_status = await self._copy_at(source_id, live, seq)
            registry.reserve()
            try:
                registry.check_open()
                session_id = self._lifecycle.new_id()
                if span is not None:
                    span.set_attribute("jidoka.fork_id", session_id)
                now = datetime.fromtimestamp(self._services.clock.time(), UTC)
                copied["session_id"] = session_id
                copied["owner"] = owner
                copied["created_at"] = msgspec.to_builtins(now)
                copied["usage"], copied["usage_estimated"] = None, False  # its own from now
                copied["runs"] = {}  # the source's runs are the source's
                if meta is not None:
                    copied["metadata"] = meta
                created = data_of(
                    SessionCreatedData(
                        status=Status.INITIALIZING.value,
                        state=copied,
                        forked_from={"session_id": source_id, "seq": seq},
                    )
                )
                # A turn that was under way at that seq is over in the fork (it never runs
                # there): its approvals are denied, the agent says so.
                closing = [
                    event_item(ApprovalDecidedData(call_id=call, allow=False, reason=REASON_FORKED))
                    for call in pending
                ]
                if agent_status in _TURN_RUNNING:
                    closing.append(
                        event_item(AgentStatusData(status="cancelled", reason=REASON_FORKED))
                    )
                session = Session(SessionState(session_id), self._services)
            except BaseException:
                registry.unreserve()
                raise
            await self._lifecycle.open(
                session, created, started, f"jidoka:{session_id}:fork", then=closing
            )
        return session_id

    async def _copy_at(
        self, session_id: str, live: Session | None, seq: int
    ) -> tuple[dict[str, Any], list[str], str | None]:
        """The projection at ``seq`` as the plain values a ``session_created`` carries, with
        the approvals pending and the agent's status there: a live session's own at its last
        seq (copied under its lock, so nothing is half-applied), else folded from the store."""
        if live is not None:
            async with live.lock:
                state = live.state
                if state.seq == seq:
                    return (
                        state_to_dict(state),
                        sorted(state.pending_approvals or ()),
                        state.agent_status,
                    )
        try:
            state = await self._state_at(session_id, seq, "at_seq")
        except InvalidArgument as exc:
            if live is None:
                # A terminated session whose log the store let go of (the memory store does).
                raise SessionTerminated(
                    session_id, reason=f"its log is no longer stored ({exc})"
                ) from exc
            raise
        return state_to_dict(state), sorted(state.pending_approvals or ()), state.agent_status

    # --- rewind -----------------------------------------------------------------------------------

    async def rewind(self, session_id: object, to_seq: object, busy: Callable[[], bool]) -> Rewound:
        """Append ``session_rewound`` to a live session: its projection becomes what it was at
        ``to_seq``. ``busy`` says whether a turn runs (checked under the session's lock:
        ``SessionBusy`` then)."""
        session = await self._session(session_id)
        sid = session.session_id
        with guarded_span(self._telemetry, "rewind_session", sid):
            async with session.lock:
                session.ensure_writable()
                state = session.state
                from_seq = state.seq
                seq = _checked_seq(sid, "to_seq", to_seq, from_seq)
                if busy():
                    raise SessionBusy(sid)
                target = await self._state_at(sid, seq, "to_seq")
                paths = await self._touched(sid, seq, from_seq)
                item = event_item(
                    SessionRewoundData(to_seq=seq, from_seq=from_seq, touched_paths=paths)
                )
                state.rewind_target = target
                try:
                    events = await session.command([item])
                except BaseException as exc:
                    # Stored, or maybe: its apply (now or once the store knows) takes the
                    # target. Refused before it was taken: nothing will.
                    taken = isinstance(exc, CommitOutcomeUnknown | asyncio.CancelledError)
                    if not taken and state.rewind_target is target:
                        state.rewind_target = None
                    raise
        event = events[-1]
        return Rewound(
            session_id=sid,
            seq=event.seq,
            to_seq=seq,
            from_seq=from_seq,
            touched_paths=paths,
        )

    async def _state_at(self, session_id: str, seq: int, argument: str) -> SessionState:
        """The projection at ``seq`` folded from the store; ``InvalidArgument`` naming
        ``argument`` if the stored log cannot give it (the memory store trims the oldest events
        of a very long log, and lets a terminated session's log go)."""
        try:
            state, _ = await project(self._services.store, session_id, upto=seq)
        except StoreError:
            raise
        except (ValueError, KeyError, TypeError, JidokaError) as exc:
            raise InvalidArgument(
                f"{argument} {seq}: the stored log cannot be folded up to it ({exc})",
                argument=argument,
                session_id=session_id,
            ) from exc
        return state

    async def _touched(self, session_id: str, to_seq: int, from_seq: int) -> list[str]:
        """The paths the events ``to_seq + 1 .. from_seq`` wrote with tools (one read of that
        range, a page at a time)."""
        events: list[Event] = []
        after = to_seq
        store = self._services.store
        while after < from_seq:
            page = await store.read_events(
                session_id,
                after_seq=after,
                limit=min(_PAGE, from_seq - after),
                max_bytes=_PAGE_BYTES,
            )
            if not page:
                break
            events.extend(e for e in page if e.type in _TOOL_EVENTS)
            after = page[-1].seq
        return touched_paths(events)


_TOOL_EVENTS: Final = frozenset({EventType.TOOL_CALL, EventType.TOOL_RESULT})


def _checked_seq(
    session_id: str, argument: str, value: object, last: int, *, default: int | None = None
) -> int:
    """``value`` as a seq of the session's log (1 .. ``last``), or a clear error."""
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(
            f"{argument} must be an integer seq, got {type(value).__name__}",
            argument=argument,
            session_id=session_id,
        )
    if not 1 <= value <= last:
        raise InvalidArgument(
            f"{argument} {value} is out of range: the log holds seqs 1 to {last}",
            argument=argument,
            session_id=session_id,
        )
    return value
