"""``GET /v1/ws`` end to end with the ``websockets`` client: commands and replies, errors as
problem documents, subscriptions, both ways to authenticate, and the shutdown close code.

Every receive has a deadline (``WsClient.timeout``); nothing sleeps.
"""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from tests.e2e.conftest import (
    ALICE_TOKEN,
    BOB_TOKEN,
    ServerProcess,
    WsClient,
    bearer,
    http_client,
)

PROBLEM_BASE = "https://jidoka.dev/problems/"
WRONG_TOKEN = "wrong-e2e-token-0123456789abcdef"
NO_SUCH_SESSION = "01ZZZZZZZZZZZZZZZZZZZZZZZZ"


def check_error(reply: dict[str, Any], slug: str, status: int) -> dict[str, Any]:
    assert reply["ok"] is False, reply
    assert "result" not in reply
    error: dict[str, Any] = reply["error"]
    assert error["type"] == PROBLEM_BASE + slug, error
    assert error["status"] == status, error
    assert error["title"], error
    assert error["detail"], error
    assert "Traceback" not in json.dumps(reply)
    return error


async def receive_until_closed(ws: WsClient) -> websockets.frames.Close:
    """Read (pushed frames may come first) until the server closes; its close frame."""
    try:
        while True:
            await ws.receive()
    except websockets.ConnectionClosed as exc:
        assert exc.rcvd is not None, "closed without a close frame"
        return exc.rcvd


def http_get(server: ServerProcess, path: str) -> Any:
    with http_client(server.url, ALICE_TOKEN) as client:
        response = client.get(path)
        assert response.status_code == 200, response.text
        return response.json()


async def test_commands_get_replies_with_their_ids(server: ServerProcess) -> None:
    async with connect(server.ws_url, additional_headers=bearer(ALICE_TOKEN)) as connection:
        ws = WsClient(connection)
        for request_id in ("r-1", 7, None):
            await ws.send({"id": request_id, "op": "list_sessions", "args": {}})
            reply = await ws.receive()
            assert reply["id"] == request_id
            assert reply["ok"] is True
            assert reply["result"] == {"sessions": [], "next_cursor": None}

        info = await ws.ok("create_session", {"metadata": {"via": "ws"}})
        sid = info["session_id"]
        assert info["owner"] == "alice"
        assert info["metadata"] == {"via": "ws"}
        message = await ws.ok("send_message", {"session_id": sid, "role": "user", "content": "hi"})
        assert set(message) >= {"id", "role", "content", "timestamp", "seq"}
        assert message["content"] == "hi"
        history = await ws.ok("get_conversation_history", {"session_id": sid})
        assert history == {"messages": [message]}
        written = {"key": "a/b", "value": [1]}
        assert await ws.ok("put_working_context", {"session_id": sid, **written}) == written
        assert await ws.ok("get_working_context", {"session_id": sid, "key": "a/b"}) == written
        assert await ws.ok("get_working_context_map", {"session_id": sid}) == {
            "working_context": {"a/b": [1]}
        }
        deleted = await ws.ok("delete_working_context", {"session_id": sid, "key": "a/b"})
        assert deleted == {"deleted": True}
        bundle = await ws.ok("build_context", {"session_id": sid})
        assert [m["content"] for m in bundle["messages"]] == ["hi"]
        saved = await ws.ok("save_session", {"session_id": sid})
        assert saved["session_id"] == sid
        saved_list = (await ws.ok("list_saved_sessions"))["saved_sessions"]
        assert sid in {s["session_id"] for s in saved_list}
        assert sid in {s["session_id"] for s in (await ws.ok("list_sessions"))["sessions"]}

        # The same JSON as the HTTP answers.
        over_ws = await ws.ok("get_session_info", {"session_id": sid})
        over_http = await asyncio.to_thread(http_get, server, f"/v1/sessions/{sid}")
        assert over_ws == over_http
        messages_http = await asyncio.to_thread(http_get, server, f"/v1/sessions/{sid}/messages")
        assert messages_http == history

        ended = await ws.ok("terminate_session", {"session_id": sid, "reason": "ws-done"})
        assert ended["status"] == "terminated"
        assert ended["reason"] == "ws-done"
        await ws.ok("delete_saved_session", {"session_id": sid})
        assert ws.pushed == []


async def test_errors_are_problem_documents(server: ServerProcess) -> None:
    async with connect(server.ws_url, additional_headers=bearer(ALICE_TOKEN)) as connection:
        ws = WsClient(connection)
        error = check_error(
            await ws.call("get_session_info", {"session_id": NO_SUCH_SESSION}),
            "session-not-found",
            404,
        )
        assert error["session_id"] == NO_SUCH_SESSION
        sid = (await ws.ok("create_session"))["session_id"]
        error = check_error(
            await ws.call("send_message", {"session_id": sid, "role": "wizard", "content": "x"}),
            "invalid-role",
            422,
        )
        assert error["session_id"] == sid
        check_error(await ws.call("send_message", {"session_id": sid}), "invalid-argument", 422)
        error = check_error(
            await ws.call("get_session_info", {"session_id": sid, "bogus": 1}),
            "invalid-argument",
            422,
        )
        assert error["argument"] == "args"
        check_error(
            await ws.call("create_session", {"config": {"max_history": -1}}), "invalid-config", 422
        )
        await ws.ok("terminate_session", {"session_id": sid})
        check_error(
            await ws.call("send_message", {"session_id": sid, "role": "user", "content": "x"}),
            "session-terminated",
            409,
        )
        check_error(await ws.call("terminate_session", {"session_id": sid}),
                    "invalid-transition", 409)  # fmt: skip
        # The socket is still usable after every error.
        assert isinstance((await ws.ok("list_sessions"))["sessions"], list)


