"""Every command commits at most once: all the events one client call writes go to the store in
one append, so a durable store pays one ``fsync`` for it.

Counted on the SQLite and the Postgres store, whose writers count the transactions they commit
(Postgres: the group statements): each verb of the table is called once on a session prepared
for it, and the commits it caused are read off the store before and after. Verbs that only
read commit nothing; saving and deleting a saved copy write the copy (one transaction; on
Postgres a single statement outside the writer, so not counted there). An agent turn's own
steps (the model's answer, each tool call and its result) are the turn's commits, made as they
happen, not the ``chat`` call's: ``submit_chat`` itself commits nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import jidoka
from jidoka.store.postgres import PostgresStore
from jidoka.store.sqlite import SqliteStore
from jidoka.verbs import VERBS
from tests.helpers import settle

pytestmark = pytest.mark.stores("sqlite", "postgres")

_SCRIPT = [
    {"tool_calls": [{"id": "r1", "name": "read_file", "arguments": {"path": "src/app.py"}}]},
    {"text": "It returns 42.", "usage": {"prompt_tokens": 9, "completion_tokens": 4}},
]


def _commits(runtime: jidoka.Runtime) -> int:
    store = runtime.store
    assert isinstance(store, SqliteStore | PostgresStore)
    return store.commits


async def _session(client: jidoka.Client, project: Path) -> str:
    """A session with one message, one active file and one working-context key, gone idle."""
    sid = await client.create_session(
        project_root=str(project), llm_config={"provider": "scripted", "script": _SCRIPT}
    )
    await client.send_message(sid, "user", "hi")
    await client.add_file(sid, "src/app.py")
    await client.put_working_context(sid, "k", [1])
    return sid


async def _saved(client: jidoka.Client, project: Path) -> str:
    sid = await _session(client, project)
    await client.save_session(sid)
    await client.terminate_session(sid)
    return sid


Call = Callable[[jidoka.Client, str], Awaitable[object]]

#: Verb -> (what it needs: a live session, a saved one, or nothing; the call).
CASES: dict[str, tuple[str, Call]] = {
    "create_session": ("none", lambda c, _: c.create_session(metadata={"a": 1})),
    "list_sessions": ("none", lambda c, _: c.list_sessions()),
    "get_session_info": ("live", lambda c, sid: c.get_session_info(sid)),
    "terminate_session": ("live", lambda c, sid: c.terminate_session(sid)),
    "send_message": ("live", lambda c, sid: c.send_message(sid, "user", "hello")),
    "get_conversation_history": ("live", lambda c, sid: c.get_conversation_history(sid)),
    "clear_conversation": ("live", lambda c, sid: c.clear_conversation(sid)),
    "read_events": ("live", lambda c, sid: c.read_events(sid)),
    "get_active_files": ("live", lambda c, sid: c.get_active_files(sid)),
    "add_file": ("live", lambda c, sid: c.add_file(sid, "README.md")),
    "remove_file": ("live", lambda c, sid: c.remove_file(sid, "src/app.py")),
    "get_file_index": ("live", lambda c, sid: c.get_file_index(sid)),
    "update_file_index": (
        "live",
        lambda c, sid: c.update_file_index(sid, "src/app.py", {"language": "python"}),
    ),
    "get_working_context_map": ("live", lambda c, sid: c.get_working_context(sid)),
    "get_working_context": ("live", lambda c, sid: c.get_working_context(sid, "k")),
    "put_working_context": ("live", lambda c, sid: c.put_working_context(sid, "k2", {"b": 1})),
    "delete_working_context": ("live", lambda c, sid: c.delete_working_context(sid, "k")),
    "build_context": ("live", lambda c, sid: c.build_context(sid)),
    "chat": ("live", lambda c, sid: c.submit_chat(sid, "what does main return?")),
    "cancel": ("live", lambda c, sid: c.cancel(sid)),
    # Its run_queued (the turn commits later, on the session's agent), like a chat's.
    "start_run": ("live", lambda c, sid: c.start_run(sid, "what does main return?")),
    "list_runs": ("live", lambda c, sid: c.list_runs(sid)),
    "save_session": ("live", lambda c, sid: c.save_session(sid)),
    "fork_session": ("live", lambda c, sid: c.fork_session(sid, at_seq=2)),
    "rewind_session": ("live", lambda c, sid: c.rewind_session(sid, to_seq=2)),
    "list_saved_sessions": ("none", lambda c, _: c.list_saved_sessions()),
    "cluster_status": ("none", lambda c, _: c.cluster_status()),
    "restore_session": ("saved", lambda c, sid: c.restore_session(sid)),
    "delete_saved_session": ("saved", lambda c, sid: c.delete_saved_session(sid)),
}

#: Verbs with no case above, and why.
_NOT_HERE = {
    "approve": "answers a turn waiting for an approval; the write it allows is the turn's",
    "get_run": "needs a run (a read: tests/integration/test_runs.py)",
    "join_run": "needs a run (a read: tests/integration/test_runs.py)",
    "cancel_run": "needs a run: its run_completed is one commit (tests/integration/test_runs.py)",
    "session_events": "a stream: reads only",
    "all_events": "a stream: reads only",
    "create_stream_ticket": "the server's, not a session's",
    "compact_session": "two by design, counted below: the status before its model call, then "
    "the summary with the status after it",
    "purge_session": "a termination (one commit), then a transaction deleting rows, which on "
    "SQLite is one more writer commit: tests/integration/test_retention.py counts the rows",
}

_READS = {
    "list_sessions",
    "get_session_info",
    "get_conversation_history",
    "read_events",
    "get_active_files",
    "get_file_index",
    "get_working_context_map",
    "get_working_context",
    "build_context",
    "cancel",  # nothing to cancel here
    "list_runs",
    "list_saved_sessions",
    "cluster_status",
}


#: Verbs whose one write is the saved copy: on Postgres it is a single statement on a pooled
#: connection, not one of the writer's group statements (which hold appends only).
_SAVED_COPY_WRITES = {"save_session", "delete_saved_session"}


def test_every_verb_is_counted_or_excused() -> None:
    assert set(CASES) | set(_NOT_HERE) == {verb.name for verb in VERBS}


@pytest.mark.parametrize("verb", sorted(CASES))
async def test_a_command_commits_at_most_once(
    verb: str, runtime: jidoka.Runtime, project: Path
) -> None:
    client = runtime.client
    needs, call = CASES[verb]
    sid = ""
    if needs == "live":
        sid = await _session(client, project)
    elif needs == "saved":
        sid = await _saved(client, project)
    await settle()
    await runtime.manager.wait_background()
    before = _commits(runtime)
    await call(client, sid)
    after = _commits(runtime)
    expected = 0 if verb in _READS else 1
    if isinstance(runtime.store, PostgresStore) and verb in _SAVED_COPY_WRITES:
        expected = 0
    assert after - before == expected, f"{verb} committed {after - before} times"


async def test_an_idle_session_s_command_commits_once(
    runtime: jidoka.Runtime, clock: jidoka.FakeClock, project: Path
) -> None:
    """The move back to ``active`` goes in the command's own append."""
    client = runtime.client
    sid = await _session(client, project)
    clock.advance(runtime.settings.session_defaults.idle_after_seconds + 1)
    await settle()
    await runtime.manager.wait_background()
    assert (await client.get_session_info(sid)).status is jidoka.Status.IDLE
    before = _commits(runtime)
    await client.send_message(sid, "user", "back again")
    assert _commits(runtime) - before == 1
    assert (await client.get_session_info(sid)).status is jidoka.Status.ACTIVE


