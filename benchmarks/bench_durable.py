"""The durable store (SQLite): append throughput, loading a long session, start-up.

Every Jidoka runtime here is ``Runtime(data_dir, store="sqlite", settings=Settings())``: WAL,
``synchronous=FULL`` (``durability="full"``), default ``snapshot_interval``, and ``JIDOKA_*``
variables cannot change what is measured. Each runtime and each baseline database gets a fresh
directory under one scratch folder (:func:`scratch_root`), so all of them write to the same
disk; the folder's filesystem is recorded with the results.

- **append, 1 session**: sequential awaited ``send_message`` calls on one session. Each call
  returns only after the commit that holds its event, so this is one commit (one ``fsync`` of the
  WAL) per message, plus the hops to the writer thread and back.
- **append, 100 sessions x 20**: one task per session, all started at once; the store's group
  commit puts every append waiting when the writer is free into one transaction.
- **baseline**: raw :mod:`sqlite3` in the same process, WAL + ``synchronous=FULL``, inserting
  rows of the same shape (the ``events`` table's DDL is read from a Jidoka database) with one
  commit per insert: the limit of any design that commits each call on its own. Measured in the
  same repeat as ours, the order alternating. Three references, same table and disk: the same
  per-insert commits done by a writer thread and awaited from asyncio (the floor of any design
  that keeps commits off the event loop); the group commit's own batches (100 rows, one per
  session, per transaction) with no asyncio around them; one session's rows in *one*
  transaction (the batching ceiling).
- **loading a 10,000-message session**: written through the API, the runtime closed, the data
  directory copied afresh for each repeat; the first ``get_conversation_history`` after
  reopening loads the session (newest snapshot plus the log's tail after it, then the
  ``active`` -> ``idle`` commit a recovered session makes). Default ``snapshot_interval``. With
  10,000 messages the log ends 2 events after a snapshot, so a second session of 9,997
  messages gives the longest tail (``snapshot_interval - 1`` events), and a third row deletes
  the snapshot first (full replay). Baseline: raw ``sqlite3`` reading the 10k session's whole
  log (connect, select, fetch). Warm page cache.
- **start-up with 10k / 100k stored sessions**: the sessions are created through the API (in a
  child process, concurrently in batches), then each measurement runs in a fresh child process:
  the time of ``async with Runtime(...)`` entry (since issue 15 it reads no session: they are
  found by id on first use) and the RSS after it; the child then checks, outside the timed part,
  that it loaded none and that the store lists all of them. Baselines: a child that reads the
  same ids with raw ``sqlite3``; for RSS, a child starting on a database with no sessions.

Timed regions end by waiting for background work the appends started (snapshot writes), so
deferred work cannot escape the clock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from ._common import ROOT, Baseline, Result, Target, clock, quiesce, run_async, run_child

__all__ = [
    "CONTENT",
    "DATABASE",
    "NAME",
    "durable_runtime",
    "filesystem_of",
    "run",
    "scratch_dir",
    "scratch_root",
]

NAME = "durable"

#: A typical short chat message (64 characters), as in ``bench_append``.
CONTENT = "Please refactor parse_config() so it also accepts TOML files. Ta"

#: The database file in a data directory (``jidoka.store.sqlite.DATABASE_NAME``).
DATABASE = "jidoka.sqlite3"

#: Overrides where the scratch directories go (default: ``build/bench-tmp`` in the repository,
#: which git ignores). Keep it on the disk you mean to measure.
TMPDIR_VARIABLE = "JIDOKA_BENCH_TMPDIR"

#: Quoted in the issue for a machine like ours (not measured here).
RAW_QUOTE = "raw per-commit SQLite ~5-6k commits/s, batched ~100k rows/s (quoted)"


@dataclass(frozen=True)
class Sizes:
    sequential: int  # messages per repeat, one session
    sessions: int  # concurrent sessions
    per_session: int  # messages per session per repeat
    batched: int  # rows in the raw one-transaction reference
    load_messages: int  # messages in the long session that is reloaded
    startup: tuple[int, ...]  # stored sessions at start-up
    repeats: int
    load_repeats: int
    startup_repeats: int


FULL = Sizes(
    sequential=2_000,
    sessions=100,
    per_session=20,
    batched=100_000,
    load_messages=10_000,
    startup=(10_000, 100_000),
    repeats=7,
    load_repeats=7,
    startup_repeats=5,
)
QUICK = Sizes(
    sequential=40,
    sessions=5,
    per_session=4,
    batched=500,
    load_messages=120,
    startup=(50, 150),
    repeats=2,
    load_repeats=1,
    startup_repeats=1,
)


# --- scratch directories on one disk ------------------------------------------------------------


def scratch_root() -> Path:
    """Where every benchmark database of this module (and of ``bench_peers``) is written."""
    override = os.environ.get(TMPDIR_VARIABLE)
    root = Path(override) if override else ROOT / "build" / "bench-tmp"
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A fresh, empty directory under :func:`scratch_root`, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=scratch_root()))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def filesystem_of(path: Path) -> dict[str, Any]:
    """The mount that holds ``path``: device, mount point, type (Linux), and its ``st_dev``."""
    target = str(path.resolve())
    best = {"device": "?", "mount": "", "type": "?"}
    with contextlib.suppress(OSError), open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            device, mount, fstype = line.split()[:3]
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best["mount"]):
                best = {"device": device, "mount": mount, "type": fstype}
    return {**best, "st_dev": os.stat(target).st_dev, "path": target}


def durable_runtime(data_dir: Path, **overrides: Any) -> Any:
    """A runtime on the SQLite store in ``data_dir`` with default settings except ``overrides``.

    The settings are explicit, so ``JIDOKA_*`` variables cannot change what is measured.
    """
    import jidoka

    return jidoka.Runtime(data_dir, store="sqlite", settings=jidoka.Settings(), **overrides)


def _rss() -> int:
    """Resident set size of this process in bytes (psutil if installed, else ``/proc``)."""
    try:
        import psutil
    except ImportError:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return int(psutil.Process().memory_info().rss)


async def _settle(rt: Any) -> None:
    """Inside the timed region: background work the appends started (snapshot writes)."""
    await asyncio.sleep(0)
    await rt.manager.wait_background()


def _store_counts(rt: Any) -> tuple[int, int]:
    store = rt.store
    return getattr(store, "commits", 0), getattr(store, "batched_requests", 0)


# --- raw sqlite3 --------------------------------------------------------------------------------


async def _events_ddl() -> str:
    """The ``CREATE TABLE events`` statement of a fresh Jidoka database."""
    with scratch_dir("ddl") as path:
        async with durable_runtime(path):
            pass
        conn = sqlite3.connect(path / DATABASE)
        try:
            row = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()
        finally:
            conn.close()
    return str(row[0])


def _raw_connect(path: Path, ddl: str) -> sqlite3.Connection:
    # autocommit: each statement outside BEGIN ... COMMIT is a transaction of its own
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(ddl)
    return conn


def _row(session_id: str, seq: int, data: bytes) -> tuple[str, int, str, int, bytes]:
    return (session_id, seq, "conversation_added", time.time_ns() // 1000, data)


_encode = msgspec.json.Encoder().encode


def _raw_per_commit(ddl: str, n: int) -> float:
    """Rows per second, one commit per insert (WAL + synchronous=FULL)."""
    with scratch_dir("raw") as path:
        conn = _raw_connect(path / "raw.sqlite3", ddl)
        try:
            warm = uuid.uuid4().hex[:26].upper()
            for seq in range(1, 21):
                conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)", _row(warm, seq, b"{}"))
            sid = uuid.uuid4().hex[:26].upper()
            quiesce()
            start = clock()
            for seq in range(1, n + 1):
                data = _encode({"role": "user", "content": CONTENT})
                conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)", _row(sid, seq, data))
            elapsed = clock() - start
        finally:
            conn.close()
    return n / elapsed


def _raw_batched(ddl: str, n: int) -> float:
    """Rows per second, every row in one transaction (``executemany``), the batching ceiling."""
    with scratch_dir("raw-batched") as path:
        conn = _raw_connect(path / "raw.sqlite3", ddl)
        try:
            conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)", _row("warm", 1, b"{}"))
            sid = uuid.uuid4().hex[:26].upper()
            quiesce()
            start = clock()
            rows = [
                _row(sid, seq, _encode({"role": "user", "content": CONTENT}))
                for seq in range(1, n + 1)
            ]
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
            elapsed = clock() - start
        finally:
            conn.close()
    return n / elapsed


async def _raw_thread_commit(ddl: str, n: int) -> float:
    """Rows per second, one commit per insert done by a writer thread and awaited from the event
    loop: the floor of any design that keeps commits off the loop (two thread hops per call)."""
    loop = asyncio.get_running_loop()
    with scratch_dir("raw-thread") as path:
        conn = _raw_connect(path / "raw.sqlite3", ddl)
        requests: queue.SimpleQueue[tuple[asyncio.Future[None], tuple[Any, ...]] | None]
        requests = queue.SimpleQueue()

        def settle(future: asyncio.Future[None], error: BaseException | None) -> None:
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        def writer() -> None:
            while (item := requests.get()) is not None:
                future, row = item
                error: BaseException | None = None
                try:
                    conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)", row)
                except sqlite3.Error as exc:
                    error = exc
                loop.call_soon_threadsafe(settle, future, error)

        async def insert(row: tuple[Any, ...]) -> None:
            future = loop.create_future()
            requests.put((future, row))
            await future

        thread = threading.Thread(target=writer, name="bench-raw-writer", daemon=True)
        thread.start()
        try:
            warm = uuid.uuid4().hex[:26].upper()
            for seq in range(1, 21):
                await insert(_row(warm, seq, b"{}"))
            sid = uuid.uuid4().hex[:26].upper()
            quiesce()
            start = clock()
            for seq in range(1, n + 1):
                await insert(_row(sid, seq, _encode({"role": "user", "content": CONTENT})))
            elapsed = clock() - start
        finally:
            requests.put(None)
            await asyncio.to_thread(thread.join)
            conn.close()
    return n / elapsed


def _raw_group_commit(ddl: str, sessions: int, per_session: int) -> float:
    """Rows per second with the batches the group commit forms when ``sessions`` sessions each
    have one append in flight: one transaction holding one row of every session, repeated
    ``per_session`` times (sessions created first, two rows each, as ``create_session`` does).
    The ceiling of Jidoka's concurrent case for this table, without asyncio or per-call work."""
    with scratch_dir("raw-group") as path:
        conn = _raw_connect(path / "raw.sqlite3", ddl)
        try:
            ids = [uuid.uuid4().hex[:26].upper() for _ in range(sessions)]
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                [_row(sid, seq, b"{}") for sid in ids for seq in (1, 2)],
            )
            conn.execute("COMMIT")
            quiesce()
            start = clock()
            for seq in range(3, 3 + per_session):
                rows = [
                    _row(sid, seq, _encode({"role": "user", "content": CONTENT})) for sid in ids
                ]
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", rows)
                conn.execute("COMMIT")
            elapsed = clock() - start
        finally:
            conn.close()
    return sessions * per_session / elapsed


