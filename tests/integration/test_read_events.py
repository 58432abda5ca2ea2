"""``read_events``: the session's stored log, page by page, the same through ``Client`` and
``RemoteClient`` on both stores."""

from __future__ import annotations

import pytest

import jidoka
from jidoka import EventType, InvalidArgument, SessionNotFound

MISSING = "0" * 26


async def test_pages_cover_the_log_once_in_order(client: jidoka.Client) -> None:
    sid = await client.create_session()
    for i in range(7):
        await client.send_message(sid, "user", f"m{i}")
    seen, after = [], 0
    while page := await client.read_events(sid, after_seq=after, limit=3):
        assert len(page) <= 3
        seen.extend(page)
        after = page[-1].seq
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert seen[0].type is EventType.SESSION_CREATED
    added = [e.data["content"] for e in seen if e.type is EventType.CONVERSATION_ADDED]
    assert added == [f"m{i}" for i in range(7)]
    assert await client.read_events(sid, after_seq=seen[-1].seq) == []


async def test_a_terminated_sessions_log_stays_readable_where_the_store_keeps_it(
    client: jidoka.Client, store_backend: str
) -> None:
    sid = await client.create_session()
    await client.send_message(sid, "user", "hello")
    await client.terminate_session(sid)
    events = await client.read_events(sid)
    if store_backend == "memory":
        assert events == []  # the memory store frees an ended session's log
    else:
        assert events[-1].type is EventType.SESSION_TERMINATED
        assert any(e.data.get("content") == "hello" for e in events)


async def test_bad_arguments_name_themselves(client: jidoka.Client) -> None:
    sid = await client.create_session()
    for kwargs, name in (({"after_seq": -1}, "after_seq"), ({"limit": 0}, "limit")):
        with pytest.raises(InvalidArgument) as caught:
            await client.read_events(sid, **kwargs)
        assert caught.value.argument == name
    with pytest.raises(SessionNotFound):
        await client.read_events(MISSING)
