"""One Jidoka workload of ``bench_hotpath``, in a fresh process that imports ``jidoka`` from the
source tree the parent chose (``run_child(..., src=...)``): one repeat, one JSON line out.

``python -m benchmarks._hotpath_child WORKLOAD --n N [--per-session M] [--traced]``

It uses only the public API (``Runtime``, ``Settings``, ``FakeClock``, the client's
``create_session``, ``send_message``, ``terminate_session``, ``list_sessions``) plus
``rt.manager.wait_background()`` through the shared helpers of ``bench_durable``, so it runs
against any tree, the frozen "before" as well as one being changed. Every line it prints names
the ``jidoka`` it imported, so the parent can check it measured the tree it meant to.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from ._common import clock, make_runtime, quiesce, run_async
from .bench_durable import (
    _events_ddl,
    _rss,
    _settle,
    _store_counts,
    durable_runtime,
    jidoka_concurrent,
    jidoka_sequential,
    scratch_dir,
)
from .bench_memory import go_idle
from .bench_memory import message_text as _text

__all__ = ["IDLE_MESSAGE_CHARS", "WORKLOADS", "message_text"]

#: The length of the one user message an idle session holds.
IDLE_MESSAGE_CHARS = 200


def message_text(index: int) -> str:
    """The ``index``-th session's message, different in every session (one string shared by
    all of them would be charged to none)."""
    return _text(index, IDLE_MESSAGE_CHARS)


WORKLOADS = ("ddl", "lifecycle", "single", "concurrent", "shared", "idle")


async def _lifecycle(n: int) -> dict[str, Any]:
    """Pairs per second: ``n`` sessions created one after another, then each terminated one
    after another, on a fresh durable runtime (every call returns after its commit)."""
    with scratch_dir("hot-lifecycle") as path:
        async with durable_runtime(path) as rt:
            client = rt.client
            for _ in range(20):  # warm-up: imports, the first commits grow the WAL file
                await client.terminate_session(await client.create_session())
            await _settle(rt)
            commits, requests = _store_counts(rt)
            quiesce()
            start = clock()
            ids = [await client.create_session() for _ in range(n)]
            for sid in ids:
                await client.terminate_session(sid)
            await _settle(rt)
            elapsed = clock() - start
            after = _store_counts(rt)
    return {
        "rate": n / elapsed,
        "seconds": elapsed,
        "commits": after[0] - commits,  # 0 if the store does not count them
        "requests": after[1] - requests,
    }


def _traced() -> int:
    return tracemalloc.get_traced_memory()[0]


async def _idle(n: int, traced: bool) -> dict[str, Any]:
    """Bytes per idle session: ``n`` sessions, each made by plain ``create_session()`` and
    holding one 200-character user message, then gone idle (their status reads ``idle``).
    RSS growth over ``n``; with ``traced`` the live Python allocations instead (tracemalloc's
    own bookkeeping inflates RSS, so one child measures one or the other)."""
    import jidoka

    measure: Callable[[], int] = _traced if traced else _rss
    if traced:
        tracemalloc.start()
    fake = jidoka.FakeClock(wall=time.time())
    async with make_runtime(clock=fake, max_sessions=max(n + 1, 100_000)) as rt:
        client = rt.client
        await client.send_message(await client.create_session(), "user", message_text(-1))
        gc.collect()
        gc.collect()
        before = measure()
        start = clock()
        for index in range(n):  # a text of its own, made here: charged to its session
            await client.send_message(await client.create_session(), "user", message_text(index))
        create_seconds = clock() - start
        idle_seconds = await go_idle(rt, fake)
        gc.collect()
        grown = measure() - before
        idle = len(await client.list_sessions("idle"))
        active = len(await client.list_sessions("active"))
    if idle != n + 1 or active:
        raise RuntimeError(f"{idle} of {n + 1} sessions idle, {active} still active")
    return {
        "rate": grown / n,
        "grown": grown,
        "rss_total": _rss(),
        "idle_sessions": idle,
        "create_seconds": create_seconds,
        "idle_seconds": idle_seconds,
    }


async def _workload(args: argparse.Namespace) -> dict[str, Any]:
    if args.workload == "ddl":
        return {"ddl": await _events_ddl()}
    if args.workload == "lifecycle":
        return await _lifecycle(args.n)
    if args.workload == "single":
        rate, counts = await jidoka_sequential(args.n)
        return {"rate": rate, **counts}
    if args.workload in ("concurrent", "shared"):
        shared = args.workload == "shared"
        rate, counts = await jidoka_concurrent(args.n, args.per_session, shared=shared)
        return {"rate": rate, **counts}
    return await _idle(args.n, args.traced)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._hotpath_child")
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--per-session", type=int, default=1)
    parser.add_argument("--traced", action="store_true")
    args = parser.parse_args(argv)
    result = run_async(lambda: _workload(args))
    import jidoka

    print(json.dumps({**result, "jidoka_file": jidoka.__file__}))


if __name__ == "__main__":
    main(sys.argv[1:])