# --- Jidoka appends -----------------------------------------------------------------------------


async def jidoka_sequential(n: int) -> tuple[float, dict[str, int]]:
    """Messages per second, one session, each ``send_message`` awaited; fresh runtime and dir."""
    with scratch_dir("jidoka-seq") as path:
        async with durable_runtime(path) as rt:
            client = rt.client
            sid = await client.create_session()
            for _ in range(20):  # warm-up: the first commits grow the WAL file
                await client.send_message(sid, "user", CONTENT)
            await _settle(rt)
            commits, requests = _store_counts(rt)
            quiesce()
            start = clock()
            for _ in range(n):
                await client.send_message(sid, "user", CONTENT)
            await _settle(rt)
            elapsed = clock() - start
            after = _store_counts(rt)
    return n / elapsed, {"commits": after[0] - commits, "requests": after[1] - requests}


async def jidoka_concurrent(
    sessions: int, per_session: int, *, shared: bool = False
) -> tuple[float, dict[str, int]]:
    """Messages per second, one task per session, all at once; fresh runtime and dir. With
    ``shared``, the ``sessions`` tasks all send to *one* session (what the per-session
    batching, appends queued behind the commit in flight, is for)."""
    with scratch_dir("jidoka-conc") as path:
        async with durable_runtime(path) as rt:
            client = rt.client
            if shared:
                ids = [await client.create_session()] * sessions
            else:
                ids = list(
                    await asyncio.gather(*(client.create_session() for _ in range(sessions)))
                )

            async def one(sid: str) -> None:
                for _ in range(per_session):
                    await client.send_message(sid, "user", CONTENT)

            await _settle(rt)
            commits, requests = _store_counts(rt)
            quiesce()
            start = clock()
            async with asyncio.TaskGroup() as tg:
                for sid in ids:
                    tg.create_task(one(sid))
            await _settle(rt)
            elapsed = clock() - start
            after = _store_counts(rt)
    return sessions * per_session / elapsed, {
        "commits": after[0] - commits,
        "requests": after[1] - requests,
    }


