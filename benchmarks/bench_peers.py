"""Durable appends next to the session stores of two peers users would pick instead.

- **OpenAI Agents SDK** ``SQLiteSession`` (``from agents import SQLiteSession``), file-backed:
  one instance per session on one database file, ``await session.add_items([item])`` with one
  ``{"role": "user", "content": ...}`` item per call. It runs each call in a worker thread
  (``asyncio.to_thread``) under a per-file lock and commits it on its own; its defaults are WAL
  and SQLite's default ``synchronous`` (FULL on this build).
- **Google ADK** ``DatabaseSessionService`` on SQLite (``sqlite+aiosqlite:///...``, SQLAlchemy
  async engine): ``await service.append_event(session, Event(author="user", content=...))``,
  the ``Event`` built per call as an agent would. Its defaults: rollback journal (``delete``),
  ``synchronous`` FULL. Each append reads the session's row and state rows and commits.

Both run with their own defaults (recorded in ``details``), each in a fresh directory under the
same scratch folder as Jidoka's runtime (``bench_durable.scratch_root``), so on the same disk.
Jidoka (``Runtime(..., store="sqlite")``, WAL + ``synchronous=FULL``) is measured in the same
repeats, the order rotating. Sessions are created (and each peer's session row written) before
the clock starts. Shapes: 1 session with sequential awaited appends, and 100 sessions x 20
messages with one task per session; the ADK, about a hundred times slower, runs fewer
sequential messages and fewer repeats (see ``Sizes``), which each row's notes state.

The peers are imported lazily: without them (``pip install -e '.[bench]'``, or
``JIDOKA_EXTRAS=dev,bench ./scripts/bench``) this module still imports and reports rows marked
*not installed*. The ADK's database service also needs SQLAlchemy's asyncio extra
(``google-adk[db]``, or ``sqlalchemy[asyncio]``) and ``aiosqlite``.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import math
import statistics
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._common import Baseline, Result, Target, clock, quiesce, run_async
from .bench_durable import (
    CONTENT,
    filesystem_of,
    jidoka_concurrent,
    jidoka_sequential,
    scratch_dir,
    scratch_root,
)

__all__ = ["NAME", "PEERS", "missing", "run"]

NAME = "peers"

OPENAI = "openai-agents"
ADK = "google-adk"
#: The peers, by distribution name.
PEERS = (OPENAI, ADK)

#: What each peer needs importable, and how to get it.
_REQUIRES: dict[str, tuple[tuple[str, ...], str]] = {
    OPENAI: (("agents",), "pip install openai-agents"),
    ADK: (
        ("google.adk.sessions.database_session_service", "sqlalchemy.ext.asyncio", "aiosqlite"),
        "pip install 'google-adk[db]' aiosqlite",
    ),
}

_TITLES = {
    OPENAI: "OpenAI Agents SDK SQLiteSession (file)",
    ADK: "Google ADK DatabaseSessionService (sqlite+aiosqlite)",
}

#: Quoted in the issue for a machine like ours (not measured here).
_QUOTES = {
    OPENAI: "OpenAI Agents SDK file store ~1.8k appends/s with 100 concurrent sessions (quoted)",
    ADK: "ADK DatabaseSessionService ~210 appends/s (quoted)",
}


@dataclass(frozen=True)
class Sizes:
    sequential: int  # messages per repeat, one session (Jidoka and OpenAI)
    adk_sequential: int  # the same for the ADK
    sessions: int
    per_session: int
    repeats: int  # Jidoka and OpenAI
    adk_repeats: int  # the first this-many repeats also measure the ADK


FULL = Sizes(
    sequential=2_000,
    adk_sequential=400,
    sessions=100,
    per_session=20,
    repeats=5,
    adk_repeats=3,
)
QUICK = Sizes(sequential=20, adk_sequential=10, sessions=4, per_session=3, repeats=1, adk_repeats=1)


def missing(peer: str) -> str | None:
    """Why ``peer`` cannot be measured here (a module does not import), or ``None``."""
    modules, how = _REQUIRES[peer]
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return f"not installed ({exc.name or module} missing; {how})"
    return None


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _item() -> dict[str, str]:
    return {"role": "user", "content": CONTENT}


# --- OpenAI Agents SDK --------------------------------------------------------------------------


def _sqlite_pragmas(database: Path) -> dict[str, Any]:
    import sqlite3

    conn = sqlite3.connect(database)
    try:
        return {
            "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0],
            "synchronous_default": conn.execute("PRAGMA synchronous").fetchone()[0],
        }
    finally:
        conn.close()


async def _openai_sequential(n: int) -> tuple[float, dict[str, Any]]:
    from agents import SQLiteSession

    with scratch_dir("openai-seq") as path:
        database = path / "agents.sqlite3"
        session = SQLiteSession("bench-session", database)
        try:
            for _ in range(20):  # warm-up, and the session row
                await session.add_items([_item()])
            quiesce()
            start = clock()
            for _ in range(n):
                await session.add_items([_item()])
            elapsed = clock() - start
            stored = len(await session.get_items())
        finally:
            session.close()
        info = {"stored": stored, **_sqlite_pragmas(database)}
    return n / elapsed, info


async def _openai_concurrent(sessions: int, per_session: int) -> tuple[float, dict[str, Any]]:
    from agents import SQLiteSession

    with scratch_dir("openai-conc") as path:
        database = path / "agents.sqlite3"
        handles = [SQLiteSession(f"bench-session-{i}", database) for i in range(sessions)]
        try:
            for handle in handles:  # each session's row, before the clock starts
                await handle.add_items([_item()])

            async def one(handle: Any) -> None:
                for _ in range(per_session):
                    await handle.add_items([_item()])

            quiesce()
            start = clock()
            async with asyncio.TaskGroup() as tg:
                for handle in handles:
                    tg.create_task(one(handle))
            elapsed = clock() - start
            stored = len(await handles[0].get_items())
        finally:
            for handle in handles:
                handle.close()
        info = {"stored_first_session": stored, **_sqlite_pragmas(database)}
    return sessions * per_session / elapsed, info


# --- Google ADK ---------------------------------------------------------------------------------


async def _adk_pragmas(service: Any) -> dict[str, Any]:
    from sqlalchemy import text

    async with service.db_engine.connect() as conn:
        journal = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
        synchronous = (await conn.execute(text("PRAGMA synchronous"))).scalar()
    return {"journal_mode": journal, "synchronous": synchronous}


def _adk_event() -> Any:
    from google.adk.events import Event
    from google.genai import types

    return Event(
        author="user",
        invocation_id="bench",
        content=types.Content(role="user", parts=[types.Part(text=CONTENT)]),
    )


async def _adk_run(
    path: Path, sessions: int, per_session: int, *, concurrent: bool
) -> tuple[float, dict[str, Any]]:
    from google.adk.sessions import DatabaseSessionService

    service = DatabaseSessionService(db_url=f"sqlite+aiosqlite:///{path / 'adk.sqlite3'}")
    try:
        handles = [
            await service.create_session(app_name="bench", user_id=f"user-{i}")
            for i in range(sessions)
        ]
        for handle in handles:  # warm-up: one event each, before the clock starts
            await service.append_event(handle, _adk_event())

        async def one(handle: Any) -> None:
            for _ in range(per_session):
                await service.append_event(handle, _adk_event())

        quiesce()
        start = clock()
        if concurrent:
            async with asyncio.TaskGroup() as tg:
                for handle in handles:
                    tg.create_task(one(handle))
        else:
            for handle in handles:
                await one(handle)
        elapsed = clock() - start
        stored = await service.get_session(
            app_name="bench", user_id=handles[0].user_id, session_id=handles[0].id
        )
        info = {
            "stored_first_session": len(stored.events) if stored else 0,
            **await _adk_pragmas(service),
        }
    finally:
        await service.close()
    return sessions * per_session / elapsed, info


async def _adk_sequential(n: int) -> tuple[float, dict[str, Any]]:
    with scratch_dir("adk-seq") as path:
        return await _adk_run(path, 1, n, concurrent=False)


async def _adk_concurrent(sessions: int, per_session: int) -> tuple[float, dict[str, Any]]:
    with scratch_dir("adk-conc") as path:
        return await _adk_run(path, sessions, per_session, concurrent=True)


# --- the comparison -----------------------------------------------------------------------------


@dataclass
class _Series:
    samples: list[float]
    info: dict[str, Any]
    errors: list[str]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _describe(exc.exceptions[0])
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first_line}"[:200]


async def _measure(
    series: _Series, call: Callable[[], Coroutine[Any, Any, tuple[float, dict[str, Any]]]]
) -> None:
    """One repeat of a peer. A failure (the ADK's ``database is locked`` under 100 concurrent
    writers) is counted and reported in the row, not the end of the suite. The call runs in a
    task of its own: on Python 3.11 a ``TaskGroup`` whose child fails while it is exiting leaves
    a cancellation request on the task around it (it never calls ``uncancel``), which would
    otherwise make every later ``async with Runtime()`` in this task raise ``CancelledError``."""
    try:
        rate, info = await asyncio.create_task(call())
    except Exception as exc:
        series.errors.append(_describe(exc))
        return
    series.samples.append(rate)
    series.info = info


def _not_measured(key: str, title: str, unit: str, reason: str, **details: Any) -> Result:
    short = reason.split(" (", 1)[0].split(":", 1)[0]  # "not installed", "failed"
    return Result(
        key=key,
        title=f"{title} ({short})",
        unit=unit,
        samples=[math.nan],
        notes=reason,
        details={"installed": False, "reason": reason, **details},
    )


def _rows(
    peer: str,
    sizes: Sizes,
    ours: dict[str, list[float]],
    theirs: dict[str, _Series],
    reason: str | None,
    fs: dict[str, Any],
) -> list[Result]:
    short = "openai" if peer == OPENAI else "adk"
    name = _TITLES[peer]
    seq_n = sizes.sequential if peer == OPENAI else sizes.adk_sequential
    shapes = {
        "single": (f"1 session, {seq_n:,} sequential awaited appends", seq_n),
        "many": (
            f"{sizes.sessions} sessions x {sizes.per_session} concurrent, one task each",
            sizes.sessions * sizes.per_session,
        ),
    }
    rows = []
    for shape, (label, messages) in shapes.items():
        key = f"peers.{short}_{shape}"
        title = f"Durable append, {label}: Jidoka vs {name}"
        if reason is not None:
            rows.append(_not_measured(key, title, "msg/s", reason, peer=peer))
            continue
        series = theirs[shape]
        failures = ""
        if series.errors:
            tried = len(series.errors) + len(series.samples)
            failures = f"{len(series.errors)} of {tried} repeats failed ({series.errors[0]})"
        if not series.samples:
            rows.append(
                _not_measured(
                    key,
                    title,
                    "msg/s",
                    f"failed: {failures}",
                    peer=peer,
                    installed=True,
                    errors=series.errors,
                )
            )
            continue
        peer_median = statistics.median(series.samples)
        jidoka_samples = ours[shape]
        repeats = len(series.samples)
        note = f"{messages:,} appends per repeat; {repeats} repeats of the peer"
        if peer == ADK and repeats < len(jidoka_samples):
            note += f" (Jidoka: {len(jidoka_samples)}), fewer because it is slow"
        if failures:
            note += f"; {failures}, not counted"
        if peer == ADK and shape == "single" and seq_n != sizes.sequential:
            note += f"; Jidoka ran {sizes.sequential:,} messages per repeat"
        rows.append(
            Result(
                key=key,
                title=title,
                unit="msg/s",
                samples=jidoka_samples,
                baseline=Baseline(name, series.samples),
                target=(
                    Target(">=", peer_median, f"ahead of the peer (≥ {peer_median:,.0f} msg/s)")
                    if shape == "many"
                    else None
                ),
                quoted=_QUOTES[peer],
                notes=note,
                details={
                    "installed": True,
                    "peer": peer,
                    "peer_version": _version(peer),
                    "peer_messages": messages,
                    "peer_settings": series.info,
                    "peer_errors": series.errors,
                    "filesystem": fs,
                },
            )
        )
    return rows


async def _main(sizes: Sizes, peers: Sequence[str]) -> list[Result]:
    reasons = {peer: missing(peer) for peer in peers}
    available = [peer for peer in peers if reasons[peer] is None]
    ours: dict[str, list[float]] = {"single": [], "many": []}
    theirs = {
        peer: {"single": _Series([], {}, []), "many": _Series([], {}, [])} for peer in available
    }
    fs = filesystem_of(scratch_root())
    if available:
        await jidoka_sequential(min(sizes.sequential, 200))  # warm-up
        for repeat in range(sizes.repeats):
            steps: list[tuple[str, str]] = [("jidoka", "single"), ("jidoka", "many")]
            for peer in available:
                if peer == ADK and repeat >= sizes.adk_repeats:
                    continue
                steps += [(peer, "single"), (peer, "many")]
            shift = repeat % len(steps)  # rotate the order, so no side always runs first
            for who, shape in steps[shift:] + steps[:shift]:
                if who == "jidoka":
                    if shape == "single":
                        rate, _ = await jidoka_sequential(sizes.sequential)
                    else:
                        rate, _ = await jidoka_concurrent(sizes.sessions, sizes.per_session)
                    ours[shape].append(rate)
                elif who == OPENAI:
                    await _measure(
                        theirs[who][shape],
                        (lambda: _openai_sequential(sizes.sequential))
                        if shape == "single"
                        else (lambda: _openai_concurrent(sizes.sessions, sizes.per_session)),
                    )
                else:
                    await _measure(
                        theirs[who][shape],
                        (lambda: _adk_sequential(sizes.adk_sequential))
                        if shape == "single"
                        else (lambda: _adk_concurrent(sizes.sessions, sizes.per_session)),
                    )
    results: list[Result] = []
    for peer in peers:
        results.extend(_rows(peer, sizes, ours, theirs.get(peer, {}), reasons[peer], fs))
    return results


def run(quick: bool = False, peers: Sequence[str] = PEERS) -> list[Result]:
    """Rows comparing Jidoka with each of ``peers``; a peer that does not import gets rows
    marked *not installed* (value NaN), and nothing is measured if none imports."""
    unknown = set(peers) - set(PEERS)
    if unknown:
        raise ValueError(f"unknown peers: {sorted(unknown)}; known: {', '.join(PEERS)}")
    sizes = QUICK if quick else FULL
    return run_async(lambda: _main(sizes, list(peers)))
