"""Event streams: ordering, replay, the slow-consumer policy, and clean-up."""

from __future__ import annotations

import asyncio

import pytest

import jidoka
from jidoka import EventType, FakeClock
from tests.helpers import drain, next_event, take, until


def assert_gap_free(events: list[jidoka.Event], first: int = 1) -> None:
    assert [e.seq for e in events] == list(range(first, first + len(events)))


async def test_session_stream_is_ordered_and_gap_free(client: jidoka.Client) -> None:
    sid = await client.create_session()
    async with client.subscribe_to_session(sid) as events:
        for n in range(20):
            await client.send_message(sid, "user", str(n))
        await client.put_working_context(sid, "k", 1)
        await client.terminate_session(sid)
        seen = await drain(events)
    assert_gap_free(seen, first=3)
    assert [e.data["content"] for e in seen[:20]] == [str(n) for n in range(20)]
    assert seen[20].type == EventType.WORKING_CONTEXT_UPDATED
    assert seen[-1].type == EventType.SESSION_TERMINATED


async def test_after_seq_replays_then_goes_live(client: jidoka.Client) -> None:
    sid = await client.create_session()
    for n in range(5):
        await client.send_message(sid, "user", str(n))
    async with client.subscribe_to_session(sid, after_seq=4) as events:
        replayed = await take(events, 3)
        await client.send_message(sid, "user", "live")
        live = await next_event(events)
    assert [e.seq for e in replayed] == [5, 6, 7]
    assert (live.seq, live.data["content"]) == (8, "live")


async def test_after_seq_zero_replays_whole_log(client: jidoka.Client) -> None:
    sid = await client.create_session()
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        seen = await take(events, 2)
    assert [e.type for e in seen] == ["session_created", "session_status"]


async def test_slow_session_subscriber_catches_up_losslessly(clock: FakeClock) -> None:
    async with jidoka.Runtime(clock=clock, subscriber_queue_size=4) as rt:
        client = rt.client
        sid = await client.create_session()
        async with client.subscribe_to_session(sid) as slow:
            for n in range(100):  # nobody reads: the publisher must never wait
                await client.send_message(sid, "user", str(n))
            assert slow.statistics().catching_up
            assert slow.statistics().queued == 4
            seen = await take(slow, 100)
            await client.send_message(sid, "user", "after")
            after = await next_event(slow)
    assert_gap_free([*seen, after], first=3)
    assert [e.data["content"] for e in seen] == [str(n) for n in range(100)]
    assert slow.statistics().dropped == 0


@pytest.mark.stores("memory")
async def test_catch_up_gap_when_store_trimmed(clock: FakeClock) -> None:
    async with jidoka.Runtime(
        clock=clock, subscriber_queue_size=2, memory_max_events_per_session=8
    ) as rt:
        client = rt.client
        sid = await client.create_session()
        async with client.subscribe_to_session(sid) as slow:
            for n in range(40):
                await client.send_message(sid, "user", str(n))
            first_two = await take(slow, 2)
            marker = await next_event(slow)
            rest = await take(slow, 8)
        assert [e.seq for e in first_two] == [3, 4]
        assert marker.type == EventType.EVENTS_DROPPED
        first, last = marker.data["first_seq"], marker.data["last_seq"]
        assert (first, marker.data["count"]) == (5, last - first + 1)
        assert rest[0].seq == last + 1
        assert_gap_free(rest, first=last + 1)
        assert rt.counts().events_dropped == marker.data["count"]


async def test_slow_global_subscriber_gets_a_marker(clock: FakeClock) -> None:
    async with jidoka.Runtime(clock=clock, subscriber_queue_size=3) as rt:
        client = rt.client
        async with client.subscribe_to_all_sessions() as slow:
            for _ in range(5):
                await client.create_session()  # 2 lifecycle events each
            head = await take(slow, 3)
            marker = await next_event(slow)
            assert marker.type == EventType.EVENTS_DROPPED
            assert (marker.session_id, marker.seq, marker.data) == ("", 0, {"count": 7})
            sid = await client.create_session()
            resumed = await next_event(slow)
        assert [e.type for e in head] == ["session_created", "session_status", "session_created"]
        assert (resumed.session_id, resumed.type) == (sid, "session_created")


async def test_subscriber_that_never_reads_blocks_nobody(clock: FakeClock) -> None:
    async with jidoka.Runtime(clock=clock, subscriber_queue_size=2) as rt:
        client = rt.client
        a, b = await client.create_session(), await client.create_session()
        async with (
            client.subscribe_to_session(a) as stuck,
            client.subscribe_to_all_sessions() as stuck_global,
            client.subscribe_to_session(b) as reader,
        ):
            for n in range(50):
                await client.send_message(a, "user", str(n))
                await client.send_message(b, "user", str(n))
            got = await take(reader, 50)
            await client.terminate_session(a)
            assert [e.data["content"] for e in got] == [str(n) for n in range(50)]
            assert stuck.statistics().queued >= 2
            assert stuck_global.statistics().queued == 2


async def test_sessions_do_not_see_each_other(client: jidoka.Client) -> None:
    a, b = await client.create_session(), await client.create_session()
    async with client.subscribe_to_session(a) as events_a:
        await client.send_message(b, "user", "for b")
        await client.send_message(a, "user", "for a")
        event = await next_event(events_a)
    assert (event.session_id, event.data["content"]) == (a, "for a")


