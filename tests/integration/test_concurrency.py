"""Many sessions at once: distinct ids, ordered commands, and isolation under concurrency."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import jidoka
from jidoka.ids import is_session_id
from tests.helpers import settle


@pytest.mark.slow
async def test_thousand_sessions_created_concurrently(client: jidoka.Client) -> None:
    ids = await asyncio.gather(*(client.create_session(metadata={"n": n}) for n in range(1000)))
    assert len(set(ids)) == 1000
    assert all(is_session_id(sid) for sid in ids)
    listed = await client.list_sessions()
    assert [info.session_id for info in listed] == sorted(ids)
    assert {info.session_id: info.metadata["n"] for info in listed} == {
        sid: n for n, sid in enumerate(ids)
    }


@pytest.mark.slow
@pytest.mark.local_client("reads the streams with Subscription.get_nowait()")
async def test_hundred_sessions_hundred_concurrent_messages(client: jidoka.Client) -> None:
    ids = [await client.create_session() for _ in range(100)]
    subscriptions = [client.subscribe_to_session(sid) for sid in ids]
    streams = [await s.__aenter__() for s in subscriptions]
    try:
        tasks = [
            asyncio.create_task(client.send_message(sid, "user", f"{sid}:{n}"))
            for n in range(100)
            for sid in ids
        ]
        messages = await asyncio.gather(*tasks)
        for sid, stream in zip(ids, streams, strict=True):
            history = await client.get_conversation_history(sid)
            assert [m.content for m in history] == [f"{sid}:{n}" for n in range(100)]
            assert [m.seq for m in history] == list(range(3, 103))
            seen = [stream.get_nowait() for _ in range(100)]
            assert [e.seq for e in seen if e] == list(range(3, 103))
        assert len({m.id for m in messages}) == 10_000
    finally:
        for s in subscriptions:
            await s.__aexit__(None, None, None)


async def test_isolation_between_sessions(client: jidoka.Client, tmp_path: Path) -> None:
    roots = []
    for name in "ab":
        root = tmp_path / name
        root.mkdir()
        (root / f"{name}.py").write_text(f"{name} = 1\n", encoding="utf-8")
        roots.append(root)
    a = await client.create_session(project_root=str(roots[0]), metadata={"who": "a"})
    b = await client.create_session(project_root=str(roots[1]), metadata={"who": "b"})

    async def drive(sid: str, name: str) -> None:
        for n in range(20):
            await client.send_message(sid, "user", f"{name}{n}")
            await client.put_working_context(sid, f"{name}-key", n)
        await client.add_file(sid, f"{name}.py")
        await client.update_file_index(sid, f"{name}.py", {"owner": name})

    await asyncio.gather(drive(a, "a"), drive(b, "b"))
    for sid, name, other in ((a, "a", "b"), (b, "b", "a")):
        history = await client.get_conversation_history(sid)
        assert all(m.content.startswith(name) for m in history)
        assert await client.get_working_context(sid) == {f"{name}-key": 19}
        assert [f.path for f in await client.get_active_files(sid)] == [f"{name}.py"]
        assert [e.extra for e in await client.get_file_index(sid)] == [{"owner": name}]
        bundle = await client.build_context(sid)
        assert other not in {f.path[0] for f in bundle.files}
        assert (await client.get_session_info(sid)).metadata == {"who": name}
    # A's sandbox does not reach B's files.
    with pytest.raises(jidoka.PathNotAllowed):
        await client.add_file(a, str(roots[1] / "b.py"))


@pytest.mark.local_client(
    "concurrent calls travel on separate connections: the server receives them in no defined order"
)
async def test_commands_to_one_session_apply_in_arrival_order(client: jidoka.Client) -> None:
    sid = await client.create_session()
    await asyncio.gather(
        *(client.put_working_context(sid, "last", n) for n in range(50)),
        *(client.send_message(sid, "user", str(n)) for n in range(50)),
    )
    assert await client.get_working_context(sid, "last") == 49
    assert [m.content for m in await client.get_conversation_history(sid)] == [
        str(n) for n in range(50)
    ]


@pytest.mark.local_client(
    "concurrent calls travel on separate connections: the server receives them in no defined order"
)
async def test_cancelled_caller_leaves_session_consistent(
    client: jidoka.Client, runtime: jidoka.Runtime
) -> None:
    sid = await client.create_session()
    tasks = [asyncio.create_task(client.send_message(sid, "user", str(n))) for n in range(20)]
    for task in tasks[::3]:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    sent = [r.content for r in results if isinstance(r, jidoka.Message)]
    history = await client.get_conversation_history(sid)
    assert [m.content for m in history] == sent
    logged = await runtime.read_events(sid)
    assert [e.seq for e in logged] == list(range(1, len(logged) + 1))
    await client.send_message(sid, "user", "after")


@pytest.mark.local_client(
    "cancels the call mid-commit by counting event-loop turns of the in-process call; cancelling "
    "a remote call only drops its connection, the server still runs the command"
)
async def test_caller_cancelled_mid_commit(
    client: jidoka.Client, runtime: jidoka.Runtime, store_backend: str
) -> None:
    """A caller cancelled while its event is being committed: the event may land (its commit
    was under way) but the projection always matches the log, and the next command works."""
    sid = await client.create_session()
    first = asyncio.create_task(client.send_message(sid, "user", "cancelled in flight"))
    rest = [asyncio.create_task(client.send_message(sid, "user", str(n))) for n in range(5)]
    await settle()  # `first` holds the lock and waits for its commit; the rest queue behind
    first.cancel()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    # On SQLite the cancel usually lands mid-commit; a fast writer thread may finish the commit
    # first (then the call simply succeeded). Either way the log and the projection agree.
    assert isinstance(results[0], asyncio.CancelledError | jidoka.Message), results[0]
    history = [m.content for m in await client.get_conversation_history(sid)]
    logged = [e.data["content"] for e in await runtime.read_events(sid) if "content" in e.data]
    assert history == logged
    assert history[-5:] == [str(n) for n in range(5)]
    events = await runtime.read_events(sid)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
