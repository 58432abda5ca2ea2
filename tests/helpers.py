"""Small waiting helpers: wait for events, never for time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from jidoka import Event, Runtime

#: A session's event stream: a ``Subscription`` in process, a ``RemoteSubscription`` over HTTP.
Events = AsyncIterator[Event]

#: A bound on waiting for something that must happen promptly; not a sleep.
PROMPTLY = 10.0


async def next_event(events: Events) -> Event:
    async with asyncio.timeout(PROMPTLY):
        return await anext(events)


async def take(events: Events, count: int) -> list[Event]:
    return [await next_event(events) for _ in range(count)]


async def until(events: Events, type_: str, **data: object) -> Event:
    """The first event of ``type_`` whose data contains ``data``; earlier ones are skipped."""
    async with asyncio.timeout(PROMPTLY):
        async for event in events:
            if event.type == type_ and all(event.data.get(k) == v for k, v in data.items()):
                return event
    raise AssertionError(f"stream ended before a {type_} event with {data}")


async def drain(events: Events) -> list[Event]:
    """Everything until the stream ends (the session terminated)."""
    async with asyncio.timeout(PROMPTLY):
        return [event async for event in events]


def lifecycle(events: list[Event]) -> list[tuple[str, str | None]]:
    """(type, status-or-reason) pairs, for comparing lifecycle sequences."""
    return [(e.type, e.data.get("status") or e.data.get("reason")) for e in events]


async def settle(turns: int = 50) -> None:
    """Let every ready task run to its next wait: a fixed number of event-loop turns.

    Deterministic (asyncio runs ready callbacks in order) and independent of time; used before
    asserting that something did *not* happen after a fake-clock advance.
    """
    for _ in range(turns):
        await asyncio.sleep(0)


async def quiesce(runtime: Runtime) -> None:
    """Let the timers react to a clock advance and wait for the work they started.

    Loop turns alone are not enough with a durable store: its commits finish on another thread.
    """
    await settle()
    await runtime.manager.wait_background()
    await settle()