async def test_a_terminated_session_with_workers_commits_once(runtime: jidoka.Runtime) -> None:
    """Its workers stop first; ``terminating``, ``terminated`` and ``session_terminated`` are one
    append after them."""
    client = runtime.client
    sid = await client.create_session()
    running = asyncio.Event()

    async def worker() -> None:
        running.set()
        await asyncio.Event().wait()

    runtime.start_worker(sid, "w", worker)
    await running.wait()
    before = _commits(runtime)
    info = await client.terminate_session(sid)
    assert info.status is jidoka.Status.TERMINATED
    assert _commits(runtime) - before == 1
    events = await runtime.store.read_events(sid)
    assert [(e.type, e.data.get("status")) for e in events[-3:]] == [
        ("session_status", "terminating"),
        ("session_status", "terminated"),
        ("session_terminated", None),
    ]


async def test_a_compaction_commits_twice(runtime: jidoka.Runtime) -> None:
    """``agent_status: compacting`` before the summariser's model call (watchers see it while
    it runs), then ``context_compacted`` and the agent's ``idle`` in one append."""
    client = runtime.client
    sid = await client.create_session(llm_config={"provider": "scripted"})
    for text in ("one", "two", "three"):
        await client.send_message(sid, "user", text)
    await settle()
    await runtime.manager.wait_background()
    before = _commits(runtime)
    await client.compact_session(sid, keep_last=1)
    assert _commits(runtime) - before == 2
