"""In-memory append throughput (messages per second), and whether it depends on history length.

- **one session**: sequential, awaited ``send_message`` calls on one fresh session.
- **100 sessions**: one task per session, each sending its messages in turn; the harness starts
  the tasks in a ``TaskGroup``. With the memory store a ``send_message`` never suspends, so each
  task runs its messages back to back; the **interleaved** variant yields to the loop after every
  message (``asyncio.sleep(0)``), as a task waiting on a network client would, which makes the
  event loop switch sessions on every message.
- **history length**: append rate on a fresh session vs. on a session that already holds
  ``prefill`` messages (the memory store keeps ``memory_max_events_per_session`` events and trims
  the oldest in chunks, which the measured window includes; the projection keeps the newest
  ``max_history``). The ratio is taken per repeat (long / fresh, measured back to back, the
  order alternating), then the median. A second long session has ``max_history`` as large as
  the prefill, so its projection window is full size too.

Every timed region ends by waiting for background work the appends may have started (none with
the memory store), so deferred work cannot escape the clock.

Baseline: the same loop awaiting a trivial coroutine that appends to a list, the floor of any
async API (for the interleaved variant, with the same ``sleep(0)``).
"""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass

import jidoka
from jidoka.config import SessionCeilings

from ._common import Baseline, Result, Target, clock, make_runtime, quiesce, run_async

__all__ = ["NAME", "run"]

NAME = "append"

#: A typical short chat message (64 characters).
CONTENT = "Please refactor parse_config() so it also accepts TOML files. Ta"


@dataclass(frozen=True)
class Sizes:
    single: int  # messages per repeat, one session
    sessions: int  # concurrent sessions
    per_session: int  # messages per session per repeat
    prefill: int  # messages already in the long session
    window: int  # messages timed per repeat in the history-length benchmark
    repeats: int


FULL = Sizes(
    single=100_000, sessions=100, per_session=1_000, prefill=100_000, window=50_000, repeats=7
)
QUICK = Sizes(single=300, sessions=5, per_session=20, prefill=300, window=100, repeats=2)

#: Quoted in the issue for scale, measured on a machine like ours (not measured here).
ADK_QUOTE = "Google ADK InMemorySessionService ~7.7k appends/s (quoted, not measured here)"


