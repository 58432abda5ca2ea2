"""Bytes per idle session, at 10k and 100k sessions in one process.

Every measurement runs in a fresh subprocess (``python -m benchmarks.bench_memory --child ...``)
so sizes and methods cannot pollute each other:

- **tracemalloc**: Python allocations still alive after creating N sessions, divided by N
  (``tracemalloc.get_traced_memory``; deterministic, excludes allocator overhead and
  fragmentation), and the transient peak while the sessions go idle. At the smallest size it
  also takes one idle session apart: the objects it alone owns, by type (``_anatomy``).
- **RSS**: the process's resident set growth divided by N (``psutil``), in a child that does not
  run tracemalloc (whose own bookkeeping would inflate RSS). Includes allocator overhead,
  fragmentation and the registry's dict growth: what the operating system actually charges.

Each size is measured twice: with empty sessions, and with sessions that each hold one user message
of :data:`MESSAGE_BYTES` characters (``--message-bytes`` in a child; every session's text is
different, so each is charged to its session). Sessions are created with the default config and no
metadata on a :class:`jidoka.FakeClock`; after measuring them just created (status ``active``), the
clock is moved past ``idle_after_seconds`` so every session commits its ``idle`` transition, and
they are measured again. The headline figure is the idle one (it is the larger: one more event per
session, and a time-out timer entry). A warm-up session is created before the first measurement so
one-off allocations (imports, caches) are not charged to the sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
import tracemalloc
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._common import Baseline, Result, Target, make_runtime, run_async, run_child

__all__ = ["NAME", "go_idle", "run"]

NAME = "memory"

ADK_QUOTE = (
    "Google ADK in-memory session ~6 KB per idle session; an Erlang process alone 2.6 KB "
    "(quoted, not measured here)"
)


@dataclass(frozen=True)
class Sizes:
    sessions: tuple[int, ...]
    rss_repeats: int
    tracemalloc_repeats: int


FULL = Sizes(sessions=(10_000, 100_000), rss_repeats=3, tracemalloc_repeats=2)
QUICK = Sizes(sessions=(1_000, 3_000), rss_repeats=1, tracemalloc_repeats=1)


# --- the child process ----------------------------------------------------------------------------


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _traced() -> int:
    return tracemalloc.get_traced_memory()[0]


async def _wait_on(future: asyncio.Future[None]) -> None:
    await future


async def _task_bytes(n: int) -> float:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    gc.collect()
    before = _traced()
    tasks = [loop.create_task(_wait_on(future)) for _ in range(n)]
    await asyncio.sleep(0)  # every task starts and suspends on the future
    gc.collect()
    after = _traced()
    future.set_result(None)
    await asyncio.gather(*tasks)
    del tasks
    return (after - before) / n


def _dict_bytes(n: int) -> float:
    gc.collect()
    before = _traced()
    dicts: list[dict[str, Any]] = [{} for _ in range(n)]
    gc.collect()
    after = _traced()
    del dicts
    return (after - before) / n


def _referents(obj: object) -> list[object]:
    """What ``obj`` references: ``gc`` for tracked objects, fields for ``gc=False`` structs."""
    fields = getattr(type(obj), "__struct_fields__", None)
    if fields is not None:
        return [getattr(obj, name) for name in fields]
    return list(gc.get_referents(obj))


_LEAVES = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)


def _reachable(roots: list[object], stop: set[int]) -> dict[int, object]:
    seen: dict[int, object] = {}
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or id(obj) in stop or isinstance(obj, _LEAVES):
            continue
        seen[id(obj)] = obj
        stack.extend(_referents(obj))
    return seen


def _anatomy(rt: Any, first: str, second: str) -> dict[str, Any]:
    """The objects one idle session owns alone, by type (``sys.getsizeof``, shallow).

    Walks everything reachable from the session's roots (its ``Session``, its log in the memory
    store, its timer entries) in two sessions, and keeps what only the first one reaches:
    shared objects (the default config, shared status payloads, services) drop out. What is
    left of the tracemalloc total after this is the registries' per-session slots (the live
    dict, the store's dict, the timer heap's list) and allocator rounding. Uses private
    attributes: a diagnostic, skipped if they change.
    """
    manager, store = rt.manager, rt.store
    stop = {id(manager.services), id(manager), id(store), id(rt.bus)}

    def roots(sid: str) -> list[object]:
        entries = [e for e in manager._timers._heap if e[1] == sid]
        return [manager._live[sid], store._logs[sid], *entries]

    mine = _reachable(roots(first), stop)
    other = _reachable(roots(second), stop)
    by_type: dict[str, list[int]] = {}
    for key, obj in mine.items():
        if key in other:
            continue
        name = type(obj).__name__
        if isinstance(obj, dict):
            name = "dict (empty)" if not obj else "dict"
        entry = by_type.setdefault(name, [0, 0])
        entry[0] += 1
        entry[1] += sys.getsizeof(obj)
    rows = sorted(by_type.items(), key=lambda item: -item[1][1])
    return {
        "objects": [{"type": k, "count": v[0], "bytes": v[1]} for k, v in rows],
        "total_bytes": sum(v[1] for _, v in rows),
    }


async def go_idle(rt: Any, clock: Any) -> float:
    """Move ``clock`` (a :class:`jidoka.FakeClock`) past the idle time-out and wait until no
    session of ``rt`` is ``active`` any more: every one has committed its ``idle`` transition.
    Returns the seconds that took. A fake clock, so the test of "idle" is the status the
    runtime itself commits, not a guess at how long to wait."""
    idle_after = rt.settings.session_defaults.idle_after_seconds
    clock.advance(idle_after + 1)
    start = time.perf_counter()
    for _ in range(100_000):  # until every session has committed its idle transition
        await asyncio.sleep(0)  # the timer task wakes up and starts the transitions
        await rt.manager.wait_background()
        if not await rt.client.list_sessions("active", limit=1):
            break
        await asyncio.sleep(0.001)
    return time.perf_counter() - start


def message_text(index: int, size: int) -> str:
    """The ``index``-th session's message: ``size`` ASCII characters, different in every session
    (a string shared by all of them would be charged to none)."""
    head = f"message {index} of the memory benchmark: "
    return (head + "x" * size)[:size]


async def _child(mode: str, n: int, breakdown: bool, message_bytes: int = 0) -> dict[str, Any]:
    import jidoka

    out: dict[str, Any] = {"mode": mode, "sessions": n, "pid": os.getpid()}
    out["message_bytes"] = message_bytes
    measure: Callable[[], int]
    if mode == "baseline":
        tracemalloc.start()
        out["task_bytes"] = await _task_bytes(n)
        out["dict_bytes"] = _dict_bytes(n)
        return out
    if mode == "tracemalloc":
        tracemalloc.start()
        measure = _traced
    else:
        measure = _rss
    clock = jidoka.FakeClock(wall=time.time())
    async with make_runtime(clock=clock, max_sessions=max(n + 1, 100_000)) as rt:
        client = rt.client
        warm_up = await client.create_session()
        if message_bytes:
            await client.send_message(warm_up, "user", message_text(-1, message_bytes))
        gc.collect()
        gc.collect()
        before = measure()
        start = time.perf_counter()
        for index in range(n):
            session_id = await client.create_session()
            if message_bytes:  # the text is made here so that it is charged to its session
                await client.send_message(session_id, "user", message_text(index, message_bytes))
        out["create_seconds"] = time.perf_counter() - start
        gc.collect()
        out["after_create"] = (measure() - before) / n

        if mode == "tracemalloc":
            tracemalloc.reset_peak()
        out["idle_seconds"] = await go_idle(rt, clock)
        gc.collect()
        out["after_idle"] = (measure() - before) / n
        out["rss_total"] = _rss()
        if mode == "tracemalloc":
            # the transient high-water mark of the idle transition, above the idle level
            out["idle_peak"] = (tracemalloc.get_traced_memory()[1] - before) / n
        if breakdown:
            page = await client.list_sessions(limit=3)
            try:
                out["anatomy"] = _anatomy(rt, page[1].session_id, page[2].session_id)
            except (AttributeError, KeyError, IndexError) as exc:  # internals changed
                out["anatomy"] = {"error": repr(exc)}
        events = await rt.read_events((await client.list_sessions(limit=2))[-1].session_id)
        out["events_per_session"] = len(events)
        out["idle_sessions"] = len(await client.list_sessions("idle"))
    return out


def _child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_memory")
    parser.add_argument("--child", choices=("baseline", "rss", "tracemalloc"), required=True)
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument("--message-bytes", type=int, default=0)
    args = parser.parse_args(argv)
    result = run_async(
        lambda: _child(args.child, args.sessions, args.breakdown, args.message_bytes)
    )
    print(json.dumps(result))


# --- the parent -----------------------------------------------------------------------------------


#: The sessions measured: empty, and holding one user message of this many characters.
MESSAGE_BYTES: tuple[int, ...] = (0, 200)


def _spawn(mode: str, n: int, breakdown: bool = False, message_bytes: int = 0) -> dict[str, Any]:
    args = ["--child", mode, "--sessions", str(n), *(["--breakdown"] if breakdown else [])]
    if message_bytes:
        args += ["--message-bytes", str(message_bytes)]
    return run_child("benchmarks.bench_memory", args, f"memory child {mode} n={n}")


def _rows(
    sizes: Sizes, n: int, breakdown: bool, message_bytes: int, base: list[dict[str, Any]]
) -> list[Result]:
    """The rows of one size and one kind of session (empty, or with one message)."""
    traced = [
        _spawn("tracemalloc", n, breakdown and r == 0, message_bytes)
        for r in range(sizes.tracemalloc_repeats)
    ]
    rss = [_spawn("rss", n, message_bytes=message_bytes) for _ in range(sizes.rss_repeats)]
    task = Baseline("one bare asyncio.Task", [c["task_bytes"] for c in base])
    empty = statistics.median(c["dict_bytes"] for c in base)
    target = Target("<=", 2048, "≤ 2 KiB")
    common = {
        "sessions": n,
        "message_bytes": message_bytes,
        "events_per_idle_session": traced[0]["events_per_session"],
        "sessions_idle_at_the_end": [c["idle_sessions"] for c in traced + rss],
        "task_bytes": [c["task_bytes"] for c in base],
        "empty_dict_bytes": [c["dict_bytes"] for c in base],
    }
    if message_bytes:
        key, what = (
            f"memory.{n}.message{message_bytes}",
            f"session with one {message_bytes}-character message",
        )
        sent = "one message sent"
    else:
        key, what, sent = f"memory.{n}", "empty session", "nothing sent"
    anatomy = traced[0].get("anatomy")
    results: list[Result] = []
    for method, children in (("tracemalloc", traced), ("rss", rss)):
        label = "tracemalloc" if method == "tracemalloc" else "RSS"
        details: dict[str, Any] = {
            **common,
            "create_seconds": [c["create_seconds"] for c in children],
            "idle_seconds": [c["idle_seconds"] for c in children],
            "rss_total": [c["rss_total"] for c in children],
        }
        if method == "tracemalloc":
            details["idle_transition_peak"] = [c["idle_peak"] for c in children]
            if anatomy:
                details["anatomy"] = anatomy
            high = statistics.median(c["idle_peak"] for c in children)
            peak = f"; transient peak while going idle {high:,.0f} B"
        else:
            total = statistics.median(c["rss_total"] for c in children) / 2**20
            peak = f"; process RSS {total:,.0f} MiB"
        # (key, title, the child's figure, notes, details): the anatomy is of an idle session
        idle = f"after every session committed its idle transition{peak}"
        created = f"status active, {sent}; an empty dict is {empty:,.0f} B"
        created_details = {k: v for k, v in details.items() if k != "anatomy"}
        stages = (
            ("idle", "gone idle", "after_idle", idle, details),
            ("created", "just created", "after_create", created, created_details),
        )
        for stage, when, figure, notes, stage_details in stages:
            results.append(
                Result(
                    key=f"{key}.{method}.{stage}",
                    title=f"Bytes per {what}, {n:,} sessions, {when} ({label})",
                    unit="B",
                    samples=[c[figure] for c in children],
                    higher_is_better=False,
                    baseline=task,
                    target=target,
                    quoted=ADK_QUOTE,
                    notes=notes,
                    details=stage_details,
                )
            )
    return results


def run(quick: bool = False) -> list[Result]:
    sizes = QUICK if quick else FULL
    results: list[Result] = []
    for index, n in enumerate(sizes.sessions):
        base = [_spawn("baseline", min(n, 10_000)) for _ in range(sizes.tracemalloc_repeats)]
        for message_bytes in MESSAGE_BYTES:
            results += _rows(sizes, n, index == 0, message_bytes, base)
    return results


if __name__ == "__main__":
    _child_main(sys.argv[1:])
