"""Server-Sent Events end to end: resume without gap or duplicate, heartbeats, end of stream,
the lifecycle stream, refusals, slow consumers and the shutdown frame; what browsers need (the
agent's error not named ``error``, unnamed frames on request, 204 for a finished stream, and
``RemoteClient`` reading all of it).

Reads wait for frames with the client's read timeout as the deadline; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from jidoka import RemoteClient
from jidoka.events import EventType
from jidoka.server.streams import FRAME_NAMES
from tests.e2e.conftest import (
    ALICE_TOKEN,
    SSEFrame,
    http_client,
    new_session,
    post_message,
    problem_of,
    sse_frames,
    wait_until,
)

SLOW_CONSUMER_MESSAGES = 2000
SLOW_CONSUMER_WORKERS = 8


def events(frames: Iterator[SSEFrame]) -> Iterator[SSEFrame]:
    """The event frames (comments skipped)."""
    return (frame for frame in frames if frame.comment is None)


def new_history_session(client: httpx.Client) -> str:
    """A session that keeps every message of these tests in its history."""
    return new_session(client, config={"max_history": 10000})


def read_until_seq(frames: Iterator[SSEFrame], last: int) -> list[SSEFrame]:
    """Event frames up to and including the one with id ``last``."""
    got = []
    for frame in events(frames):
        got.append(frame)
        if frame.id is not None and int(frame.id) >= last:
            return got
    raise AssertionError(f"the stream ended before seq {last}; got ids {[f.id for f in got]}")


def split_end(frames: list[SSEFrame]) -> list[SSEFrame]:
    """The frames before the final ``event: end``, which a complete session stream must have
    (without ``id:``: there is nothing to resume after it)."""
    assert frames, "the stream sent nothing"
    end = frames[-1]
    assert (end.event, end.id) == ("end", None), end
    assert end.json() == {"reason": "session ended"}
    return frames[:-1]


def check_frames(frames: list[SSEFrame], sid: str) -> list[int]:
    """Every frame is a well-formed event of ``sid`` whose ``id:`` is its seq; their seqs."""
    seqs = []
    for frame in frames:
        assert frame.id is not None, frame
        assert frame.event is not None, frame
        event = frame.json()
        assert event["session_id"] == sid
        assert event["seq"] == int(frame.id)
        assert frame.event == FRAME_NAMES.get(event["type"], event["type"])
        assert event["id"] == f"{sid}-{frame.id}"
        seqs.append(event["seq"])
    return seqs


@pytest.fixture
def sid(alice: httpx.Client) -> str:
    return new_history_session(alice)


@pytest.mark.parametrize("resume", ["last-event-id", "after_seq"])
def test_reconnect_resumes_without_gap_or_duplicate(
    alice: httpx.Client, sid: str, resume: str
) -> None:
    first_batch = [post_message(alice, sid, f"a{i}") for i in range(5)]
    kept = 4  # read this many events, then drop the connection
    with alice.stream("GET", f"/v1/sessions/{sid}/events", params={"after_seq": 0}) as response:
        assert response.status_code == 200
        frames = sse_frames(response)
        before = [next(events(frames)) for _ in range(kept)]
    seqs_before = check_frames(before, sid)
    assert seqs_before == [1, 2, 3, 4]
    # More happens while the client is away.
    second_batch = [post_message(alice, sid, f"b{i}") for i in range(5)]
    last = second_batch[-1]
    assert first_batch[-1] < second_batch[0]
    where: dict[str, Any] = (
        {"headers": {"Last-Event-ID": str(seqs_before[-1])}}
        if resume == "last-event-id"
        else {"params": {"after_seq": seqs_before[-1]}}
    )
    with alice.stream("GET", f"/v1/sessions/{sid}/events", **where) as response:
        assert response.status_code == 200
        after = read_until_seq(sse_frames(response), last)
    seqs_after = check_frames(after, sid)
    union = seqs_before + seqs_after
    assert union == list(range(1, last + 1)), union  # no gap, no duplicate, in order
    contents = [f.json()["data"]["content"] for f in [*before, *after]
                if f.event == "conversation_added"]  # fmt: skip
    assert contents == [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]


def test_resume_across_a_rewind_replays_every_event(alice: httpx.Client, sid: str) -> None:
    """A rewind is one more event: a stream resumed from before it replays the events it
    rewound over, then the rewind itself, then what followed."""
    first = [post_message(alice, sid, f"a{i}") for i in range(4)]
    with alice.stream("GET", f"/v1/sessions/{sid}/events", params={"after_seq": 0}) as response:
        before = read_until_seq(sse_frames(response), first[1])
    rewound = alice.post(f"/v1/sessions/{sid}/rewind", json={"to_seq": first[0]})
    assert rewound.status_code == 200, rewound.text
    after_rewind = post_message(alice, sid, "c0")
    headers = {"Last-Event-ID": str(first[1])}
    with alice.stream("GET", f"/v1/sessions/{sid}/events", headers=headers) as response:
        after = read_until_seq(sse_frames(response), after_rewind)
    seqs = check_frames(before, sid) + check_frames(after, sid)
    assert seqs == list(range(1, after_rewind + 1)), seqs  # no gap, no duplicate
    kinds = [f.json()["type"] for f in after]
    assert kinds == ["conversation_added", "conversation_added", "session_rewound",
                     "conversation_added"]  # fmt: skip
    rewind = after[2].json()
    assert rewind["data"] == {"to_seq": first[0], "from_seq": first[-1], "touched_paths": []}
    messages = alice.get(f"/v1/sessions/{sid}/messages").json()["messages"]
    assert [m["content"] for m in messages] == ["a0", "c0"]


def test_without_a_position_the_stream_is_live_only(alice: httpx.Client, sid: str) -> None:
    old = post_message(alice, sid, "before")
    with alice.stream("GET", f"/v1/sessions/{sid}/events") as response:
        frames = sse_frames(response)
        assert next(frames).comment == "ok"  # subscribed: what follows is live
        new = post_message(alice, sid, "after")
        frame = next(events(frames))
    assert int(frame.id or 0) == new > old
    assert frame.json()["data"]["content"] == "after"


def test_resuming_after_the_session_terminated_replays_the_rest(
    alice: httpx.Client, sid: str
) -> None:
    """The client was away when the session ended: resuming from its last event must still
    deliver what it missed, ending with ``session_terminated`` (the doc's "no gap")."""
    seq = post_message(alice, sid, "hello")
    with alice.stream("GET", f"/v1/sessions/{sid}/events", params={"after_seq": 0}) as response:
        assert response.status_code == 200
        seen = read_until_seq(sse_frames(response), seq)
    assert alice.delete(f"/v1/sessions/{sid}").status_code == 200
    headers = {"Last-Event-ID": str(seq)}
    with alice.stream("GET", f"/v1/sessions/{sid}/events", headers=headers) as response:
        if response.status_code != 200:
            response.read()
        assert response.status_code == 200, response.text
        rest = split_end(list(events(sse_frames(response))))  # ends by itself (or times out)
    seqs = check_frames([*seen, *rest], sid)
    assert seqs == list(range(1, len(seqs) + 1))
    assert rest[-1].event == "session_terminated"
    # Resuming once more, after everything: nothing left, and never will be. 204 is what
    # makes a browser's EventSource stop (a 200 with only `end` would have it come back).
    headers = {"Last-Event-ID": str(seqs[-1])}
    response = alice.get(f"/v1/sessions/{sid}/events", headers=headers)
    assert response.status_code == 204, response.text
    assert response.content == b""


def test_a_live_stream_ends_when_the_session_terminates(alice: httpx.Client, sid: str) -> None:
    with alice.stream("GET", f"/v1/sessions/{sid}/events") as response:
        frames = sse_frames(response)
        assert next(frames).comment == "ok"
        assert alice.delete(f"/v1/sessions/{sid}").status_code == 200
        got = split_end(list(events(frames)))
    assert [f.event for f in got][-1] == "session_terminated"
    assert {f.json()["data"].get("status") for f in got if f.event == "session_status"} == {
        "terminating",
        "terminated",
    }


def test_heartbeat_on_an_idle_stream(make_server: Any) -> None:
    server = make_server(options={"heartbeat": 0.2})
    # A keep-alive must come well before the default 15 s: the read timeout is the deadline.
    with http_client(server.url, ALICE_TOKEN, read_timeout=5.0) as client:
        sid = new_history_session(client)
        for path in (f"/v1/sessions/{sid}/events", "/v1/events"):
            with client.stream("GET", path) as response:
                frames = sse_frames(response)
                assert next(frames).comment == "ok"
                # Nothing happens on the session: the next frames are keep-alives.
                assert next(frames) == SSEFrame(comment="keep-alive")
                assert next(frames) == SSEFrame(comment="keep-alive")
        # And an event still comes through between heartbeats.
        with client.stream("GET", f"/v1/sessions/{sid}/events") as response:
            frames = sse_frames(response)
            assert next(frames).comment == "ok"
            seq = post_message(client, sid, "between heartbeats")
            frame = next(events(frames))
            assert frame.id == str(seq)


def test_the_global_stream_shows_the_lifecycle(alice: httpx.Client) -> None:
    with alice.stream("GET", "/v1/events") as response:
        assert response.status_code == 200
        frames = sse_frames(response)
        assert next(frames).comment == "ok"
        sid = new_history_session(alice)
        post_message(alice, sid, "not a lifecycle event")
        assert alice.delete(f"/v1/sessions/{sid}", params={"reason": "bye"}).status_code == 200
        got = []
        for frame in events(frames):
            event = frame.json()
            if event["session_id"] != sid:
                continue  # other tests' sessions
            got.append(frame)
            if frame.event == "session_terminated":
                break
    types = [f.event for f in got]
    assert types[0] == "session_created"
    assert types[-1] == "session_terminated"
    assert "session_status" in types
    assert "conversation_added" not in types  # lifecycle only
    statuses = [f.json()["data"]["status"] for f in got if f.event == "session_status"]
    assert statuses[-2:] == ["terminating", "terminated"]
    assert got[-1].json()["data"]["reason"] == "bye"
    for frame in got:
        assert frame.id == frame.json()["id"]  # the global stream's id is the event id
        assert frame.id == f"{sid}-{frame.json()['seq']}"


@pytest.mark.parametrize("bad", ["abc", "-1", "1.5", "1e3", "0x1", "99999999999999999999"])
def test_bad_last_event_id_is_422(alice: httpx.Client, sid: str, bad: str) -> None:
    response = alice.get(f"/v1/sessions/{sid}/events", headers={"Last-Event-ID": bad})
    problem = problem_of(response, "invalid-argument", 422)
    assert problem["argument"] == "after_seq"
    response = alice.get(f"/v1/sessions/{sid}/events", params={"after_seq": bad})
    assert problem_of(response, "invalid-argument", 422)["argument"] == "after_seq"


def test_a_slow_consumer_does_not_stall_the_session(alice: httpx.Client, sid: str) -> None:
    """A stream nobody reads: posting never waits for it, and when it is finally read it
    delivers every event in order (caught up from the store)."""
    per_worker = SLOW_CONSUMER_MESSAGES // SLOW_CONSUMER_WORKERS

    def produce(worker: int) -> list[int]:
        return [post_message(alice, sid, f"{worker}:{i}:" + "x" * 200) for i in range(per_worker)]

    with (
        http_client(str(alice.base_url), ALICE_TOKEN) as reader,
        reader.stream("GET", f"/v1/sessions/{sid}/events", params={"after_seq": 0}) as response,
    ):
        assert response.status_code == 200
        with ThreadPoolExecutor(SLOW_CONSUMER_WORKERS) as pool:
            seqs = sorted(
                itertools.chain.from_iterable(pool.map(produce, range(SLOW_CONSUMER_WORKERS)))
            )
        assert len(seqs) == len(set(seqs)) == SLOW_CONSUMER_MESSAGES
        frames = sse_frames(response)
        got = read_until_seq(frames, seqs[-1])
        dropped = [f for f in got if f.event == "events_dropped"]
        assert dropped == [], dropped[0].data
        assert check_frames(got, sid) == list(range(1, seqs[-1] + 1))  # every one, in order
        messages = [f.json() for f in got if f.event == "conversation_added"]
        assert [m["seq"] for m in messages] == seqs
        origin = [m["data"]["content"].split(":")[:2] for m in messages]
        for worker in range(SLOW_CONSUMER_WORKERS):  # each producer's messages in its order
            assert [int(i) for w, i in origin if w == str(worker)] == list(range(per_worker))
        # Caught up, it is live again.
        more = post_message(alice, sid, "live again")
        frame = next(events(frames))
        assert frame.id == str(more)


def test_shutdown_ends_streams_with_a_shutdown_frame(make_server: Any) -> None:
    server = make_server(options={"shutdown-timeout": 5})
    with http_client(server.url, ALICE_TOKEN) as client:
        sid = new_history_session(client)
        seq = post_message(client, sid, "before shutdown")
        with (
            client.stream("GET", f"/v1/sessions/{sid}/events", params={"after_seq": 0}) as one,
            client.stream("GET", "/v1/events") as everything,
        ):
            one_frames = sse_frames(one)
            all_frames = sse_frames(everything)
            read_until_seq(one_frames, seq)
            assert next(all_frames).comment == "ok"
            server.send_signal(signal.SIGTERM)
            rest_one = list(one_frames)
            rest_all = list(all_frames)
        code = server.wait(30)
    assert code == 0
    for rest in (rest_one, rest_all):
        final = [f for f in rest if f.comment is None]
        assert final, rest
        assert final[-1].event == "shutdown"
        assert final[-1].id is None  # so a client resumes from the last real event


def test_the_global_stream_shows_a_session_restored_after_a_restart(make_server: Any) -> None:
    """A session saved and terminated before a restart, restored after it: its owner's
    lifecycle stream shows the restored session's whole lifecycle."""
    server = make_server()
    with http_client(server.url, ALICE_TOKEN) as client:
        sid = new_history_session(client)
        assert client.post(f"/v1/sessions/{sid}/save").status_code == 201
        assert client.delete(f"/v1/sessions/{sid}").status_code == 200
    server.restart()
    with (
        http_client(server.url, ALICE_TOKEN) as client,
        client.stream("GET", "/v1/events") as response,
    ):
        frames = sse_frames(response)
        assert next(frames).comment == "ok"
        restored = client.post(f"/v1/saved-sessions/{sid}/restore")
        assert restored.status_code == 200, restored.text
        post_message(client, sid, "after the restore")
        assert client.delete(f"/v1/sessions/{sid}").status_code == 200
        # A session of the same principal created afterwards: the marker that ends the read.
        marker = new_history_session(client)
        assert client.delete(f"/v1/sessions/{marker}").status_code == 200
        got = []
        for frame in events(frames):
            event = frame.json()
            got.append((event["session_id"], event["type"]))
            if event["session_id"] == marker and event["type"] == "session_terminated":
                break
    mine = [kind for session, kind in got if session == sid]
    assert mine[:1] == ["session_created"], got
    assert mine[-1:] == ["session_terminated"], got


# --- what browsers need -------------------------------------------------------------------------

#: A model that fails half-way through its answer: the agent's ``error`` event.
FAILING_MODEL = {
    "provider": "scripted",
    "script": [{"chunks": ["half an ans"], "error": {"message": "overloaded", "status": 500}}],
}


def failed_turn(client: httpx.Client) -> str:
    """A terminated session whose log holds an agent ``error`` event (and a few others)."""
    response = client.post("/v1/sessions", json={"llm_config": FAILING_MODEL})
    assert response.status_code == 201, response.text
    sid: str = response.json()["session_id"]
    chat = client.post(f"/v1/sessions/{sid}/chat", params={"wait": "true"}, json={"text": "hi"})
    assert chat.status_code == 502, chat.text
    assert client.delete(f"/v1/sessions/{sid}").status_code == 200
    return sid


def whole_log(client: httpx.Client, sid: str, **params: str) -> list[SSEFrame]:
    """Every frame of an ended session's stream from the start, up to and with ``end``."""
    path = f"/v1/sessions/{sid}/events"
    with client.stream("GET", path, params={"after_seq": "0", **params}) as response:
        assert response.status_code == 200
        return list(events(sse_frames(response)))


def test_the_agents_error_is_not_named_error(alice: httpx.Client) -> None:
    """``event: error`` would reach an EventSource's connection-loss handler: the agent's
    error frame is ``agent_error``, its JSON type still ``error``."""
    sid = failed_turn(alice)
    frames = split_end(whole_log(alice, sid))
    assert check_frames(frames, sid) == list(range(1, len(frames) + 1))
    errors = [f for f in frames if f.json()["type"] == "error"]
    assert len(errors) == 1
    assert errors[0].event == "agent_error"
    assert errors[0].json()["data"]["message"]
    assert "error" not in {f.event for f in frames}
    # No event type, now or later, is sent under a name EventSource keeps for itself.
    assert not {"error", "message", "open"} & {FRAME_NAMES.get(t, t) for t in EventType}


def test_unnamed_frames_reach_one_handler(alice: httpx.Client) -> None:
    """``?frames=unnamed``: no event frame has an ``event:`` line (EventSource hands each to
    ``onmessage``); the type is in the JSON. ``end`` stays named: it is not an event."""
    sid = failed_turn(alice)
    named = split_end(whole_log(alice, sid))
    unnamed = whole_log(alice, sid, frames="unnamed")
    assert (unnamed[-1].event, unnamed[-1].id) == ("end", None)
    unnamed = unnamed[:-1]
    assert [f.event for f in unnamed] == [None] * len(named)
    assert [(f.id, f.data) for f in unnamed] == [(f.id, f.data) for f in named]
    assert "error" in {f.json()["type"] for f in unnamed}
    # The global stream takes it too.
    with alice.stream("GET", "/v1/events", params={"frames": "unnamed"}) as response:
        frames = sse_frames(response)
        assert next(frames).comment == "ok"
        other = new_history_session(alice)
        frame = next(events(frames))
    assert (frame.event, frame.json()["session_id"]) == (None, other)
    assert frame.json()["type"] == "session_created"


@pytest.mark.parametrize("bad", ["", "none", "Unnamed", "named,unnamed"])
def test_a_bad_frames_value_is_422(alice: httpx.Client, sid: str, bad: str) -> None:
    for path in (f"/v1/sessions/{sid}/events", "/v1/events"):
        response = alice.get(path, params={"frames": bad})
        problem = problem_of(response, "invalid-argument", 422)
        assert problem["argument"] == "frames"
    twice = alice.get("/v1/events", params=[("frames", "named"), ("frames", "named")])
    assert problem_of(twice, "invalid-argument", 422)["argument"] == "frames"


@pytest.mark.parametrize("resume", ["last-event-id", "after_seq", "lastEventId"])
def test_a_finished_stream_answers_204(alice: httpx.Client, resume: str) -> None:
    """At or past the end of an ended session's log: 204, however the position is given;
    before it: the rest, then ``end``."""
    sid = failed_turn(alice)
    last = int(split_end(whole_log(alice, sid))[-1].id or 0)
    path = f"/v1/sessions/{sid}/events"

    def at(seq: int) -> httpx.Response:
        if resume == "last-event-id":
            return alice.get(path, headers={"Last-Event-ID": str(seq)})
        return alice.get(path, params={resume: str(seq)})

    for seq in (last, last + 1, last + 1000):
        response = at(seq)
        assert response.status_code == 204, (seq, response.text)
        assert response.content == b""
    response = at(last - 1)
    assert response.status_code == 200
    rest = split_end([f for f in parse_frames(response.text) if f.comment is None])
    assert [int(f.id or 0) for f in rest] == [last]
    assert rest[0].event == "session_terminated"


def parse_frames(text: str) -> list[SSEFrame]:
    """The frames of a whole SSE body already read."""
    response = httpx.Response(200, text=text)
    return list(sse_frames(response))


async def test_remote_client_reads_every_frame_and_stops_at_204(server: Any) -> None:
    """RemoteClient reads the agent's ``agent_error`` frame like any other, and a
    subscription at the end of an ended session ends at once (the 204) instead of failing on
    a body that is no event stream."""
    async with RemoteClient(server.url, token=ALICE_TOKEN) as client:
        with http_client(server.url, ALICE_TOKEN) as alice:
            sid = await asyncio.to_thread(failed_turn, alice)
        async with client.subscribe_to_session(sid, after_seq=0) as subscription:
            got = [event async for event in subscription]
        assert [e.seq for e in got] == list(range(1, len(got) + 1))
        assert "error" in {e.type for e in got}
        assert got[-1].type == "session_terminated"
        async with client.subscribe_to_session(sid, after_seq=got[-1].seq) as subscription:
            assert [event async for event in subscription] == []


def stored_log(client: httpx.Client, sid: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/sessions/{sid}/log", params={"after_seq": 0, "limit": 1000})
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


@pytest.mark.parametrize("resume", ["last-event-id", "after_seq"])
def test_resuming_across_pruned_stream_chunks_names_the_gap_once(
    make_server: Any, resume: str
) -> None:
    """With ``JIDOKA_KEEP_STREAM_CHUNKS=false`` an ended turn's chunks leave the store: a
    stream resumed from before them gets one exact ``events_dropped`` frame in their place
    (its ``id:`` the last dropped seq, so resuming after it repeats nothing), then the rest."""
    server = make_server(env={"JIDOKA_KEEP_STREAM_CHUNKS": "false"})
    model = {"provider": "scripted", "script": [{"chunks": ["The ", "answer ", "is ", "42."]}]}
    with http_client(server.url, ALICE_TOKEN) as client:
        sid = new_session(client, llm_config=model)
        before = stored_log(client, sid)[-1]["seq"]
        chat = client.post(f"/v1/sessions/{sid}/chat", params={"wait": "true"}, json={"text": "?"})
        assert chat.status_code == 200, chat.text

        def pruned() -> list[dict[str, Any]] | None:
            log = stored_log(client, sid)
            return None if any(e["type"] == "llm_stream_chunk" for e in log) else log

        log = wait_until(pruned, 10.0, "the turn's chunks to be dropped (in the background)")
        seqs = [e["seq"] for e in log if e["seq"] > before]
        gaps = [(a + 1, b - 1) for a, b in itertools.pairwise([before, *seqs]) if b > a + 1]
        assert len(gaps) == 1  # the chunks lay between the thinking status and the answer
        (first, last), end = gaps[0], seqs[-1]
        assert log[-1]["type"] == "run_completed"  # a chat is a run: it ends the turn
        where: dict[str, Any] = (
            {"headers": {"Last-Event-ID": str(before)}}
            if resume == "last-event-id"
            else {"params": {"after_seq": before}}
        )
        path = f"/v1/sessions/{sid}/events"
        with client.stream("GET", path, **where) as response:
            assert response.status_code == 200
            frames = read_until_seq(sse_frames(response), end)
        check_frames(frames, sid)
        dropped = [f for f in frames if f.event == "events_dropped"]
        assert len(dropped) == 1
        assert dropped[0].id == str(last)
        marker = dropped[0].json()["data"]
        assert marker == {"count": last - first + 1, "first_seq": first, "last_seq": last}
        shown = [int(f.id or 0) for f in frames]
        assert shown == sorted([*seqs, last])  # the marker stands where the gap was
        assert [f.event for f in frames][-4:] == ["conversation_added", "llm_response",
                                                 "agent_status", "run_completed"]  # fmt: skip
        # Resuming from the marker's id goes on after the gap, without it.
        with client.stream("GET", path, headers={"Last-Event-ID": str(last)}) as response:
            rest = read_until_seq(sse_frames(response), end)
        assert [int(f.id or 0) for f in rest] == [seq for seq in seqs if seq > last]