class _Floor:
    """The floor of any async append API: await a coroutine that appends to a list."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    async def send(self, role: str, content: str) -> None:
        self.items.append((role, content))


async def _floor_single(n: int) -> float:
    floor = _Floor()
    quiesce()
    start = clock()
    for _ in range(n):
        await floor.send("user", CONTENT)
    return n / (clock() - start)


async def _settle(rt: jidoka.Runtime) -> None:
    """Inside the timed region: background work the appends started (none is expected with the
    memory store) counts too, rather than running after the clock stopped."""
    await asyncio.sleep(0)
    await rt.manager.wait_background()


async def _jidoka_single(rt: jidoka.Runtime, n: int) -> float:
    client = rt.client
    sid = await client.create_session()
    quiesce()
    start = clock()
    for _ in range(n):
        await client.send_message(sid, "user", CONTENT)
    await _settle(rt)
    elapsed = clock() - start
    await client.terminate_session(sid)
    return n / elapsed


async def _floor_many(sessions: int, per_session: int, interleave: bool) -> float:
    floors = [_Floor() for _ in range(sessions)]

    async def one(floor: _Floor) -> None:
        for _ in range(per_session):
            await floor.send("user", CONTENT)
            if interleave:
                await asyncio.sleep(0)

    quiesce()
    start = clock()
    async with asyncio.TaskGroup() as tg:
        for floor in floors:
            tg.create_task(one(floor))
    return sessions * per_session / (clock() - start)


async def _jidoka_many(
    rt: jidoka.Runtime, sessions: int, per_session: int, interleave: bool
) -> float:
    client = rt.client
    ids = [await client.create_session() for _ in range(sessions)]

    async def one(sid: str) -> None:
        for _ in range(per_session):
            await client.send_message(sid, "user", CONTENT)
            if interleave:
                await asyncio.sleep(0)

    quiesce()
    start = clock()
    async with asyncio.TaskGroup() as tg:
        for sid in ids:
            tg.create_task(one(sid))
    await _settle(rt)
    elapsed = clock() - start
    for sid in ids:
        await client.terminate_session(sid)
    return sessions * per_session / elapsed


async def _fill(client: jidoka.Client, sid: str, n: int) -> None:
    for _ in range(n):
        await client.send_message(sid, "user", CONTENT)


async def _rate(rt: jidoka.Runtime, sid: str, n: int) -> float:
    client = rt.client
    quiesce()
    start = clock()
    for _ in range(n):
        await client.send_message(sid, "user", CONTENT)
    await _settle(rt)
    return n / (clock() - start)


async def _main(sizes: Sizes) -> list[Result]:
    results: list[Result] = []
    # The long window holds the whole prefill: past the default ceiling of max_history, so
    # the benchmark raises that ceiling as an operator would.
    ceilings = SessionCeilings(max_history=max(sizes.prefill, SessionCeilings().max_history))
    async with make_runtime(settings=jidoka.Settings(session_ceilings=ceilings)) as rt:
        client = rt.client
        await _jidoka_single(rt, min(sizes.single, 1_000))  # warm-up

        # (a) one session, sequential awaited calls
        base, ours = [], []
        for _ in range(sizes.repeats):
            base.append(await _floor_single(sizes.single))
            ours.append(await _jidoka_single(rt, sizes.single))
        results.append(
            Result(
                key="append.single_session",
                title="Append, 1 session, sequential awaited send_message",
                unit="msg/s",
                samples=ours,
                baseline=Baseline("await coroutine + list.append", base),
                target=Target(">=", 100_000, "≥ 100k msg/s"),
                quoted=ADK_QUOTE,
                notes=f"{sizes.single:,} messages of {len(CONTENT)} chars per repeat",
                details={"messages": sizes.single},
            )
        )

        # (b) many sessions, one task each
        for interleave in (False, True):
            base, ours = [], []
            for _ in range(sizes.repeats):
                base.append(await _floor_many(sizes.sessions, sizes.per_session, interleave))
                ours.append(await _jidoka_many(rt, sizes.sessions, sizes.per_session, interleave))
            label = "interleaved (sleep(0) after each)" if interleave else "one task per session"
            results.append(
                Result(
                    key="append.many_sessions" + ("_interleaved" if interleave else ""),
                    title=f"Append, {sizes.sessions} sessions concurrent, {label}",
                    unit="msg/s",
                    samples=ours,
                    baseline=Baseline(
                        "same tasks, await coroutine + list.append"
                        + (" + sleep(0)" if interleave else ""),
                        base,
                    ),
                    notes=(
                        f"{sizes.sessions} sessions x {sizes.per_session:,} messages per repeat"
                    ),
                    details={"sessions": sizes.sessions, "per_session": sizes.per_session},
                )
            )

        # (c) append cost vs. history length
        long_default = await client.create_session()
        long_window = await client.create_session(config={"max_history": max(sizes.prefill, 1)})
        await _fill(client, long_default, sizes.prefill)
        await _fill(client, long_window, sizes.prefill)
        fresh_rates: list[float] = []
        long_rates: list[float] = []
        window_rates: list[float] = []
        ratios: list[float] = []
        window_ratios: list[float] = []
        for repeat in range(sizes.repeats):
            fresh = await client.create_session()
            if repeat % 2:  # alternate the order, so neither side always runs first
                long_rate = await _rate(rt, long_default, sizes.window)
                window_rate = await _rate(rt, long_window, sizes.window)
                fresh_rate = await _rate(rt, fresh, sizes.window)
            else:
                fresh_rate = await _rate(rt, fresh, sizes.window)
                long_rate = await _rate(rt, long_default, sizes.window)
                window_rate = await _rate(rt, long_window, sizes.window)
            await client.terminate_session(fresh)
            fresh_rates.append(fresh_rate)
            long_rates.append(long_rate)
            window_rates.append(window_rate)
            ratios.append(long_rate / fresh_rate)
            window_ratios.append(window_rate / fresh_rate)
        stored = await rt.read_events(long_default, after_seq=0, limit=1)
        details = {
            "prefill": sizes.prefill,
            "window": sizes.window,
            "fresh_rate_median": statistics.median(fresh_rates),
            "long_rate_median": statistics.median(long_rates),
            "long_full_window_rate_median": statistics.median(window_rates),
            "long_full_window_ratio_samples": window_ratios,
            "long_full_window_ratio_median": statistics.median(window_ratios),
            "memory_max_events_per_session": rt.settings.memory_max_events_per_session,
            "long_session_first_stored_seq": stored[0].seq if stored else None,
            "long_session_history_len": len(await client.get_conversation_history(long_default)),
            "long_window_history_len": len(await client.get_conversation_history(long_window)),
        }
        results.append(
            Result(
                key="append.history_independence",
                title=(
                    f"Append rate with {sizes.prefill:,} messages already in the session "
                    "÷ rate on a fresh one"
                ),
                unit="x",
                samples=ratios,
                target=Target(">=", 0.9, "≈ 1 (≥ 0.9)"),
                notes=(
                    f"{sizes.window:,} appends timed per repeat on each; fresh "
                    f"{statistics.median(fresh_rates):,.0f} msg/s, long "
                    f"{statistics.median(long_rates):,.0f} msg/s, long with "
                    f"max_history={sizes.prefill:,}: {statistics.median(window_rates):,.0f} "
                    f"msg/s (ratio {statistics.median(window_ratios):.3g})"
                ),
                details=details,
            )
        )
    return results


def run(quick: bool = False) -> list[Result]:
    return run_async(lambda: _main(QUICK if quick else FULL))