@pytest.mark.parametrize("op", ["no_such_op", "auth", "__init__", "owned", "_dispatch", ""])
async def test_unknown_op_is_invalid_argument(server: ServerProcess, op: str) -> None:
    async with connect(server.ws_url, additional_headers=bearer(ALICE_TOKEN)) as connection:
        ws = WsClient(connection)
        error = check_error(await ws.call(op), "invalid-argument", 422)
        assert error["argument"] == "op"
        assert isinstance((await ws.ok("list_sessions"))["sessions"], list)


@pytest.mark.parametrize(
    "frame",
    ["not json", "[]", '{"id": "x"}', '{"id": "x", "op": "list_sessions", "args": [], "z": 1}'],
    ids=["not-json", "array", "no-op", "bad-shape"],
)
async def test_malformed_frames_are_invalid_argument(server: ServerProcess, frame: str) -> None:
    async with connect(server.ws_url, additional_headers=bearer(ALICE_TOKEN)) as connection:
        ws = WsClient(connection)
        await connection.send(frame)
        check_error(await ws.receive(), "invalid-argument", 422)
        assert isinstance((await ws.ok("list_sessions"))["sessions"], list)


async def test_subscribe_pushes_the_sessions_events_until_unsubscribed(
    server: ServerProcess,
) -> None:
    async with connect(server.ws_url, additional_headers=bearer(ALICE_TOKEN)) as connection:
        ws = WsClient(connection)
        sid = (await ws.ok("create_session"))["session_id"]
        first = await ws.ok("send_message", {"session_id": sid, "role": "user", "content": "a"})
        result = await ws.ok("subscribe", {"session_id": sid, "after_seq": 0})
        name = result["subscription"]
        assert set(result) == {"subscription"}
        replayed = [await ws.next_push() for _ in range(first["seq"])]
        assert {frame["subscription"] for frame in replayed} == {name}
        assert [f["event"]["seq"] for f in replayed] == list(range(1, first["seq"] + 1))
        assert replayed[0]["event"]["type"] == "session_created"
        assert replayed[-1]["event"]["data"]["content"] == "a"
        second = await ws.ok("send_message", {"session_id": sid, "role": "user", "content": "b"})
        live = await ws.next_push()
        assert live["subscription"] == name
        assert live["event"]["seq"] == second["seq"]
        assert live["event"]["type"] == "conversation_added"
        assert live["event"]["session_id"] == sid

        assert await ws.ok("unsubscribe", {"subscription": name}) == {"subscription": name}
        # The pump is gone once unsubscribe answered: nothing more for it, even with activity.
        await ws.ok("send_message", {"session_id": sid, "role": "user", "content": "c"})
        await ws.ok("get_session_info", {"session_id": sid})
        assert [f for f in ws.pushed if f["subscription"] == name] == []
        error = check_error(await ws.call("unsubscribe", {"subscription": name}),
                            "invalid-argument", 422)  # fmt: skip
        assert error["argument"] == "subscription"


async def test_live_subscription_without_after_seq(server: ServerProcess) -> None:
    async with connect(server.ws_url, additional_headers=bearer(ALICE_TOKEN)) as connection:
        ws = WsClient(connection)
        sid = (await ws.ok("create_session"))["session_id"]
        await ws.ok("send_message", {"session_id": sid, "role": "user", "content": "old"})
        name = (await ws.ok("subscribe", {"session_id": sid}))["subscription"]
        new = await ws.ok("send_message", {"session_id": sid, "role": "user", "content": "new"})
        frame = await ws.next_push()
        assert frame["subscription"] == name
        assert frame["event"]["seq"] == new["seq"]  # no replay of "old"


async def test_subscription_ends_when_the_session_terminates(server: ServerProcess) -> None:
    async with connect(server.ws_url, additional_headers=bearer(ALICE_TOKEN)) as connection:
        ws = WsClient(connection)
        sid = (await ws.ok("create_session"))["session_id"]
        name = (await ws.ok("subscribe", {"session_id": sid}))["subscription"]
        await ws.ok("terminate_session", {"session_id": sid})
        frames: list[dict[str, Any]] = []
        while not frames or "end" not in frames[-1]:
            frames.append(await ws.next_push())
    assert frames[-1] == {"subscription": name, "end": True}
    assert frames[-2]["event"]["type"] == "session_terminated"