async def test_leaving_unsubscribes(runtime: jidoka.Runtime) -> None:
    client = runtime.client
    sid = await client.create_session()
    bus = runtime.bus
    async with client.subscribe_to_session(sid), client.subscribe_to_all_sessions():
        assert bus.subscriber_count(sid) == 1
        assert bus.subscriber_count(None) == 1
    assert bus.subscriber_count(sid) == 0
    assert bus.topics() == frozenset()  # type: ignore[attr-defined]


async def test_terminate_ends_streams_and_frees_topics(
    client: jidoka.Client, runtime: jidoka.Runtime
) -> None:
    sid = await client.create_session()
    async with client.subscribe_to_session(sid) as events:
        await client.terminate_session(sid)
        assert runtime.bus.topics() == frozenset()  # type: ignore[attr-defined]
        seen = await drain(events)
    assert seen[-1].type == EventType.SESSION_TERMINATED


async def test_a_subscriber_that_was_away_when_the_session_ended(
    client: jidoka.Client, store_backend: str
) -> None:
    """With a position, a session that has ended replays what the store still holds after it
    and the stream ends; without one there is nothing to wait for. The same for both clients."""
    sid = await client.create_session()
    seen = (await client.send_message(sid, "user", "before")).seq
    await client.terminate_session(sid, reason="done")
    async with client.subscribe_to_session(sid, after_seq=seen) as events:
        rest = await drain(events)
    if store_backend != "memory":  # a durable log outlives the session
        assert_gap_free(rest, first=seen + 1)
        assert rest[-1].type == EventType.SESSION_TERMINATED
        assert rest[-1].data["reason"] == "done"
        async with client.subscribe_to_session(sid, after_seq=rest[-1].seq) as events:
            assert await drain(events) == []  # complete: ends at once, nothing repeated
    else:  # the memory store let the log go with the session: nothing left to replay
        assert rest == []
    with pytest.raises(jidoka.SessionTerminated):
        async with client.subscribe_to_session(sid):
            pass


async def test_lagging_subscriber_still_gets_final_events(clock: FakeClock) -> None:
    async with jidoka.Runtime(clock=clock, subscriber_queue_size=2) as rt:
        client = rt.client
        sid = await client.create_session()
        async with client.subscribe_to_session(sid) as slow:
            for n in range(10):
                await client.send_message(sid, "user", str(n))
            await client.terminate_session(sid)  # the memory store frees the log now
            seen = await drain(slow)
    assert_gap_free(seen, first=3)
    assert seen[-1].type == EventType.SESSION_TERMINATED


async def test_subscribe_errors(client: jidoka.Client) -> None:
    with pytest.raises(jidoka.SessionNotFound):
        async with client.subscribe_to_session("0" * 26):
            pass
    sid = await client.create_session()
    with pytest.raises(jidoka.InvalidArgument):
        async with client.subscribe_to_session(sid, after_seq=-1):
            pass
    await client.terminate_session(sid)
    with pytest.raises(jidoka.SessionTerminated):
        async with client.subscribe_to_session(sid):
            pass


async def test_events_encode_to_json(client: jidoka.Client) -> None:
    sid = await client.create_session()
    async with client.subscribe_to_session(sid) as events:
        await client.send_message(sid, "user", "ünïcode")
        event = await next_event(events)
    decoded = jidoka.decode_event(jidoka.encode_event(event))
    assert decoded == event
    assert event.id == f"{sid}-{event.seq}"


async def test_fan_out_to_many_subscribers(client: jidoka.Client) -> None:
    sid = await client.create_session()
    async with asyncio.TaskGroup() as group:
        ready = asyncio.Barrier(101)

        async def listen() -> list[int]:
            async with client.subscribe_to_session(sid) as events:
                await ready.wait()
                return [e.seq for e in await take(events, 10)]

        listeners = [group.create_task(listen()) for _ in range(100)]
        await ready.wait()
        for n in range(10):
            await client.send_message(sid, "user", str(n))
    assert all(task.result() == list(range(3, 13)) for task in listeners)


async def test_a_restored_session_streams_past_its_old_termination(
    client: jidoka.Client, store_backend: str
) -> None:
    """A restored session's log holds its earlier ``session_terminated``; a replay from the
    start goes past it to the events of the second life and on to live ones, with both clients
    (the remote stream ends where the server ends it, not at a termination it reads)."""
    sid = await client.create_session()
    await client.send_message(sid, "user", "first life")
    await client.save_session(sid)
    await client.terminate_session(sid)
    await client.restore_session(sid)
    second = await client.send_message(sid, "user", "second life")
    seen: list[jidoka.Event] = []
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        while not seen or seen[-1].seq < second.seq:
            seen.append(await next_event(events))
        await client.send_message(sid, "user", "live")
        live = await until(events, "conversation_added", content="live")
    assert seen[-1].data["content"] == "second life"
    assert live.seq == second.seq + 1
    if store_backend != "memory":  # a durable log kept the first life, termination included
        assert_gap_free(seen)
        assert EventType.SESSION_TERMINATED in [e.type for e in seen]