def _commit_details(details: list[dict[str, int]], messages: int) -> dict[str, Any]:
    commits = statistics.median(d["commits"] for d in details)
    return {
        "commits_per_repeat_median": commits,
        "messages_per_commit_median": messages / commits if commits else None,
    }


async def _appends(sizes: Sizes, ddl: str, fs: dict[str, Any]) -> list[Result]:
    samples: dict[str, list[float]] = {
        step: [] for step in ("raw", "seq", "conc", "thread", "group", "batched")
    }
    seq_details: list[dict[str, int]] = []
    conc_details: list[dict[str, int]] = []
    concurrent_messages = sizes.sessions * sizes.per_session
    await jidoka_sequential(min(sizes.sequential, 200))  # warm-up: imports, first database
    for repeat in range(sizes.repeats):
        steps = list(samples)
        if repeat % 2:
            steps.reverse()  # alternate the order, so no side always runs first
        for step in steps:
            if step == "raw":
                rate = _raw_per_commit(ddl, sizes.sequential)
            elif step == "seq":
                rate, detail = await jidoka_sequential(sizes.sequential)
                seq_details.append(detail)
            elif step == "conc":
                rate, detail = await jidoka_concurrent(sizes.sessions, sizes.per_session)
                conc_details.append(detail)
            elif step == "thread":
                rate = await _raw_thread_commit(ddl, sizes.sequential)
            elif step == "group":
                rate = _raw_group_commit(ddl, sizes.sessions, sizes.per_session)
            else:
                rate = _raw_batched(ddl, sizes.batched)
            samples[step].append(rate)
    baseline = Baseline("raw sqlite3, one commit per insert (WAL, FULL)", samples["raw"])
    raw_median = baseline.median
    conc_commits = statistics.median(d["commits"] for d in conc_details)
    return [
        Result(
            key="durable.append_single_session",
            title="Durable append, 1 session, sequential awaited send_message",
            unit="msg/s",
            samples=samples["seq"],
            baseline=baseline,
            target=Target(
                ">=",
                raw_median / 1.5,
                f"within 1.5x of raw: ≥ {raw_median / 1.5:,.0f} msg/s (ratio ≥ 0.67)",
            ),
            quoted=RAW_QUOTE,
            notes=f"{sizes.sequential:,} messages of {len(CONTENT)} chars per repeat",
            details={
                "messages": sizes.sequential,
                **_commit_details(seq_details, sizes.sequential),
                "filesystem": fs,
            },
        ),
        Result(
            key="durable.append_many_sessions",
            title=(
                f"Durable append, {sizes.sessions} sessions x {sizes.per_session} "
                "concurrent, one task each"
            ),
            unit="msg/s",
            samples=samples["conc"],
            baseline=baseline,
            target=Target(">=", raw_median * 10, f"≥ 10x raw: ≥ {raw_median * 10:,.0f} msg/s"),
            quoted=RAW_QUOTE,
            notes=(
                f"{concurrent_messages:,} messages per repeat in {conc_commits:,.0f} commits "
                f"(median); raw sqlite3 with the same batches: "
                f"{statistics.median(samples['group']):,.0f} rows/s"
            ),
            details={
                "sessions": sizes.sessions,
                "per_session": sizes.per_session,
                **_commit_details(conc_details, concurrent_messages),
                "raw_group_commit_median": statistics.median(samples["group"]),
                "raw_batched_median": statistics.median(samples["batched"]),
                "filesystem": fs,
            },
        ),
        Result(
            key="durable.raw_thread_commit",
            title=(
                "Reference: raw sqlite3 one commit per insert in a writer thread, awaited "
                "from asyncio (the floor of keeping the loop free)"
            ),
            unit="rows/s",
            samples=samples["thread"],
            baseline=baseline,
            notes="no Jidoka code: a SimpleQueue to the thread, call_soon_threadsafe back",
            details={"rows": sizes.sequential, "filesystem": fs},
        ),
        Result(
            key="durable.raw_group_commit",
            title=(
                f"Reference: raw sqlite3, the group commit's batches ({sizes.sessions} rows, "
                f"one per session, per commit; {sizes.per_session} commits)"
            ),
            unit="rows/s",
            samples=samples["group"],
            baseline=baseline,
            notes="no asyncio, no per-call work: the ceiling of the concurrent case",
            details={
                "sessions": sizes.sessions,
                "per_session": sizes.per_session,
                "filesystem": fs,
            },
        ),
        Result(
            key="durable.raw_batched",
            title="Reference: raw sqlite3, all rows of one session in one transaction",
            unit="rows/s",
            samples=samples["batched"],
            baseline=baseline,
            quoted=RAW_QUOTE,
            notes=f"{sizes.batched:,} rows per repeat, one executemany and one commit",
            details={"rows": sizes.batched, "filesystem": fs},
        ),
    ]


