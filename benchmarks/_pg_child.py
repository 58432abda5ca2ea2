"""One Jidoka measurement of ``bench_postgres`` in a fresh process: one JSON line out.

``python -m benchmarks._pg_child WORKLOAD --dsn DSN --schema NAME [--n N] [--per-session M]
[--session ID] [--owner NAME]``

The runtime is ``Runtime(data_dir, store=DSN, settings=Settings(), postgres_schema=NAME)``:
default settings, explicit, so ``JIDOKA_*`` variables cannot change what is measured. Only the
public API is used (the client's ``create_session``, ``send_message``,
``get_conversation_history``, ``list_sessions``) plus ``rt.manager.wait_background()`` and the
store's commit counters, as in ``bench_durable``.

- ``single``: one session, ``n`` awaited ``send_message``; ``concurrent``: ``n`` sessions x
  ``per-session`` messages, one task per session. Each in a schema of its own.
- ``write-long``: one session of ``n`` messages (from 50 senders at once), for ``load``;
  ``--window``: its ``max_history`` (default 100: the history returned is the newest 100).
- ``load``: a restart: the runtime starts (timed apart), the ``warm`` session is read (its
  time kept: the cold pool), then the first ``get_conversation_history`` of ``session`` (the
  load: snapshot and the log's tail) is timed.
- ``template``: one session owned by ``owner``, which ``bench_postgres`` copies a million times.
- ``startup``: the time of ``async with Runtime(...)`` entry, then pages (``limit`` = the
  server's default page) through ``client.list_sessions``: ``other``'s first (the very first
  call, cold connections), then ``owner``'s (its sessions not loaded yet), then ``owner``'s
  again, repeated (loaded).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from typing import Any

from ._common import clock, quiesce, run_async
from ._pg import CONTENT

__all__ = ["WORKLOADS", "runtime"]

WORKLOADS = ("single", "concurrent", "write-long", "load", "template", "startup")

#: Concurrent senders filling the long session (its messages are all alike: order is moot).
WRITERS = 50

#: Repeats of the warm page listing in ``startup``.
PAGE_REPEATS = 20


def runtime(dsn: str, schema: str, data_dir: str, **overrides: Any) -> Any:
    """A runtime on the PostgreSQL store in ``schema``, default settings except ``overrides``."""
    import jidoka

    return jidoka.Runtime(
        data_dir,
        store=dsn,
        settings=jidoka.Settings(),
        postgres_schema=schema,
        **overrides,
    )


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * 4096


async def _settle(rt: Any) -> None:
    await asyncio.sleep(0)
    await rt.manager.wait_background()


def _counts(rt: Any) -> tuple[int, int]:
    store = rt.store
    return getattr(store, "commits", 0), getattr(store, "batched_requests", 0)


async def _appends(args: argparse.Namespace, data_dir: str) -> dict[str, Any]:
    sessions = 1 if args.workload == "single" else args.n
    per_session = args.n if args.workload == "single" else args.per_session
    async with runtime(args.dsn, args.schema, data_dir) as rt:
        client = rt.client
        warm = await client.create_session()
        for _ in range(20):  # warm-up: the pool's connections, prepared statements
            await client.send_message(warm, "user", CONTENT)
        ids = list(await asyncio.gather(*(client.create_session() for _ in range(sessions))))

        async def one(sid: str) -> None:
            for _ in range(per_session):
                await client.send_message(sid, "user", CONTENT)

        await _settle(rt)
        commits, requests = _counts(rt)
        quiesce()
        cpu = time.process_time()
        start = clock()
        async with asyncio.TaskGroup() as tg:
            for sid in ids:
                tg.create_task(one(sid))
        await _settle(rt)
        elapsed = clock() - start
        cpu = time.process_time() - cpu
        after = _counts(rt)
        info = await client.get_session_info(ids[0])
    expected = min(per_session, info.config.max_history)  # the window it keeps in memory
    if info.conversation_count != expected:
        raise RuntimeError(f"the first session holds {info.conversation_count}, not {expected}")
    return {
        "rate": sessions * per_session / elapsed,
        "seconds": elapsed,
        "cpu_s_per_message": cpu / (sessions * per_session),
        "commits": after[0] - commits,
        "requests": after[1] - requests,
    }


async def _write_long(args: argparse.Namespace, data_dir: str) -> dict[str, Any]:
    start = clock()
    async with runtime(args.dsn, args.schema, data_dir) as rt:
        client = rt.client
        config = {"max_history": args.window} if args.window else None
        sid = await client.create_session(config=config)
        left = [args.n]

        async def sender() -> None:
            while left[0] > 0:
                left[0] -= 1
                await client.send_message(sid, "user", CONTENT)

        async with asyncio.TaskGroup() as tg:  # the session's appends batch: a faster fill
            for _ in range(WRITERS):
                tg.create_task(sender())
        await _settle(rt)  # the last snapshot write is not cut short by the close
    return {"session_id": sid, "write_seconds": clock() - start}


async def _load(args: argparse.Namespace, data_dir: str) -> dict[str, Any]:
    start = clock()
    async with runtime(args.dsn, args.schema, data_dir) as rt:
        started = clock() - start
        client = rt.client
        cold = None
        if args.warm:  # the pool's connections and statements, as the peers' are warmed
            start = clock()
            await client.get_conversation_history(args.warm)
            cold = clock() - start
        quiesce()
        start = clock()
        history = await client.get_conversation_history(args.session)
        load = clock() - start
        start = clock()
        again = await client.get_conversation_history(args.session)
        second = clock() - start
        info = await client.get_session_info(args.session)
    window = info.config.max_history
    if not len(history) == len(again) == min(args.n, window):
        raise RuntimeError(f"loaded {len(history)} messages, not {min(args.n, window)}")
    return {
        "rate": load,
        "start_seconds": started,
        "second_access": second,
        "warm_session_first_use": cold,
        "history_len": len(history),
        "max_history": window,
    }


async def _template(args: argparse.Namespace, data_dir: str) -> dict[str, Any]:
    async with runtime(args.dsn, args.schema, data_dir) as rt:
        sid = await rt.client.create_session(owner=args.owner)
        await _settle(rt)
    return {"session_id": sid}


async def _startup(args: argparse.Namespace, data_dir: str) -> dict[str, Any]:
    from jidoka.verbs import DEFAULT_PAGE

    rss_before = _rss()
    start = time.perf_counter()
    rt = runtime(args.dsn, args.schema, data_dir, max_sessions=max(args.n + 1, 2))
    async with rt:
        entered = time.perf_counter() - start
        rss_after = _rss()
        live = rt.manager.live_count()
        client = rt.client
        start = time.perf_counter()  # the first call: connections and statements are cold
        other = await client.list_sessions(owner=args.other or args.owner, limit=DEFAULT_PAGE)
        cold_seconds = time.perf_counter() - start
        start = time.perf_counter()  # the page asked for: its sessions are not loaded yet
        first = await client.list_sessions(owner=args.owner, limit=DEFAULT_PAGE)
        first_seconds = time.perf_counter() - start
        warm: list[float] = []
        for _ in range(PAGE_REPEATS):
            start = time.perf_counter()
            page = await client.list_sessions(owner=args.owner, limit=DEFAULT_PAGE)
            warm.append(time.perf_counter() - start)
        start = time.perf_counter()
    closed = time.perf_counter() - start
    if [s.session_id for s in page] != [s.session_id for s in first]:
        raise RuntimeError("the page changed between two calls")
    if any(s.owner != args.owner for s in first):
        raise RuntimeError("the page holds another principal's session")
    return {
        "rate": entered,
        "start_seconds": entered,
        "close_seconds": closed,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "page_limit": DEFAULT_PAGE,
        "page_len": len(first),
        "live": live,
        "page_cold_seconds": cold_seconds,
        "page_cold_len": len(other),
        "page_first_seconds": first_seconds,
        "page_warm_seconds": statistics.median(warm),
        "page_warm_all": warm,
    }


async def _workload(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="jidoka-pg-bench-") as data_dir:
        if args.workload in ("single", "concurrent"):
            return await _appends(args, data_dir)
        if args.workload == "write-long":
            return await _write_long(args, data_dir)
        if args.workload == "load":
            return await _load(args, data_dir)
        if args.workload == "template":
            return await _template(args, data_dir)
        return await _startup(args, data_dir)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._pg_child")
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--per-session", type=int, default=1)
    parser.add_argument("--session")
    parser.add_argument("--owner")
    parser.add_argument("--window", type=int, help="write-long: the session's max_history")
    parser.add_argument("--warm", help="load: a session to load first (warms the pool)")
    parser.add_argument("--other", help="startup: a principal whose page is listed first")
    args = parser.parse_args(argv)
    result = run_async(lambda: _workload(args))
    import jidoka

    print(json.dumps({**result, "jidoka_file": jidoka.__file__}))


if __name__ == "__main__":
    main(sys.argv[1:])
