"""Compaction (issue 17 part 3) through the scripted provider, on every store and both clients:
``compact_session`` stores a ``context_compacted`` event whose summary the context then
carries instead of the older messages, while the log and the full history keep every message;
a summariser failure changes nothing but an ``error`` event; a turn whose prompt would pass
``auto_compact_at`` compacts first and says so (``agent_status: compacting``).

The scripted provider answers a summary request past its script with
``scripted_summary`` of the transcript (``summary: [seq] role: text | ...``), so a test can
tell exactly which messages a summary stands for. The same through the real ``openai`` SDK is
in test_compaction_openai.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import jidoka
from jidoka.events import Event, EventType
from jidoka.remote import RemoteClient
from jidoka.session.context import MESSAGE_OVERHEAD_TOKENS, estimate_tokens
from jidoka.session.inputs import DEFAULT_KEEP_LAST, MAX_KEEP_LAST

from ..helpers import PROMPTLY, until

AnyClient = jidoka.Client | RemoteClient


def scripted(*turns: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"provider": "scripted", "script": list(turns), **extra}


async def conversation(
    client: AnyClient, sid: str, count: int, name: str = "message"
) -> list[jidoka.Message]:
    return [await client.send_message(sid, "user", f"{name} {i}") for i in range(count)]


def cost(*texts: str) -> int:
    """What a conversation of ``texts`` costs in a context (``build_context``'s count)."""
    return sum(estimate_tokens(text) + MESSAGE_OVERHEAD_TOKENS for text in texts)


async def log_of(client: AnyClient, sid: str) -> list[Event]:
    events: list[Event] = []
    while page := await client.read_events(sid, after_seq=events[-1].seq if events else 0):
        events.extend(page)
    return events


async def test_compaction_summarises_the_older_messages_and_the_log_keeps_them_all(
    client: AnyClient,
) -> None:
    sid = await client.create_session(llm_config=scripted())
    sent = await conversation(client, sid, 6)
    done = await client.compact_session(sid, keep_last=2)
    assert (done.first_seq, done.last_seq) == (sent[0].seq, sent[3].seq)
    # The scripted summary names each summarised message: exactly the four older ones.
    for message in sent[:4]:
        assert f"[{message.seq}] user: {message.content}" in done.summary
    for message in sent[4:]:
        assert message.content not in done.summary
    assert done.tokens_before == cost(*(m.content for m in sent))
    assert done.tokens_after == cost(done.summary, "message 4", "message 5")

    full = await client.get_conversation_history(sid)
    assert [m.content for m in full] == [m.content for m in sent]
    compacted = await client.get_conversation_history(sid, "compacted")
    assert [(m.role, m.content) for m in compacted] == [
        ("system", done.summary),
        ("user", "message 4"),
        ("user", "message 5"),
    ]
    assert compacted[0].seq == done.seq

    bundle = await client.build_context(sid)
    assert bundle.summary == done.summary
    assert [m.content for m in bundle.messages] == ["message 4", "message 5"]

    log = await log_of(client, sid)
    added = [e.data["content"] for e in log if e.type == EventType.CONVERSATION_ADDED]
    assert added == [m.content for m in sent]
    tail = [(e.type, e.data.get("status")) for e in log if e.seq > sent[-1].seq]
    assert tail == [
        (EventType.AGENT_STATUS, "compacting"),
        (EventType.CONTEXT_COMPACTED, None),
        (EventType.AGENT_STATUS, "idle"),
    ]
    compaction = next(e for e in log if e.type == EventType.CONTEXT_COMPACTED)
    assert compaction.seq == done.seq
    assert compaction.data["summary"] == done.summary


async def test_a_second_compaction_summarises_the_first_summary_too(client: AnyClient) -> None:
    sid = await client.create_session(llm_config=scripted({"text": "first summary"}))
    sent = await conversation(client, sid, 4)
    first = await client.compact_session(sid, keep_last=1)
    assert first.summary == "first summary"
    sent += await conversation(client, sid, 3, "later")
    second = await client.compact_session(sid, keep_last=0, instructions="keep the numbers")
    # It stands for every message since the first one, the earlier summary included.
    assert (second.first_seq, second.last_seq) == (sent[0].seq, sent[-1].seq)
    assert "Earlier summary: | first summary" in second.summary
    assert f"[{sent[3].seq}] user: message 3" in second.summary
    assert "message 0" not in second.summary  # summarised already: only in the first summary
    compacted = await client.get_conversation_history(sid, "compacted")
    assert [(m.role, m.content) for m in compacted] == [("system", second.summary)]
    assert len(await client.get_conversation_history(sid, "full")) == 7


async def test_clearing_the_conversation_drops_the_summary(client: AnyClient) -> None:
    sid = await client.create_session(llm_config=scripted())
    await conversation(client, sid, 3)
    await client.compact_session(sid, keep_last=1)
    await client.clear_conversation(sid)
    await client.send_message(sid, "user", "fresh")
    assert [m.content for m in await client.get_conversation_history(sid, "compacted")] == ["fresh"]
    assert (await client.build_context(sid)).summary is None


@pytest.mark.parametrize("keep_last", [-1, MAX_KEEP_LAST + 1, True, "2", 1.5])
async def test_keep_last_is_checked(client: AnyClient, keep_last: Any) -> None:
    sid = await client.create_session(llm_config=scripted())
    await conversation(client, sid, 3)
    with pytest.raises(jidoka.InvalidArgument) as caught:
        await client.compact_session(sid, keep_last=keep_last)
    assert caught.value.argument == "keep_last"
    if isinstance(client, jidoka.Client):
        assert caught.value.session_id == sid
    assert len(await log_of(client, sid)) == 5  # created, active, three messages: no more


async def test_nothing_to_compact_and_bad_instructions_are_refused(client: AnyClient) -> None:
    sid = await client.create_session(llm_config=scripted())
    await conversation(client, sid, DEFAULT_KEEP_LAST)
    with pytest.raises(jidoka.InvalidArgument, match="nothing to compact") as caught:
        await client.compact_session(sid)
    assert (caught.value.argument, caught.value.session_id) == ("keep_last", sid)
    with pytest.raises(jidoka.InvalidArgument) as bad:
        await client.compact_session(sid, keep_last=0, instructions="x" * 5000)
    assert bad.value.argument == "instructions"
    with pytest.raises(jidoka.InvalidArgument) as view:
        await client.get_conversation_history(sid, "summary")
    assert view.value.argument == "view"
    with pytest.raises(jidoka.SessionNotFound):
        await client.compact_session("s0000000000000000000000000", keep_last=0)


async def test_a_failed_summary_leaves_everything_as_it_was(client: AnyClient) -> None:
    sid = await client.create_session(
        llm_config=scripted(
            {"chunks": ["half a sum"], "error": {"message": "overloaded", "status": 503}},
            {"text": "   "},  # blank: refused too, never stored as the summary
        )
    )
    sent = await conversation(client, sid, 5)
    before = await client.build_context(sid)
    with pytest.raises(jidoka.LLMError, match="overloaded"):
        await client.compact_session(sid, keep_last=1)
    with pytest.raises(jidoka.LLMError, match="no text"):
        await client.compact_session(sid, keep_last=1)
    assert await client.build_context(sid) == before
    assert before.summary is None
    compacted = await client.get_conversation_history(sid, "compacted")
    assert [m.content for m in compacted] == [m.content for m in sent]
    log = await log_of(client, sid)
    assert not [e for e in log if e.type == EventType.CONTEXT_COMPACTED]
    errors = [e.data for e in log if e.type == EventType.ERROR]
    assert [(e["code"], e.get("status")) for e in errors] == [
        ("compaction_failed", 503),
        ("compaction_failed", None),
    ]
    statuses = [e.data["status"] for e in log if e.type == EventType.AGENT_STATUS]
    assert statuses == ["compacting", "idle", "compacting", "idle"]
    # The session goes on: a later compaction (past the script) works.
    done = await client.compact_session(sid, keep_last=1)
    assert done.last_seq == sent[-2].seq


async def test_compaction_is_refused_while_a_turn_runs(client: AnyClient) -> None:
    sid = await client.create_session(llm_config=scripted({"text": "thinking", "hang": True}))
    await conversation(client, sid, 3)
    async with client.subscribe_to_session(sid) as events:
        turn = asyncio.create_task(client.chat(sid, "go"))
        await until(events, EventType.LLM_STREAM_CHUNK)
        with pytest.raises(jidoka.SessionBusy):
            await client.compact_session(sid, keep_last=0)
        assert await client.cancel(sid)
        async with asyncio.timeout(PROMPTLY):
            result = await turn
    assert result.interrupted
    log = await log_of(client, sid)
    assert not [e for e in log if e.type == EventType.CONTEXT_COMPACTED]


async def test_a_turn_past_auto_compact_at_compacts_first(client: AnyClient) -> None:
    big = "word " * 800  # 4000 characters: about 1000 tokens
    sid = await client.create_session(
        llm_config=scripted(
            {"text": "short summary"},
            {"text": "the answer"},
            context_window=6000,
            max_tokens=200,
            auto_compact_at=0.5,
        )
    )
    sent = [await client.send_message(sid, "user", f"{i}: {big}") for i in range(6)]
    result = await client.chat(sid, "and now?")
    assert result.message.content == "the answer"
    log = await log_of(client, sid)
    turn = [e for e in log if e.seq > sent[-1].seq]
    assert [e.type for e in turn[:2]] == [EventType.RUN_QUEUED, EventType.RUN_STARTED]
    turn = turn[2:]  # a chat is a run
    kinds = [(e.type, e.data.get("status")) for e in turn]
    assert kinds[:5] == [
        (EventType.CONVERSATION_ADDED, None),
        (EventType.AGENT_STATUS, "thinking"),
        (EventType.AGENT_STATUS, "compacting"),
        (EventType.CONTEXT_COMPACTED, None),
        (EventType.AGENT_STATUS, "thinking"),
    ]
    compaction = turn[3].data
    assert compaction["summary"] == "short summary"
    # Seven messages (the turn's own the newest): the newest DEFAULT_KEEP_LAST are kept.
    assert (compaction["first_seq"], compaction["last_seq"]) == (sent[0].seq, sent[2].seq)
    kept = await client.get_conversation_history(sid, "compacted")
    assert kept[0].content == "short summary"
    assert kept[-1].content == "the answer"
    assert len(kept) == 1 + DEFAULT_KEEP_LAST + 1  # summary, the kept four, the answer
    info = await client.get_session_info(sid)
    assert info.usage is not None


async def test_auto_compaction_is_off_by_default(client: AnyClient) -> None:
    big = "word " * 800
    sid = await client.create_session(
        llm_config=scripted({"text": "the answer"}, context_window=6000, max_tokens=200)
    )
    for i in range(6):
        await client.send_message(sid, "user", f"{i}: {big}")
    await client.chat(sid, "and now?")
    log = await log_of(client, sid)
    assert not [e for e in log if e.type == EventType.CONTEXT_COMPACTED]
    assert "compacting" not in [e.data["status"] for e in log if e.type == "agent_status"]


async def test_a_failed_auto_compaction_lets_the_turn_go_on(client: AnyClient) -> None:
    big = "word " * 800
    sid = await client.create_session(
        llm_config=scripted(
            {"error": {"message": "summariser down", "status": 500}},
            {"text": "answered anyway"},
            context_window=6000,
            max_tokens=200,
            auto_compact_at=0.5,
        )
    )
    for i in range(6):
        await client.send_message(sid, "user", f"{i}: {big}")
    result = await client.chat(sid, "and now?")
    assert result.message.content == "answered anyway"
    log = await log_of(client, sid)
    assert [e.data["code"] for e in log if e.type == EventType.ERROR] == ["compaction_failed"]
    assert not [e for e in log if e.type == EventType.CONTEXT_COMPACTED]
    assert len(await client.get_conversation_history(sid, "compacted")) == 8


async def test_auto_compact_at_is_validated(client: AnyClient) -> None:
    for bad in (0, 1.5, -0.2, "0.8"):
        with pytest.raises(jidoka.InvalidConfig) as caught:
            await client.create_session(llm_config=scripted(auto_compact_at=bad))
        assert caught.value.field == "llm_config.auto_compact_at"


async def test_a_saved_copy_keeps_the_compaction(client: AnyClient) -> None:
    sid = await client.create_session(llm_config=scripted({"text": "kept summary"}))
    await conversation(client, sid, 4)
    await client.compact_session(sid, keep_last=1)
    before = await client.get_conversation_history(sid, "compacted")
    await client.save_session(sid)
    await client.terminate_session(sid)
    await client.restore_session(sid)
    after = await client.get_conversation_history(sid, "compacted")
    assert [(m.role, m.content) for m in after] == [(m.role, m.content) for m in before]
    assert after[0].content == "kept summary"
    assert (await client.build_context(sid)).summary == "kept summary"
    assert len(await client.get_conversation_history(sid)) == 4


async def test_no_auto_compaction_when_it_could_not_help(client: AnyClient, tmp_path: Path) -> None:
    """The prompt is past the threshold because of an active file, not the conversation:
    summarising the few older messages could not bring it under, so no model call is spent."""
    (tmp_path / "big.txt").write_text("line of text\n" * 2000, encoding="utf-8")
    sid = await client.create_session(
        project_root=str(tmp_path),
        llm_config=scripted(
            {"text": "the answer"}, context_window=6000, max_tokens=200, auto_compact_at=0.5
        ),
    )
    await client.add_file(sid, "big.txt")
    await conversation(client, sid, 6)
    result = await client.chat(sid, "and now?")
    assert result.message.content == "the answer"  # the script's one turn: no summary asked
    log = await log_of(client, sid)
    assert not [e for e in log if e.type == EventType.CONTEXT_COMPACTED]
    assert "compacting" not in [e.data["status"] for e in log if e.type == "agent_status"]