# --- loading a long session ---------------------------------------------------------------------


async def _write_long_sessions(path: Path, counts: Sequence[int]) -> list[str]:
    """One session per count, each holding that many messages; returns their ids."""
    ids: list[str] = []
    async with durable_runtime(path) as rt:
        client = rt.client
        for n in counts:
            sid: str = await client.create_session()
            for _ in range(n):
                await client.send_message(sid, "user", CONTENT)
            ids.append(sid)
        await _settle(rt)  # the last snapshot write is not cut short by the close
    return ids


def _snapshot_seq(database: Path, sid: str) -> tuple[int | None, int]:
    conn = sqlite3.connect(database)
    try:
        row = conn.execute("SELECT seq FROM snapshots WHERE session_id = ?", (sid,)).fetchone()
        last = conn.execute("SELECT max(seq) FROM events WHERE session_id = ?", (sid,)).fetchone()
    finally:
        conn.close()
    return (int(row[0]) if row else None), int(last[0])


def _drop_snapshots(database: Path) -> None:
    conn = sqlite3.connect(database, isolation_level=None)
    try:
        conn.execute("DELETE FROM snapshots")
    finally:
        conn.close()


async def _load_once(source: Path, sid: str, *, snapshot: bool) -> tuple[float, dict[str, float]]:
    """Reopen a copy of ``source``; time the first ``get_conversation_history`` (the load)."""
    with scratch_dir("jidoka-load") as path:
        data_dir = path / "data"
        shutil.copytree(source, data_dir)
        if not snapshot:
            _drop_snapshots(data_dir / DATABASE)
        start = clock()
        async with durable_runtime(data_dir) as rt:
            started = clock() - start
            client = rt.client
            quiesce()
            start = clock()
            history = await client.get_conversation_history(sid)
            load = clock() - start
            start = clock()
            await client.get_conversation_history(sid)
            again = clock() - start
            if not history:
                raise RuntimeError("the reloaded session has no history")
    return load, {"start": started, "second_access": again, "history_len": len(history)}


