"""Compaction through the real ``openai`` SDK against the local OpenAI-compatible test server
(tests/support/openai_server.py): what the summariser is asked, what the next turn's prompt
then holds (the summary, not the summarised messages), a server error that changes nothing,
and automatic compaction before a turn. The scripted-provider side is test_compaction.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import jidoka
from jidoka.events import EventType
from jidoka.llm.compaction import SUMMARY_PROMPT
from jidoka.remote import RemoteClient

from ..helpers import PROMPTLY, drain, settle
from ..support.openai_server import (
    Arrivals,
    OpenAIServer,
    Slow,
    Status,
    Text,
    arrived,
    openai_server,
)
from ..support.openai_server import (
    llm_config as llm,
)

AnyClient = jidoka.Client | RemoteClient


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    async with openai_server() as running:
        running.requests = Arrivals()
        yield running


def texts(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content") or "") for m in body["messages"])


async def test_the_summary_replaces_the_older_messages_in_the_next_prompt(
    server: OpenAIServer, client: AnyClient
) -> None:
    sid = await client.create_session(llm_config=llm(server))
    older = [await client.send_message(sid, "user", f"old request {i}") for i in range(3)]
    kept = [await client.send_message(sid, "user", f"recent request {i}") for i in range(2)]
    server.queue(Text(["The user ", "made three old requests."], prompt_tokens=40))
    done = await client.compact_session(sid, keep_last=2, instructions="Keep request numbers.")
    assert done.summary == "The user made three old requests."
    assert (done.first_seq, done.last_seq) == (older[0].seq, older[-1].seq)

    [asked] = server.requests
    body = asked.body
    assert body["model"] == "test-model"
    assert "tools" not in body  # a summary request offers no tools
    system, user = body["messages"]
    assert system == {"role": "system", "content": f"{SUMMARY_PROMPT}\n\nKeep request numbers."}
    assert user["role"] == "user"
    for message in older:
        assert f"[{message.seq}] user: {message.content}" in user["content"]
    for message in kept:
        assert message.content not in user["content"]

    server.queue(Text(["noted"]))
    result = await client.chat(sid, "what next?")
    assert result.message.content == "noted"
    prompt = server.requests[-1].body
    assert done.summary in prompt["messages"][0]["content"]  # in the system message
    assert all(m.content not in texts(prompt) for m in older)
    conversation = [(m["role"], m["content"]) for m in prompt["messages"][1:]]
    assert conversation == [
        ("user", "recent request 0"),
        ("user", "recent request 1"),
        ("user", "what next?"),
    ]
    # The summariser's usage counts in the session's (the server reported 40 prompt tokens).
    logged = await client.read_events(sid, after_seq=done.seq - 1, limit=1)
    assert logged[0].data["usage"]["prompt_tokens"] == 40
    full = await client.get_conversation_history(sid)
    assert [m.content for m in full[:5]] == [m.content for m in (*older, *kept)]


async def test_a_server_error_while_summarising_changes_nothing(
    server: OpenAIServer, client: AnyClient
) -> None:
    sid = await client.create_session(llm_config=llm(server))
    sent = [await client.send_message(sid, "user", f"m{i}") for i in range(4)]
    server.queue(Status(500, "the summariser broke"))
    with pytest.raises(jidoka.LLMError) as caught:
        await client.compact_session(sid, keep_last=1)
    assert caught.value.status == 500
    assert caught.value.session_id == sid
    history = await client.get_conversation_history(sid, "compacted")
    assert [m.content for m in history] == [m.content for m in sent]
    log = await client.read_events(sid, after_seq=sent[-1].seq)
    assert [(e.type, e.data.get("status")) for e in log] == [
        (EventType.AGENT_STATUS, "compacting"),
        (EventType.ERROR, 500),
        (EventType.AGENT_STATUS, "idle"),
    ]
    assert log[1].data["code"] == "compaction_failed"
    assert log[1].data["provider"] == "openai"


async def test_auto_compaction_before_a_turn_through_the_sdk(
    server: OpenAIServer, client: AnyClient
) -> None:
    sid = await client.create_session(
        llm_config=llm(server, context_window=6000, max_tokens=200, auto_compact_at=0.5)
    )
    big = "token " * 700
    for i in range(6):
        await client.send_message(sid, "user", f"{i} {big}")
    server.queue(Text(["compacted story"]), Text(["answer"]))
    result = await client.chat(sid, "go on")
    assert result.message.content == "answer"
    summary_request, turn_request = (r.body for r in server.requests)
    assert "tools" not in summary_request
    assert "tools" in turn_request
    assert "compacted story" in turn_request["messages"][0]["content"]
    assert sum(1 for m in turn_request["messages"] if big in (m["content"] or "")) == 3
    log = await client.read_events(sid, after_seq=0, limit=1000)
    statuses = [e.data["status"] for e in log if e.type == EventType.AGENT_STATUS]
    assert statuses == ["thinking", "compacting", "thinking", "idle"]


async def test_turns_wait_for_a_compaction_and_see_its_summary(
    server: OpenAIServer, client: AnyClient
) -> None:
    slow = Slow(["summary of ", "the old part"], before=1)
    server.queue(slow, Text(["after"]))
    sid = await client.create_session(llm_config=llm(server))
    for i in range(4):
        await client.send_message(sid, "user", f"old part {i}")
    compacting = asyncio.create_task(client.compact_session(sid, keep_last=1))
    await arrived(server, 1)
    turn = asyncio.create_task(client.chat(sid, "next"))  # queued behind the compaction
    await settle()
    assert not turn.done()
    assert len(server.requests) == 1  # the turn has not called the model
    with pytest.raises(jidoka.SessionBusy):
        await client.compact_session(sid, keep_last=0)  # one at a time
    slow.release.set()
    async with asyncio.timeout(PROMPTLY):
        done = await compacting
        result = await turn
    assert done.summary == "summary of the old part"
    assert result.message.content == "after"
    prompt = server.requests[1].body["messages"]
    assert done.summary in prompt[0]["content"]
    assert [m["content"] for m in prompt[1:]] == ["old part 3", "next"]


async def test_terminating_the_session_stops_its_compaction(
    server: OpenAIServer, client: AnyClient
) -> None:
    server.queue(Slow(["never ", "finished"], before=1))
    sid = await client.create_session(llm_config=llm(server))
    for i in range(3):
        await client.send_message(sid, "user", f"m{i}")
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        compacting = asyncio.create_task(client.compact_session(sid, keep_last=1))
        await arrived(server, 1)
        await client.terminate_session(sid)
        with pytest.raises(jidoka.SessionTerminated):
            async with asyncio.timeout(PROMPTLY):
                await compacting
        log = await drain(events)  # the whole log: the stream ends with the session
    assert (EventType.AGENT_STATUS, "compacting") in [(e.type, e.data.get("status")) for e in log]
    assert not [e for e in log if e.type == EventType.CONTEXT_COMPACTED]
    assert log[-1].type == EventType.SESSION_TERMINATED
