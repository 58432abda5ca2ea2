"""Fault isolation: crashing, cancelled and hanging workers, and what a session leaves behind."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

import jidoka
from jidoka import EventType, FakeClock, Status
from jidoka.store.memory import MemoryStore
from tests.helpers import drain, lifecycle, next_event, settle, take, until


def session_tasks(session_id: str) -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if session_id in t.get_name()]


async def test_crashing_worker_is_restarted_alone(runtime: jidoka.Runtime) -> None:
    client = runtime.client
    sid = await client.create_session()
    runs = 0
    finished = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("first run fails")
        finished.set()

    async with client.subscribe_to_session(sid) as events:
        runtime.start_worker(sid, "flaky", flaky)
        crash = await until(events, EventType.ERROR)
        await finished.wait()
    assert crash.data["worker"] == "flaky"
    assert "first run fails" in crash.data["message"]
    assert runs == 2
    assert (await client.get_session_info(sid)).status is Status.ACTIVE
    await client.send_message(sid, "user", "still works")


async def test_over_intensity_terminates_only_that_session(runtime: jidoka.Runtime) -> None:
    client = runtime.client
    bad = await client.create_session(config={"max_restarts": 2})
    good = await client.create_session()
    heartbeat = asyncio.Event()

    async def healthy() -> None:
        heartbeat.set()
        await asyncio.Event().wait()

    async def broken() -> None:
        raise ValueError("always")

    runtime.start_worker(good, "healthy", healthy)
    async with client.subscribe_to_session(bad) as events:
        runtime.start_worker(bad, "broken", broken)
        seen = await drain(events)
    crashes = [e for e in seen if e.type == EventType.ERROR]
    assert len(crashes) == 3  # first run + 2 restarts, then it gives up
    assert lifecycle(seen)[-3:] == [
        ("session_status", "terminating"),
        ("session_status", "terminated"),
        ("session_terminated", "error"),
    ]
    info = await client.get_session_info(bad)
    assert info.status is Status.TERMINATED
    assert info.reason == "error"
    assert info.error is not None
    assert "always" in info.error
    assert "more than 2 restarts" in info.error
    await heartbeat.wait()
    assert (await client.get_session_info(good)).status is Status.ACTIVE
    assert [t.get_name() for t in session_tasks(good)] == [f"jidoka:{good}:healthy"]
    await client.send_message(good, "user", "unaffected")
    assert [m.seq for m in await client.get_conversation_history(good)] == [3]


async def test_restarts_spread_over_time_are_tolerated(
    runtime: jidoka.Runtime, clock: FakeClock
) -> None:
    client = runtime.client
    sid = await client.create_session(config={"max_restarts": 1, "max_restart_seconds": 5})
    crash_now = asyncio.Event()

    async def crashes_on_demand() -> None:
        await crash_now.wait()
        crash_now.clear()
        raise RuntimeError("periodic")

    async with client.subscribe_to_session(sid) as events:
        runtime.start_worker(sid, "periodic", crashes_on_demand)
        for _ in range(4):
            crash_now.set()
            await until(events, EventType.ERROR)
            clock.advance(6)  # outside the window: the count starts again
    assert (await client.get_session_info(sid)).status is Status.ACTIVE


async def test_zero_restarts_gives_up_at_first_crash(runtime: jidoka.Runtime) -> None:
    sid = await runtime.client.create_session(config={"max_restarts": 0})

    async def broken() -> None:
        raise RuntimeError("no second chance")

    async with runtime.client.subscribe_to_session(sid) as events:
        runtime.start_worker(sid, "w", broken)
        seen = await drain(events)
    assert [e.type for e in seen].count(EventType.ERROR) == 1
    assert (await runtime.client.get_session_info(sid)).reason == "error"


async def test_cancelled_worker_counts_as_crash(runtime: jidoka.Runtime) -> None:
    sid = await runtime.client.create_session()
    started = asyncio.Queue[int]()
    runs = 0

    async def worker() -> None:
        nonlocal runs
        runs += 1
        started.put_nowait(runs)
        await asyncio.Event().wait()

    async with runtime.client.subscribe_to_session(sid) as events:
        task = runtime.start_worker(sid, "w", worker)
        assert await started.get() == 1
        task.cancel()  # by someone other than its supervisor
        crash = await until(events, EventType.ERROR)
        assert await started.get() == 2
    assert "cancelled" in crash.data["message"]
    assert (await runtime.client.get_session_info(sid)).status is Status.ACTIVE


async def test_finished_worker_is_not_restarted(runtime: jidoka.Runtime) -> None:
    sid = await runtime.client.create_session()
    runs = 0

    async def once() -> None:
        nonlocal runs
        runs += 1

    task = runtime.start_worker(sid, "once", once)
    await task
    await settle()
    assert runs == 1
    assert session_tasks(sid) == []
    runtime.start_worker(sid, "once", once)  # the name is free again


async def test_terminate_awaits_worker_clean_up(runtime: jidoka.Runtime) -> None:
    sid = await runtime.client.create_session()
    cleaned = False
    running = asyncio.Event()

    async def worker() -> None:
        nonlocal cleaned
        running.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # clean-up that itself awaits
            cleaned = True

    runtime.start_worker(sid, "w", worker)
    await running.wait()
    await runtime.client.terminate_session(sid)
    assert cleaned
    assert session_tasks(sid) == []


async def test_hanging_worker_is_abandoned_after_grace(
    runtime: jidoka.Runtime, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    client = runtime.client
    sid = await client.create_session()
    neighbour = await client.create_session()
    let_go = asyncio.Event()
    running, cancelled = asyncio.Event(), asyncio.Event()

    async def ignores_cancellation() -> None:
        running.set()
        while not let_go.is_set():
            try:
                await let_go.wait()
            except asyncio.CancelledError:
                cancelled.set()
                continue  # misbehaves on purpose: swallows every cancellation

    runtime.start_worker(sid, "hang", ignores_cancellation)
    await running.wait()
    terminating = asyncio.create_task(client.terminate_session(sid))
    await cancelled.wait()  # the workers stop before the termination is committed
    await settle()
    assert not terminating.done()  # waiting out the grace period, on the fake clock
    await client.send_message(neighbour, "user", "meanwhile")  # others carry on
    with caplog.at_level(logging.ERROR, logger="jidoka.supervisor"):
        clock.advance(2.0)
        info = await terminating
    assert info.status is Status.TERMINATED
    assert "ignored cancellation" in caplog.text
    assert sid in caplog.text
    assert len(runtime.manager.abandoned_tasks) == 1
    let_go.set()
    await asyncio.wait(runtime.manager.abandoned_tasks)
    await settle()
    assert runtime.manager.abandoned_tasks == frozenset()
    assert len(await client.get_conversation_history(neighbour)) == 1


async def test_worker_may_terminate_its_own_session(runtime: jidoka.Runtime) -> None:
    sid = await runtime.client.create_session()

    async def quitter() -> None:
        await runtime.client.terminate_session(sid, reason="done")

    async with runtime.client.subscribe_to_session(sid) as events:
        runtime.start_worker(sid, "quitter", quitter)
        seen = await drain(events)
    assert lifecycle(seen)[-1] == ("session_terminated", "done")


async def test_start_worker_validation(runtime: jidoka.Runtime) -> None:
    sid = await runtime.client.create_session()

    async def idle() -> None:
        await asyncio.Event().wait()

    runtime.start_worker(sid, "w", idle)
    with pytest.raises(jidoka.InvalidArgument, match="already running"):
        runtime.start_worker(sid, "w", idle)
    with pytest.raises(jidoka.InvalidArgument):
        runtime.start_worker(sid, "", idle)
    await runtime.client.terminate_session(sid)
    with pytest.raises(jidoka.SessionTerminated):
        runtime.start_worker(sid, "w", idle)


async def test_failing_subscriber_consumer_does_not_affect_session(
    runtime: jidoka.Runtime,
) -> None:
    client = runtime.client
    sid = await client.create_session()

    async def consumer() -> None:
        async with client.subscribe_to_session(sid) as events:
            await next_event(events)
            raise RuntimeError("consumer bug")

    task = asyncio.create_task(consumer())
    await settle()
    await client.send_message(sid, "user", "one")
    with pytest.raises(RuntimeError, match="consumer bug"):
        await task
    await client.send_message(sid, "user", "two")
    assert runtime.bus.subscriber_count(sid) == 0
    assert len(await client.get_conversation_history(sid)) == 2


async def test_nothing_of_a_terminated_session_remains(
    runtime: jidoka.Runtime, project: Path
) -> None:
    client = runtime.client
    sid = await client.create_session(project_root=str(project))
    other = await client.create_session(project_root=str(project))
    await client.add_file(sid, "src/app.py")
    await client.add_file(other, "src/app.py")
    await client.build_context(sid)

    async def idle() -> None:
        await asyncio.Event().wait()

    runtime.start_worker(sid, "a", idle)
    runtime.start_worker(sid, "b", idle)
    async with client.subscribe_to_session(sid) as events:
        await client.terminate_session(sid)
        await drain(events)
    store, bus, cache, manager = runtime.store, runtime.bus, runtime.cache, runtime.manager
    assert session_tasks(sid) == []
    assert sid not in manager.live_ids()
    assert sid in manager.tombstone_ids()
    assert sid not in bus.topics()  # type: ignore[attr-defined]
    assert sid not in cache.sessions()
    assert other in cache.sessions()  # the other session's entry was not touched
    if isinstance(store, MemoryStore):  # a durable store keeps the log by design
        assert sid not in store.sessions()
        assert other in store.sessions()


async def test_runtime_exit_leaves_no_task(clock: FakeClock) -> None:
    before = asyncio.all_tasks()
    async with jidoka.Runtime(clock=clock) as rt:
        ids = [await rt.client.create_session() for _ in range(10)]

        async def idle() -> None:
            await asyncio.Event().wait()

        for sid in ids:
            rt.start_worker(sid, "w", idle)
        async with rt.client.subscribe_to_all_sessions() as events:
            await rt.client.terminate_session(ids[0])
            await take(events, 3)
    assert asyncio.all_tasks() == before
