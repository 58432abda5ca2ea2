"""A session's life in the manager: creation, workers and their crashes, termination.

Kept together because they are one story told in commits: ``session_created`` and the move to
``active``, one append, make a session live; its workers run under a
:class:`~.supervisor.Supervisor` whose crash reports end up in the log (a session over its
restart intensity is terminated with ``error``, on a task of its own — nothing spans two
sessions); the workers' stop, then ``terminating``, ``terminated`` and ``session_terminated`` in
one append, retire it, leaving a tombstone. Each command is one durable commit (one ``fsync``).

Termination is awaited, never timed: the session's workers are cancelled and awaited (bounded by
the grace period), its subscriptions ended, its cache entries and store log released, and only
then is it replaced by its tombstone. Create, restore and terminate run to their end even if
their caller is cancelled (:meth:`~.background.BackgroundTasks.to_completion`): a terminate
waits for the workers before it commits, and what follows the commits (the idle timer,
telemetry, ending the streams) is reported if it fails, never raised: the commits stand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec

from ..config import Settings
from ..errors import InvalidArgument, InvalidTransition, LimitExceeded, RuntimeClosed, StoreError
from ..events import EventType
from ..ids import IdGenerator
from ..payloads import (
    ErrorData,
    SessionCreatedData,
    SessionTerminatedData,
    data_of,
    event_item,
)
from ..telemetry import SESSION_ID_ATTRIBUTE, Telemetry
from ..tools.sandbox import resolve_project_root
from .background import BackgroundTasks
from .core import status_data
from .idle import IdleReaper
from .info import SessionInfo
from .postcommit import Step
from .registry import SessionRegistry
from .session import Session, SessionServices
from .spans import guarded_span
from .state import REASON_ERROR, SessionState, Status, check_transition, json_size
from .supervisor import Supervisor, WorkerCrash, WorkerFactory

__all__ = ["Lifecycle"]


class Lifecycle:
    """Creates sessions, runs their workers, and terminates them."""

    def __init__(
        self,
        settings: Settings,
        services: SessionServices,
        telemetry: Telemetry,
        registry: SessionRegistry,
        tasks: BackgroundTasks,
        idle: IdleReaper,
        *,
        terminate: Callable[[str, str, str | None], Coroutine[Any, Any, None]],
    ) -> None:
        self._settings = settings
        self._services = services
        self._telemetry = telemetry
        self._registry = registry
        self._tasks = tasks
        self._idle = idle
        self._terminate = terminate  # by id, quietly: for a worker that keeps crashing
        self._clock = services.clock
        self._ids = IdGenerator(services.clock)
        self._default_config = settings.session_defaults
        self._default_config_dict = self._default_config.to_dict()

    # --- create -----------------------------------------------------------------------------------

    async def create(
        self,
        *,
        metadata: object,
        config: object,
        llm_config: object,
        project_root: object,
        owner: object,
    ) -> str:
        registry = self._registry
        registry.check_open()
        if owner is not None and (not isinstance(owner, str) or not owner or len(owner) > 256):
            raise InvalidArgument(
                f"owner must be a non-empty string of at most 256 characters, got {owner!r}",
                argument="owner",
            )
        with guarded_span(self._telemetry, "create_session") as span:
            started = self._clock.monotonic()
            settings = self._settings
            meta = self.json_object(metadata, "metadata", settings.max_metadata_bytes)
            llm = self.json_object(llm_config, "llm_config", settings.max_llm_config_bytes)
            cfg = settings.session_config(config)
            registry.reserve()
            try:
                root = None
                if project_root is not None:
                    root = await self._services.blocking(resolve_project_root, project_root)
                registry.check_open()
                session_id = self._ids.new()
                if span is not None:
                    span.set_attribute(SESSION_ID_ATTRIBUTE, session_id)
                state = SessionState(session_id)
                session = Session(state, self._services)
                created = data_of(
                    SessionCreatedData(
                        status=Status.INITIALIZING.value,
                        metadata=meta,
                        config=(
                            self._default_config_dict
                            if cfg is self._default_config
                            else cfg.to_dict()
                        ),
                        llm_config=llm,
                        project_root=root,
                        owner=msgspec.UNSET if owner is None else owner,
                    )
                )
            except BaseException:
                registry.unreserve()
                raise
            await self.open(session, created, started, f"jidoka:{session_id}:create")
            return session_id

    async def open(
        self,
        session: Session,
        created: dict[str, Any],
        started: float | None,
        name: str,
        *,
        then: list[tuple[EventType, dict[str, Any]]] | None = None,
    ) -> None:
        """Bring a new (or restored, or forked) session to life, to completion (see
        :meth:`_open`); the caller has reserved its place (:meth:`SessionRegistry.reserve`).
        Until its commit is done the id is *opening*: nobody loads it from the store meanwhile.
        ``then``: events of the same commit, after the move to ``active``."""
        self._registry.opening.add(session.session_id)
        await self._tasks.to_completion(
            self._open(session, created, started, then or []), name, inline=self.never_waits()
        )

    def new_id(self) -> str:
        """A new session id."""
        return self._ids.new()

    @property
    def max_metadata(self) -> int:
        return self._settings.max_metadata_bytes

    async def _open(
        self,
        session: Session,
        created: dict[str, Any],
        started: float | None,
        then: list[tuple[EventType, dict[str, Any]]],
    ) -> None:
        """Commit ``session_created`` and the move to ``active``, make the session live, arm its
        idle timer. Releases the reservation when the commits are done (or failed), not when a
        cancelled caller leaves. What follows the commits is logged if it fails, never raised:
        the session exists, and a caller told otherwise would create another."""
        state = session.state
        registry = self._registry
        try:
            async with session.lock:
                # One append, one durable commit: a session is live as soon as it exists.
                await session.commit(
                    [
                        (EventType.SESSION_CREATED, created),
                        (
                            EventType.SESSION_STATUS,
                            status_data(Status.INITIALIZING, Status.ACTIVE),
                        ),
                        *then,
                    ]
                )
                if state.config == self._default_config:
                    state.config = self._default_config  # share one instance
            registry.tombstones.pop(session.session_id, None)  # a restored one's
            registry.live[session.session_id] = session
        finally:
            registry.opening.discard(session.session_id)
            registry.unreserve()
        try:
            self._idle.schedule(session, session.last_activity + state.config.idle_after_seconds)
        except Exception as exc:
            session.report_fault(Step.IDLE_TIMER, exc)
        try:
            self._telemetry.sessions_created.add(1)
            if started is not None:
                self._telemetry.create_duration.record(self._clock.monotonic() - started)
        except Exception as exc:
            session.report_fault(Step.TELEMETRY, exc)

    def never_waits(self) -> bool:
        """True if the store commits inline (and a bus never waits): a commit then has no
        suspension point, so nothing can cancel a run of commits halfway and it needs no task
        of its own."""
        return self._services.commits_inline

    def json_object(self, value: object, argument: str, limit: int) -> dict[str, Any]:
        """``value`` checked as a JSON object of at most ``limit`` bytes (``{}`` for ``None``)."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise InvalidArgument(
                f"{argument} must be a JSON object, got {type(value).__name__}", argument=argument
            )
        try:
            size = json_size(value)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"{argument} is not JSON: {exc}", argument=argument) from None
        if size > limit:
            raise LimitExceeded(f"max_{argument}_bytes", limit, actual=size)
        copy: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(value))
        return copy

    # --- workers ----------------------------------------------------------------------------------

    def start_worker(
        self, session: Session, name: str, factory: WorkerFactory
    ) -> asyncio.Task[None]:
        """Run ``factory()`` as a supervised worker of the session (restarted if it crashes)."""
        session.ensure_writable()
        if not callable(factory):
            raise InvalidArgument("factory must be a coroutine function", argument="factory")
        if session.supervisor is None:
            config = session.state.config
            session.supervisor = Supervisor(
                session.session_id,
                max_restarts=config.max_restarts,
                max_restart_seconds=config.max_restart_seconds,
                clock=self._clock,
                on_crash=self._on_crash,
            )
        return session.supervisor.start(name, factory)

    def _on_crash(self, crash: WorkerCrash) -> None:
        self._telemetry.workers_restarted.add(0 if crash.gave_up else 1)
        session = self._registry.live.get(crash.session_id)
        if session is None or session.state.status in (Status.TERMINATING, Status.TERMINATED):
            return
        message = f"worker {crash.worker!r} crashed: {crash.error!r}"
        data = data_of(ErrorData(worker=crash.worker, message=message, restarts=crash.restarts))
        self._tasks.spawn(self._report_crash(session, data), f"jidoka:{session.session_id}:crash")
        if crash.gave_up:
            config = session.state.config
            error = (
                f"{message}; more than {config.max_restarts} restarts within "
                f"{config.max_restart_seconds:g}s"
            )
            self._tasks.spawn(
                self._terminate(session.session_id, REASON_ERROR, error),
                f"jidoka:{session.session_id}:give-up",
            )

    async def _report_crash(self, session: Session, data: dict[str, Any]) -> None:
        async with session.lock:
            # Reports queued before a termination still go in, in order, before it.
            if session.state.status not in (Status.TERMINATING, Status.TERMINATED):
                await session.commit([(EventType.ERROR, data)])

    # --- terminate --------------------------------------------------------------------------------

    async def terminate(self, session: Session, reason: str, error: str | None) -> SessionInfo:
        """Terminate a live session (the caller found it and checked ``reason``)."""
        sid = session.session_id
        if session.terminating:
            raise InvalidTransition(sid, Status.TERMINATING, Status.TERMINATING)
        check_transition(sid, session.state.status, Status.TERMINATING)
        session.terminating = True
        with guarded_span(self._telemetry, "terminate_session", sid):
            return await self._tasks.to_completion(
                self._terminate_now(session, reason, error),
                f"jidoka:{sid}:terminate",
                inline=self._terminates_inline(session),
            )

    def _terminates_inline(self, session: Session) -> bool:
        """Whether a termination may run in the caller's task (see ``to_completion``).

        Yes for the runtime's own tasks (only its shutdown cancels them) and for a worker of
        the session (its supervisor spares the task that asks). Yes when nothing in it can
        wait: a store and bus that never wait, no workers to await, the lock free, nobody
        subscribed to the session (whose stream might have to catch up before it ends), so
        the common termination costs no task and no turn of the event loop.
        """
        current = asyncio.current_task()
        supervisor = session.supervisor
        if self._tasks.owns(current) or (supervisor is not None and current in supervisor.tasks()):
            return True
        return (
            supervisor is None
            and self.never_waits()
            and not session.lock.locked()
            and self._services.bus.subscriber_count(session.session_id) == 0
        )

    async def _terminate_now(self, session: Session, reason: str, error: str | None) -> SessionInfo:
        """Stop the workers, then commit ``terminating``, ``terminated`` and
        ``session_terminated`` in one append (one durable commit), and retire the session.

        The workers stop first, so whatever they commit while stopping (a turn's end) comes
        before the termination in the log, and the termination is one commit whether or not
        the session had workers. Meanwhile :attr:`~.core.SessionCore.terminating` refuses new
        commands and the session reads ``terminating``. A process that dies before the commit
        brings the session back on restart: its termination was never acknowledged.

        Only a failed commit is raised. Whatever fails after it is logged and the termination
        goes on: a failure stopping the workers, recording a metric or ending the streams must
        not leave a session terminating forever, nor tell the caller that a termination the
        log holds did not happen (a retry would then be refused).
        """
        started = self._clock.monotonic()
        try:
            try:
                await self.release(session)
            except Exception as exc:
                session.report_fault(Step.WORKERS, exc)
            async with session.lock:
                previous = session.state.status  # a worker may have moved it meanwhile
                await session.commit(
                    [
                        (EventType.SESSION_STATUS, status_data(previous, Status.TERMINATING)),
                        (
                            EventType.SESSION_STATUS,
                            status_data(Status.TERMINATING, Status.TERMINATED, error),
                        ),
                        event_item(SessionTerminatedData(reason=reason, error=error)),
                    ]
                )
            try:
                self._telemetry.sessions_terminated.add(1, {"reason": reason})
                self._telemetry.terminate_duration.record(self._clock.monotonic() - started)
            except Exception as exc:
                session.report_fault(Step.TELEMETRY, exc)
        finally:
            await self.retire(session)
        return SessionInfo.of(session.state)

    async def release(self, session: Session) -> None:
        """Stop a session's workers and drop its cached files (awaited, bounded by the grace)."""
        if session.supervisor is not None:
            abandoned = await session.supervisor.aclose(self._settings.shutdown_grace_seconds)
            self._tasks.abandon(abandoned)
            session.supervisor = None
        self._services.cache.evict_session(session.session_id)

    async def retire(self, session: Session) -> None:
        """Replace a finished session by its tombstone and free what it held."""
        sid = session.session_id
        self._registry.retire(session)
        # What follows may fail (logged); the session is retired all the same.
        try:
            self._idle.prune()
        except Exception as exc:
            session.report_fault(Step.IDLE_TIMER, exc)
        try:
            # Streams end after the last events; by then the tombstone answers for the session.
            await self._services.bus.close_session(sid)
        except Exception as exc:
            session.report_fault(Step.STREAMS, exc)
        try:
            await self._services.store.release(sid)
        except (StoreError, RuntimeClosed):
            pass
        except Exception as exc:
            session.report_fault(Step.RELEASE, exc)
