"""Principals are isolated: bob cannot see, touch or even detect alice's sessions.

On every route, event stream and WebSocket command, alice's session answers bob exactly as a
session that does not exist (404 ``session-not-found``), and nothing bob tries changes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from jidoka.verbs import VERBS, Scope
from tests.e2e.conftest import (
    ALICE_TOKEN,
    BOB_TOKEN,
    ServerProcess,
    WsClient,
    bearer,
    problem_of,
    sse_frames,
)

WRONG_TOKEN = "wrong-e2e-token-0123456789abcdef"
NO_SUCH_SESSION = "01ZZZZZZZZZZZZZZZZZZZZZZZZ"


class AliceSession:
    def __init__(self, sid: str, before: dict[str, Any]) -> None:
        self.sid = sid
        self.before = before


def snapshot(alice: httpx.Client, sid: str) -> dict[str, Any]:
    """What bob must not be able to change."""
    info = alice.get(f"/v1/sessions/{sid}").json()
    return {
        "status": info["status"],
        "conversation_count": info["conversation_count"],
        "messages": alice.get(f"/v1/sessions/{sid}/messages").json(),
        "files": alice.get(f"/v1/sessions/{sid}/files").json(),
        "index": alice.get(f"/v1/sessions/{sid}/file-index").json(),
        "working_context": alice.get(f"/v1/sessions/{sid}/working-context").json(),
        "saved": [
            s for s in alice.get("/v1/saved-sessions").json()["saved_sessions"]
            if s["session_id"] == sid
        ],
    }  # fmt: skip


@pytest.fixture
def alices(alice: httpx.Client, tmp_path: Any) -> Iterator[AliceSession]:
    """A session of alice's with a message, a file, an index entry, a key and a saved copy."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "a.py").write_text("x = 1\n", encoding="utf-8")
    created = alice.post("/v1/sessions", json={"project_root": str(root)})
    assert created.status_code == 201
    sid = created.json()["session_id"]
    for method, path, body in [
        ("POST", "messages", {"role": "user", "content": "private"}),
        ("POST", "files", {"path": "a.py"}),
        ("PATCH", "file-index", {"path": "a.py", "fields": {"language": "python"}}),
        ("PUT", "working-context/secret/key", {"value": 42}),
    ]:
        response = alice.request(method, f"/v1/sessions/{sid}/{path}", json=body)
        assert response.status_code in (200, 201), response.text
    assert alice.post(f"/v1/sessions/{sid}/save").status_code == 201
    session = AliceSession(sid, snapshot(alice, sid))
    yield session
    assert snapshot(alice, sid) == session.before, "bob changed alice's session"


#: (method, path template, JSON body or None, query) of every route naming a session.
SESSION_ROUTES: list[tuple[str, str, Any, dict[str, str]]] = [
    ("GET", "/v1/sessions/{sid}", None, {}),
    ("DELETE", "/v1/sessions/{sid}", None, {"reason": "bob"}),
    ("DELETE", "/v1/sessions/{sid}", None, {"purge": "true"}),
    ("GET", "/v1/sessions/{sid}/messages", None, {}),
    ("POST", "/v1/sessions/{sid}/messages", {"role": "user", "content": "bob was here"}, {}),
    ("DELETE", "/v1/sessions/{sid}/messages", None, {}),
    ("GET", "/v1/sessions/{sid}/messages", None, {"view": "compacted"}),
    ("POST", "/v1/sessions/{sid}/compact", {"keep_last": 0}, {}),
    ("GET", "/v1/sessions/{sid}/files", None, {}),
    ("POST", "/v1/sessions/{sid}/files", {"path": "a.py"}, {}),
    ("DELETE", "/v1/sessions/{sid}/files", None, {"path": "a.py"}),
    ("GET", "/v1/sessions/{sid}/file-index", None, {}),
    ("PATCH", "/v1/sessions/{sid}/file-index", {"path": "a.py", "fields": {"size": 1}}, {}),
    ("GET", "/v1/sessions/{sid}/working-context", None, {}),
    ("GET", "/v1/sessions/{sid}/working-context/secret/key", None, {}),
    ("PUT", "/v1/sessions/{sid}/working-context/secret/key", {"value": "bob"}, {}),
    ("DELETE", "/v1/sessions/{sid}/working-context/secret/key", None, {}),
    ("POST", "/v1/sessions/{sid}/context", {"max_tokens": 100}, {}),
    ("POST", "/v1/sessions/{sid}/save", None, {}),
    ("POST", "/v1/sessions/{sid}/fork", {"at_seq": 1}, {}),
    ("POST", "/v1/sessions/{sid}/rewind", {"to_seq": 1}, {}),
    ("POST", "/v1/sessions/{sid}/runs", {"text": "bob"}, {}),
    ("GET", "/v1/sessions/{sid}/runs", None, {}),
    ("GET", "/v1/sessions/{sid}/runs/run_x", None, {}),
    ("GET", "/v1/sessions/{sid}/runs/run_x/join", None, {"timeout": "0"}),
    ("POST", "/v1/sessions/{sid}/runs/run_x/cancel", None, {}),
    ("POST", "/v1/saved-sessions/{sid}/restore", None, {}),
    ("DELETE", "/v1/saved-sessions/{sid}", None, {}),
    ("GET", "/v1/sessions/{sid}/events", None, {}),
    ("GET", "/v1/sessions/{sid}/events", None, {"after_seq": "0"}),
]


