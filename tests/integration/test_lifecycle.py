"""Lifecycle over time: idle, activity, time-out, and the events the global stream sees."""

from __future__ import annotations

import asyncio

import pytest

import jidoka
from jidoka import EventType, FakeClock, Status
from tests.helpers import drain, lifecycle, next_event, quiesce, settle, take, until


async def test_lifecycle_sequence_on_global_stream(client: jidoka.Client) -> None:
    async with client.subscribe_to_all_sessions() as events:
        sid = await client.create_session()
        await client.send_message(sid, "user", "not a lifecycle event")
        await client.terminate_session(sid)
        seen = await take(events, 5)
    assert lifecycle(seen) == [
        ("session_created", "initializing"),
        ("session_status", "active"),
        ("session_status", "terminating"),
        ("session_status", "terminated"),
        ("session_terminated", "requested"),
    ]
    assert [e.seq for e in seen] == [1, 2, 4, 5, 6]
    assert {e.session_id for e in seen} == {sid}
    assert seen[1].data["previous"] == "initializing"


async def test_idle_active_idle_timeout(
    runtime: jidoka.Runtime, client: jidoka.Client, clock: FakeClock
) -> None:
    config = {"idle_after_seconds": 60, "timeout_minutes": 2}
    async with client.subscribe_to_all_sessions() as events:
        sid = await client.create_session(config=config)
        await take(events, 2)

        clock.advance(59)
        await client.send_message(sid, "user", "still here")  # activity pushes idle back
        clock.advance(59)
        await quiesce(runtime)  # let the timer task look (it must find nothing due)
        assert (await client.get_session_info(sid)).status is Status.ACTIVE

        clock.advance(1)
        idle = await next_event(events)
        assert (idle.type, idle.data) == (
            "session_status",
            {"status": "idle", "previous": "active"},
        )
        assert (await client.get_session_info(sid)).status is Status.IDLE

        await client.send_message(sid, "user", "back")  # activity wakes it
        woke = await next_event(events)
        assert woke.data == {"status": "active", "previous": "idle"}
        history = await client.get_conversation_history(sid)
        assert woke.seq + 1 == history[-1].seq  # the status change comes first

        clock.advance(60)
        assert (await next_event(events)).data["status"] == "idle"
        clock.advance(119)
        await quiesce(runtime)
        assert (await client.get_session_info(sid)).status is Status.IDLE
        clock.advance(1)
        tail = await take(events, 3)
    assert lifecycle(tail) == [
        ("session_status", "terminating"),
        ("session_status", "terminated"),
        ("session_terminated", "timeout"),
    ]
    info = await client.get_session_info(sid)
    assert (info.status, info.reason) == (Status.TERMINATED, "timeout")


async def test_a_message_wakes_an_idle_session_that_never_times_out(
    runtime: jidoka.Runtime, client: jidoka.Client, clock: FakeClock
) -> None:
    """Issue 10, item 10: an idle session without a time-out has no timer entry; the message
    that wakes it used to raise after its commit (the caller saw an error, over HTTP a 500, for
    a stored message) and left it without an idle timer, active for ever."""
    config = {"idle_after_seconds": 0.2, "timeout_minutes": 0}
    async with client.subscribe_to_all_sessions() as events:
        sid = await client.create_session(config=config)
        await take(events, 2)
        clock.advance(0.2)
        await until(events, "session_status", status="idle")

        message = await client.send_message(sid, "user", "back")

        woke = await next_event(events)
        assert (woke.session_id, woke.data) == (sid, {"status": "active", "previous": "idle"})
        clock.advance(0.2)  # the idle timer was re-armed: it goes idle again
        idle = await until(events, "session_status", status="idle")
        assert (idle.session_id, idle.seq) == (sid, message.seq + 1)
    history = await client.get_conversation_history(sid)
    assert [(m.seq, m.content) for m in history] == [(message.seq, "back")]
    stored = await runtime.manager.services.store.read_events(sid)
    assert [e.type for e in stored].count(EventType.CONVERSATION_ADDED) == 1


async def test_reads_are_not_activity(client: jidoka.Client, clock: FakeClock) -> None:
    async with client.subscribe_to_all_sessions() as events:
        sid = await client.create_session(config={"idle_after_seconds": 10})
        await take(events, 2)
        clock.advance(5)
        await client.get_conversation_history(sid)
        await client.get_session_info(sid)
        clock.advance(5)
        assert (await next_event(events)).data["status"] == "idle"


