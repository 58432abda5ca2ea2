"""Background runs (``start_run``, ``get_run``, ``list_runs``, ``join_run``, ``cancel_run``) and
idempotent creation, on every store, in process and over HTTP, against the real ``openai`` SDK
and the local OpenAI-compatible server (whose ``Slow`` answers hold a run mid-turn until the test
lets it go). Nothing sleeps: tests wait for events or for the server to receive a request."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

import jidoka
from jidoka.events import Event
from jidoka.runs.idempotency import IDEMPOTENCY_TTL
from jidoka.runs.sweep import RUN_SWEEP_INTERVAL

from ..helpers import PROMPTLY, quiesce, settle, until
from ..support.openai_server import OpenAIServer, Slow, Text, openai_server
from ..support.openai_server import llm_config as llm


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    async with openai_server() as running:
        yield running


async def _session(client: jidoka.Client, server: OpenAIServer, **config: object) -> str:
    return await client.create_session(llm_config=llm(server), config=config or None)


async def _until_run_ends(events: AsyncIterator[Event], run_id: str) -> list[Event]:
    seen: list[Event] = []
    async with asyncio.timeout(PROMPTLY):
        async for event in events:
            seen.append(event)
            if event.type == "run_completed" and event.data["run_id"] == run_id:
                return seen
    raise AssertionError(f"the stream ended before run {run_id} did")


async def test_start_run_answers_before_the_model_does_and_join_waits_for_it(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    slow = Slow(["Hel", "lo"], before=1)
    server.queue(slow)
    sid = await _session(client, server)
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        run = await client.start_run(sid, "hi", metadata={"ticket": 7})
        assert run.status in ("queued", "running")
        assert run.session_id == sid
        assert run.text == "hi"
        assert run.metadata == {"ticket": 7}
        assert run.run_id.startswith("run_")
        await until(events, "llm_stream_chunk")  # the model has begun, not ended
        assert (await client.get_run(sid, run.run_id)).status == "running"
        early = await client.join_run(sid, run.run_id, timeout=0)
        assert early.status == "running"
        assert early.message is None
        slow.release.set()
        done = await client.join_run(sid, run.run_id, timeout=PROMPTLY)
        seen = await _until_run_ends(events, run.run_id)
    assert done.status == "completed"
    assert done.message is not None
    assert done.message.content == "Hello"
    assert done.usage is not None
    assert done.usage.total_tokens > 0
    assert done.started_at is not None
    assert done.ended_at is not None
    assert done.created_at <= done.started_at <= done.ended_at
    # Its agent events carry its id; the run's own events frame the turn.
    tagged = [e for e in seen if e.type in ("llm_stream_chunk", "llm_response")]
    assert tagged
    assert all(e.data["run_id"] == run.run_id for e in tagged)
    assert seen[-1].data["status"] == "completed"
    history = await client.get_conversation_history(sid)
    assert [(m.role, m.content) for m in history] == [("user", "hi"), ("assistant", "Hello")]


async def test_join_run_returns_what_chat_returns(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    server.queue(Text(["the ", "answer"]), Text(["the ", "answer"]))
    one = await _session(client, server)
    two = await _session(client, server)
    chat = await client.chat(one, "question")
    run = await client.start_run(two, "question")
    joined = await client.join_run(two, run.run_id, timeout=PROMPTLY)
    assert joined.message is not None
    assert (joined.message.role, joined.message.content) == ("assistant", chat.message.content)
    assert joined.message.seq == chat.message.seq  # the same log shape: run events included
    assert joined.usage == chat.usage
    # And a chat is a run too: listed, completed, with the same answer.
    [chat_run] = (await client.list_runs(one)).runs
    assert chat_run.status == "completed"
    assert chat_run.multitask == "enqueue"
    assert chat_run.message == chat.message


async def test_multitask_reject_enqueue_and_interrupt(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    first = Slow(["first ", "answer"], before=1)
    server.queue(first, Text(["second"]), Text(["third"]))
    sid = await _session(client, server)
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        a = await client.start_run(sid, "a")
        await until(events, "llm_stream_chunk")
        with pytest.raises(jidoka.SessionBusy):
            await client.start_run(sid, "refused")  # reject is the default
        b = await client.start_run(sid, "b", multitask="enqueue")
        c = await client.start_run(sid, "c", multitask="enqueue")
        first.release.set()
        await _until_run_ends(events, c.run_id)
    await client.join_run(sid, c.run_id, timeout=PROMPTLY)  # and the session is free again
    log = await client.read_events(sid, limit=1000)
    started = [e.data["run_id"] for e in log if e.type == "run_started"]
    assert started == [a.run_id, b.run_id, c.run_id]  # FIFO
    assert [(await client.get_run(sid, r.run_id)).status for r in (a, b, c)] == ["completed"] * 3
    # The refused one left nothing behind.
    assert sum(1 for e in log if e.type == "run_queued") == 3

    slow = Slow(["partial ", "rest"], before=1)
    server.queue(slow, Text(["after"]))
    async with client.subscribe_to_session(sid, after_seq=log[-1].seq) as events:
        d = await client.start_run(sid, "d")
        await until(events, "llm_stream_chunk")
        e = await client.start_run(sid, "e", multitask="interrupt")
        ended_e = await client.join_run(sid, e.run_id, timeout=PROMPTLY)
    ended_d = await client.get_run(sid, d.run_id)
    assert ended_d.status == "interrupted"
    assert ended_d.reason == "multitask"
    assert ended_d.message is not None
    assert ended_d.message.content == "partial "
    assert ended_e.status == "completed"


async def test_cancel_run_queued_never_starts_running_stops(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    slow = Slow(["half ", "done"], before=1)
    server.queue(slow)
    sid = await _session(client, server)
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        a = await client.start_run(sid, "a")
        await until(events, "llm_stream_chunk")
        b = await client.start_run(sid, "b", multitask="enqueue")
        cancelled_b = await client.cancel_run(sid, b.run_id)
        assert cancelled_b.status == "cancelled"
        assert cancelled_b.message is None
        cancelled_a = await client.cancel_run(sid, a.run_id)
    assert cancelled_a.status == "cancelled"
    assert cancelled_a.message is not None
    assert cancelled_a.message.content == "half "
    log = await client.read_events(sid, limit=1000)
    assert b.run_id not in [e.data["run_id"] for e in log if e.type == "run_started"]
    # Cancelling an ended run answers it as it is.
    assert (await client.cancel_run(sid, b.run_id)).status == "cancelled"
    assert (await client.list_runs(sid, status="cancelled")).runs[0].run_id == b.run_id


async def test_list_runs_pages_newest_first_and_unknown_runs_are_not_found(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    server.queue(*(Text([f"answer {i}"]) for i in range(5)))
    sid = await _session(client, server)
    other = await _session(client, server)
    ids = []
    for i in range(5):
        run = await client.start_run(sid, f"q{i}")
        await client.join_run(sid, run.run_id, timeout=PROMPTLY)
        ids.append(run.run_id)
    first = await client.list_runs(sid, limit=2)
    assert [r.run_id for r in first.runs] == ids[::-1][:2]
    assert first.next_cursor is not None
    second = await client.list_runs(sid, limit=2, cursor=first.next_cursor)
    third = await client.list_runs(sid, limit=2, cursor=second.next_cursor)
    assert [r.run_id for r in second.runs + third.runs] == ids[::-1][2:]
    assert third.next_cursor is None
    assert (await client.list_runs(sid, status="queued")).runs == []
    with pytest.raises(jidoka.RunNotFound) as caught:
        await client.get_run(other, ids[0])  # another session's run
    assert caught.value.run_id == ids[0]
    with pytest.raises(jidoka.RunNotFound):
        await client.join_run(sid, "run_nope")
    with pytest.raises(jidoka.InvalidArgument) as bad:
        await client.start_run(sid, "x", multitask="sometimes")
    assert bad.value.argument == "multitask"
    with pytest.raises(jidoka.InvalidArgument) as hook:
        await client.start_run(sid, "x", webhook="http://127.0.0.1:9/hook")
    assert hook.value.argument == "webhook"  # no allow-list: every webhook is refused


async def test_an_idempotency_key_never_starts_a_second_run(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    server.queue(Text(["once"]))
    sid = await _session(client, server)
    first = await client.start_run(sid, "do it", idempotency_key="key-1")
    again = await client.start_run(sid, "do it", idempotency_key="key-1")
    assert again.run_id == first.run_id
    await client.join_run(sid, first.run_id, timeout=PROMPTLY)
    after = await client.start_run(sid, "do it", idempotency_key="key-1")
    assert after.run_id == first.run_id
    assert after.status == "completed"
    with pytest.raises(jidoka.InvalidArgument) as caught:
        await client.start_run(sid, "do something else", idempotency_key="key-1")
    assert caught.value.argument == "idempotency_key"
    assert len((await client.list_runs(sid)).runs) == 1
    assert len(server.requests) == 1  # the model was called once
    with pytest.raises(jidoka.InvalidArgument):
        await client.start_run(sid, "x", idempotency_key="has space")


async def test_an_idempotency_key_sends_a_message_once(client: jidoka.Client) -> None:
    sid = await client.create_session()
    one = await client.send_message(sid, "user", "hello", idempotency_key="m-1")
    two = await client.send_message(sid, "user", "hello", idempotency_key="m-1")
    assert two == one
    with pytest.raises(jidoka.InvalidArgument) as caught:
        await client.send_message(sid, "user", "bye", idempotency_key="m-1")
    assert caught.value.argument == "idempotency_key"
    history = await client.get_conversation_history(sid)
    assert [m.content for m in history] == ["hello"]
    # Keys belong to the principal: another session of the same owner with the same key is
    # a different request.
    other = await client.create_session()
    with pytest.raises(jidoka.InvalidArgument):
        await client.send_message(other, "user", "hello", idempotency_key="m-1")


async def test_two_copies_of_a_request_at_once_make_one_run(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    server.queue(Text(["once"]))
    sid = await _session(client, server)
    runs = await asyncio.gather(
        *(client.start_run(sid, "same", idempotency_key="burst") for _ in range(5))
    )
    assert len({r.run_id for r in runs}) == 1
    await client.join_run(sid, runs[0].run_id, timeout=PROMPTLY)
    assert len(server.requests) == 1
    assert len((await client.list_runs(sid)).runs) == 1


async def test_a_run_brings_an_idle_session_back(
    server: OpenAIServer, runtime: jidoka.Runtime, clock: jidoka.FakeClock
) -> None:
    """Its ``run_queued`` is the idle session's first command: ``session_status`` (active)
    comes first, in the same append, and the run goes on as in an active session."""
    server.queue(Text(["awake"]))
    client = runtime.client
    sid = await _session(client, server)
    clock.advance(runtime.settings.session_defaults.idle_after_seconds + 1)
    await settle()
    await runtime.manager.wait_background()
    assert (await client.get_session_info(sid)).status is jidoka.Status.IDLE
    run = await client.start_run(sid, "wake up")
    done = await client.join_run(sid, run.run_id, timeout=PROMPTLY)
    assert done.status == "completed"
    assert done.message is not None
    assert done.message.content == "awake"
    log = await client.read_events(sid, limit=100)
    queued = next(i for i, e in enumerate(log) if e.type == "run_queued")
    assert log[queued - 1].type == "session_status"
    assert log[queued - 1].data["status"] == "active"


async def test_an_idempotency_key_stands_for_a_day(
    runtime: jidoka.Runtime, clock: jidoka.FakeClock
) -> None:
    """Past 24 hours a key is free again (the runs' sweep removes it), and then stands for
    its new request."""
    client = runtime.client
    sid = await client.create_session()
    first = await client.send_message(sid, "user", "one", idempotency_key="daily")
    clock.advance(IDEMPOTENCY_TTL.total_seconds() - 60)
    await quiesce(runtime)  # the sweep this advance set off has ended
    assert await client.send_message(sid, "user", "one", idempotency_key="daily") == first
    clock.advance(120 + RUN_SWEEP_INTERVAL)  # past the day, and a sweep is due
    await quiesce(runtime)
    second = await client.send_message(sid, "user", "two", idempotency_key="daily")
    assert second.seq > first.seq
    assert await client.send_message(sid, "user", "two", idempotency_key="daily") == second
    assert [m.content for m in await client.get_conversation_history(sid)] == ["one", "two"]


@pytest.mark.stores("sqlite", "postgres")
async def test_terminating_a_session_ends_its_runs_cancelled(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    """The running run and the queued one end ``cancelled`` (reason ``terminated``) before the
    session's own end, and stay readable after it (a durable store keeps the log)."""
    server.queue(Slow(["never ", "finished"], before=1))
    sid = await _session(client, server)
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        running = await client.start_run(sid, "a")
        await until(events, "llm_stream_chunk")
        queued = await client.start_run(sid, "b", multitask="enqueue")
        await client.terminate_session(sid)
    for run in (running, queued):
        ended = await client.get_run(sid, run.run_id)
        assert ended.status == "cancelled"
        assert ended.reason == "terminated"
    log = await client.read_events(sid, limit=1000)
    assert log[-1].type == "session_terminated"
    assert [e.data["run_id"] for e in log if e.type == "run_completed"] == [
        queued.run_id,
        running.run_id,
    ] or [e.data["run_id"] for e in log if e.type == "run_completed"] == [
        running.run_id,
        queued.run_id,
    ]


@pytest.mark.local_client("cancels the in-process call while its run_queued commits")
async def test_a_caller_cancelled_mid_commit_never_leaves_a_run_no_turn_will_run(
    server: OpenAIServer, client: jidoka.Client
) -> None:
    """Whatever point the cancel lands on, every run in the log runs to its end, and the
    session is free afterwards (a withdrawn run left nothing, not even a place in the queue)."""
    server.queue(*(Text([f"answer {i}"]) for i in range(14)))
    sid = await _session(client, server)
    for turns in range(12):  # within max_queued_turns (16), whatever ran meanwhile
        call = asyncio.create_task(client.start_run(sid, f"q{turns}", multitask="enqueue"))
        for _ in range(turns):
            await asyncio.sleep(0)  # a different point of the call each time
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
    # A run queued behind them all: once it ended, so had every run accepted before it (the
    # cancelled callers' commits go on without them).
    last = await client.start_run(sid, "last", multitask="enqueue")
    assert (await client.join_run(sid, last.run_id, timeout=PROMPTLY)).status == "completed"
    log = await client.read_events(sid, limit=1000)
    queued = [e.data["run_id"] for e in log if e.type == "run_queued"]
    ended = {e.data["run_id"]: e.data["status"] for e in log if e.type == "run_completed"}
    assert all(ended.get(run_id) == "completed" for run_id in queued), (queued, ended)
    final = await client.start_run(sid, "after")  # reject: nothing is left running or queued
    assert (await client.join_run(sid, final.run_id, timeout=PROMPTLY)).status == "completed"