def _comparable(problem: dict[str, Any], sid: str) -> dict[str, Any]:
    rest = {k: v for k, v in problem.items() if k not in ("request_id", "session_id")}
    rest["detail"] = rest["detail"].replace(sid, "<id>")
    return rest


@pytest.mark.parametrize(
    ("method", "template", "body", "query"),
    SESSION_ROUTES,
    ids=[f"{m} {t}" for m, t, _, q in SESSION_ROUTES],
)
def test_bob_gets_404_on_every_session_route(
    bob: httpx.Client,
    alices: AliceSession,
    method: str,
    template: str,
    body: Any,
    query: dict[str, str],
) -> None:
    path = template.format(sid=alices.sid)
    response = bob.request(method, path, json=body, params=query)
    problem = problem_of(response, "session-not-found", 404, session_id=alices.sid)
    # Exactly what a session that does not exist answers: nothing to tell them apart.
    unknown = bob.request(method, template.format(sid=NO_SUCH_SESSION), json=body, params=query)
    problem_unknown = problem_of(unknown, "session-not-found", 404, session_id=NO_SUCH_SESSION)
    assert _comparable(problem, alices.sid) == _comparable(problem_unknown, NO_SUCH_SESSION)


def test_a_fork_is_its_makers_and_its_location_answers(
    alice: httpx.Client, bob: httpx.Client, alices: AliceSession
) -> None:
    forked = alice.post(f"/v1/sessions/{alices.sid}/fork", json={"at_seq": 3})
    assert forked.status_code == 201, forked.text
    fork = forked.json()
    assert fork["owner"] == "alice"
    assert forked.headers["location"] == f"/v1/sessions/{fork['session_id']}"
    assert alice.get(forked.headers["location"]).json()["session_id"] == fork["session_id"]
    problem_of(bob.get(forked.headers["location"]), "session-not-found", 404)
    out_of_range = alice.post(f"/v1/sessions/{alices.sid}/fork", json={"at_seq": 10_000})
    assert out_of_range.status_code == 422, out_of_range.text
    assert "at_seq" in out_of_range.json()["detail"]
    fork_path = f"/v1/sessions/{fork['session_id']}"
    forked_history = alice.get(f"{fork_path}/messages").json()["messages"]
    assert [m["content"] for m in forked_history] == ["private"]
    assert alice.post(f"{fork_path}/messages", json={"role": "user", "content": "more"}).is_success
    rewind = alice.post(f"{fork_path}/rewind", json={"to_seq": 2})
    assert rewind.status_code == 200, rewind.text
    assert rewind.json()["to_seq"] == 2
    assert alice.get(f"{fork_path}/messages").json()["messages"] == forked_history


def test_bob_lists_none_of_alices_sessions(bob: httpx.Client, alices: AliceSession) -> None:
    mine = bob.post("/v1/sessions").json()["session_id"]
    assert bob.post(f"/v1/sessions/{mine}/save").status_code == 201
    sessions = bob.get("/v1/sessions", params={"limit": 1000}).json()["sessions"]
    ids = {s["session_id"] for s in sessions}
    assert mine in ids
    assert alices.sid not in ids
    assert {s["owner"] for s in sessions} == {"bob"}
    saved = bob.get("/v1/saved-sessions").json()["saved_sessions"]
    assert mine in {s["session_id"] for s in saved}
    assert alices.sid not in {s["session_id"] for s in saved}
    assert {s["owner"] for s in saved} == {"bob"}
    # A status filter does not leak them either.
    for status in ("active", "idle", "terminated"):
        page = bob.get("/v1/sessions", params={"status": status}).json()["sessions"]
        assert alices.sid not in {s["session_id"] for s in page}


