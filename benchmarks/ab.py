"""A/B of the in-process hot path between two source trees, in the same run.

``python -m benchmarks.ab OLD_SRC [NEW_SRC] [--rounds N]`` measures, in fresh child processes
that alternate between the trees (old, new, old, new ...), the rate of sequential awaited
``send_message`` on one session and of sequential create + terminate (memory store), then prints
the median of each tree and the median of the per-round ratios (new / old). A tree is the
``src`` directory of a checkout, e.g. one made with ``git worktree add /tmp/base <commit>``.

Alternating in one run is what makes a small difference readable on a noisy machine: both
trees meet the same background load, and the ratio is taken per round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import asyncio, json, time, jidoka

async def main(messages, sessions):
    settings = jidoka.Settings()
    async with jidoka.Runtime(settings=settings, store="memory") as rt:
        client = rt.client
        sid = await client.create_session()
        for _ in range(1000):  # warm-up
            await client.send_message(sid, "user", "hello")
        start = time.perf_counter()
        for _ in range(messages):
            await client.send_message(sid, "user", "hello")
        append = messages / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(sessions):
            await client.terminate_session(await client.create_session())
        lifecycle = sessions / (time.perf_counter() - start)
    print(json.dumps({"append": append, "lifecycle": lifecycle}))

import sys
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


def _measure(src: Path, messages: int, sessions: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONASYNCIODEBUG": ""}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(messages), str(sessions)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="the baseline tree's src directory")
    parser.add_argument("new", type=Path, nargs="?", default=Path(__file__).parents[1] / "src")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--sessions", type=int, default=2_000)
    args = parser.parse_args()
    rows: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    ratios: dict[str, list[float]] = {}
    for round_ in range(args.rounds):
        order = ("old", "new") if round_ % 2 == 0 else ("new", "old")
        got = {tree: _measure(getattr(args, tree), args.messages, args.sessions) for tree in order}
        for tree, values in got.items():
            for name, value in values.items():
                rows[tree].setdefault(name, []).append(value)
        for name in got["old"]:
            ratios.setdefault(name, []).append(got["new"][name] / got["old"][name])
    print(f"{args.rounds} alternating rounds; medians (per second)")
    print("| measure | old | new | new / old (median of per-round ratios) |")
    print("|---|---|---|---|")
    for name, values in ratios.items():
        old = statistics.median(rows["old"][name])
        new = statistics.median(rows["new"][name])
        print(f"| {name} | {old:,.0f} | {new:,.0f} | {statistics.median(values):.3f} |")


if __name__ == "__main__":
    main()
