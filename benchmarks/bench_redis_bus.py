"""The Redis bus between two nodes in one process, over loopback: latency and throughput.

Not part of ``benchmarks.run`` yet (it needs a Redis server): run it by hand,
``python -m benchmarks.bench_redis_bus [redis-url]``.

- **Latency**: node A publishes one event at a time; node B's subscriber reads the clock when
  the event reaches it; the next event goes only once B had the previous one, so every sample is
  one event's own trip (A's sender, Redis, B's reader, the subscription). p50 and p99 over 1,000.
- **Throughput**: A publishes 20,000 events with ``publish_nowait`` back to back (what the
  post-commit section does) and the clock stops when B's subscriber has the last one: events/s
  from one node's publisher to another node's consumer. The events are in a memory store too,
  so a catch-up (a gap, an overflow) reads them back, and such reads are counted.

Both nodes share one event loop and, on a two-core machine, the cores with Redis: a floor on
what two processes would do, not a ceiling.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from datetime import UTC, datetime

from jidoka.bus.redis import RedisBus
from jidoka.events import Event, EventType
from jidoka.store.memory import MemoryStore

__all__ = ["main"]

SID = "B" * 26
T0 = datetime(2026, 1, 1, tzinfo=UTC)
LATENCY_EVENTS = 1_000
THROUGHPUT_EVENTS = 20_000


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def main(url: str) -> None:
    store = MemoryStore()
    reads = 0

    async def reader(sid: str, after: int, limit: int) -> list[Event]:
        nonlocal reads
        reads += 1
        return await store.read_events(sid, after_seq=after, limit=limit)

    prefix = f"bench:{secrets.token_hex(4)}"
    options = {"prefix": prefix, "reader": reader, "now": time.time, "queue_size": 1_000}
    a = RedisBus(url, node_id="a", send_queue_max=100_000, **options)  # type: ignore[arg-type]
    b = RedisBus(url, node_id="b", **options)  # type: ignore[arg-type]
    await a.start()
    await b.start()
    try:
        async with b.subscribe(SID) as stream:
            seq = 0

            async def commit() -> Event:
                nonlocal seq
                seq += 1
                event = Event(EventType.CONVERSATION_ADDED, SID, seq, T0, {"n": seq})
                await store.append(SID, [event])
                a.publish_nowait(event)
                return event

            while b.remote_received == 0:  # B listens on the session's channel
                await commit()
                await asyncio.sleep(0.01)
            while stream.get_nowait() is not None:
                pass
            samples = []
            for _ in range(LATENCY_EVENTS):
                started = time.perf_counter()
                sent = await commit()
                while (got := await anext(stream)).seq < sent.seq:
                    pass
                samples.append((time.perf_counter() - started) * 1e3)
            print(
                f"latency over {LATENCY_EVENTS} events: p50 {percentile(samples, 50):.3f} ms,"
                f" p99 {percentile(samples, 99):.3f} ms, max {max(samples):.3f} ms"
            )
            reads_before, received_before = reads, b.remote_received
            started = time.perf_counter()
            for _ in range(THROUGHPUT_EVENTS):
                sent = await commit()
            last = sent.seq
            while got.seq < last:
                got = await anext(stream)
            elapsed = time.perf_counter() - started
            print(
                f"throughput: {THROUGHPUT_EVENTS} events in {elapsed:.2f} s ="
                f" {THROUGHPUT_EVENTS / elapsed:,.0f} events/s end to end;"
                f" {b.remote_received - received_before} arrived over Redis,"
                f" {reads - reads_before} store reads by B's catch-up,"
                f" send_dropped {a.send_dropped}, lost {b.lost}"
            )
    finally:
        await a.aclose()
        await b.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"))