def _raw_read_log(database: Path, sid: str) -> float:
    start = clock()
    conn = sqlite3.connect(database)
    try:
        rows = conn.execute(
            "SELECT seq, type, time_us, data FROM events WHERE session_id = ? ORDER BY seq",
            (sid,),
        ).fetchall()
    finally:
        conn.close()
    elapsed = clock() - start
    if not rows:
        raise RuntimeError("no rows")
    return elapsed


async def _loading(sizes: Sizes, fs: dict[str, Any]) -> list[Result]:
    import jidoka

    n = sizes.load_messages
    interval = jidoka.Settings().snapshot_interval
    # A session's log is session_created, active, then its messages; snapshots fall on
    # multiples of the interval. The second session ends one event short of its next snapshot:
    # the longest tail a load can replay.
    worst_n = n - (n + 3) % interval  # its log then ends at seq = k * interval - 1
    if worst_n < 1:
        worst_n = n  # too short for a snapshot: the whole log is the tail
    with scratch_dir("jidoka-long") as source:
        start = clock()
        sid, worst = await _write_long_sessions(source, [n, worst_n])
        write_seconds = clock() - start
        snap_seq, last_seq = _snapshot_seq(source / DATABASE, sid)
        worst_snap, worst_last = _snapshot_seq(source / DATABASE, worst)
        samples: dict[str, list[float]] = {step: [] for step in ("raw", "snap", "worst", "full")}
        extras: list[dict[str, float]] = []
        for repeat in range(sizes.load_repeats):
            steps = list(samples)
            if repeat % 2:
                steps.reverse()
            for step in steps:
                if step == "raw":
                    samples[step].append(_raw_read_log(source / DATABASE, sid))
                    continue
                target = worst if step == "worst" else sid
                seconds, extra = await _load_once(source, target, snapshot=step != "full")
                samples[step].append(seconds)
                if step == "snap":
                    extras.append(extra)
    tail = last_seq - (snap_seq or 0)
    worst_tail = worst_last - (worst_snap or 0)
    baseline = Baseline(f"raw sqlite3: connect, read all {last_seq:,} rows", samples["raw"])
    details = {
        "messages": n,
        "events_in_log": last_seq,
        "snapshot_seq": snap_seq,
        "tail_events": tail,
        "snapshot_interval": interval,
        "write_seconds": write_seconds,
        "runtime_start_median_s": statistics.median(e["start"] for e in extras),
        "second_access_median_s": statistics.median(e["second_access"] for e in extras),
        "history_len": extras[0]["history_len"],
        "filesystem": fs,
    }
    label = f"{n / 1000:g}k" if n >= 1000 else str(n)
    return [
        Result(
            key="durable.load_long_session",
            title=(
                f"Load a {label}-message session after restart (first get_conversation_history),"
                f" snapshot_interval={interval}"
            ),
            unit="s",
            samples=samples["snap"],
            higher_is_better=False,
            baseline=baseline,
            notes=(
                f"snapshot at seq {snap_seq}, then {tail} events of tail replayed; includes the "
                "active -> idle commit of a recovered session"
            ),
            details=details,
        ),
        Result(
            key="durable.load_long_session_worst_tail",
            title=(
                f"Same, {worst_n:,} messages: the longest tail ({worst_tail} events after the "
                f"snapshot at seq {worst_snap or 0})"
            ),
            unit="s",
            samples=samples["worst"],
            higher_is_better=False,
            baseline=baseline,
            details={
                **details,
                "messages": worst_n,
                "events_in_log": worst_last,
                "snapshot_seq": worst_snap,
                "tail_events": worst_tail,
            },
        ),
        Result(
            key="durable.load_long_session_no_snapshot",
            title=(
                f"Same {label} session, snapshot deleted first (full replay of {last_seq:,} events)"
            ),
            unit="s",
            samples=samples["full"],
            higher_is_better=False,
            baseline=baseline,
            details={**details, "snapshot_seq": None, "tail_events": last_seq},
        ),
    ]


