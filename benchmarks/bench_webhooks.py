"""Webhook delivery (issue 18): how long after a run's ``run_completed`` its webhook arrives.

A run with a webhook is written to the memory store as the run machinery writes it (its
``run_queued``, ``run_started`` and ``run_completed`` events appended, which puts it in the
outbox); the runtime's :class:`~jidoka.runs.webhooks.WebhookDeliverer` is notified, claims it,
signs it and POSTs it to a receiver on loopback. The receiver is a bare asyncio HTTP/1.1
responder in the same event loop (it reads the request and answers ``200`` with no body), so
what is measured is Jidoka's side: claim, ``RunInfo`` encoding, HMAC, httpx, and the outbox
update.

- **latency**: one run at a time, from the append of its events to the receiver having read the
  whole request; p50 and p99 over the runs of a repeat.
- **burst**: ``N`` runs ended at once, then one ``notify()``: webhooks delivered per second
  until the last one is recorded ``delivered`` (8 in flight, the default).
"""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime
from typing import Any

from jidoka.events import Event, EventType
from jidoka.runs.policy import WebhookPolicy
from jidoka.runs.webhooks import WebhookDeliverer
from jidoka.store.memory import MemoryStore

from ._common import Result, clock, percentile, run_async

__all__ = ["NAME", "run"]

NAME = "webhooks"
SECRET = "whsec_" + base64.b64encode(bytes(32)).decode()
_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


class _Receiver:
    """Counts whole requests (head and ``content-length`` body), answers each with 200."""

    def __init__(self) -> None:
        self.count = 0
        self.arrived = asyncio.Event()
        self.writers: set[asyncio.StreamWriter] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                self.count += 1
                self.arrived.set()
                writer.write(_ANSWER)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.writers.discard(writer)

    def close(self) -> None:
        """End the kept-alive connections (their handlers read an end of file and return)."""
        for writer in list(self.writers):
            writer.close()

    async def wait(self, count: int) -> None:
        async with asyncio.timeout(60):
            while self.count < count:
                self.arrived.clear()
                await self.arrived.wait()


async def _ended(store: MemoryStore, n: int, url: str) -> None:
    sid = f"{n:026d}"
    now = datetime.now(UTC)
    run_id = f"run_{n}"
    await store.append(
        sid,
        [
            Event(EventType.SESSION_CREATED, sid, 1, now, {"owner": None}),
            Event(
                EventType.RUN_QUEUED,
                sid,
                2,
                now,
                {"run_id": run_id, "text": "fix the bug", "multitask": "enqueue", "webhook": url},
            ),
            Event(EventType.RUN_STARTED, sid, 3, now, {"run_id": run_id}),
            Event(
                EventType.RUN_COMPLETED,
                sid,
                4,
                now,
                {
                    "run_id": run_id,
                    "status": "completed",
                    "message": {
                        "id": "m",
                        "role": "assistant",
                        "content": "Done. " * 40,
                        "timestamp": now.isoformat(),
                        "seq": 3,
                    },
                    "usage": {"prompt_tokens": 812, "completion_tokens": 64, "total_tokens": 876},
                    "error": None,
                    "webhook_id": f"wh_{n}",
                },
            ),
        ],
    )


async def _measure(runs: int, burst: int) -> dict[str, Any]:
    receiver = _Receiver()
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/hooks"
    store = MemoryStore()
    try:
        policy = WebhookPolicy((f"http://127.0.0.1:{port}",), SECRET)
        async with WebhookDeliverer(store, policy) as hooks:
            latencies = []
            for n in range(runs):
                start = clock()
                await _ended(store, n, url)
                hooks.notify()
                await receiver.wait(n + 1)
                latencies.append(clock() - start)
            await hooks.wait_statistics(lambda s: s.delivered == runs)
            start = clock()
            for n in range(runs, runs + burst):
                await _ended(store, n, url)
            hooks.notify()
            async with asyncio.timeout(120):
                await hooks.wait_statistics(lambda s: s.delivered == runs + burst)
            elapsed = clock() - start
    finally:
        server.close()
        receiver.close()
        await server.wait_closed()
        await store.aclose()
    steady = latencies[len(latencies) // 10 :]  # the first ones open the connections
    return {
        "p50": percentile(steady, 50),
        "p99": percentile(steady, 99),
        "rate": burst / elapsed,
    }


def run(*, quick: bool = False) -> list[Result]:
    repeats, runs, burst = (1, 20, 20) if quick else (5, 500, 2000)
    samples = []
    for _ in range(repeats):
        samples.append(run_async(lambda: _measure(runs, burst)))
    notes = "memory store, receiver on loopback in the same loop"
    return [
        Result(
            key=f"webhooks.latency.{stat}",
            title=f"Webhook delivery after run_completed, {stat}",
            unit="s",
            samples=[s[stat] for s in samples],
            higher_is_better=False,
            notes=notes,
        )
        for stat in ("p50", "p99")
    ] + [
        Result(
            key="webhooks.burst",
            title=f"Webhooks delivered per second, {burst:,} runs ended at once",
            unit="webhooks/s",
            samples=[s["rate"] for s in samples],
            notes=notes + "; 8 in flight",
        )
    ]


if __name__ == "__main__":
    from ._common import format_table

    print(format_table(run()))
