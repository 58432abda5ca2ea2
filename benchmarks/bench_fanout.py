"""Event fan-out latency: one session, S subscribers (1, 100, 1,000), one message at a time.

For every message the harness reads the clock just before ``send_message``; each subscriber
task (``async for event in subscription``) reads it again when the event reaches it. The next
message is sent only once every subscriber has received the previous one, so queues never build
up and each sample is one event's own latency. Reported: the median and the 99th percentile over
all (message, subscriber) deliveries, per repeat, then the median of those over repeats; the
details also hold the latency until the *last* subscriber had it.

Baseline: the same harness over bare ``asyncio.Queue`` objects, one per subscriber
(``put_nowait`` to each, ``await get()`` in each consumer task).
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ._common import Baseline, Result, clock, make_runtime, percentile, quiesce, run_async

__all__ = ["NAME", "run"]

NAME = "fanout"

CONTENT = "tool finished: 3 files changed"
WARM_UP = "warm-up"


@dataclass(frozen=True)
class Sizes:
    subscribers: tuple[int, ...]
    messages: dict[int, int]  # messages per repeat, by subscriber count
    repeats: int


FULL = Sizes(subscribers=(1, 100, 1_000), messages={1: 5_000, 100: 1_000, 1_000: 200}, repeats=5)
QUICK = Sizes(subscribers=(1, 10, 30), messages={1: 20, 10: 10, 30: 5}, repeats=2)


class _Round:
    """Counts the deliveries of the message in flight; wakes the sender when all are in."""

    __slots__ = ("done", "remaining")

    def __init__(self) -> None:
        self.remaining = 0
        self.done: asyncio.Future[None] | None = None

    def arm(self, count: int) -> asyncio.Future[None]:
        self.remaining = count
        self.done = asyncio.get_running_loop().create_future()
        return self.done

    def delivered(self) -> None:
        self.remaining -= 1
        if self.remaining == 0 and self.done is not None:
            self.done.set_result(None)


@dataclass
class _Stats:
    median: float
    p99: float
    last_median: float
    last_p99: float


def _stats(sent: list[float], received: list[list[float]]) -> _Stats:
    latencies = [t - sent[i] for times in received for i, t in enumerate(times)]
    last = [max(times[i] for times in received) - sent[i] for i in range(len(sent))]
    return _Stats(
        median=statistics.median(latencies),
        p99=percentile(latencies, 99),
        last_median=statistics.median(last),
        last_p99=percentile(last, 99),
    )


async def _drive(
    n_subs: int,
    n_msgs: int,
    send: Callable[[], Awaitable[object]],
    round_: _Round,
) -> list[float]:
    sent = [0.0] * n_msgs
    for i in range(n_msgs):
        done = round_.arm(n_subs)
        sent[i] = clock()
        await send()
        await done
    return sent


async def _jidoka(n_subs: int, n_msgs: int) -> _Stats:
    async with make_runtime() as rt:
        client = rt.client
        sid = await client.create_session()
        round_ = _Round()
        received = [[0.0] * n_msgs for _ in range(n_subs)]
        ready = _Round()
        all_ready = ready.arm(n_subs)

        async def consumer(times: list[float]) -> None:
            async with client.subscribe_to_session(sid) as subscription:
                ready.delivered()
                i = 0
                async for event in subscription:
                    if event.data.get("content") != CONTENT:
                        continue  # the warm-up message, or not a message at all
                    times[i] = clock()
                    i += 1
                    round_.delivered()
                    if i == n_msgs:
                        return

        async with asyncio.TaskGroup() as tg:
            for times in received:
                tg.create_task(consumer(times))
            await all_ready
            for _ in range(3):  # let every consumer reach its first wait
                await asyncio.sleep(0)
            await client.send_message(sid, "user", WARM_UP)  # consumers skip it
            await asyncio.sleep(0)
            quiesce()
            sent = await _drive(
                n_subs, n_msgs, lambda: client.send_message(sid, "user", CONTENT), round_
            )
        await client.terminate_session(sid)
    return _stats(sent, received)


async def _queues(n_subs: int, n_msgs: int) -> _Stats:
    round_ = _Round()
    queues: list[asyncio.Queue[str]] = [asyncio.Queue() for _ in range(n_subs)]
    received = [[0.0] * n_msgs for _ in range(n_subs)]

    async def consumer(queue: asyncio.Queue[str], times: list[float]) -> None:
        for i in range(n_msgs):
            await queue.get()
            times[i] = clock()
            round_.delivered()

    async def send() -> None:
        for queue in queues:
            queue.put_nowait(CONTENT)

    async with asyncio.TaskGroup() as tg:
        for queue, times in zip(queues, received, strict=True):
            tg.create_task(consumer(queue, times))
        for _ in range(3):
            await asyncio.sleep(0)
        quiesce()
        sent = await _drive(n_subs, n_msgs, send, round_)
    return _stats(sent, received)


async def _main(sizes: Sizes) -> list[Result]:
    results: list[Result] = []
    for n_subs in sizes.subscribers:
        n_msgs = sizes.messages[n_subs]
        ours: list[_Stats] = []
        base: list[_Stats] = []
        for _ in range(sizes.repeats):
            base.append(await _queues(n_subs, n_msgs))
            ours.append(await _jidoka(n_subs, n_msgs))
        details = {
            "subscribers": n_subs,
            "messages": n_msgs,
            "deliveries_per_repeat": n_subs * n_msgs,
            "last_subscriber_median_s": [s.last_median for s in ours],
            "last_subscriber_p99_s": [s.last_p99 for s in ours],
            "baseline_last_subscriber_median_s": [s.last_median for s in base],
        }
        noun = "subscriber" if n_subs == 1 else "subscribers"
        for stat, label in (("median", "median"), ("p99", "p99")):
            results.append(
                Result(
                    key=f"fanout.{n_subs}.{stat}",
                    title=f"Fan-out latency to {n_subs:,} {noun}, {label}",
                    unit="s",
                    samples=[getattr(s, stat) for s in ours],
                    higher_is_better=False,
                    baseline=Baseline(
                        f"asyncio.Queue put/get x{n_subs:,}", [getattr(s, stat) for s in base]
                    ),
                    notes=(
                        f"{n_msgs:,} messages x {n_subs:,} {noun} per repeat; last subscriber "
                        f"served after {statistics.median(s.last_median for s in ours) * 1e6:,.0f}"
                        " µs (median)"
                    ),
                    details=details,
                )
            )
    return results


def run(quick: bool = False) -> list[Result]:
    return run_async(lambda: _main(QUICK if quick else FULL))
