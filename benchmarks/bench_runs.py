"""Runs (issue 18): how soon a started run begins, and what a run costs a turn.

A memory-store runtime, one session whose model is the scripted provider (it answers at once,
so what is timed is Jidoka's side). A watcher is subscribed to the session's events.

- **start → run_started**: from the call of ``start_run`` to the watcher receiving the run's
  ``run_started`` event (the run was accepted, its ``run_queued`` committed, the agent's worker
  took it and committed ``run_started``); p50 and p99 over the runs of a repeat. Target: p50
  within 2 ms.
- **start_run answer**: the call of ``start_run`` alone (what a client waits for).
- **turn, start to join**: a whole run of a one-chunk answer, ``start_run`` then ``join_run``.
"""

from __future__ import annotations

from typing import Any

import jidoka

from ._common import Result, Target, clock, percentile, run_async

__all__ = ["NAME", "run"]

NAME = "runs"


async def _measure(runs: int) -> dict[str, Any]:
    async with jidoka.Runtime(store="memory") as rt:
        client = rt.client
        llm = {"provider": "scripted", "script": [{"text": "ok"}] * (runs + 1)}
        sid = await client.create_session(llm_config=llm)
        started: list[float] = []
        answered: list[float] = []
        whole: list[float] = []
        async with client.subscribe_to_session(sid) as events:
            stream = aiter(events)
            for _ in range(runs):
                begin = clock()
                run = await client.start_run(sid, "go")
                answered.append(clock() - begin)
                while True:
                    event = await anext(stream)
                    if event.type == "run_started" and event.data["run_id"] == run.run_id:
                        started.append(clock() - begin)
                        break
                await client.join_run(sid, run.run_id, timeout=30)
                whole.append(clock() - begin)
    skip = len(started) // 10  # the first runs make the agent and its provider
    return {
        "started.p50": percentile(started[skip:], 50),
        "started.p99": percentile(started[skip:], 99),
        "answer.p50": percentile(answered[skip:], 50),
        "turn.p50": percentile(whole[skip:], 50),
    }


def run(*, quick: bool = False) -> list[Result]:
    repeats, runs = (1, 20) if quick else (5, 1000)
    samples = [run_async(lambda: _measure(runs)) for _ in range(repeats)]
    notes = "memory store, scripted model, a watcher subscribed"
    titles = {
        "started.p50": "start_run to run_started seen, p50",
        "started.p99": "start_run to run_started seen, p99",
        "answer.p50": "start_run answered, p50",
        "turn.p50": "A run of a one-chunk answer, start_run to join_run, p50",
    }
    return [
        Result(
            key=f"runs.{key}",
            title=title,
            unit="s",
            samples=[s[key] for s in samples],
            higher_is_better=False,
            target=Target("<=", 0.002, "at most 2 ms (issue 18)") if key == "started.p50" else None,
            notes=notes,
        )
        for key, title in titles.items()
    ]


if __name__ == "__main__":
    from ._common import format_table

    print(format_table(run()))