async def test_lifecycle_subscription_shows_the_callers_sessions(server: ServerProcess) -> None:
    async with connect(server.ws_url, additional_headers=bearer(ALICE_TOKEN)) as connection:
        ws = WsClient(connection)
        name = (await ws.ok("subscribe", {}))["subscription"]
        sid = (await ws.ok("create_session"))["session_id"]
        await ws.ok("send_message", {"session_id": sid, "role": "user", "content": "x"})
        await ws.ok("terminate_session", {"session_id": sid})
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["type"] != "session_terminated":
            frame = await ws.next_push()
            assert frame["subscription"] == name
            if frame["event"]["session_id"] == sid:
                seen.append(frame["event"])
    types = [e["type"] for e in seen]
    assert "conversation_added" not in types
    assert types[0] == "session_created", types
    assert [e["data"]["status"] for e in seen if e["type"] == "session_status"] == [
        "active",
        "terminating",
        "terminated",
    ], types


# --- authentication -----------------------------------------------------------------------------


async def test_auth_with_the_first_message(server: ServerProcess) -> None:
    async with connect(server.ws_url) as connection:
        ws = WsClient(connection)
        await ws.send({"id": "a1", "op": "auth", "token": BOB_TOKEN})
        assert await ws.receive() == {"id": "a1", "ok": True, "result": {"principal": "bob"}}
        info = await ws.ok("create_session")
        assert info["owner"] == "bob"
        sessions = (await ws.ok("list_sessions"))["sessions"]
        assert {s["owner"] for s in sessions} == {"bob"}


@pytest.mark.parametrize(
    "first",
    [
        {"op": "auth", "token": WRONG_TOKEN},
        {"op": "auth"},
        {"op": "list_sessions", "args": {}},
        "not json",
    ],
    ids=["wrong-token", "no-token", "not-auth", "not-json"],
)
async def test_bad_first_message_closes_with_1008(server: ServerProcess, first: Any) -> None:
    async with connect(server.ws_url) as connection:
        await connection.send(first if isinstance(first, str) else json.dumps(first))
        ws = WsClient(connection)
        reply = await ws.receive()
        check_error(reply, "unauthorized", 401)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.receive()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008


async def test_bad_token_in_the_header_is_refused(server: ServerProcess) -> None:
    headers = {"Authorization": f"Bearer {WRONG_TOKEN}"}
    try:
        async with connect(server.ws_url, additional_headers=headers) as connection:
            await connection.send(json.dumps({"id": 1, "op": "list_sessions"}))
            await connection.recv()
    except websockets.InvalidStatus as exc:
        assert exc.response.status_code in (401, 403)
    except websockets.ConnectionClosed as exc:
        assert exc.rcvd is not None
        assert exc.rcvd.code == 1008
    else:
        pytest.fail("a WebSocket with a bad token was served")


async def test_shutdown_closes_with_1001(make_server: Any) -> None:
    server = await asyncio.to_thread(make_server, options={"shutdown-timeout": 5})
    async with connect(server.ws_url, additional_headers=bearer(ALICE_TOKEN)) as connection:
        ws = WsClient(connection)
        sid = (await ws.ok("create_session"))["session_id"]
        await ws.ok("subscribe", {"session_id": sid})
        server.send_signal(signal.SIGTERM)
        frames = await receive_until_closed(ws)
    assert frames.code == 1001
    assert await asyncio.to_thread(server.wait, 30) == 0


def test_http_get_on_the_websocket_route_is_not_a_server_error(alice: httpx.Client) -> None:
    response = alice.get("/v1/ws")
    assert response.status_code < 500
    assert "Traceback" not in response.text


async def test_chat_runs_beside_other_commands_and_can_be_cancelled(
    server: ServerProcess,
) -> None:
    script = {"provider": "scripted", "script": [{"chunks": ["thinking..."], "hang": True}]}
    async with connect(server.ws_url, additional_headers=bearer(ALICE_TOKEN)) as connection:
        ws = WsClient(connection)
        info = await ws.ok("create_session", {"llm_config": script})
        sid = info["session_id"]
        await ws.ok("subscribe", {"session_id": sid})
        await ws.send({"id": "chat-1", "op": "chat", "args": {"session_id": sid, "text": "go"}})
        while True:  # the turn streams while the socket stays free for commands
            push = await ws.next_push()
            if push.get("event", {}).get("type") == "llm_stream_chunk":
                break
        assert (await ws.ok("get_session_info", {"session_id": sid}))["session_id"] == sid
        assert await ws.ok("cancel", {"session_id": sid}) == {"cancelled": True}
        while True:
            message = await ws.receive()
            if message.get("id") == "chat-1":
                break
        assert message["ok"] is True, message
        assert message["result"]["interrupted"] is True
        assert message["result"]["message"]["content"] == "thinking..."
        error = check_error(
            await ws.call("approve", {"session_id": sid, "call_id": "nope", "allow": True}),
            "invalid-argument",
            422,
        )
        assert error["argument"] == "call_id"
