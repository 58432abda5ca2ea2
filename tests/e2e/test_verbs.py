"""Every verb of the table answers the same JSON over the WebSocket as over HTTP, byte for byte,
and refuses a bad argument naming the same field, against a real ``jidoka serve`` on loopback.

Each case prepares a fresh session the same way before each transport's call, so a verb that
changes something (a message appended, a session terminated) meets the same state twice. What
the two calls cannot share (the new session's id, the time, a message's id) is masked in the
raw bytes before they are compared, so key order, spacing and every other value still count.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from jidoka.verbs import VERBS, Verb, by_name
from tests.e2e.conftest import (
    ALICE_TOKEN,
    ServerProcess,
    WsClient,
    bearer,
    http_client,
    new_session,
    post_message,
    sse_frames,
)


@pytest.fixture(scope="module")
def server(server_on_each_store: ServerProcess) -> ServerProcess:
    """Every verb against ``jidoka serve`` on SQLite, and again on Postgres."""
    return server_on_each_store


#: Values that differ between two identically prepared sessions: masked before comparing.
_VARYING = re.compile(
    rb'"(session_id|id|created_at|updated_at|timestamp|added_at|saved_at|last_accessed|time'
    rb'|run_id|started_at|ended_at)":'
    rb'("[^"]*"|null)'
)
_WRITE = {"path": "app.py", "content": "x = 2\n"}
_SCRIPT = [
    {"chunks": ["Changing ", "it."],
     "tool_calls": [{"id": "w1", "name": "write_file", "arguments": _WRITE}]},
    {"text": "Done.", "usage": {"prompt_tokens": 9, "completion_tokens": 2}},
]  # fmt: skip


@pytest.fixture
def alice(server: ServerProcess) -> Iterator[httpx.Client]:
    with http_client(server.url, ALICE_TOKEN) as client:
        yield client


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text("x = 1\n")
    return tmp_path


def _session(http: httpx.Client, project: Path, **config: Any) -> str:
    """A session with one message, one active file, one working-context key."""
    sid = new_session(
        http,
        project_root=str(project),
        metadata={"case": "verbs"},
        config=config,
        llm_config={"provider": "scripted", "script": _SCRIPT},
    )
    post_message(http, sid, "hi")
    assert http.post(f"/v1/sessions/{sid}/files", json={"path": "app.py"}).status_code == 201
    assert http.put(f"/v1/sessions/{sid}/working-context/k/1", json={"value": [1]}).is_success
    return sid


def _saved(http: httpx.Client, project: Path) -> str:
    sid = _session(http, project)
    assert http.post(f"/v1/sessions/{sid}/save").status_code == 201
    assert http.delete(f"/v1/sessions/{sid}").status_code == 200
    return sid


def _awaiting_approval(http: httpx.Client, project: Path) -> str:
    """A session whose turn waits for the approval of a write (call id ``w1``)."""
    sid = _session(http, project, allow_write="ask")
    assert http.post(f"/v1/sessions/{sid}/chat", json={"text": "bump it"}).status_code == 202
    with http.stream("GET", f"/v1/sessions/{sid}/events?after_seq=0") as response:
        for frame in sse_frames(response):
            if frame.data is not None and frame.json()["type"] == "approval_requested":
                return sid
    raise AssertionError("the stream ended before the approval was asked")


Prepare = Callable[[httpx.Client, Path], dict[str, Any]]


def _ended_run(http: httpx.Client, project: Path) -> dict[str, Any]:
    """A session with one run, ended: its ids."""
    sid = _session(http, project)
    started = http.post(f"/v1/sessions/{sid}/runs", json={"text": "go"})
    assert started.status_code == 202, started.text
    run_id = started.json()["run_id"]
    joined = http.get(f"/v1/sessions/{sid}/runs/{run_id}/join", params={"timeout": 30})
    assert joined.json()["status"] == "completed", joined.text
    return {"session_id": sid, "run_id": run_id}


def _on_session(**args: Any) -> Prepare:
    return lambda http, project: {"session_id": _session(http, project), **args}


#: Verb -> how to prepare one call of it (its arguments, on state made for it).
CASES: dict[str, Prepare] = {
    "create_session": lambda http, project: {"metadata": {"a": 1}, "config": {"max_history": 5}},
    "list_sessions": lambda http, project: {"limit": 1},
    "get_session_info": _on_session(),
    "terminate_session": _on_session(reason="done"),
    "purge_session": _on_session(),
    "send_message": _on_session(role="user", content="hello"),
    "get_conversation_history": _on_session(),
    "clear_conversation": _on_session(),
    "compact_session": _on_session(keep_last=0, instructions="keep names"),
    "read_events": _on_session(after_seq=1, limit=4),
    "get_active_files": _on_session(),
    "add_file": _on_session(path="app.py"),
    "remove_file": _on_session(path="app.py"),
    "get_file_index": _on_session(),
    "update_file_index": _on_session(path="app.py", fields={"language": "python", "x": 1}),
    "get_working_context_map": _on_session(),
    "get_working_context": _on_session(key="k/1"),
    "put_working_context": _on_session(key="k/2", value={"b": [1, None, "c"]}),
    "delete_working_context": _on_session(key="k/1"),
    "build_context": _on_session(include=["conversation", "working_context"], max_tokens=500),
    "chat": lambda http, project: {"session_id": _session(http, project), "text": "go"},
    "start_run": _on_session(text="go", multitask="enqueue", metadata={"m": 1}),
    "list_runs": lambda http, project: {
        "session_id": _ended_run(http, project)["session_id"],
        "limit": 5,
    },
    "get_run": _ended_run,
    "join_run": lambda http, project: {**_ended_run(http, project), "timeout": 10},
    "cancel_run": _ended_run,
    "cancel": _on_session(),
    "approve": lambda http, project: {
        "session_id": _awaiting_approval(http, project),
        "call_id": "w1",
        "allow": False,
    },
    "save_session": _on_session(),
    "fork_session": _on_session(at_seq=2, metadata={"f": 1}),
    "rewind_session": _on_session(to_seq=2),
    "list_saved_sessions": lambda http, project: {},
    "cluster_status": lambda http, project: {},
    "restore_session": lambda http, project: {"session_id": _saved(http, project)},
    "delete_saved_session": lambda http, project: {"session_id": _saved(http, project)},
}


def test_every_websocket_verb_has_a_case() -> None:
    assert set(CASES) == {verb.name for verb in VERBS if verb.websocket}


def _http_call(http: httpx.Client, verb: Verb, args: dict[str, Any]) -> httpx.Response:
    path = verb.path
    for name in verb.path_params:
        path = re.sub(r"\{" + name + r"(:path)?\}", str(args[name]), path)
    query = {p.name: args[p.name] for p in verb.query if p.name in args}
    if verb.background:
        query["wait"] = "true"
    if verb.selected_by is not None:
        query[verb.selected_by] = "true"
    body = {name: args[name] for name in verb.body_fields if name in args}
    content = json.dumps(body) if verb.body is not None else None
    headers = {"Content-Type": "application/json"} if content is not None else {}
    return http.request(verb.method, path, params=query, content=content, headers=headers)


async def _ws_raw(ws: WsClient, op: str, args: dict[str, Any]) -> bytes:
    """The bytes of the reply's ``result``, as the server wrote them."""
    await ws.send({"id": "raw", "op": op, "args": args})
    text = await ws.connection.recv()
    prefix, suffix = '{"id":"raw","ok":true,"result":', "}"
    assert text.startswith(prefix), text
    assert text.endswith(suffix), text
    return text[len(prefix) : -len(suffix)].encode()


