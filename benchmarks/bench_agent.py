"""The agent: what the turn loop costs on top of the model, per streamed chunk and per tool call,
and many sessions streaming from an OpenAI-compatible server at once.

1. **Orchestration per streamed chunk** (scripted provider; memory store and SQLite store, the
   latter ``durability="full"`` in a fresh directory under ``bench_durable.scratch_root()``).
   One turn whose answer streams N chunks (N = 2,000, ~6 characters each), timed from
   ``chat()`` to its return (plus the background work it started), against the same provider
   stream consumed raw in the same process (``async for item in provider.stream(request)``,
   the request the turn sent, the chunks kept in a list). Reported: (turn - raw) / N, so the
   turn's fixed cost (user message, context, final message, llm_response, statuses) is spread
   over the N chunks; the details give a 1-chunk turn's overhead (that fixed cost) and the
   marginal per-chunk overhead ((T(N) - T(1)) - (raw(N) - raw(1))) / (N - 1).

   The provider is a :class:`~jidoka.llm.providers.scripted.ScriptedProvider` put in place of
   the session's own (an internal hook: the session chats once first, then its agent's provider
   is swapped; the next turn reuses it), in two paces:

   - ``burst``: the chunks come without the provider ever yielding to the event loop (the
     scripted provider's ``delay: 0``). The turn loop's reader task then queues them all before
     the turn loop runs again, and they are committed as **one** ``llm_stream_chunk`` event:
     this row is the cost of receiving and coalescing, not of one event per chunk.
   - ``paced``: the provider yields to the loop once per chunk (an injected ``sleep`` that is
     ``asyncio.sleep(0)``), like a network stream whose chunks arrive one read at a time. The
     turn loop commits one event per chunk, unless a commit is still in flight when the next
     chunk arrives: then what arrived meanwhile goes into the next event (on SQLite, whose
     commits are done by a writer thread, that is most of the time).

   The number of ``llm_stream_chunk`` events a turn produced is in the details (median).

   These rows (and those of part 2) are differences of two timings, marked ``"difference":
   true`` in their details: at the smoke test's tiny sizes the overhead is within the noise
   of the two measurements, so a sample may be negative; only full-size medians mean anything.

2. **Orchestration per tool call** (same two stores): one turn of K tool-call rounds (K = 100,
   each a ``read_file`` of a 4-line file, then a final answer; ``max_iterations`` K + 1) against
   the same K calls made directly with ``ToolRegistry.run`` (the worker thread each call runs
   in included) plus the K + 1 provider streams consumed raw. Reported: (turn - direct) / K:
   per call, the tool_call, tool_result, file_index_updated and two agent_status events, the
   index update, the next model call's request (the transcript grows by two messages a round).

3. **Concurrent sessions streaming from an OpenAI-compatible server**: the real local server of
   the tests (tests/support/openai_server.py: Starlette on uvicorn, h11) in a **child
   process** (``python -m benchmarks.bench_agent --serve CHUNKS COUNT``, on uvloop), answering
   every request with C = 200 chunks (and the usage chunk). In this process, a fresh runtime
   (memory store, then SQLite) with S = 100 sessions on the ``openai`` provider (through the
   official ``openai`` SDK, one client per session, as Jidoka makes them); each session chats
   once to warm up (its SDK client is built, its connection opened), then all S chat at once:
   turns/s and chunks/s (S x C over the wall time of the round, the chunks reaching the
   session logs as ``llm_stream_chunk`` events, coalesced), p50 and p99 of the turn latencies.
   Baseline, in the same repeat (the order alternating): the same S streams consumed directly
   with the SDK, without Jidoka: S ``AsyncOpenAI`` clients, each warmed up by one stream, then
   all S ``chat.completions.create(stream=True, stream_options={"include_usage": True})`` at
   once with a request like Jidoka's (the instructions, the read-only tools, the warm-up
   exchange and the user message), every chunk's text appended to a list. The server answers
   both identically from a core of its own (the machine has 2). The SDK's own parsing of a
   chunk (pydantic models built in pure Python) costs a few hundred µs, so both sides are bound
   by it: compare the ratio. When every answer is already buffered, the SDK yields its chunks
   without waiting, the turn loop's reader takes them all before the turn loop runs again, and
   a session gets one ``llm_stream_chunk`` event per answer (the count is in the notes).

Everything in this process runs on the default asyncio loop (no uvloop), like the other
in-process benchmarks; medians over repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._common import (
    ROOT,
    Baseline,
    ChildServer,
    Result,
    clock,
    make_runtime,
    percentile,
    quiesce,
    run_async,
)

__all__ = ["NAME", "run"]

NAME = "agent"

STORES = ("memory", "sqlite")
PACES = ("burst", "paced")
SMALL_FILE = "def main():\n    # the answer\n    return 42\n\n"
MODEL = "test-model"


@dataclass(frozen=True)
class Sizes:
    chunks: int  # chunks of the measured answer (part 1)
    tool_calls: int  # tool-call rounds of the measured turn (part 2)
    repeats: int  # parts 1 and 2
    sessions: int  # concurrent sessions (part 3)
    stream_chunks: int  # chunks per answer from the server (part 3)
    stream_repeats: int  # part 3, per store


FULL = Sizes(
    chunks=2_000, tool_calls=100, repeats=5, sessions=100, stream_chunks=200, stream_repeats=3
)
QUICK = Sizes(chunks=50, tool_calls=5, repeats=2, sessions=10, stream_chunks=20, stream_repeats=1)


def _chunks(n: int) -> list[str]:
    return [f"tok{i % 100:02d} " for i in range(n)]


USAGE = {"prompt_tokens": 100, "completion_tokens": 10}


# --- runtimes -------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _runtime(store: str) -> AsyncIterator[Any]:
    if store == "memory":
        async with make_runtime() as rt:
            yield rt
        return
    from .bench_durable import durable_runtime, scratch_dir

    with scratch_dir("agent-sqlite") as path:
        async with durable_runtime(path) as rt:
            yield rt


@contextlib.contextmanager
def _project() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="jidoka-bench-agent-") as root:
        Path(root, "small.py").write_text(SMALL_FILE, encoding="utf-8")
        yield os.path.realpath(root)


async def _one_loop_turn(_delay: float) -> None:
    await asyncio.sleep(0)


# --- parts 1 and 2: the scripted provider ---------------------------------------------------------


@dataclass
class _Turn:
    turn: float  # seconds: chat() until it returned and background work finished
    raw: float  # seconds: the same provider calls consumed raw (plus the direct tool calls)
    events: int  # llm_stream_chunk events the turn produced


async def _session_with(rt: Any, project: str, provider: Any, max_iterations: int) -> str:
    """A session that chatted once (its agent and provider exist), then runs ``provider``."""
    client = rt.client
    sid: str = await client.create_session(
        project_root=project,
        config={"max_iterations": max_iterations},
        llm_config={"provider": "scripted", "script": [{"text": "warm", "usage": USAGE}]},
    )
    await client.chat(sid, "warm up")
    agent = rt._agents.get(sid)  # internal: swap in the provider to measure
    slot = getattr(agent, "_providers", None)
    if slot is None or slot.current is None:
        raise RuntimeError("the agent internals changed: cannot swap its provider")
    slot.replace(provider)  # the config is unchanged, so the next turn reuses it
    return sid


async def _chunk_events(rt: Any, sid: str, after_seq: int) -> int:
    events = await rt.read_events(sid, after_seq=after_seq)
    return sum(1 for e in events if e.type == "llm_stream_chunk")


async def _timed_chat(rt: Any, sid: str) -> tuple[float, int]:
    """Seconds of one turn (and the background work it started) and its last seq."""
    quiesce()
    start = clock()
    result = await rt.client.chat(sid, "go")
    await rt.manager.wait_background()
    elapsed = clock() - start
    return elapsed, result.message.seq


async def _consume(provider: Any, requests: list[Any]) -> None:
    from jidoka.llm.types import TextDelta

    for request in requests:
        texts: list[str] = []
        async for item in provider.stream(request):
            if isinstance(item, TextDelta):
                texts.append(item.text)


async def _stream_turn(rt: Any, project: str, n: int, pace: str) -> _Turn:
    from jidoka.llm.providers.scripted import ScriptedProvider

    turn: dict[str, Any] = {"chunks": _chunks(n), "usage": USAGE}
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    if pace == "paced":
        turn["delay"] = 1e-9  # > 0: the provider calls sleep() before each chunk
        sleep = _one_loop_turn
    provider = ScriptedProvider([turn], sleep=sleep)
    sid = await _session_with(rt, project, provider, 10)
    before = (await rt.client.get_conversation_history(sid))[-1].seq
    elapsed, _ = await _timed_chat(rt, sid)
    events = await _chunk_events(rt, sid, before)
    raw_provider = ScriptedProvider([turn], sleep=sleep)
    quiesce()
    start = clock()
    await _consume(raw_provider, provider.requests)
    raw = clock() - start
    return _Turn(elapsed, raw, events)


async def _tool_turn(rt: Any, project: str, k: int) -> _Turn:
    from jidoka.llm.providers.scripted import ScriptedProvider
    from jidoka.llm.types import ToolCall
    from jidoka.tools.files import ToolContext
    from jidoka.tools.registry import ToolRegistry

    read = {"name": "read_file", "arguments": {"path": "small.py"}}
    turns = [{"tool_calls": [{**read, "id": f"c{i}"}], "usage": USAGE} for i in range(k)]
    turns.append({"text": "done", "usage": USAGE})
    provider = ScriptedProvider(turns)
    sid = await _session_with(rt, project, provider, k + 1)
    elapsed, _ = await _timed_chat(rt, sid)
    assert len(provider.requests) == k + 1, len(provider.requests)
    registry = ToolRegistry.default(allow_write=False)
    context = ToolContext(root=project, session_id=sid)
    calls = [
        ToolCall(id=f"c{i}", name="read_file", arguments='{"path":"small.py"}') for i in range(k)
    ]
    raw_provider = ScriptedProvider(turns)
    quiesce()
    start = clock()
    for call in calls:
        result = await registry.run(call, context, timeout=30.0)
        assert not result.is_error, result.content
    await _consume(raw_provider, provider.requests)
    raw = clock() - start
    return _Turn(elapsed, raw, 0)


def _per(samples: list[_Turn], n: int) -> tuple[list[float], list[float]]:
    """Overhead per unit, and the raw cost per unit, per repeat."""
    return [(s.turn - s.raw) / n for s in samples], [s.raw / n for s in samples]


async def _scripted_rows(sizes: Sizes) -> list[Result]:
    results: list[Result] = []
    n, k = sizes.chunks, sizes.tool_calls
    for store in STORES:
        with _project() as project:
            async with _runtime(store) as rt:
                await _stream_turn(rt, project, n, "burst")  # warm-up
                await _tool_turn(rt, project, min(k, 5))
                for pace in PACES:
                    long = [await _stream_turn(rt, project, n, pace) for _ in range(sizes.repeats)]
                    one = [await _stream_turn(rt, project, 1, pace) for _ in range(sizes.repeats)]
                    overhead, raw = _per(long, n)
                    fixed = statistics.median(s.turn - s.raw for s in one)
                    marginal = statistics.median(
                        ((a.turn - b.turn) - (a.raw - b.raw)) / (n - 1)
                        for a, b in zip(long, one, strict=True)
                    )
                    results.append(
                        Result(
                            key=f"agent.chunk_overhead.{store}.{pace}",
                            title=f"turn loop per streamed chunk, {store} store, {pace} "
                            f"({n:,} chunks)",
                            unit="s",
                            samples=overhead,
                            higher_is_better=False,
                            baseline=Baseline("raw provider stream, per chunk", raw),
                            notes=f"(turn - raw stream) / {n:,}; "
                            f"{statistics.median(s.events for s in long):g} llm_stream_chunk "
                            f"events per turn; fixed cost of a turn {fixed * 1e6:.0f} µs, "
                            f"marginal {marginal * 1e6:.2f} µs per chunk",
                            details={
                                "difference": True,  # of two timings: may be < 0 when tiny
                                "chunks": n,
                                "pace": pace,
                                "store": store,
                                "events_per_turn": [s.events for s in long],
                                "turn_s": [s.turn for s in long],
                                "raw_s": [s.raw for s in long],
                                "one_chunk_overhead_s": fixed,
                                "marginal_per_chunk_s": marginal,
                            },
                        )
                    )
                tools = [await _tool_turn(rt, project, k) for _ in range(sizes.repeats)]
                overhead, raw = _per(tools, k)
                results.append(
                    Result(
                        key=f"agent.tool_overhead.{store}",
                        title=f"turn loop per tool call, {store} store ({k:,} read_file rounds)",
                        unit="s",
                        samples=overhead,
                        higher_is_better=False,
                        baseline=Baseline("ToolRegistry.run + raw provider stream, per call", raw),
                        notes=f"(turn - direct calls and raw streams) / {k:,}",
                        details={
                            "difference": True,
                            "tool_calls": k,
                            "store": store,
                            "turn_s": [s.turn for s in tools],
                            "raw_s": [s.raw for s in tools],
                        },
                    )
                )
    return results


# --- part 3: many sessions against an OpenAI-compatible server ------------------------------------


async def _serve(chunks: int, count: int) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.support.openai_server import Text, openai_server

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    text = _chunks(chunks)
    async with openai_server() as server:
        server.queue(*(Text(text, prompt_tokens=100) for _ in range(count)))
        print(json.dumps({"base_url": server.base_url}), flush=True)
        await stop.wait()
        answered = len(server.requests)
    print(json.dumps({"answered": answered}), flush=True)


def _child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_agent")
    parser.add_argument("--serve", type=int, nargs=2, metavar=("CHUNKS", "COUNT"), required=True)
    args = parser.parse_args(argv)
    chunks, count = args.serve
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        asyncio.run(_serve(chunks, count))
    else:
        uvloop.run(_serve(chunks, count))


class _ModelServer:
    """The OpenAI-compatible test server in a child process, from start to SIGTERM."""

    def __init__(self, chunks: int, count: int) -> None:
        self.chunks = chunks
        self.count = count
        self.base_url = ""
        self._child: ChildServer | None = None

    def __enter__(self) -> _ModelServer:
        from .bench_http import _child_env

        command = [sys.executable, "-m", "benchmarks.bench_agent", "--serve"]
        command += [str(self.chunks), str(self.count)]
        self._child = ChildServer(command, "the model server", env=_child_env())
        self.base_url = self._child.__enter__().ready["base_url"]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._child is not None:
            self._child.__exit__(*exc)
            self._child = None


@dataclass
class _Round:
    wall: float
    latencies: list[float]
    events: int = 0
    cold_wall: float = 0.0


async def _jidoka_round(store: str, base_url: str, sizes: Sizes) -> _Round:
    expected = "".join(_chunks(sizes.stream_chunks))
    llm_config = {
        "provider": "openai",
        "model": MODEL,
        "base_url": base_url,
        "api_key_env": None,
        "max_retries": 0,
        "timeout": 60,
    }
    async with _runtime(store) as rt:
        client = rt.client
        sids = [await client.create_session(llm_config=llm_config) for _ in range(sizes.sessions)]
        start = clock()
        warm = await asyncio.gather(*(client.chat(sid, "warm up") for sid in sids))
        cold_wall = clock() - start
        assert all(r.message.content == expected for r in warm)
        seqs = [r.message.seq for r in warm]
        latencies: list[float] = []

        async def one(sid: str) -> None:
            began = clock()
            result = await client.chat(sid, "go")
            latencies.append(clock() - began)
            assert result.message.content == expected, result.message.content[:80]

        quiesce()
        start = clock()
        await asyncio.gather(*(one(sid) for sid in sids))
        wall = clock() - start
        events = 0
        for sid, seq in zip(sids, seqs, strict=True):
            events += await _chunk_events(rt, sid, seq)
    return _Round(wall, latencies, events, cold_wall)


def _sdk_request(answer: str) -> dict[str, Any]:
    """A request shaped like the one a Jidoka session sends for its second turn."""
    from jidoka.llm.prompt import DEFAULT_INSTRUCTIONS
    from jidoka.tools.registry import ToolRegistry

    tools = [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
        }
        for t in ToolRegistry.default(allow_write=False).specs()
    ]
    messages = [
        {"role": "system", "content": DEFAULT_INSTRUCTIONS},
        {"role": "user", "content": "warm up"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "go"},
    ]
    return {"model": MODEL, "messages": messages, "tools": tools}


async def _sdk_round(base_url: str, sizes: Sizes) -> _Round:
    import openai

    expected = "".join(_chunks(sizes.stream_chunks))
    request = _sdk_request(expected)

    def make() -> list[Any]:
        return [
            openai.AsyncOpenAI(api_key="not-needed", base_url=base_url, max_retries=0, timeout=60)
            for _ in range(sizes.sessions)
        ]

    clients = await asyncio.to_thread(make)
    latencies: list[float] = []

    async def stream(sdk: Any, timed: bool) -> None:
        began = clock()
        response = await sdk.chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **request
        )
        texts: list[str] = []
        async with response:
            async for chunk in response:
                for choice in chunk.choices:
                    if choice.delta is not None and choice.delta.content:
                        texts.append(choice.delta.content)
        if timed:
            latencies.append(clock() - began)
        assert "".join(texts) == expected

    try:
        await asyncio.gather(*(stream(c, False) for c in clients))  # warm-up
        quiesce()
        start = clock()
        await asyncio.gather(*(stream(c, True) for c in clients))
        wall = clock() - start
    finally:
        for sdk in clients:
            await sdk.close()
    return _Round(wall, latencies)


async def _concurrent_rows(sizes: Sizes) -> list[Result]:
    per_round = 4 * sizes.sessions  # Jidoka: warm-up + turn; SDK: warm-up + stream
    count = per_round * sizes.stream_repeats * len(STORES) + sizes.sessions
    results: list[Result] = []
    with _ModelServer(sizes.stream_chunks, count) as server:
        for store in STORES:
            ours: list[_Round] = []
            base: list[_Round] = []
            for repeat in range(sizes.stream_repeats):
                if repeat % 2 == 0:
                    ours.append(await _jidoka_round(store, server.base_url, sizes))
                    base.append(await _sdk_round(server.base_url, sizes))
                else:
                    base.append(await _sdk_round(server.base_url, sizes))
                    ours.append(await _jidoka_round(store, server.base_url, sizes))
            results += _concurrent_results(store, sizes, ours, base)
    return results


def _concurrent_results(
    store: str, sizes: Sizes, ours: list[_Round], base: list[_Round]
) -> list[Result]:
    s, c = sizes.sessions, sizes.stream_chunks
    what = f"{s} sessions x {c} chunks, {store} store"
    sdk = f"{s} streams straight through the openai SDK"
    details = {
        "sessions": s,
        "chunks_per_answer": c,
        "store": store,
        "llm_stream_chunk_events": [r.events for r in ours],
        "wall_s": [r.wall for r in ours],
        "sdk_wall_s": [r.wall for r in base],
        "cold_round_wall_s": [r.cold_wall for r in ours],
    }
    events = statistics.median(r.events for r in ours)
    cold = statistics.median(r.cold_wall for r in ours)
    coalesced = f"{events:,.0f} llm_stream_chunk events for {s * c:,} chunks"
    key = f"agent.openai_concurrent.{store}"
    return [
        Result(
            key=f"{key}.turns",
            title=f"concurrent turns from an OpenAI-compatible server, {what}",
            unit="turns/s",
            samples=[s / r.wall for r in ours],
            baseline=Baseline(sdk, [s / r.wall for r in base]),
            notes=f"all sessions chat at once (after a warm-up turn each); {coalesced}; "
            f"the cold warm-up round (SDK clients built) took {cold:.3g} s",
            details=details,
        ),
        Result(
            key=f"{key}.chunks",
            title=f"streamed chunks into session logs, {what}",
            unit="chunks/s",
            samples=[s * c / r.wall for r in ours],
            baseline=Baseline(sdk, [s * c / r.wall for r in base]),
            notes=coalesced,
        ),
        Result(
            key=f"{key}.p50",
            title=f"turn latency p50, {what}",
            unit="s",
            samples=[statistics.median(r.latencies) for r in ours],
            higher_is_better=False,
            baseline=Baseline(sdk, [statistics.median(r.latencies) for r in base]),
        ),
        Result(
            key=f"{key}.p99",
            title=f"turn latency p99, {what}",
            unit="s",
            samples=[percentile(r.latencies, 99) for r in ours],
            higher_is_better=False,
            baseline=Baseline(sdk, [percentile(r.latencies, 99) for r in base]),
        ),
    ]


# --- the module -----------------------------------------------------------------------------------


async def _main(sizes: Sizes) -> list[Result]:
    results = await _scripted_rows(sizes)
    results += await _concurrent_rows(sizes)
    return results


def run(quick: bool = False) -> list[Result]:
    sizes = QUICK if quick else FULL
    return run_async(lambda: _main(sizes))


if __name__ == "__main__":
    _child_main(sys.argv[1:])
