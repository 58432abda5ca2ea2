"""The run verbs of :class:`~jidoka.Client` (``start_run``, ``get_run``, ``list_runs``,
``join_run``, ``cancel_run``), kept beside it so the facade stays one screenful per concern.
The work is :class:`~jidoka.runs.service.Runs`'s; these check the session and open spans."""

from __future__ import annotations

from typing import Any

from .runs.info import RunInfo, RunPage
from .runs.service import Runs
from .session.manager import SessionManager

__all__ = ["RunMethods"]


class RunMethods:
    """Mixed into :class:`~jidoka.Client`: background runs (issue 18)."""

    __slots__ = ()
    _manager: SessionManager
    _runs: Runs

    async def start_run(
        self,
        session_id: str,
        text: str,
        *,
        multitask: str = "reject",
        webhook: str | None = None,
        idempotency_key: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> RunInfo:
        """Start an agent turn of ``text`` and return at once with its run (``queued``): poll
        it (:meth:`get_run`), wait for it (:meth:`join_run`), watch its events (they carry
        its ``run_id``) or :meth:`cancel_run` it. ``multitask`` is what happens if a run is
        under way: ``reject`` (``SessionBusy``), ``enqueue`` (it waits its turn) or
        ``interrupt`` (the running one stops, ``interrupted``). ``webhook`` is POSTed the
        run, signed, when it ends (it must match the server's allow-list). A retry with the
        same ``idempotency_key`` (within 24 hours) answers the first run instead of starting
        another; the same key for a different request is an ``InvalidArgument``."""
        with self._manager.telemetry.span(
            "start_run", session_id if isinstance(session_id, str) else None
        ):
            return await self._runs.start(
                session_id,
                text,
                multitask=multitask,
                webhook=webhook,
                idempotency_key=idempotency_key,
                metadata=metadata,
            )

    async def get_run(self, session_id: str, run_id: str) -> RunInfo:
        """The run as it is now (``RunNotFound`` if the session has no run with that id)."""
        session = await self._manager.info(session_id)
        return await self._runs.get_run(session.session_id, run_id)

    async def list_runs(
        self,
        session_id: str,
        *,
        status: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RunPage:
        """A page of the session's runs, newest first (``status`` filters; ``cursor`` is the
        previous page's ``next_cursor``)."""
        session = await self._manager.info(session_id)
        return await self._runs.list_runs(
            session.session_id, status=status, limit=limit, cursor=cursor
        )

    async def join_run(
        self,
        session_id: str,
        run_id: str,
        *,
        timeout: float = 30.0,  # noqa: ASYNC109 - the contract's name; asyncio.timeout inside
    ) -> RunInfo:
        """Wait for the run to end (at most ``timeout`` seconds) and return it: its
        ``message`` and ``usage`` are what :meth:`chat` would have returned. Still ``queued``
        or ``running`` if the time ran out; cancelling this call does not stop the run."""
        session = await self._manager.info(session_id)
        return await self._runs.join(session.session_id, run_id, timeout)

    async def cancel_run(self, session_id: str, run_id: str) -> RunInfo:
        """Cancel the run: a queued one never starts, a running one stops (its partial answer
        kept); both end ``cancelled``. A run that already ended is returned as it is."""
        with self._manager.telemetry.span(
            "cancel_run", session_id if isinstance(session_id, str) else None
        ):
            session = await self._manager.session(session_id)
            return await self._runs.cancel(session.session_id, run_id)
