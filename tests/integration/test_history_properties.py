"""Properties of fork and rewind over random histories, on every store (hypothesis).

- A fork at any seq ``k`` equals the projection rebuilt from the source's events ``1..k``.
- A rewind to ``k`` followed by a load from the store equals the live projection.

Histories mix messages, working-context writes and deletes, active files, clears and rewinds
(rewinds to a point before an earlier rewind included); snapshots are taken every few events so
that the fold starts from a snapshot as often as from the log's start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jidoka
from jidoka.session.projection import replay
from jidoka.session.state import SessionState

FILES = ("src/app.py", "README.md", "src/pkg/util.ts")

_step = st.one_of(
    st.tuples(st.just("message"), st.sampled_from(["user", "assistant"]), st.text(max_size=8)),
    st.tuples(st.just("put"), st.sampled_from(["a", "b"]), st.integers(0, 9)),
    st.tuples(st.just("delete"), st.sampled_from(["a", "b"]), st.none()),
    st.tuples(st.just("add_file"), st.sampled_from(FILES), st.none()),
    st.tuples(st.just("remove_file"), st.sampled_from(FILES), st.none()),
    st.tuples(st.just("clear"), st.none(), st.none()),
    st.tuples(st.just("rewind"), st.floats(0, 1), st.none()),
)

_examples = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def view(state: SessionState) -> dict[str, Any]:
    """What a fork copies and a rewind restores, comparable across sessions."""
    return {
        "history": [(m.role, m.content) for m in state.messages()],
        "files": sorted(state.files or ()),
        "index": sorted(state.index or ()),
        "working_context": dict(state.working_context or {}),
    }


async def live_view(client: jidoka.Client, sid: str) -> dict[str, Any]:
    return {
        "history": [(m.role, m.content) for m in await client.get_conversation_history(sid)],
        "files": sorted(f.path for f in await client.get_active_files(sid)),
        "index": sorted(e.path for e in await client.get_file_index(sid)),
        "working_context": await client.get_working_context(sid),
    }


async def play(client: jidoka.Client, sid: str, steps: list[tuple[Any, Any, Any]]) -> None:
    for kind, a, b in steps:
        if kind == "message":
            await client.send_message(sid, a, b)
        elif kind == "put":
            await client.put_working_context(sid, a, b)
        elif kind == "delete":
            await client.delete_working_context(sid, a)
        elif kind == "add_file":
            await client.add_file(sid, a)
        elif kind == "remove_file":
            await client.remove_file(sid, a)
        elif kind == "clear":
            await client.clear_conversation(sid)
        else:
            last = (await client.read_events(sid, after_seq=0, limit=1_000))[-1].seq
            await client.rewind_session(sid, to_seq=max(1, round(a * last)))


async def whole_log(client: jidoka.Client, sid: str) -> list[jidoka.Event]:
    events: list[jidoka.Event] = []
    while page := await client.read_events(sid, after_seq=events[-1].seq if events else 0):
        events.extend(page)
    return events


@_examples
@given(steps=st.lists(_step, min_size=1, max_size=14), where=st.floats(0, 1))
async def test_a_fork_at_any_seq_is_the_fold_of_the_events_up_to_it(
    steps: list[tuple[Any, Any, Any]], where: float, project: Path, store_backend: str
) -> None:
    async with jidoka.Runtime(snapshot_interval=4) as rt:
        client = rt.client
        sid = await client.create_session(project_root=str(project))
        await play(client, sid, steps)
        log = await whole_log(client, sid)
        at = max(1, round(where * len(log)))
        fork = await client.fork_session(sid, at_seq=at)
        assert await live_view(client, fork) == view(replay(sid, log, upto=at))
        assert await whole_log(client, sid) == log  # the source is untouched


@_examples
@given(steps=st.lists(_step, min_size=1, max_size=14), to=st.floats(0, 1))
async def test_a_rewound_session_loads_as_it_lives(
    steps: list[tuple[Any, Any, Any]], to: float, project: Path, store_backend: str
) -> None:
    async with jidoka.Runtime(snapshot_interval=4) as rt:
        client = rt.client
        sid = await client.create_session(project_root=str(project))
        await play(client, sid, [*steps, ("rewind", to, None)])
        live = await live_view(client, sid)
        log = await whole_log(client, sid)
        assert live == view(replay(sid, log))
    if store_backend == "memory":
        return  # nothing outlives the runtime
    async with jidoka.Runtime(snapshot_interval=4) as rt:
        assert await live_view(rt.client, sid) == live
