"""Fork and rewind, on every store and through both clients (in process and over HTTP).

Every point of a session is its seq: a fork copies the projection there into a new session, a
rewind appends ``session_rewound`` and the projection goes back there. The log never changes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import jidoka
from jidoka.remote import RemoteClient
from jidoka.session.projection import replay

AnyClient = jidoka.Client | RemoteClient


def scripted(*turns: dict[str, Any]) -> dict[str, Any]:
    return {"provider": "scripted", "script": list(turns)}


def write(path: str, content: str, call_id: str) -> dict[str, Any]:
    return {
        "id": call_id,
        "name": "write_file",
        "arguments": {"path": path, "content": content},
    }


async def contents(client: AnyClient, sid: str) -> list[str]:
    return [m.content for m in await client.get_conversation_history(sid)]


async def all_events(client: AnyClient, sid: str) -> list[jidoka.Event]:
    events: list[jidoka.Event] = []
    while page := await client.read_events(sid, after_seq=events[-1].seq if events else 0):
        events.extend(page)
    return events


async def test_a_fork_is_the_source_at_a_seq(client: AnyClient, project: Path) -> None:
    sid = await client.create_session(metadata={"name": "source"}, project_root=str(project))
    await client.send_message(sid, "user", "one")
    await client.add_file(sid, "src/app.py")
    await client.put_working_context(sid, "plan", {"step": 1})
    mark = (await client.send_message(sid, "user", "two")).seq
    await client.send_message(sid, "user", "three")
    await client.put_working_context(sid, "plan", {"step": 2})
    before = await all_events(client, sid)

    fork = await client.fork_session(sid, at_seq=mark)

    assert fork != sid
    assert await contents(client, fork) == ["one", "two"]
    assert [f.path for f in await client.get_active_files(fork)] == ["src/app.py"]
    assert await client.get_working_context(fork, "plan") == {"step": 1}
    info, source = await client.get_session_info(fork), await client.get_session_info(sid)
    assert info.status == "active"
    assert info.metadata == {"name": "source"}
    assert info.project_root == source.project_root
    assert info.config == source.config
    first = (await client.read_events(fork, limit=1))[0]
    assert first.type == "session_created"
    assert first.data["forked_from"] == {"session_id": sid, "seq": mark}
    # The source is not touched.
    assert await all_events(client, sid) == before
    assert await contents(client, sid) == ["one", "two", "three"]
    # The fork has a life of its own, with its own gap-free log.
    await client.send_message(fork, "user", "elsewhere")
    assert await contents(client, fork) == ["one", "two", "elsewhere"]
    assert await contents(client, sid) == ["one", "two", "three"]
    seqs = [e.seq for e in await all_events(client, fork)]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_a_fork_defaults_to_the_head_and_takes_new_metadata(client: AnyClient) -> None:
    sid = await client.create_session(metadata={"a": 1})
    await client.send_message(sid, "user", "hello")
    fork = await client.fork_session(sid, metadata={"b": 2})
    assert await contents(client, fork) == ["hello"]
    assert (await client.get_session_info(fork)).metadata == {"b": 2}
    head = (await all_events(client, sid))[-1].seq
    first = (await client.read_events(fork, limit=1))[0]
    assert first.data["forked_from"] == {"session_id": sid, "seq": head}


@pytest.mark.parametrize("at_seq", [0, -1, 10_000])
async def test_a_fork_out_of_range_is_refused(client: AnyClient, at_seq: int) -> None:
    sid = await client.create_session()
    with pytest.raises(jidoka.InvalidArgument) as caught:
        await client.fork_session(sid, at_seq=at_seq)
    assert caught.value.session_id == sid or "at_seq" in str(caught.value)


async def test_fork_of_a_session_that_does_not_exist(client: AnyClient) -> None:
    with pytest.raises(jidoka.SessionNotFound):
        await client.fork_session("01ARZ3NDEKTSV4RRFFQ69G5FAV")


async def test_a_terminated_session_forks_from_its_stored_log(
    client: AnyClient, store_backend: str
) -> None:
    sid = await client.create_session()
    await client.send_message(sid, "user", "kept")
    await client.terminate_session(sid)
    if store_backend == "memory":
        # The memory store lets a terminated session's log go: there is nothing to fork from.
        with pytest.raises(jidoka.SessionTerminated):
            await client.fork_session(sid)
        return
    fork = await client.fork_session(sid)
    assert await contents(client, fork) == ["kept"]
    assert (await client.get_session_info(fork)).status == "active"


async def test_a_fork_inside_a_running_turn_closes_it(client: AnyClient) -> None:
    sid = await client.create_session(llm_config=scripted({"chunks": ["half"], "hang": True}))
    async with client.subscribe_to_session(sid) as events:
        turn = asyncio.ensure_future(client.chat(sid, "go"))
        async for event in events:
            if event.type == "llm_stream_chunk":
                mid_turn = event.seq
                break
    fork = await client.fork_session(sid, at_seq=mid_turn)
    log = await all_events(client, fork)
    assert [e.type for e in log[:3]] == ["session_created", "session_status", "agent_status"]
    assert log[2].data == {"status": "cancelled", "reason": "forked"}
    assert await contents(client, fork) == ["go"]
    assert await client.cancel(sid)
    assert (await turn).interrupted


async def test_rewind_goes_back_and_the_log_keeps_everything(
    client: AnyClient, project: Path
) -> None:
    sid = await client.create_session(project_root=str(project))
    await client.send_message(sid, "user", "one")
    await client.put_working_context(sid, "k", 1)
    mark = (await client.send_message(sid, "user", "two")).seq
    await client.add_file(sid, "README.md")
    await client.send_message(sid, "user", "three")
    await client.put_working_context(sid, "k", 2)
    last = (await all_events(client, sid))[-1].seq

    rewound = await client.rewind_session(sid, to_seq=mark)

    assert (rewound.to_seq, rewound.from_seq, rewound.seq) == (mark, last, last + 1)
    assert rewound.touched_paths == []
    assert await contents(client, sid) == ["one", "two"]
    assert await client.get_active_files(sid) == []
    assert await client.get_working_context(sid, "k") == 1
    log = await all_events(client, sid)
    assert len(log) == last + 1
    assert log[-1].type == "session_rewound"
    assert log[-1].data == {"to_seq": mark, "from_seq": last, "touched_paths": []}
    # Later commands build on the rewound state; rewinding twice, and before an earlier rewind.
    four = (await client.send_message(sid, "user", "four")).seq
    assert await contents(client, sid) == ["one", "two", "four"]
    await client.rewind_session(sid, to_seq=last)
    assert await contents(client, sid) == ["one", "two", "three"]
    assert await client.get_working_context(sid, "k") == 2
    await client.rewind_session(sid, to_seq=four)  # after an earlier rewind
    assert await contents(client, sid) == ["one", "two", "four"]
    await client.rewind_session(sid, to_seq=2)
    assert await contents(client, sid) == []
    assert await client.get_working_context(sid) == {}
    # What a fresh fold of the log says is what the live projection says.
    folded = replay(sid, await all_events(client, sid))
    assert [m.content for m in folded.messages()] == []
    assert (await client.get_session_info(sid)).status == "active"


async def test_rewind_keeps_the_usage_and_names_the_files_written(
    client: AnyClient, project: Path
) -> None:
    sid = await client.create_session(
        project_root=str(project),
        config={"allow_write": True},
        llm_config=scripted(
            {"tool_calls": [write("notes.txt", "new\n", "w1")]},
            {"text": "wrote it", "usage": {"prompt_tokens": 7, "completion_tokens": 3}},
        ),
    )
    mark = (await client.send_message(sid, "user", "before")).seq
    await client.chat(sid, "write notes")
    usage = (await client.get_session_info(sid)).usage
    rewound = await client.rewind_session(sid, to_seq=mark)
    assert rewound.touched_paths == ["notes.txt"]
    assert (project / "notes.txt").read_text() == "new\n"  # files on disk stay
    assert await contents(client, sid) == ["before"]
    assert (await client.get_session_info(sid)).usage == usage


@pytest.mark.parametrize("to_seq", [0, 10_000])
async def test_rewind_out_of_range_is_refused(client: AnyClient, to_seq: int) -> None:
    sid = await client.create_session()
    await client.send_message(sid, "user", "x")
    with pytest.raises(jidoka.InvalidArgument):
        await client.rewind_session(sid, to_seq=to_seq)
    assert await contents(client, sid) == ["x"]


async def test_rewind_is_refused_while_a_turn_runs_unless_cancel(client: AnyClient) -> None:
    sid = await client.create_session(llm_config=scripted({"chunks": ["half"], "hang": True}))
    mark = (await client.send_message(sid, "user", "before")).seq
    async with client.subscribe_to_session(sid, after_seq=mark) as events:
        turn = asyncio.ensure_future(client.chat(sid, "go"))
        async for event in events:
            if event.type == "llm_stream_chunk":
                break
    with pytest.raises(jidoka.SessionBusy):
        await client.rewind_session(sid, to_seq=mark)
    rewound = await client.rewind_session(sid, to_seq=mark, cancel=True)
    result = await turn
    assert result.interrupted
    assert await contents(client, sid) == ["before"]
    log = await all_events(client, sid)
    assert log[-1].type == "session_rewound"
    assert log[-1].seq == rewound.seq


async def test_rewind_of_a_terminated_session_is_refused(client: AnyClient) -> None:
    sid = await client.create_session()
    await client.send_message(sid, "user", "x")
    await client.terminate_session(sid)
    with pytest.raises(jidoka.SessionTerminated):
        await client.rewind_session(sid, to_seq=2)


@pytest.mark.stores("sqlite", "postgres")
async def test_a_rewound_session_loads_as_it_was(tmp_path: Path, store_backend: str) -> None:
    """After a restart the projection is the fold of the log, rewinds included (from a
    snapshot before each rewind's target: snapshots every 3 events)."""
    async with jidoka.Runtime(snapshot_interval=3) as rt:
        client = rt.client
        sid = await client.create_session()
        seqs = [(await client.send_message(sid, "user", f"m{i}")).seq for i in range(12)]
        await client.rewind_session(sid, to_seq=seqs[4])
        await client.send_message(sid, "user", "after")
        await client.rewind_session(sid, to_seq=seqs[9])
        live = await contents(client, sid)
        wc = await client.get_working_context(sid)
    async with jidoka.Runtime(snapshot_interval=3) as rt:
        assert await contents(rt.client, sid) == live == [f"m{i}" for i in range(10)]
        assert await rt.client.get_working_context(sid) == wc


@pytest.mark.stores("memory")
async def test_a_seq_the_memory_store_has_trimmed_is_refused_by_name(
    clock: jidoka.FakeClock,
) -> None:
    """The memory store keeps the newest ``memory_max_events_per_session`` events: a point
    older than that cannot be rebuilt, and saying so names the argument; nothing changes."""
    async with jidoka.Runtime(clock=clock, memory_max_events_per_session=10) as rt:
        client = rt.client
        sid = await client.create_session()
        for i in range(20):
            await client.send_message(sid, "user", f"m{i}")
        before = await contents(client, sid)
        with pytest.raises(jidoka.InvalidArgument, match="to_seq 3") as caught:
            await client.rewind_session(sid, to_seq=3)
        assert caught.value.argument == "to_seq"
        with pytest.raises(jidoka.InvalidArgument, match="at_seq 3"):
            await client.fork_session(sid, at_seq=3)
        assert await contents(client, sid) == before
        fork = await client.fork_session(sid)  # the head is in memory: always there
        assert await contents(client, fork) == before


async def test_fork_and_rewind_before_a_compaction_give_the_uncompacted_state(
    client: AnyClient,
) -> None:
    """A compaction is part of the projection at the seqs after it, and only there."""
    sid = await client.create_session(llm_config={"provider": "scripted"})
    for word in ("one", "two", "three", "four"):
        before = (await client.send_message(sid, "user", word)).seq
    compacted = await client.compact_session(sid, keep_last=1)
    assert (await client.build_context(sid)).summary == compacted.summary

    at_head = await client.fork_session(sid)
    assert (await client.build_context(at_head)).summary == compacted.summary
    earlier = await client.fork_session(sid, at_seq=before)
    assert (await client.build_context(earlier)).summary is None
    assert await contents(client, earlier) == ["one", "two", "three", "four"]

    await client.rewind_session(sid, to_seq=before)
    assert (await client.build_context(sid)).summary is None
    await client.rewind_session(sid, to_seq=compacted.seq)
    assert (await client.build_context(sid)).summary == compacted.summary
    assert await contents(client, sid) == ["one", "two", "three", "four"]