def test_alice_still_sees_her_own(alice: httpx.Client, alices: AliceSession) -> None:
    ids = {s["session_id"] for s in alice.get("/v1/sessions", params={"limit": 1000}).json()[
        "sessions"
    ]}  # fmt: skip
    assert alices.sid in ids
    saved = {s["session_id"] for s in alice.get("/v1/saved-sessions").json()["saved_sessions"]}
    assert alices.sid in saved


def _lifecycle_until_terminated(frames: Iterator[Any], sid: str) -> list[dict[str, Any]]:
    """Events of a global stream up to ``sid``'s session_terminated (inclusive)."""
    seen = []
    for frame in frames:
        if frame.comment is not None:
            continue
        event = frame.json()
        seen.append(event)
        if event["type"] == "session_terminated" and event["session_id"] == sid:
            return seen
    raise AssertionError(f"stream ended before {sid} terminated; saw {seen}")


def test_global_stream_carries_only_the_callers_sessions(
    alice: httpx.Client, bob: httpx.Client
) -> None:
    with (
        bob.stream("GET", "/v1/events") as bob_stream,
        alice.stream("GET", "/v1/events") as alice_stream,
    ):
        bob_frames = sse_frames(bob_stream)
        alice_frames = sse_frames(alice_stream)
        assert next(bob_frames).comment == "ok"
        assert next(alice_frames).comment == "ok"
        # alice's whole lifecycle happens first, then bob's.
        hers = alice.post("/v1/sessions").json()["session_id"]
        alice.post(f"/v1/sessions/{hers}/messages", json={"role": "user", "content": "x"})
        assert alice.delete(f"/v1/sessions/{hers}").status_code == 200
        his = bob.post("/v1/sessions").json()["session_id"]
        assert bob.delete(f"/v1/sessions/{his}").status_code == 200
        bob_saw = _lifecycle_until_terminated(bob_frames, his)
        alice_saw = _lifecycle_until_terminated(alice_frames, hers)
    assert {e["session_id"] for e in bob_saw} == {his}, bob_saw
    assert bob_saw[0]["type"] == "session_created"
    assert {e["session_id"] for e in alice_saw} == {hers}, alice_saw
    assert {"session_created", "session_status", "session_terminated"} <= {
        e["type"] for e in bob_saw
    }


