"""Compaction (issue 17): what ``compact_session`` costs beyond the model calls it makes.

A session (memory store, then SQLite with ``durability="full"`` in a fresh directory under
``bench_durable.scratch_root()``) chats once (so its agent and provider exist, as in a session
in use), then holds N user messages of ~70 characters (``max_history`` N + 2, so the window
holds them all); ``compact_session(sid, keep_last=4)`` is timed from the call to its return
(plus the background work it started). The session's provider is the scripted one, whose
answer to a summary request is computed from the request (``scripted_summary``). Baseline, in
the same repeat: the summary requests the compaction sent, streamed raw on a fresh
:class:`~jidoka.llm.providers.scripted.ScriptedProvider` (``async for item in
provider.stream(request)``). Reported: compaction - raw model calls: planning, building the
transcript chunks (one model call per chunk that fits ``context_window - max_tokens``: 8192 -
1024 by default), the events (``agent_status`` compacting, ``context_compacted``,
``agent_status`` idle) and their two awaited commits, the projection. Target ≤ 5 ms. For
scale, the notes give the time of two awaited ``send_message`` to another session of the same
runtime in the same repeat: the floor of those two commits on that store.

N = 100 (one model call) and N = 1,000 (the transcript needs several chunks, so several model
calls). A difference of two timings (``"difference": true``): only full-size medians mean
anything.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ._common import Baseline, Result, Target, clock, make_runtime, quiesce, run_async

__all__ = ["NAME", "run"]

NAME = "compaction"

CONTENT = "Let's look at the failing test in tests/test_parser.py first, please: {i}."
STORES = ("memory", "sqlite")
KEEP_LAST = 4
#: The awaited commits of a compaction: ``agent_status`` compacting before the model call,
#: then ``context_compacted`` with the status after it.
COMMITS = 2


@dataclass(frozen=True)
class Sizes:
    messages: tuple[int, ...]
    repeats: int


FULL = Sizes(messages=(100, 1_000), repeats=15)
QUICK = Sizes(messages=(10, 40), repeats=2)


@dataclass
class _Sample:
    compact: float  # seconds: compact_session until it returned and background work finished
    raw: float  # seconds: the same summary requests streamed raw
    calls: int  # model calls the compaction made
    commits: float  # seconds: two awaited appends to another session (the commits' floor)
    tokens_before: int
    tokens_after: int


@contextlib.asynccontextmanager
async def _runtime(store: str) -> AsyncIterator[Any]:
    if store == "memory":
        async with make_runtime() as rt:
            yield rt
        return
    from .bench_durable import durable_runtime, scratch_dir

    with scratch_dir("compaction-sqlite") as path:
        async with durable_runtime(path) as rt:
            yield rt


async def _raw(requests: list[Any]) -> float:
    from jidoka.llm.providers.scripted import ScriptedProvider

    provider = ScriptedProvider()
    quiesce()
    start = clock()
    for request in requests:
        async for _item in provider.stream(request):
            pass
    return clock() - start


async def _sample(rt: Any, messages: int) -> _Sample:
    client = rt.client
    sid = await client.create_session(
        config={"max_history": messages + 2},
        llm_config={"provider": "scripted", "script": [{"text": "warm"}]},
    )
    await client.chat(sid, "warm up")  # the agent and its provider exist, as in use
    for i in range(messages):
        await client.send_message(sid, "user", CONTENT.format(i=i))
    agent = rt._agents.get(sid)  # internal: the requests the provider received
    slot = getattr(agent, "_providers", None)
    provider = slot.current if slot is not None else None
    if provider is None or not hasattr(provider, "requests"):
        raise RuntimeError("the agent internals changed: cannot read its provider's requests")
    before = len(provider.requests)
    await rt.manager.wait_background()
    quiesce()
    start = clock()
    done = await client.compact_session(sid, keep_last=KEEP_LAST)
    await rt.manager.wait_background()
    elapsed = clock() - start
    requests = provider.requests[before:]
    if not requests or not all(r.summary for r in requests):
        raise RuntimeError(f"expected the compaction's summary requests, got {requests!r:.200}")
    raw = await _raw(requests)
    await client.terminate_session(sid)
    other = await client.create_session()
    await client.send_message(other, "user", "warm")
    await rt.manager.wait_background()
    quiesce()
    start = clock()
    for _ in range(COMMITS):
        await client.send_message(other, "user", CONTENT)
    commits = clock() - start
    await client.terminate_session(other)
    return _Sample(elapsed, raw, len(requests), commits, done.tokens_before, done.tokens_after)


async def _main(sizes: Sizes) -> list[Result]:
    results: list[Result] = []
    for store in STORES:
        async with _runtime(store) as rt:
            await _sample(rt, min(sizes.messages))  # warm-up
            for messages in sizes.messages:
                samples = [await _sample(rt, messages) for _ in range(sizes.repeats)]
                calls = samples[0].calls
                floor = statistics.median(s.commits for s in samples)
                results.append(
                    Result(
                        key=f"compaction.overhead.{store}.{messages}",
                        title=f"compact_session beyond the model calls, {store} store "
                        f"({messages:,} messages, keep_last={KEEP_LAST})",
                        unit="s",
                        samples=[s.compact - s.raw for s in samples],
                        higher_is_better=False,
                        baseline=Baseline(
                            "the summary requests streamed raw (scripted provider)",
                            [s.raw for s in samples],
                        ),
                        target=Target("<=", 5e-3, "≤ 5 ms"),
                        notes=f"{calls} model call{'s' if calls != 1 else ''}; conversation "
                        f"{samples[0].tokens_before:,} -> {samples[0].tokens_after:,} tokens; "
                        f"{COMMITS} awaited appends in the same run: {floor * 1e3:.2f} ms",
                        details={
                            "difference": True,  # of two timings: may be < 0 when tiny
                            "messages": messages,
                            "store": store,
                            "model_calls": calls,
                            "compact_s": [s.compact for s in samples],
                            "raw_s": [s.raw for s in samples],
                            "two_appends_s": [s.commits for s in samples],
                        },
                    )
                )
    return results


def run(quick: bool = False) -> list[Result]:
    return run_async(lambda: _main(QUICK if quick else FULL))


if __name__ == "__main__":
    from ._common import format_table

    print(format_table(run()))
