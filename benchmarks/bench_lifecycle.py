"""Session lifecycle throughput: create + terminate, in sessions per second.

- **cycle**: ``create_session`` then ``terminate_session`` of that session, one after the other;
  the steady state of a service whose sessions come and go.
- **create batch** / **terminate batch**: create N sessions, then terminate all N (so the
  registry holds N live sessions while they are created).

Each repeat uses a fresh runtime (so tombstones and timer entries of earlier repeats do not
accumulate). Baseline: starting and awaiting one bare ``asyncio.Task`` of a trivial coroutine,
the floor of any design that gives a session a task.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ._common import Baseline, Result, clock, make_runtime, quiesce, run_async

__all__ = ["NAME", "run"]

NAME = "lifecycle"


@dataclass(frozen=True)
class Sizes:
    cycles: int
    batch: int
    repeats: int


FULL = Sizes(cycles=20_000, batch=20_000, repeats=5)
QUICK = Sizes(cycles=100, batch=100, repeats=2)


async def _noop() -> None:
    return None


async def _baseline_tasks(n: int) -> float:
    loop = asyncio.get_running_loop()
    quiesce()
    start = clock()
    for _ in range(n):
        await loop.create_task(_noop())
    return n / (clock() - start)


async def _cycle(n: int) -> tuple[float, dict[str, int]]:
    async with make_runtime() as rt:
        client = rt.client
        await client.terminate_session(await client.create_session())  # warm-up
        quiesce()
        start = clock()
        for _ in range(n):
            sid = await client.create_session()
            await client.terminate_session(sid)
        elapsed = clock() - start
        # Timer entries are dropped only when they come due (idle_after_seconds later): how many
        # the terminated sessions left behind.
        leftovers = {
            "timer_entries_after": len(rt.manager._timers),
            "live_after": rt.manager.live_count(),
        }
    return n / elapsed, leftovers


async def _batch(n: int) -> tuple[float, float]:
    async with make_runtime(max_sessions=max(n + 1, 100_000)) as rt:
        client = rt.client
        await client.terminate_session(await client.create_session())  # warm-up
        quiesce()
        start = clock()
        ids = [await client.create_session() for _ in range(n)]
        created = clock()
        for sid in ids:
            await client.terminate_session(sid)
        done = clock()
    return n / (created - start), n / (done - created)


async def _main(sizes: Sizes) -> list[Result]:
    base: list[float] = []
    cycle: list[float] = []
    create: list[float] = []
    terminate: list[float] = []
    leftovers: dict[str, int] = {}
    for _ in range(sizes.repeats):
        base.append(await _baseline_tasks(sizes.cycles))
        rate, leftovers = await _cycle(sizes.cycles)
        cycle.append(rate)
        c, t = await _batch(sizes.batch)
        create.append(c)
        terminate.append(t)
    baseline = Baseline("start + await a bare asyncio.Task", base)
    return [
        Result(
            key="lifecycle.cycle",
            title="Session create + terminate (sequential)",
            unit="sessions/s",
            samples=cycle,
            baseline=baseline,
            notes=f"{sizes.cycles:,} create→terminate cycles per repeat",
            details={"cycles": sizes.cycles, **leftovers},
        ),
        Result(
            key="lifecycle.create_batch",
            title=f"Session create, {sizes.batch:,} live",
            unit="sessions/s",
            samples=create,
            baseline=baseline,
            notes=f"{sizes.batch:,} sessions created back to back",
            details={"batch": sizes.batch},
        ),
        Result(
            key="lifecycle.terminate_batch",
            title=f"Session terminate, {sizes.batch:,} live",
            unit="sessions/s",
            samples=terminate,
            baseline=baseline,
            notes=f"the {sizes.batch:,} sessions above terminated back to back",
            details={"batch": sizes.batch},
        ),
    ]


def run(quick: bool = False) -> list[Result]:
    return run_async(lambda: _main(QUICK if quick else FULL))
