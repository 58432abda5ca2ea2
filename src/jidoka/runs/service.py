"""Runs: agent turns a client starts and walks away from (``start_run``), then polls, joins or
cancels by id. A ``chat`` is a run its caller waits on.

A run is accepted in two steps with no suspension point between the first step's check and its
effect: its turn takes its place in the session's queue under the run's ``multitask`` (so a
second ``reject`` run finds the session busy at once), then its ``run_queued`` event is
committed, and only then may the turn start (:class:`~jidoka.llm.turns.Turn`'s ``admitted``).
A run whose event could not be committed never happened (its turn is withdrawn).

Runs are durable: the log says which runs were queued or running, so a restart (or the node
that takes the session over) ends a running one ``interrupted`` (in the recovery of the
session, never re-run: its tools may have had effects) and runs the queued ones, in order
(:meth:`Runs.resume`). At start-up the store's index of unfinished runs says which sessions to
load for that (:meth:`Runs.recover`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final

from ..errors import InvalidArgument, JidokaError, RunNotFound, SessionBusy
from ..events import Event
from ..ids import IdGenerator
from ..llm.agents import MAX_CHAT_CHARS, AgentPool
from ..llm.turn_queue import TurnQueue
from ..llm.turns import ChatResult, Turn
from ..payloads import RunCompletedData, RunQueuedData, event_item
from ..session.manager import SessionManager
from ..session.session import Session
from ..session.state import Message
from ..store.runs import FINAL_RUN_STATUSES, RUN_STATUSES, RunIndex, RunRecord
from .idempotency import Idempotency, check_key, request_hash
from .info import RunInfo, RunPage, WebhookStatus, run_info

__all__ = ["MAX_JOIN_SECONDS", "MULTITASK", "Runs"]

logger = logging.getLogger("jidoka.runs")

#: What a run does about a run under way, and the session policy each one is.
MULTITASK: Final = {"reject": "reject", "enqueue": "queue", "interrupt": "interrupt"}
#: The session's ``concurrent_turn_policy`` as a chat's ``multitask``.
_POLICY_MULTITASK: Final = {"reject": "reject", "queue": "enqueue", "interrupt": "interrupt"}
#: The longest ``join_run`` waits before it answers the run as it is.
MAX_JOIN_SECONDS: Final = 3600.0
MAX_RUN_METADATA_BYTES: Final = 16 * 1024


class Runs:
    """Starts, finds, joins and cancels the runtime's runs (see the module's docstring)."""

    def __init__(
        self,
        manager: SessionManager,
        agents: AgentPool,
        index: RunIndex,
        *,
        check_webhook: Callable[[str, str | None], str] | None = None,
        on_end: Callable[[str], None] | None = None,
    ) -> None:
        self._manager = manager
        self._agents = agents
        self._index = index
        self._ids = IdGenerator(manager.services.clock)
        #: Checks a webhook URL against the allow-list (``None``: webhooks are refused).
        self._check_webhook = check_webhook
        self._on_end = on_end
        self._keys = Idempotency(index, manager.services.clock.time)
        #: Callers of ``join_run`` waiting on this node, by run id.
        self._waiting: dict[str, tuple[asyncio.Event, int]] = {}
        agents.run_ended = self.ended
        manager.on_loaded.append(self.resume)

    # --- starting -------------------------------------------------------------------------------

    async def start(
        self,
        session_id: object,
        text: object,
        *,
        multitask: object = "reject",
        webhook: object = None,
        idempotency_key: object = None,
        metadata: object = None,
    ) -> RunInfo:
        """Accept a run and answer at once: ``queued``, its ``run_queued`` committed (with an
        idempotency key already used for the same request: that request's run, as it is)."""
        session = await self._manager.session(session_id)
        sid = session.session_id
        text = _text(text, sid)
        if not isinstance(multitask, str) or multitask not in MULTITASK:
            raise InvalidArgument(
                f"multitask must be one of {', '.join(MULTITASK)}, got {multitask!r:.40}",
                argument="multitask",
                session_id=sid,
            )
        url = self._webhook(webhook, sid)
        meta = self._metadata(metadata)
        key = check_key(idempotency_key, sid)
        if key is None:
            _, event = await self._queue(session, text, multitask, url, meta, None, None)
            return self._queued_info(event)
        fields = {"text": text, "multitask": multitask, "webhook": url, "metadata": meta}
        digest = request_hash("start_run", sid, fields)
        owner = session.state.owner
        async with self._keys.hold(owner, key):
            record = await self._keys.find(owner, key, digest, sid)
            if record is not None and record.run_id is not None:
                return await self.get_run(sid, record.run_id)
            _, event = await self._queue(session, text, multitask, url, meta, key, digest)
            return self._queued_info(event)

    async def submit(self, session_id: object, text: object) -> asyncio.Future[ChatResult]:
        """A chat queued as a run under the session's ``concurrent_turn_policy``: returns once
        it is accepted (``SessionBusy``, ``LimitExceeded`` if it is not), with the future of
        its :class:`~jidoka.ChatResult`."""
        session = await self._manager.session(session_id)
        text = _text(text, session.session_id)
        multitask = _POLICY_MULTITASK[session.state.config.concurrent_turn_policy]
        turn, _ = await self._queue(session, text, multitask, None, None, None, None)
        return turn.future

    async def send_message(
        self, session_id: object, role: object, content: object, idempotency_key: object
    ) -> Message:
        """``send_message`` with an ``Idempotency-Key``: a retry answers the first message."""
        session = await self._manager.session(session_id)
        sid = session.session_id
        key = check_key(idempotency_key, sid)
        assert key is not None
        digest = request_hash("send_message", sid, {"role": role, "content": content})
        owner = session.state.owner
        async with self._keys.hold(owner, key):
            record = await self._keys.find(owner, key, digest, sid)
            if record is not None:
                found = await self._manager.services.store.read_events(
                    record.session_id, after_seq=record.seq - 1, limit=1
                )
                if found and found[0].seq == record.seq:
                    event = found[0]
                    return Message(
                        event.id, event.data["role"], event.data["content"], event.time, event.seq
                    )
            message: Message = await self._manager.run(
                sid, "send_message", lambda s: s.send_message(role, content, (key, digest))
            )
            return message

    async def chat(self, session_id: object, text: object) -> ChatResult:
        future = await self.submit(session_id, text)
        # The run belongs to the session, not to this caller: a caller that goes away does not
        # stop it; cancel() does.
        return await asyncio.shield(future)

    async def _queue(
        self,
        session: Session,
        text: str,
        multitask: str,
        webhook: str | None,
        metadata: dict[str, Any] | None,
        key: str | None,
        digest: str | None,
    ) -> tuple[Turn, Event]:
        session.ensure_writable()
        agent = await self._agents.agent(session)
        config = session.state.config
        run_id = "run_" + self._ids.new()
        # No suspension point from here to the submit: the policy sees the session as it is.
        turn = agent.submit(
            text,
            MULTITASK[multitask],
            config.max_queued_turns,
            run_id=run_id,
            webhook=webhook is not None,
        )
        data = RunQueuedData(run_id=run_id, text=text, multitask=multitask)
        extra: dict[str, Any] = {}
        if webhook is not None:
            extra["webhook"] = webhook
        if metadata:
            extra["metadata"] = metadata
        if key is not None and digest is not None:
            extra["idempotency_key"], extra["request_hash"] = key, digest
        item = event_item(data)
        item[1].update(extra)
        # The commit is the session's, not the caller's: a caller that goes away while it is
        # under way leaves the run to start if it was stored (never a run in the log that no
        # turn will run), or withdrawn if it was not.
        commit = asyncio.ensure_future(session.append_event(*item))
        commit.add_done_callback(lambda done: _admit(agent, turn, done))
        return turn, await asyncio.shield(commit)

    def _queued_info(self, event: Event) -> RunInfo:
        data = event.data
        return RunInfo(
            run_id=data["run_id"],
            session_id=event.session_id,
            status="queued",
            text=data["text"],
            multitask=data["multitask"],
            created_at=event.time,
            metadata=dict(data.get("metadata") or {}),
            webhook=None if "webhook" not in data else _webhook_status(data["webhook"]),
        )

    def _webhook(self, webhook: object, session_id: str) -> str | None:
        if webhook is None:
            return None
        if not isinstance(webhook, str):
            raise InvalidArgument(
                f"webhook must be a URL string, got {type(webhook).__name__}",
                argument="webhook",
                session_id=session_id,
            )
        if self._check_webhook is None:
            raise InvalidArgument(
                "webhooks are not enabled on this server (it needs JIDOKA_WEBHOOK_SECRET and "
                "an allow-list, --webhook-allow)",
                argument="webhook",
                session_id=session_id,
            )
        return self._check_webhook(webhook, session_id)

    def _metadata(self, metadata: object) -> dict[str, Any] | None:
        if metadata is None:
            return None
        lifecycle = self._manager.lifecycle
        value: dict[str, Any] = lifecycle.json_object(metadata, "metadata", MAX_RUN_METADATA_BYTES)
        return value

    # --- reading --------------------------------------------------------------------------------

    async def _record(self, session_id: str, run_id: object) -> RunRecord:
        if not isinstance(run_id, str) or not run_id or len(run_id) > 100:
            raise RunNotFound(session_id, str(run_id)[:100])
        record = await self._index.get_run(run_id)
        if record is None or record.session_id != session_id:
            raise RunNotFound(session_id, run_id)
        return record

    async def get_run(self, session_id: str, run_id: object) -> RunInfo:
        return run_info(await self._record(session_id, run_id))

    async def list_runs(
        self,
        session_id: str,
        *,
        status: object = None,
        limit: object = 100,
        cursor: object = None,
    ) -> RunPage:
        if status is not None and status not in RUN_STATUSES:
            raise InvalidArgument(
                f"status must be one of {', '.join(RUN_STATUSES)}, got {status!r:.40}",
                argument="status",
                session_id=session_id,
            )
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
            raise InvalidArgument(
                f"limit must be an integer from 1 to 1000, got {limit!r:.40}",
                argument="limit",
                session_id=session_id,
            )
        before: int | None = None
        if cursor is not None:
            if not isinstance(cursor, str) or not cursor.isdigit() or len(cursor) > 19:
                raise InvalidArgument(
                    f"cursor must be the next_cursor of a page, got {cursor!r:.40}",
                    argument="cursor",
                    session_id=session_id,
                )
            before = int(cursor)
        records = await self._index.list_runs(
            session_id, status=str(status) if status else None, before_seq=before, limit=limit + 1
        )
        more = len(records) > limit
        page = records[:limit]
        return RunPage(
            runs=[run_info(r) for r in page],
            next_cursor=str(page[-1].seq) if more and page else None,
        )

    # --- waiting and cancelling -----------------------------------------------------------------

    async def join(self, session_id: str, run_id: object, seconds: object = 30.0) -> RunInfo:
        """Wait until the run ends, at most ``seconds`` (the verb's ``timeout``); the run as
        it is then (a caller that finds it still ``running`` may join again)."""
        timeout = seconds
        if (
            not isinstance(timeout, int | float)
            or isinstance(timeout, bool)
            or not 0 <= timeout <= MAX_JOIN_SECONDS
        ):
            raise InvalidArgument(
                f"timeout must be a number of seconds from 0 to {MAX_JOIN_SECONDS:g}, "
                f"got {timeout!r:.40}",
                argument="timeout",
                session_id=session_id,
            )
        record = await self._record(session_id, run_id)
        if record.status in FINAL_RUN_STATUSES or timeout == 0:
            return run_info(record)
        assert isinstance(run_id, str)
        event, waiters = self._waiting.get(run_id, (asyncio.Event(), 0))
        self._waiting[run_id] = (event, waiters + 1)
        try:
            # Looked at again now that the waiter is in place: it may have ended meanwhile.
            record = await self._record(session_id, run_id)
            if record.status not in FINAL_RUN_STATUSES:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(float(timeout)):
                        await event.wait()
        finally:
            # The last waiter takes the event away (a run that ends elsewhere, on the node
            # that took its session over, never sets it).
            current = self._waiting.get(run_id)
            if current is not None and current[0] is event:
                if current[1] <= 1:
                    del self._waiting[run_id]
                else:
                    self._waiting[run_id] = (event, current[1] - 1)
        return await self.get_run(session_id, run_id)

    def ended(self, run_id: str) -> None:
        """A run ended on this node (its ``run_completed`` is committed): wake who waits."""
        waiting = self._waiting.pop(run_id, None)
        if waiting is not None:
            waiting[0].set()
        if self._on_end is not None:
            self._on_end(run_id)

    async def cancel(self, session_id: str, run_id: object) -> RunInfo:
        """Cancel a queued run (it never starts) or stop a running one (its partial answer is
        kept); a run that has ended is answered as it is."""
        record = await self._record(session_id, run_id)
        if record.status in FINAL_RUN_STATUSES:
            return run_info(record)
        assert isinstance(run_id, str)
        session = await self._manager.session(session_id)
        agent = self._agents.get(session.session_id)
        if agent is not None and agent.running(run_id):
            agent.cancel()
            return await self.join(session_id, run_id, MAX_JOIN_SECONDS)
        turn = agent.drop(run_id) if agent is not None else None
        if turn is not None and turn.admitted is not None and not turn.admitted.done():
            with contextlib.suppress(BaseException):
                await asyncio.shield(turn.admitted)
        if agent is not None and agent.running(run_id):  # it began meanwhile
            agent.cancel()
            return await self.join(session_id, run_id, MAX_JOIN_SECONDS)
        data = RunCompletedData(
            run_id=run_id, status="cancelled", message=None, usage=None, error=None
        )
        if record.queued.get("webhook"):
            data = RunCompletedData(
                run_id=run_id,
                status="cancelled",
                message=None,
                usage=None,
                error=None,
                webhook_id=f"msg_{run_id}",
            )
        async with session.lock:
            if run_id in (session.state.runs or {}):
                await session.command([event_item(data)])
        self.ended(run_id)
        return await self.get_run(session_id, run_id)

    # --- after a restart --------------------------------------------------------------------------

    def resume(self, session: Session) -> None:
        """A session was loaded from the store with runs still queued in its log: queue them
        again, in order (its recovery already ended the one that was running)."""
        queued = [rid for rid, status in (session.state.runs or {}).items() if status == "queued"]
        if not queued:
            return
        self._manager.background.spawn(
            self._resume(session, queued), f"jidoka:{session.session_id}:resume-runs"
        )

    async def _resume(self, session: Session, run_ids: list[str]) -> None:
        agent = await self._agents.agent(session)
        config = session.state.config
        for run_id in run_ids:
            record = await self._index.get_run(run_id)
            if record is None or record.status != "queued" or agent.has_run(run_id):
                continue
            turn = agent.submit(
                str(record.queued.get("text", "")),
                "queue",
                max(config.max_queued_turns, len(run_ids)),
                run_id=run_id,
                webhook=bool(record.queued.get("webhook")),
            )
            assert turn.admitted is not None
            turn.admitted.set_result(None)
            turn.future.add_done_callback(_retrieved)

    async def recover(self) -> int:
        """At start-up: load every session the store says has an unfinished run (its recovery
        ends a running run; :meth:`resume` queues the others). How many were loaded."""
        loaded = 0
        after: tuple[str, int] | None = None
        seen: set[str] = set()
        while True:
            page = await self._index.unfinished_runs(after=after, limit=100)
            if not page:
                return loaded
            for record in page:
                if record.session_id in seen or self._manager.is_live(record.session_id):
                    continue
                seen.add(record.session_id)
                try:
                    await self._manager.session(record.session_id)
                    loaded += 1
                except JidokaError as exc:  # another node's, or it cannot be loaded here
                    logger.info("runs of session %s not resumed here: %s", record.session_id, exc)
            after = (page[-1].session_id, page[-1].seq)


def _admit(agent: TurnQueue, turn: Turn, commit: asyncio.Future[Event]) -> None:
    """The run's ``run_queued`` commit ended: its turn may start, or it never happened."""
    error = SessionBusy(agent.session_id) if commit.cancelled() else commit.exception()
    if error is not None:
        agent.withdraw(
            turn, error if isinstance(error, Exception) else SessionBusy(agent.session_id)
        )
        return
    assert turn.admitted is not None
    if not turn.admitted.done():
        turn.admitted.set_result(None)


def _retrieved(future: asyncio.Future[ChatResult]) -> None:
    if not future.cancelled():
        future.exception()  # nobody waits on a resumed run's future: not "never retrieved"


def _text(text: object, session_id: str) -> str:
    if not isinstance(text, str):
        raise InvalidArgument(
            f"text must be a string, got {type(text).__name__}",
            argument="text",
            session_id=session_id,
        )
    if len(text) > MAX_CHAT_CHARS:
        raise InvalidArgument("text is too long", argument="text", session_id=session_id)
    return text


def _webhook_status(url: str) -> WebhookStatus:
    return WebhookStatus(url=url, state=None)
