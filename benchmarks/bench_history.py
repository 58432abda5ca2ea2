"""Reading a 1,000-message history: ``get_conversation_history`` on a session created with
``config={"max_history": 1000}`` that holds 1,000 messages.

Each sample times a batch of calls and divides (a single call is near the timer's resolution).
Baseline: awaiting a coroutine that returns ``list()`` of a 1,000-item deque, the floor of any
async API that hands out a copy of the window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import jidoka

from ._common import Baseline, Result, Target, clock, make_runtime, quiesce, run_async

__all__ = ["NAME", "run"]

NAME = "history"

CONTENT = "Let's look at the failing test in tests/test_parser.py first, please."


@dataclass(frozen=True)
class Sizes:
    messages: int
    calls: int  # calls timed per sample
    repeats: int


FULL = Sizes(messages=1_000, calls=2_000, repeats=9)
QUICK = Sizes(messages=1_000, calls=20, repeats=2)


async def _floor(window: deque[object], calls: int) -> float:
    async def read() -> list[object]:
        return list(window)

    quiesce()
    start = clock()
    for _ in range(calls):
        await read()
    return (clock() - start) / calls


async def _ours(client: jidoka.Client, sid: str, calls: int) -> float:
    quiesce()
    start = clock()
    for _ in range(calls):
        await client.get_conversation_history(sid)
    return (clock() - start) / calls


async def _main(sizes: Sizes) -> list[Result]:
    async with make_runtime() as rt:
        client = rt.client
        sid = await client.create_session(config={"max_history": sizes.messages})
        for _ in range(sizes.messages):
            await client.send_message(sid, "user", CONTENT)
        history = await client.get_conversation_history(sid)
        assert len(history) == sizes.messages, len(history)
        window: deque[object] = deque(history, maxlen=sizes.messages)
        await _ours(client, sid, 10)  # warm-up
        base, ours = [], []
        for _ in range(sizes.repeats):
            base.append(await _floor(window, sizes.calls))
            ours.append(await _ours(client, sid, sizes.calls))
    return [
        Result(
            key="history.read_1000",
            title=f"get_conversation_history, {sizes.messages:,} messages",
            unit="s",
            samples=ours,
            higher_is_better=False,
            baseline=Baseline(f"await coroutine returning list(deque of {sizes.messages:,})", base),
            target=Target("<=", 1e-4, "≤ 0.1 ms"),
            notes=f"{sizes.calls:,} calls per sample",
            details={"messages": sizes.messages, "calls": sizes.calls},
        )
    ]


def run(quick: bool = False) -> list[Result]:
    return run_async(lambda: _main(QUICK if quick else FULL))
