"""Fork and rewind on the SQLite store (``full`` durability), on sessions of 1,000 and 10,000
messages (``snapshot_interval`` 500, the default; ``max_history`` 100, the default).

- ``fork_session`` at the head: a live session's state is copied in memory, so the time should
  not depend on the history's length (the 1,000- and 10,000-message rows side by side show it).
  Baseline: ``create_session`` in the same runtime (one commit of a smaller first event).
- ``fork_session`` in the middle (seq 5,000): the newest snapshot at or before it plus the
  events between (at most ``snapshot_interval``).
- ``rewind_session`` 100 events back and to the middle: the snapshot before the target plus the
  events up to it, plus one read of the rewound range (to name the files its tools wrote).

Each sample is one call (a fork makes a session each time; a rewind appends one event).
"""

from __future__ import annotations

import os
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jidoka

from ._common import Baseline, Result, Target, clock, quiesce, run_async

__all__ = ["NAME", "run"]

NAME = "steering"

CONTENT = "Let's look at the failing test in tests/test_parser.py first, please."


@dataclass(frozen=True)
class Sizes:
    small: int
    large: int
    repeats: int


FULL = Sizes(small=1_000, large=10_000, repeats=15)
QUICK = Sizes(small=20, large=60, repeats=2)


def _scratch() -> Path:
    base = os.environ.get("JIDOKA_BENCH_TMPDIR")
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="steering-", dir=base))


async def _fill(client: jidoka.Client, sid: str, messages: int) -> None:
    """``messages`` messages, sent 100 at a time (they share commits: filling is not timed)."""
    sent = 0
    while sent < messages:
        batch = min(100, messages - sent)
        for _ in range(batch):
            await client.send_message(sid, "user", CONTENT)
        sent += batch


async def _timed(call: object) -> float:
    quiesce()
    start = clock()
    await call  # type: ignore[misc]
    return clock() - start


async def _last_seq(client: jidoka.Client, sid: str) -> int:
    events = await client.read_events(sid, after_seq=0, limit=1)
    seq = events[-1].seq
    while page := await client.read_events(sid, after_seq=seq, limit=1_000):
        seq = page[-1].seq
    return seq


async def _main(sizes: Sizes) -> list[Result]:
    directory = _scratch()
    settings = jidoka.Settings(data_dir=str(directory), store="sqlite")
    async with jidoka.Runtime(settings=settings) as rt:
        client = rt.client
        small = await client.create_session()
        large = await client.create_session()
        await _fill(client, small, sizes.small)
        await _fill(client, large, sizes.large)
        middle = (await _last_seq(client, large)) // 2
        await client.fork_session(large)  # warm-up
        create: list[float] = []
        head_small: list[float] = []
        head_large: list[float] = []
        mid_large: list[float] = []
        rewind_near: list[float] = []
        rewind_mid: list[float] = []
        for _ in range(sizes.repeats):
            create.append(await _timed(client.create_session()))
            head_small.append(await _timed(client.fork_session(small)))
            head_large.append(await _timed(client.fork_session(large)))
            mid_large.append(await _timed(client.fork_session(large, at_seq=middle)))
        for _ in range(sizes.repeats):
            last = await _last_seq(client, large)
            rewind_near.append(
                await _timed(client.rewind_session(large, to_seq=max(1, last - 100)))
            )
            rewind_mid.append(await _timed(client.rewind_session(large, to_seq=middle)))
    base = Baseline("create_session (same runtime)", create)
    common = {"snapshot_interval": 500, "max_history": 100}
    return [
        Result(
            key="steering.fork_head_large",
            title=f"fork_session at the head, {sizes.large:,} messages (SQLite)",
            unit="s",
            samples=head_large,
            higher_is_better=False,
            baseline=base,
            target=Target("<=", 0.020, "≤ 20 ms"),
            details={"messages": sizes.large, **common},
        ),
        Result(
            key="steering.fork_head_small",
            title=f"fork_session at the head, {sizes.small:,} messages (SQLite)",
            unit="s",
            samples=head_small,
            higher_is_better=False,
            baseline=Baseline(
                f"fork at the head of {sizes.large:,} messages (same runtime)", head_large
            ),
            notes="ratio ≈ 1: independent of the history's length",
            details={"messages": sizes.small, **common},
        ),
        Result(
            key="steering.fork_middle_large",
            title=f"fork_session at seq {middle:,} of {sizes.large:,} messages (SQLite)",
            unit="s",
            samples=mid_large,
            higher_is_better=False,
            baseline=base,
            target=Target("<=", 0.020, "≤ 20 ms"),
            details={"messages": sizes.large, "at_seq": middle, **common},
        ),
        Result(
            key="steering.rewind_100",
            title=f"rewind_session 100 events back, {sizes.large:,} messages (SQLite)",
            unit="s",
            samples=rewind_near,
            higher_is_better=False,
            baseline=base,
            details={"messages": sizes.large, **common},
        ),
        Result(
            key="steering.rewind_middle",
            title=f"rewind_session to seq {middle:,} (SQLite)",
            unit="s",
            samples=rewind_mid,
            higher_is_better=False,
            baseline=base,
            notes=f"reads the rewound range once (median {statistics.median(rewind_mid):.4f} s)",
            details={"messages": sizes.large, "to_seq": middle, **common},
        ),
    ]


def run(quick: bool = False) -> list[Result]:
    return run_async(lambda: _main(QUICK if quick else FULL))