# --- start-up (child processes) -----------------------------------------------------------------


async def _child_build(data_dir: Path, n: int) -> dict[str, Any]:
    """Create ``n`` sessions through the API, concurrently in batches, then close."""
    start = time.perf_counter()
    async with durable_runtime(data_dir, max_sessions=max(n + 1, 2)) as rt:
        client = rt.client
        done = 0
        while done < n:
            batch = min(1_000, n - done)
            await asyncio.gather(*(client.create_session() for _ in range(batch)))
            done += batch
        count = rt.manager.live_count()
        created = time.perf_counter() - start
    return {"sessions": count, "create_seconds": created}


async def _child_start(data_dir: Path, n: int) -> dict[str, Any]:
    import jidoka  # noqa: F401  (imported before the RSS is read: not charged to the start)

    rss_before = _rss()
    start = time.perf_counter()
    rt = durable_runtime(data_dir, max_sessions=max(n + 1, 2))
    async with rt:
        entered = time.perf_counter() - start
        rss_after = _rss()
        if rt.manager.live_count():
            raise RuntimeError(f"start-up loaded {rt.manager.live_count()} sessions")
        live, after = 0, None
        while True:  # what the store holds, page by page (outside the timed part)
            page = await rt.store.list_sessions(after=after)
            live += len(page)
            if not page:
                break
            after = page[-1].session_id
        start = time.perf_counter()
    closed = time.perf_counter() - start
    return {
        "start_seconds": entered,
        "close_seconds": closed,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "live": live,
    }


def _child_raw(data_dir: Path) -> dict[str, Any]:
    rss_before = _rss()
    start = time.perf_counter()
    conn = sqlite3.connect(data_dir / DATABASE)
    try:
        ids = [
            row[0]
            for row in conn.execute("SELECT session_id FROM sessions WHERE status != 'terminated'")
        ]
    finally:
        conn.close()
    return {
        "start_seconds": time.perf_counter() - start,
        "rss_before": rss_before,
        "rss_after": _rss(),
        "live": len(ids),
    }