async def test_timeout_zero_never_terminates(
    runtime: jidoka.Runtime, client: jidoka.Client, clock: FakeClock
) -> None:
    async with client.subscribe_to_all_sessions() as events:
        sid = await client.create_session(config={"idle_after_seconds": 1, "timeout_minutes": 0})
        await take(events, 2)
        clock.advance(1)
        await until(events, "session_status", status="idle")
        clock.advance(10**9)
        await quiesce(runtime)
    assert (await client.get_session_info(sid)).status is Status.IDLE


async def test_many_sessions_share_one_timer(runtime: jidoka.Runtime, clock: FakeClock) -> None:
    client = runtime.client
    async with client.subscribe_to_all_sessions() as events:
        ids = [await client.create_session(config={"idle_after_seconds": 10})]
        await quiesce(runtime)  # the start's passes (the runs' sweep) are over
        with_one = len(asyncio.all_tasks())
        ids += [
            await client.create_session(config={"idle_after_seconds": 10 + n}) for n in range(1, 50)
        ]
        await settle()
        assert len(asyncio.all_tasks()) == with_one  # no task per session
        clock.advance(100)
        idle = [e.session_id for e in await take(events, 150) if e.data.get("status") == "idle"]
    assert idle == ids  # in deadline order


async def test_terminating_session_refuses_commands(
    runtime: jidoka.Runtime, client: jidoka.Client
) -> None:
    sid = await client.create_session()
    stopping, release = asyncio.Event(), asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopping.set()
            await release.wait()  # slow clean-up: terminate must wait for it

    runtime.start_worker(sid, "stubborn", stubborn)
    await settle()
    async with client.subscribe_to_session(sid) as events:
        terminating = asyncio.create_task(client.terminate_session(sid))
        await stopping.wait()  # the workers stop before the termination is committed
        assert (await client.get_session_info(sid)).status is Status.TERMINATING
        with pytest.raises(jidoka.SessionTerminated):
            await client.send_message(sid, "user", "too late")
        with pytest.raises(jidoka.InvalidTransition) as again:
            await client.terminate_session(sid)
        assert again.value.from_status == "terminating"
        release.set()
        rest = await drain(events)
    # One commit, after the workers stopped: the three events arrive together.
    assert lifecycle(rest)[-3:] == [
        ("session_status", "terminating"),
        ("session_status", "terminated"),
        ("session_terminated", "requested"),
    ]
    assert len({e.seq for e in rest[-3:]}) == 3
    assert (await terminating).status is Status.TERMINATED


async def test_runtime_exit_stops_sessions_without_terminating_them(clock: FakeClock) -> None:
    async with jidoka.Runtime(clock=clock) as rt:
        sid = await rt.client.create_session()
        async with rt.client.subscribe_to_session(sid) as events:
            pass
        subscription = rt.client.subscribe_to_session(sid)
        events = await subscription.__aenter__()
    # The runtime closed: the stream ended without inventing a termination.
    assert [e.type for e in await drain(events)] == []
    await subscription.__aexit__(None, None, None)


async def test_ended_sessions_leave_no_timer_entries(runtime: jidoka.Runtime) -> None:
    client = runtime.client
    for _ in range(3000):
        await client.terminate_session(await client.create_session())
    assert runtime.manager.live_count() == 0
    assert len(runtime.manager._timers) <= 1024 + 1  # compacted as ended sessions pile up


async def test_a_crowd_going_idle_together(runtime: jidoka.Runtime, clock: FakeClock) -> None:
    client = runtime.client
    config = {"idle_after_seconds": 10, "timeout_minutes": 1, "persistence_enabled": False}
    ids = [await client.create_session(config=config) for _ in range(300)]
    async with client.subscribe_to_all_sessions() as events:
        clock.advance(10)
        idle = await take(events, 300)
        assert {e.session_id for e in idle} == set(ids)
        assert {e.data["status"] for e in idle} == {"idle"}
        await quiesce(runtime)
        assert len(runtime.manager._background) == 0
        clock.advance(60)
        ended = [e for e in await take(events, 900) if e.type == "session_terminated"]
    assert {e.session_id for e in ended} == set(ids)
    assert {e.data["reason"] for e in ended} == {"timeout"}


async def test_runtime_exits_cleanly_in_a_task_with_a_pending_cancel_count(
    clock: FakeClock,
) -> None:
    """A TaskGroup whose child failed while exiting leaves the task's cancel count raised on
    Python 3.11; closing a runtime afterwards must not turn that into a CancelledError."""

    async def fails() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("child failed")

    with pytest.raises(ExceptionGroup):
        async with asyncio.TaskGroup() as group:
            group.create_task(fails())
    async with jidoka.Runtime(clock=clock) as rt:
        await rt.client.create_session()
