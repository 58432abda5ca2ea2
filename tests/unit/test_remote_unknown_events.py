"""A RemoteClient following a newer server: event types it does not know are skipped, the stream
goes on, and its position still counts them (a resume does not replay them)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router

import jidoka
from jidoka._remote_events import _decode
from jidoka.events import Event, EventType, encode_event

SID = "s-1"
NOW = datetime(2026, 12, 7, tzinfo=UTC)


def _known(seq: int, text: str) -> str:
    data = {"role": "user", "content": text}
    return encode_event(Event(EventType.CONVERSATION_ADDED, SID, seq, NOW, data)).decode()


def _unknown(seq: int) -> str:
    known = json.loads(_known(seq, "x"))
    return json.dumps({**known, "type": "checkpoint_written", "data": {"id": "r1"}})


def test_a_known_event_decodes() -> None:
    event = _decode(_known(3, "hi"))
    assert isinstance(event, Event)
    assert (event.type, event.seq) == (EventType.CONVERSATION_ADDED, 3)


def test_an_unknown_type_gives_its_seq_to_skip() -> None:
    assert _decode(_unknown(7)) == 7


def test_anything_else_malformed_is_still_an_error() -> None:
    with pytest.raises(jidoka.InvalidArgument):
        _decode("{not json")
    with pytest.raises(jidoka.InvalidArgument):  # a known type with a bad seq
        _decode(json.dumps({**json.loads(_known(1, "x")), "seq": -4}))


async def test_a_subscription_skips_unknown_types_and_keeps_its_position() -> None:
    asked: list[str | None] = []

    async def events(request: Request) -> Response:
        asked.append(request.query_params.get("after_seq"))
        frames = [_known(1, "one"), _unknown(2), _known(3, "three"), _unknown(4)]
        body = "".join(f"id: {i + 1}\ndata: {frame}\n\n" for i, frame in enumerate(frames))
        return Response(body + "event: end\ndata: \n\n", media_type="text/event-stream")

    app = Router([Route(f"/v1/sessions/{SID}/events", events)])
    transport = httpx.ASGITransport(app=app)
    async with (
        jidoka.RemoteClient("http://testserver", "t", transport=transport) as client,
        client.subscribe_to_session(SID, after_seq=0) as subscription,
    ):
        got = [event async for event in subscription]
    assert [(e.seq, e.data["content"]) for e in got] == [(1, "one"), (3, "three")]
    assert asked == ["0"]
