"""Stream-chunk pruning (``keep_stream_chunks=False``) on every store: an ended turn's chunks
leave the store, checked in its tables; a stream resumed across them gets one exact
``events_dropped`` marker per gap; live subscribers and the projection are unaffected; the
default keeps every chunk."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import jidoka
from jidoka import Event, Subscription
from jidoka.store.postgres import is_postgres_dsn
from jidoka.store.sqlite import DATABASE_NAME
from tests.conftest import close_on_fake_clock
from tests.helpers import PROMPTLY
from tests.support.postgres import execute_in_schema

CHUNK = "llm_stream_chunk"


def scripted(*turns: dict[str, Any]) -> dict[str, Any]:
    return {"provider": "scripted", "script": list(turns)}


def read(path: str) -> dict[str, Any]:
    return {"id": "c1", "name": "read_file", "arguments": {"path": path}}


@contextlib.asynccontextmanager
async def running(clock: jidoka.FakeClock, **settings: Any) -> AsyncIterator[jidoka.Runtime]:
    rt = jidoka.Runtime(clock=clock, shutdown_grace_seconds=2.0, **settings)
    await rt.start()
    try:
        yield rt
    finally:
        await close_on_fake_clock(rt, clock)


async def turn_events(events: Subscription) -> list[Event]:
    """Events up to the end of a turn (its run's ``run_completed``: a chat is a run)."""
    out: list[Event] = []
    async with asyncio.timeout(PROMPTLY):
        async for event in events:
            out.append(event)
            if event.type == "run_completed":
                return out
    raise AssertionError("the stream ended before the turn did")


async def stored_chunk_rows(session_id: str) -> int | None:
    """Chunk rows of the session in the store's own table (``None``: the memory store)."""
    store = os.environ["JIDOKA_STORE"]
    if is_postgres_dsn(store):
        statement = "SELECT 1 FROM events WHERE session_id = %s AND type = %s"
        schema = os.environ["JIDOKA_POSTGRES_SCHEMA"]
        return await execute_in_schema(store, schema, statement, (session_id, CHUNK))
    if store != "sqlite":
        return None
    path = Path(os.environ["JIDOKA_DATA_DIR"]) / DATABASE_NAME
    with contextlib.closing(sqlite3.connect(path)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM events WHERE session_id = ? AND type = ?", (session_id, CHUNK)
        ).fetchone()
    return int(row[0])


def runs(seqs: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of ``seqs`` as ``(first, last)``."""
    out: list[tuple[int, int]] = []
    for seq in seqs:
        if out and out[-1][1] == seq - 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


async def test_an_ended_turns_chunks_leave_the_store_and_a_resume_is_told_exactly(
    clock: jidoka.FakeClock, project: Path, store_backend: str
) -> None:
    script = scripted(
        {"chunks": ["Let me ", "look."], "tool_calls": [read("src/app.py")]},
        {"chunks": ["It ", "returns ", "42."]},
        {"chunks": ["Still ", "42."]},
    )
    async with running(clock, keep_stream_chunks=False) as rt:
        client = rt.client
        sid = await client.create_session(project_root=str(project), llm_config=script)
        start = await rt.store.last_seq(sid)
        async with client.subscribe_to_session(sid) as live:  # live only: no catch-up
            result = await client.chat(sid, "what does main return?")
            seen = await turn_events(live)
            await rt.manager.wait_background()
            # Live subscribers got every chunk as it came.
            chunks = [e for e in seen if e.type == CHUNK]
            assert "".join(e.data["text"] for e in chunks) == "Let me look.It returns 42."
            assert result.message.content == "It returns 42."
            final = [e.seq for e in chunks if e.data["iteration"] == 2]
            kept = [e.seq for e in chunks if e.data["iteration"] == 1]
            stored = await client.read_events(sid, after_seq=start)
            # The last call's chunks went; the first call's (its text is in no other event)
            # stayed; every other event stayed, and the log's end did not move.
            assert [e.seq for e in stored] == [e.seq for e in seen if e.seq not in final]
            assert [e.seq for e in stored if e.type == CHUNK] == kept
            assert stored[-1].seq == seen[-1].seq == await rt.store.last_seq(sid)
            assert await stored_chunk_rows(sid) in (None, len(kept))

            # Resumed from before the turn: one marker per gap, exact, then what follows.
            async with client.subscribe_to_session(sid, after_seq=start) as resumed:
                replay = await turn_events(resumed)
            markers = [e for e in replay if e.type == "events_dropped"]
            gaps = runs(final)
            assert [(m.seq, m.data) for m in markers] == [
                (last, {"count": last - first + 1, "first_seq": first, "last_seq": last})
                for first, last in gaps
            ]
            expected: list[tuple[str, int]] = []
            for event in seen:
                if event.seq in final:
                    if any(last == event.seq for _, last in gaps):
                        expected.append(("events_dropped", event.seq))
                    continue
                expected.append((event.type, event.seq))
            assert [(e.type, e.seq) for e in replay] == expected

            # The next turn streams live as before, and its own chunks go in their turn.
            await client.chat(sid, "and now?")
            second = await turn_events(live)
            assert [e.data["text"] for e in second if e.type == CHUNK] != []
        await rt.manager.wait_background()
        assert await stored_chunk_rows(sid) in (None, len(kept))
        history = [(m.role, m.content) for m in await client.get_conversation_history(sid)]
        last = await rt.store.last_seq(sid)
    if store_backend == "memory":
        return
    async with running(clock, keep_stream_chunks=False) as rt:  # a load steps over the gaps
        assert (await rt.client.get_session_info(sid)).conversation_count == len(history)
        assert await rt.store.last_seq(sid) >= last  # a load may append (a status)
        reloaded = await rt.client.get_conversation_history(sid)
        assert [(m.role, m.content) for m in reloaded] == history


async def test_by_default_every_chunk_stays(clock: jidoka.FakeClock) -> None:
    async with running(clock) as rt:
        client = rt.client
        sid = await client.create_session(llm_config=scripted({"chunks": ["a", "b", "c"]}))
        async with client.subscribe_to_session(sid) as live:
            await client.chat(sid, "go")
            seen = await turn_events(live)
        await rt.manager.wait_background()
        stored = await client.read_events(sid)
        assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
        assert {e.seq for e in seen} <= {e.seq for e in stored}
        chunks = [e for e in stored if e.type == CHUNK]
        assert "".join(e.data["text"] for e in chunks) == "abc"
        assert await stored_chunk_rows(sid) in (None, len(chunks))
        assert rt.manager.chunks.dropped == 0


@pytest.mark.stores("memory")
async def test_a_cancelled_turn_drops_the_chunks_its_response_holds(
    clock: jidoka.FakeClock,
) -> None:
    """An interrupted answer is kept whole in its ``llm_response`` too, so its chunks go; a
    failed turn has no response holding them, so they stay."""
    script = scripted(
        {"chunks": ["half an ", "answer"], "hang": True},
        {"chunks": ["bro", "ken"], "error": {"message": "overloaded", "status": 500}},
    )
    async with running(clock, keep_stream_chunks=False) as rt:
        client = rt.client
        sid = await client.create_session(llm_config=script)
        async with client.subscribe_to_session(sid) as live:
            turn = asyncio.create_task(client.chat(sid, "go"))
            async with asyncio.timeout(PROMPTLY):
                async for event in live:
                    if event.type == CHUNK and event.data["text"].endswith("answer"):
                        break
            assert await client.cancel(sid)
            assert (await turn).message.content == "half an answer"
            with pytest.raises(jidoka.LLMError):
                await client.chat(sid, "again")
            await rt.manager.wait_background()
        stored = [e for e in await client.read_events(sid) if e.type == CHUNK]
        assert "".join(e.data["text"] for e in stored) == "broken"
        assert rt.manager.chunks.dropped >= 1