# --- authentication -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": f"Bearer {WRONG_TOKEN}"},
        {"Authorization": f"Basic {ALICE_TOKEN}"},
        {"Authorization": "Bearer  x"},
        {"Authorization": ALICE_TOKEN},
    ],
    ids=["missing", "wrong-token", "basic-scheme", "short-bearer", "no-scheme"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/sessions"),
        ("POST", "/v1/sessions"),
        ("GET", f"/v1/sessions/{NO_SUCH_SESSION}/messages"),
        ("GET", "/v1/saved-sessions"),
        ("GET", "/v1/events"),
        ("GET", f"/v1/sessions/{NO_SUCH_SESSION}/events"),
        ("GET", "/v1/no-such-route"),
        ("POST", "/v1/mcp"),
    ],
)
def test_unauthenticated_requests_get_401(
    anonymous: httpx.Client, headers: dict[str, str], method: str, path: str
) -> None:
    response = anonymous.request(method, path, headers=headers)
    problem_of(response, "unauthorized", 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_refused_request_creates_nothing(anonymous: httpx.Client, alice: httpx.Client) -> None:
    before = alice.get("/v1/sessions", params={"limit": 1000}).json()["sessions"]
    refused = anonymous.post("/v1/sessions", headers=bearer(WRONG_TOKEN), json={})
    assert refused.status_code == 401
    after = alice.get("/v1/sessions", params={"limit": 1000}).json()["sessions"]
    assert len(after) == len(before)


# --- the WebSocket ------------------------------------------------------------------------------

#: Every WebSocket verb that names a session, with valid other arguments.
WS_COMMANDS: list[tuple[str, dict[str, Any]]] = [
    ("fork_session", {}),
    ("rewind_session", {"to_seq": 1}),
    ("compact_session", {"keep_last": 0}),
    ("get_session_info", {}),
    ("terminate_session", {}),
    ("purge_session", {}),
    ("send_message", {"role": "user", "content": "bob"}),
    ("get_conversation_history", {}),
    ("clear_conversation", {}),
    ("read_events", {}),
    ("add_file", {"path": "a.py"}),
    ("remove_file", {"path": "a.py"}),
    ("get_active_files", {}),
    ("get_file_index", {}),
    ("update_file_index", {"path": "a.py", "fields": {"size": 3}}),
    ("put_working_context", {"key": "secret/key", "value": "bob"}),
    ("get_working_context_map", {}),
    ("get_working_context", {"key": "secret/key"}),
    ("delete_working_context", {"key": "secret/key"}),
    ("build_context", {}),
    ("save_session", {}),
    ("restore_session", {}),
    ("delete_saved_session", {}),
    ("chat", {"text": "bob"}),
    ("cancel", {}),
    ("approve", {"call_id": "c1", "allow": True}),
    ("start_run", {"text": "bob"}),
    ("list_runs", {}),
    ("get_run", {"run_id": "run_x"}),
    ("join_run", {"run_id": "run_x", "timeout": 0}),
    ("cancel_run", {"run_id": "run_x"}),
]


def test_the_websocket_commands_cover_every_verb_that_names_a_session() -> None:
    named = {v.name for v in VERBS if v.websocket and v.scope in (Scope.SESSION, Scope.SAVED)}
    assert {op for op, _ in WS_COMMANDS} == named


def check_ws_problem(reply: dict[str, Any], slug: str, status: int) -> dict[str, Any]:
    assert reply["ok"] is False, reply
    assert "result" not in reply
    error: dict[str, Any] = reply["error"]
    assert error["type"] == f"https://jidoka.dev/problems/{slug}", error
    assert error["status"] == status
    assert error["title"]
    assert error["detail"]
    assert "Traceback" not in json.dumps(reply)
    return error


async def test_bob_gets_session_not_found_on_every_websocket_command(
    server: ServerProcess, alices: AliceSession
) -> None:
    async with connect(server.ws_url, additional_headers=bearer(BOB_TOKEN)) as connection:
        ws = WsClient(connection)
        for op, args in WS_COMMANDS:
            reply = await ws.call(op, {"session_id": alices.sid, **args})
            error = check_ws_problem(reply, "session-not-found", 404)
            assert error["session_id"] == alices.sid, (op, error)
        for args in ({"session_id": alices.sid}, {"session_id": alices.sid, "after_seq": 0}):
            reply = await ws.call("subscribe", args)
            error = check_ws_problem(reply, "session-not-found", 404)
            assert error["session_id"] == alices.sid
        sessions = (await ws.ok("list_sessions"))["sessions"]
        assert alices.sid not in {s["session_id"] for s in sessions}
        saved = (await ws.ok("list_saved_sessions"))["saved_sessions"]
        assert alices.sid not in {s["session_id"] for s in saved}
        assert ws.pushed == []


async def test_bobs_websocket_lifecycle_subscription_skips_alices_sessions(
    server: ServerProcess,
) -> None:
    async with (
        connect(server.ws_url, additional_headers=bearer(BOB_TOKEN)) as bob_connection,
        connect(server.ws_url, additional_headers=bearer(ALICE_TOKEN)) as alice_connection,
    ):
        bob, alice = WsClient(bob_connection), WsClient(alice_connection)
        subscription = (await bob.ok("subscribe", {}))["subscription"]
        hers = (await alice.ok("create_session"))["session_id"]
        await alice.ok("terminate_session", {"session_id": hers})
        his = (await bob.ok("create_session"))["session_id"]
        await bob.ok("terminate_session", {"session_id": his})
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["type"] != "session_terminated":
            frame = await bob.next_push()
            assert frame["subscription"] == subscription
            seen.append(frame["event"])
    assert {e["session_id"] for e in seen} == {his}, seen
    # (That it also carries bob's own session_created is test_websocket.py's business.)


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": f"Bearer {WRONG_TOKEN}"}, {"Authorization": f"Basic {ALICE_TOKEN}"}],
    ids=["wrong-token", "basic-scheme"],
)
async def test_websocket_with_a_bad_header_is_refused(
    server: ServerProcess, headers: dict[str, str]
) -> None:
    """Refused before any command: the handshake fails (403) or the socket closes with 1008."""
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
