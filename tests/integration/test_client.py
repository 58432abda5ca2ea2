"""The in-process client, method by method, through a real runtime (memory store, fake clock)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import jidoka
from jidoka import (
    InvalidArgument,
    InvalidConfig,
    InvalidRole,
    InvalidTransition,
    LimitExceeded,
    PathNotAllowed,
    SessionNotFound,
    SessionTerminated,
    Status,
)

MISSING = "0" * 26


async def test_create_defaults_and_info(client: jidoka.Client) -> None:
    sid = await client.create_session(metadata={"user": "ada"}, llm_config={"model": "m"})
    info = await client.get_session_info(sid)
    assert info.session_id == sid
    assert info.status is Status.ACTIVE
    assert info.metadata == {"user": "ada"}
    assert info.llm_config == {"model": "m"}
    assert info.config == jidoka.SessionConfig()
    assert info.conversation_count == 0
    assert info.error is None
    assert info.reason is None
    assert info.created_at == info.updated_at


async def test_create_copies_inputs(client: jidoka.Client) -> None:
    metadata = {"tags": ["a"]}
    sid = await client.create_session(metadata=metadata)
    metadata["tags"].append("b")
    assert (await client.get_session_info(sid)).metadata == {"tags": ["a"]}


async def test_config_overrides_field_by_field(client: jidoka.Client) -> None:
    sid = await client.create_session(config={"max_history": 5})
    config = (await client.get_session_info(sid)).config
    assert config.max_history == 5
    assert config.max_files == 50


@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        ({"config": {"max_history": 0}}, InvalidConfig, "max_history"),
        ({"config": {"nope": 1}}, InvalidConfig, "nope"),
        ({"config": {"idle_after_seconds": "soon"}}, InvalidConfig, "idle_after_seconds"),
        ({"metadata": ["not", "a", "dict"]}, InvalidArgument, "metadata"),
        ({"metadata": {"x": object()}}, InvalidArgument, "metadata"),
        ({"llm_config": "gpt"}, InvalidArgument, "llm_config"),
        ({"project_root": "/definitely/not/here"}, PathNotAllowed, "project_root"),
        ({"project_root": 42}, InvalidArgument, "project_root"),
    ],
)
async def test_create_rejects_bad_input(
    client: jidoka.Client,
    runtime: jidoka.Runtime,
    kwargs: dict[str, object],
    error: type[Exception],
    named: str,
) -> None:
    with pytest.raises(error) as info:
        await client.create_session(**kwargs)  # type: ignore[arg-type]
    assert named in str(info.value)
    assert runtime.manager.live_count() == 0  # nothing half-created


async def test_metadata_size_bound(clock: jidoka.FakeClock) -> None:
    async with jidoka.Runtime(clock=clock, max_metadata_bytes=32) as rt:
        with pytest.raises(LimitExceeded) as info:
            await rt.client.create_session(metadata={"x": "y" * 64})
        assert info.value.limit == "max_metadata_bytes"


async def test_max_sessions(clock: jidoka.FakeClock) -> None:
    async with jidoka.Runtime(clock=clock, max_sessions=2) as rt:
        await rt.client.create_session()
        sid = await rt.client.create_session()
        with pytest.raises(LimitExceeded) as info:
            await rt.client.create_session()
        assert (info.value.limit, info.value.maximum) == ("max_sessions", 2)
        await rt.client.terminate_session(sid)
        await rt.client.create_session()  # a terminated session frees its slot


async def test_unknown_and_malformed_ids(client: jidoka.Client) -> None:
    for bad in [MISSING, "nope", "", "../etc"]:
        with pytest.raises(SessionNotFound) as info:
            await client.get_session_info(bad)
        assert info.value.session_id == bad
        with pytest.raises(SessionNotFound):
            await client.send_message(bad, "user", "x")
    with pytest.raises(SessionNotFound):
        await client.get_session_info(123)  # type: ignore[arg-type]


async def test_send_message_and_history(client: jidoka.Client) -> None:
    sid = await client.create_session()
    sent = [await client.send_message(sid, role, f"{role} says hi") for role in
            ("system", "user", "assistant")]  # fmt: skip
    history = await client.get_conversation_history(sid)
    assert history == sent
    assert [m.seq for m in history] == [3, 4, 5]
    assert len({m.id for m in history}) == 3
    assert (await client.get_session_info(sid)).conversation_count == 3


@pytest.mark.parametrize("role", ["tool", "USER", "", None, 1])
async def test_invalid_role(client: jidoka.Client, role: object) -> None:
    sid = await client.create_session()
    with pytest.raises(InvalidRole) as info:
        await client.send_message(sid, role, "x")  # type: ignore[arg-type]
    assert info.value.session_id == sid
    assert sid in str(info.value)
    assert await client.get_conversation_history(sid) == []


async def test_message_content_validation(client: jidoka.Client) -> None:
    sid = await client.create_session(config={"max_message_bytes": 10})
    with pytest.raises(InvalidArgument):
        await client.send_message(sid, "user", b"bytes")  # type: ignore[arg-type]
    await client.send_message(sid, "user", "é" * 5)  # 10 bytes: at the limit
    with pytest.raises(LimitExceeded) as info:
        await client.send_message(sid, "user", "é" * 6)
    assert (info.value.limit, info.value.maximum, info.value.actual) == (
        "max_message_bytes",
        10,
        12,
    )
    assert len(await client.get_conversation_history(sid)) == 1


async def test_history_window_drops_oldest(client: jidoka.Client, runtime: jidoka.Runtime) -> None:
    sid = await client.create_session(config={"max_history": 3})
    for n in range(5):
        await client.send_message(sid, "user", str(n))
    assert [m.content for m in await client.get_conversation_history(sid)] == ["2", "3", "4"]
    # The log keeps everything.
    logged = [e for e in await runtime.read_events(sid) if e.type == "conversation_added"]
    assert [e.data["content"] for e in logged] == ["0", "1", "2", "3", "4"]


async def test_clear_conversation(client: jidoka.Client) -> None:
    sid = await client.create_session()
    await client.send_message(sid, "user", "a")
    await client.send_message(sid, "user", "b")
    assert await client.clear_conversation(sid) == 2
    assert await client.get_conversation_history(sid) == []
    assert await client.clear_conversation(sid) == 0


async def test_files(client: jidoka.Client, project: Path) -> None:
    sid = await client.create_session(project_root=str(project))
    added = await client.add_file(sid, "src/app.py")
    await client.add_file(sid, str(project / "README.md"))
    await client.add_file(sid, "alias.py")  # a link inside the root: its target's key
    assert added.path == "src/app.py"
    assert [f.path for f in await client.get_active_files(sid)] == ["README.md", "src/app.py"]
    index = {e.path: e for e in await client.get_file_index(sid)}
    assert index["src/app.py"].language == "python"
    assert index["src/app.py"].line_count == 2
    assert index["src/app.py"].size == len("def main():\n    return 42\n")
    assert index["README.md"].language == "markdown"
    assert await client.remove_file(sid, "src/app.py") is True
    assert await client.remove_file(sid, "src/app.py") is False
    assert [f.path for f in await client.get_active_files(sid)] == ["README.md"]
    assert {e.path for e in await client.get_file_index(sid)} == {"README.md", "src/app.py"}


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/etc/passwd", "outside"),
        ("../secret.txt", "escapes"),
        ("src/../../secret.txt", "escapes"),
        ("leak.txt", "resolves outside"),
        ("src/app.py\x00.txt", "NUL"),
        ("src", "regular file"),
        ("missing.py", "no such file"),
        ("", "empty"),
    ],
)
async def test_path_not_allowed(
    client: jidoka.Client, project: Path, path: str, reason: str
) -> None:
    sid = await client.create_session(project_root=str(project))
    with pytest.raises(PathNotAllowed) as info:
        await client.add_file(sid, path)
    assert reason in info.value.reason
    assert info.value.session_id == sid
    assert await client.get_active_files(sid) == []
    assert await client.get_file_index(sid) == []


async def test_fifo_and_device_refused(client: jidoka.Client, project: Path) -> None:
    os.mkfifo(project / "pipe")
    os.symlink("/dev/zero", project / "zero")
    sid = await client.create_session(project_root=str(project))
    with pytest.raises(PathNotAllowed, match="regular file"):
        await client.add_file(sid, "pipe")
    with pytest.raises(PathNotAllowed):
        await client.add_file(sid, "zero")
    assert await client.get_active_files(sid) == []


async def test_no_project_root(client: jidoka.Client) -> None:
    sid = await client.create_session()
    with pytest.raises(PathNotAllowed, match="no project_root"):
        await client.add_file(sid, "x.py")


async def test_file_limits(client: jidoka.Client, project: Path) -> None:
    sid = await client.create_session(
        project_root=str(project), config={"max_files": 1, "max_file_bytes": 20}
    )
    await client.add_file(sid, "src/pkg/util.ts")
    await client.add_file(sid, "src/pkg/util.ts")  # re-adding an active file is fine
    with pytest.raises(LimitExceeded) as info:
        await client.add_file(sid, "README.md")
    assert info.value.limit == "max_files"
    await client.remove_file(sid, "src/pkg/util.ts")
    with pytest.raises(LimitExceeded) as too_big:
        await client.add_file(sid, "src/app.py")
    assert (too_big.value.limit, too_big.value.path) == ("max_file_bytes", "src/app.py")


async def test_update_file_index(client: jidoka.Client, project: Path) -> None:
    sid = await client.create_session(project_root=str(project))
    entry = await client.update_file_index(
        sid, "src/app.py", {"line_count": 3, "summary": "entry point", "last_accessed": 0}
    )
    assert entry.line_count == 3
    assert entry.extra == {"summary": "entry point"}
    assert entry.last_accessed is not None
    entry = await client.update_file_index(sid, "src/app.py", {"language": "python"})
    assert (entry.line_count, entry.language) == (3, "python")
    assert await client.get_active_files(sid) == []  # indexing does not activate
    with pytest.raises(InvalidArgument, match="line_count"):
        await client.update_file_index(sid, "src/app.py", {"line_count": -1})
    with pytest.raises(InvalidArgument):
        await client.update_file_index(sid, "src/app.py", {"path": "other"})
    with pytest.raises(PathNotAllowed):
        await client.update_file_index(sid, "../x", {"size": 1})


async def test_working_context(client: jidoka.Client) -> None:
    sid = await client.create_session(config={"max_working_context_bytes": 64})
    value = {"steps": [1, 2]}
    await client.put_working_context(sid, "plan", value)  # answers None (typed so)
    value["steps"].append(3)  # the session kept a copy
    got = await client.get_working_context(sid, "plan")
    assert got == {"steps": [1, 2]}
    got["steps"].append(4)  # and hands out copies
    assert await client.get_working_context(sid, "plan") == {"steps": [1, 2]}
    assert await client.get_working_context(sid, "absent", default=7) == 7
    assert await client.get_working_context(sid) == {"plan": {"steps": [1, 2]}}
    with pytest.raises(LimitExceeded) as info:
        await client.put_working_context(sid, "big", "x" * 100)
    assert info.value.limit == "max_working_context_bytes"
    with pytest.raises(InvalidArgument):
        await client.put_working_context(sid, "k", {"x": object()})
    await client.put_working_context(sid, "t", (1, 2))  # stored as its JSON form
    assert await client.get_working_context(sid, "t") == [1, 2]
    await client.delete_working_context(sid, "t")
    with pytest.raises(InvalidArgument):
        await client.put_working_context(sid, "", 1)
    assert await client.delete_working_context(sid, "plan") is True
    assert await client.delete_working_context(sid, "plan") is False
    assert await client.get_working_context(sid) == {}


async def test_build_context(client: jidoka.Client, project: Path) -> None:
    sid = await client.create_session(project_root=str(project))
    await client.add_file(sid, "src/app.py")
    await client.send_message(sid, "user", "why?")
    await client.put_working_context(sid, "goal", "explain")
    bundle = await client.build_context(sid)
    assert [m.content for m in bundle.messages] == ["why?"]
    assert bundle.files[0].content == "def main():\n    return 42\n"
    assert bundle.working_context == {"goal": "explain"}
    only = await client.build_context(sid, include=["conversation"], max_tokens=100)
    assert only.files == []
    assert only.working_context == {}
    with pytest.raises(InvalidArgument):
        await client.build_context(sid, include=["nope"])
    with pytest.raises(InvalidArgument):
        await client.build_context(sid, include="conversation")
    with pytest.raises(InvalidArgument):
        await client.build_context(sid, max_tokens=0)


async def test_build_context_sees_file_changes(
    client: jidoka.Client, runtime: jidoka.Runtime, project: Path
) -> None:
    sid = await client.create_session(project_root=str(project))
    await client.add_file(sid, "README.md")
    first = await client.build_context(sid, include=["files"])
    hits = runtime.cache.statistics().hits
    assert first.files[0].content == "# demo\n\nhello\n"
    (project / "README.md").write_text("# changed, and longer\n", encoding="utf-8")
    second = await client.build_context(sid, include=["files"])
    assert second.files[0].content == "# changed, and longer\n"
    third = await client.build_context(sid, include=["files"])
    assert third.files[0].content == "# changed, and longer\n"
    assert runtime.cache.statistics().hits == hits + 1
    (project / "README.md").unlink()
    assert (await client.build_context(sid, include=["files"])).files == []


async def test_list_sessions(client: jidoka.Client) -> None:
    ids = [await client.create_session() for _ in range(5)]
    assert [i.session_id for i in await client.list_sessions()] == ids
    await client.terminate_session(ids[1])
    assert [i.session_id for i in await client.list_sessions("active")] == [
        ids[0], *ids[2:]
    ]  # fmt: skip
    assert [i.session_id for i in await client.list_sessions("terminated")] == [ids[1]]
    assert [i.session_id for i in await client.list_sessions()] == ids
    page = await client.list_sessions(limit=2)
    rest = await client.list_sessions(after=page[-1].session_id)
    assert [i.session_id for i in page + rest] == ids
    with pytest.raises(InvalidArgument):
        await client.list_sessions("sleeping")
    with pytest.raises(InvalidArgument):
        await client.list_sessions(limit=0)


async def test_terminate_and_tombstone(client: jidoka.Client) -> None:
    sid = await client.create_session(metadata={"k": "v"})
    await client.send_message(sid, "user", "x")
    info = await client.terminate_session(sid)
    assert info.status is Status.TERMINATED
    assert info.reason == "requested"
    assert info.metadata == {"k": "v"}
    assert (await client.get_session_info(sid)).status is Status.TERMINATED
    with pytest.raises(SessionTerminated) as terminated:
        await client.send_message(sid, "user", "y")
    assert terminated.value.session_id == sid
    for call in (
        client.get_conversation_history(sid),
        client.put_working_context(sid, "k", 1),
        client.clear_conversation(sid),
        client.add_file(sid, "x"),
    ):
        with pytest.raises(SessionTerminated):
            await call
    with pytest.raises(InvalidTransition) as again:
        await client.terminate_session(sid)
    assert (again.value.from_status, again.value.to_status) == ("terminated", "terminating")
    assert again.value.session_id == sid


async def test_terminate_reason(client: jidoka.Client) -> None:
    sid = await client.create_session()
    assert (await client.terminate_session(sid, reason="user closed tab")).reason == (
        "user closed tab"
    )
    with pytest.raises(InvalidArgument):
        await client.terminate_session(await client.create_session(), reason="")


async def test_tombstones_are_bounded(clock: jidoka.FakeClock, store_backend: str) -> None:
    async with jidoka.Runtime(clock=clock, max_tombstones=3) as rt:
        ids = [await rt.client.create_session() for _ in range(5)]
        for sid in ids:
            await rt.client.terminate_session(sid, reason="done")
        assert rt.manager.tombstone_ids() == frozenset(ids[2:])
        if store_backend == "memory":  # the log went with the session: nothing to recall
            with pytest.raises(SessionNotFound):
                await rt.client.get_session_info(ids[0])
            return
        # A durable log outlives its tombstone: the session is recalled from it, and the
        # memory bound still holds (the oldest tombstone goes to make room).
        info = await rt.client.get_session_info(ids[0])
        assert (info.status, info.reason) == (Status.TERMINATED, "done")
        assert rt.manager.tombstone_ids() == frozenset([*ids[3:], ids[0]])


async def test_runtime_used_after_close(clock: jidoka.FakeClock) -> None:
    rt = jidoka.Runtime(clock=clock)
    with pytest.raises(jidoka.RuntimeClosed):
        _ = rt.client
    async with rt:
        client = rt.client
    with pytest.raises(jidoka.RuntimeClosed):
        await client.create_session()
    with pytest.raises(jidoka.RuntimeClosed):
        await rt.start()


async def test_unknown_store_refused() -> None:
    with pytest.raises(InvalidConfig) as info:
        jidoka.Runtime(store="cassandra")
    assert info.value.field == "store"