def _child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_durable")
    parser.add_argument("--child", choices=("build", "start", "raw"), required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--sessions", type=int, default=0)
    args = parser.parse_args(argv)
    if args.child == "build":
        result = run_async(lambda: _child_build(args.data_dir, args.sessions))
    elif args.child == "start":
        result = run_async(lambda: _child_start(args.data_dir, args.sessions))
    else:
        result = _child_raw(args.data_dir)
    print(json.dumps(result))


def _spawn(mode: str, data_dir: Path, n: int = 0) -> dict[str, Any]:
    args = ["--child", mode, "--data-dir", str(data_dir), "--sessions", str(n)]
    return run_child("benchmarks.bench_durable", args, f"durable child {mode} n={n}")


def _short(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _startup(sizes: Sizes, fs: dict[str, Any]) -> list[Result]:
    results: list[Result] = []
    with scratch_dir("jidoka-empty") as empty:
        _spawn("build", empty, 0)
        empty_runs = [_spawn("start", empty) for _ in range(sizes.startup_repeats)]
        for n in sizes.startup:
            with scratch_dir(f"jidoka-{_short(n)}") as data_dir:
                built = _spawn("build", data_dir, n)
                ours: list[dict[str, Any]] = []
                raw: list[dict[str, Any]] = []
                for repeat in range(sizes.startup_repeats):
                    if repeat % 2:
                        raw.append(_spawn("raw", data_dir))
                        ours.append(_spawn("start", data_dir, n))
                    else:
                        ours.append(_spawn("start", data_dir, n))
                        raw.append(_spawn("raw", data_dir))
                database_bytes = (data_dir / DATABASE).stat().st_size
            if any(run["live"] != n for run in ours + raw):
                raise RuntimeError(f"start-up with {n} sessions found {ours[0]['live']}")
            growth = [run["rss_after"] - run["rss_before"] for run in ours]
            details = {
                "sessions": n,
                "database_bytes": database_bytes,
                "build_seconds": built["create_seconds"],
                "close_seconds_median": statistics.median(r["close_seconds"] for r in ours),
                "empty_start_seconds_median": statistics.median(
                    r["start_seconds"] for r in empty_runs
                ),
                "rss_before_median": statistics.median(r["rss_before"] for r in ours),
                "rss_growth_median": statistics.median(growth),
                "rss_growth_per_session": statistics.median(growth) / n,
                "filesystem": fs,
            }
            empty_seconds = details["empty_start_seconds_median"]
            results.append(
                Result(
                    key=f"durable.startup_{_short(n)}",
                    title=f"Start-up with {n:,} stored sessions (async with Runtime entry)",
                    unit="s",
                    samples=[r["start_seconds"] for r in ours],
                    higher_is_better=False,
                    baseline=Baseline(
                        "raw sqlite3: connect, read the live ids",
                        [r["start_seconds"] for r in raw],
                    ),
                    notes=(
                        f"fresh process each; the same start on an empty database takes "
                        f"{empty_seconds * 1000:.3g} ms"
                    ),
                    details=details,
                )
            )
            results.append(
                Result(
                    key=f"durable.startup_rss_{_short(n)}",
                    title=f"RSS after start-up with {n:,} stored sessions",
                    unit="B",
                    samples=[float(r["rss_after"]) for r in ours],
                    higher_is_better=False,
                    baseline=Baseline(
                        "same start on an empty database",
                        [float(r["rss_after"]) for r in empty_runs],
                    ),
                    notes=(
                        f"the start adds {statistics.median(growth) / 1024 / 1024:.3g} MiB, "
                        f"{statistics.median(growth) / n:,.0f} B per stored session"
                    ),
                    details=details,
                )
            )
    return results


# --- the module ---------------------------------------------------------------------------------


async def _main(sizes: Sizes) -> list[Result]:
    fs = filesystem_of(scratch_root())
    ddl = await _events_ddl()
    results = await _appends(sizes, ddl, fs)
    results.extend(await _loading(sizes, fs))
    return results


def run(quick: bool = False) -> list[Result]:
    sizes = QUICK if quick else FULL
    results = run_async(lambda: _main(sizes))
    results.extend(_startup(sizes, filesystem_of(scratch_root())))
    return results


if __name__ == "__main__":
    _child_main(sys.argv[1:])
