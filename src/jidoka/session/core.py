"""A session's state and its one commit path: how every change to a session reaches its log.

Every command follows the same path, under the session's FIFO lock so one session's commands are
applied in the order they arrived while other sessions proceed in parallel:

1. validate the input against the current projection (bounds, paths, roles) — a refused
   command appends nothing;
2. make the event(s), numbered with the next ``seq``;
3. hand them to the store (``SessionStore.append_nowait``); once it reports them committed they
   are as durable as the store promises: the *commit point*, after which the command has
   happened;
4. the post-commit section (:func:`~.postcommit.after_commit`, one place for all of it):
   :func:`~jidoka.session.projection.apply` them to the projection, publish them on the bus, the
   command's own follow-up (cache, counters) and the runtime's (idle timer, snapshots).

Nothing in step 4 may turn the command into an error: the caller would be told it failed when
its event is stored, and a client that retries would write it twice. So step 4 never raises
(each step's failure is logged with the session id and repaired where it can be: see
:class:`~.postcommit.Step`), and it runs to its end even if the caller is cancelled after the
commit: the store calls it back when the commit is done, whether or not anyone still waits.

There is one path for every store. A store that commits inline (the memory store) has run
step 4 by the time ``append_nowait`` returns, so a command then has no suspension point at all,
which is most of its cost; a durable store (SQLite, Postgres) hands back something to await.

The commands themselves are :class:`~.session.Session`'s.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, cast

import msgspec

from .._sync import CommitLock
from ..errors import SessionTerminated
from ..events import Event, EventType
from ..payloads import SessionStatusData, data_of
from ..store.base import CommitOutcomeUnknown
from .postcommit import Step, after_commit, report_fault
from .state import Status

if TYPE_CHECKING:
    from ..tools.sandbox import Sandbox
    from .services import SessionServices
    from .session import Session
    from .state import SessionState
    from .supervisor import Supervisor

__all__ = ["STATUS_DATA", "SessionCore", "status_data"]

#: A commit handed to the store: its events, the command's follow-up, and whether it is activity.
_InFlight = tuple[list[Event], "Callable[[], object] | None", bool]

#: :func:`~.postcommit.after_commit`, which takes the :class:`~.session.Session` that every
#: ``SessionCore`` is; named once here for the base class (no ``cast`` call per commit).
_after_commit = cast(
    "Callable[[SessionCore, list[Event], Callable[[], object] | None, bool], None]", after_commit
)


#: Shared, read-only event payloads for the commonest status moves: an idle session's log then
#: holds no dict of its own for them.
STATUS_DATA: Final[dict[tuple[Status, Status], dict[str, Any]]] = {
    (a, b): data_of(SessionStatusData(status=b.value, previous=a.value))
    for a, b in (
        (Status.INITIALIZING, Status.ACTIVE),
        (Status.ACTIVE, Status.IDLE),
        (Status.IDLE, Status.ACTIVE),
        (Status.ACTIVE, Status.TERMINATING),
        (Status.IDLE, Status.TERMINATING),
    )
}


def status_data(previous: Status, to: Status, error: str | None = None) -> dict[str, Any]:
    """The payload of a ``session_status`` event for the move ``previous`` -> ``to``: a shared
    one (:data:`STATUS_DATA`) for the commonest moves without an error."""
    data = STATUS_DATA.get((previous, to)) if error is None else None
    if data is None:
        data = data_of(
            SessionStatusData(
                status=to.value,
                previous=previous.value,
                error=msgspec.UNSET if error is None else error,
            )
        )
    return data


class SessionCore:
    """What a live session holds, and the commit path its commands share."""

    __slots__ = (
        "_in_flight",
        "idle_since",
        "last_activity",
        "lock",
        "sandbox",
        "services",
        "snapshot_seq",
        "state",
        "stopping",
        "supervisor",
        "terminating",
        "timer_at",
    )

    def __init__(self, state: SessionState, services: SessionServices) -> None:
        self.state = state
        self.services = services
        self.lock = CommitLock()
        self.supervisor: Supervisor | None = None
        self.sandbox: Sandbox | None = None
        now = services.clock.monotonic()
        self.last_activity = now
        self.idle_since = now
        self.timer_at: float | None = None  # `when` of this session's live timer entry
        self.terminating = False
        #: The runtime is stopping it (a shutdown), not ending it: it lives on in the store,
        #: and its workers leave what they were doing for the next start to finish.
        self.stopping = False
        self.snapshot_seq = 0  # seq of the newest snapshot written (or loaded)
        # The commits handed to the store and not settled yet, oldest first: their events,
        # ``after`` and ``activity``, for :meth:`_committed` (the store settles a session's
        # commits in order). ``None`` when there are none, which is nearly always: only
        # appends queued behind one another (:meth:`queue_command`) make more than one. So
        # the store calls back one bound method, and no closure is made per commit.
        self._in_flight: _InFlight | list[_InFlight] | None = None

    @property
    def session_id(self) -> str:
        return self.state.session_id

    @property
    def status(self) -> Status:
        return self.state.status

    # --- the commit path ------------------------------------------------------------------------

    def can_commit_nowait(self) -> bool:
        """True if a commit can happen right now, synchronously (a store that commits inline,
        lock free, no earlier commit still in flight)."""
        return (
            self.services.commits_inline
            and not self.lock.locked()
            and not self.terminating
            and self._in_flight is None
        )

    def transition_nowait(self, to: Status) -> None:
        """:meth:`transition` for when :meth:`can_commit_nowait` holds."""
        data = status_data(self.state.status, to)
        _, waiting = self._queue([(EventType.SESSION_STATUS, data)], None, False)
        assert waiting is None, "a store that commits inline returned something to await"

    def _events(self, items: Iterable[tuple[EventType, dict[str, Any]]]) -> list[Event]:
        when = datetime.fromtimestamp(self.services.clock.time(), UTC)
        sid = self.state.session_id
        # Numbered after the commits still in flight, if any: they will be stored first.
        in_flight = self._in_flight
        if in_flight is None:
            seq = self.state.seq
        else:
            seq = (in_flight[-1] if isinstance(in_flight, list) else in_flight)[0][-1].seq
        events = []
        for type_, data in items:
            seq += 1
            events.append(Event(type_, sid, seq, when, data))
        return events

    def _queue(
        self,
        items: Iterable[tuple[EventType, dict[str, Any]]],
        after: Callable[[], object] | None,
        activity: bool,
    ) -> tuple[list[Event], Awaitable[None] | None]:
        """Number the events and hand them to the store (see :meth:`commit`)."""
        events = self._events(items)
        entry: _InFlight = (events, after, activity)
        in_flight = self._in_flight
        if in_flight is None:  # the common case: one commit at a time, no list made
            self._in_flight = entry
        elif isinstance(in_flight, list):
            in_flight.append(entry)
        else:
            self._in_flight = [in_flight, entry]
        lock = self.lock
        lock.begin()
        try:
            waiting = self.services.append_nowait(self.state.session_id, events, self._committed)
        except BaseException:  # refused before it was taken: the store will not call back
            self._forget(entry)
            lock.end()
            raise
        return events, waiting

    def _forget(self, entry: _InFlight) -> None:
        """Take back ``entry``, the newest commit in flight (the store refused it)."""
        in_flight = self._in_flight
        if isinstance(in_flight, list):
            in_flight.pop()
            self._in_flight = in_flight[0] if len(in_flight) == 1 else in_flight
        else:
            assert in_flight is entry
            self._in_flight = None

    async def commit(
        self,
        items: Iterable[tuple[EventType, dict[str, Any]]],
        *,
        after: Callable[[], object] | None = None,
        activity: bool = False,
    ) -> list[Event]:
        """Append the events, then run the post-commit section. The caller holds :attr:`lock`
        (exclusively: no earlier commit is in flight).

        An error raised here means nothing was stored. Once the store has taken the events,
        the post-commit section (:func:`~.postcommit.after_commit`: apply, publish, ``after``,
        and the runtime's ``after_command`` hook when ``activity`` says this is a client
        command) runs to its end even if the caller is cancelled meanwhile, so the projection
        never falls behind the log and nothing the command implies is skipped; and it never
        raises. A cancelled caller's commit still counts as in flight until it settles, so
        the next holder of the lock waits for it (:meth:`CommitLock.acquire`).
        """
        events, waiting = self._queue(items, after, activity)
        if waiting is not None:
            await self.settle(waiting)
        return events

    async def settle(self, waiting: Awaitable[None]) -> None:
        """Await a commit handed to the store. If the store answers that its outcome is not
        known yet (:class:`~jidoka.store.base.CommitOutcomeUnknown`), the lock is told, so the
        commands queued behind it fail at once rather than wait for the store to come back."""
        try:
            await waiting
        except CommitOutcomeUnknown as exc:
            self.lock.doubt(exc)
            raise

    def _committed(self, error: BaseException | None) -> None:
        """The store settled the oldest commit in flight (before ``append_nowait`` returned,
        for a store that commits inline): the post-commit section if it committed."""
        in_flight = self._in_flight
        assert in_flight is not None, "a store settled a commit it was not given"
        if isinstance(in_flight, list):
            entry = in_flight.pop(0)
            self._in_flight = in_flight[0] if len(in_flight) == 1 else in_flight
        else:
            entry, self._in_flight = in_flight, None
        events, after, activity = entry
        try:
            if error is None:  # else nothing was stored: nothing follows
                _after_commit(self, events, after, activity)
                state = self.state
                if state.history and not self.services.commits_inline:
                    state.turn_events()  # its log is on disk: keep messages, not events
        finally:
            self.lock.end()

    def report_fault(self, step: Step, error: Exception) -> None:
        """A step after a commit failed: log it, let the runtime repair what it broke (see
        :func:`~.postcommit.report_fault`). Never raises."""
        report_fault(cast("Session", self), step, error)

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
        self._activity(items)
        return await self.commit(items, after=after, activity=True)

    def queue_command(
        self,
        items: list[tuple[EventType, dict[str, Any]]],
        after: Callable[[], object] | None = None,
    ) -> tuple[list[Event], Awaitable[None] | None]:
        """:meth:`command` for an append that may queue behind commits still in flight: the
        caller holds :attr:`lock` by :meth:`~CommitLock.acquire_to_append`, releases it once
        this returns, then awaits what it returns (``None``: committed already).

        So several callers appending to one session each hand their events to the store
        without waiting for the previous commit, and the store can put them all in one
        transaction: one ``fsync`` for many messages of one session. Only an append whose
        checks do not read the projection may come this way, and only to an ``active``
        session or one with nothing in flight: an idle session's move back to ``active``
        must be decided on a settled status (the caller waits for
        :meth:`~CommitLock.settled` first).
        """
        assert not self.lock.pending or self.state.status is Status.ACTIVE
        self._activity(items)
        return self._queue(items, after, True)

    def _activity(self, items: list[tuple[EventType, dict[str, Any]]]) -> None:
        self.ensure_writable()
        self.last_activity = self.services.clock.monotonic()
        if self.state.status is Status.IDLE:
            items.insert(0, (EventType.SESSION_STATUS, STATUS_DATA[Status.IDLE, Status.ACTIVE]))

    async def transition(self, to: Status, *, error: str | None = None) -> Event:
        """Commit a ``session_status`` event (the caller checked the move and holds the lock)."""
        data = status_data(self.state.status, to, error)
        (event,) = await self.commit([(EventType.SESSION_STATUS, data)])
        return event