def _masked(raw: bytes) -> bytes:
    return _VARYING.sub(rb'"\1":"*"', raw)


@pytest.mark.parametrize("name", list(CASES))
async def test_websocket_and_http_answer_the_same_bytes(
    server: ServerProcess, alice: httpx.Client, project: Path, name: str
) -> None:
    verb = by_name(name)
    assert verb is not None
    async with connect(server.ws_url, additional_headers=bearer(ALICE_TOKEN)) as connection:
        over_ws = await _ws_raw(WsClient(connection), name, CASES[name](alice, project))
    response = _http_call(alice, verb, CASES[name](alice, project))
    assert response.status_code == verb.status, response.text
    over_http = response.content or b"null"  # a 204 is the WebSocket's null
    assert _masked(over_ws) == _masked(over_http)
    if name in (
        "get_working_context",
        "get_working_context_map",
        "list_saved_sessions",
        "cluster_status",
    ):
        assert over_ws == over_http  # nothing varies: the very bytes


#: (verb, arguments) that are wrong -> the argument both transports must name.
BAD_ARGUMENTS = [
    ("send_message", {"role": 5, "content": "x"}, "role"),
    ("send_message", {"role": "user"}, "content"),
    ("remove_file", {}, "path"),
    ("add_file", {"path": ["a"]}, "path"),
    ("approve", {"call_id": "c", "allow": "yes"}, "allow"),
    ("build_context", {"max_tokens": "many"}, "max_tokens"),
    ("update_file_index", {"path": "a.py", "fields": 3}, "fields"),
    ("list_sessions", {"limit": 0}, "limit"),
    ("list_sessions", {"status": "sleeping"}, "status"),
    ("fork_session", {"at_seq": 0}, "at_seq"),
    ("fork_session", {"at_seq": 10_000}, "at_seq"),
    ("rewind_session", {"to_seq": "x"}, "to_seq"),
    ("rewind_session", {}, "to_seq"),
    ("start_run", {"text": "x", "multitask": "sometimes"}, "multitask"),
    ("start_run", {"text": "x", "idempotency_key": "has space"}, "idempotency_key"),
    ("join_run", {"run_id": "r", "timeout": -1}, "timeout"),
    ("list_runs", {"status": "sleeping"}, "status"),
]


@pytest.mark.parametrize(("name", "args", "argument"), BAD_ARGUMENTS)
async def test_a_bad_argument_is_named_the_same_on_both_transports(
    server: ServerProcess,
    alice: httpx.Client,
    project: Path,
    name: str,
    args: dict[str, Any],
    argument: str,
) -> None:
    verb = by_name(name)
    assert verb is not None
    if verb.path_params:
        args = {"session_id": _session(alice, project), **args}
    async with connect(server.ws_url, additional_headers=bearer(ALICE_TOKEN)) as connection:
        reply = await WsClient(connection).call(name, args)
    response = _http_call(alice, verb, args)
    assert response.status_code == 422, response.text
    assert reply["ok"] is False, reply
    for problem in (reply["error"], response.json()):
        assert problem["type"].endswith("/invalid-argument"), problem
        assert problem["argument"] == argument, problem
