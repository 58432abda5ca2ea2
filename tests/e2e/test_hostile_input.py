"""Hostile input against a real ``jidoka serve``: every answer is a 4xx problem, never a 500,
and a WebSocket gets an error reply (or a protocol close code), never a silent drop.

The cases an attacker's probe found are pinned one by one (deep JSON, non-ASCII digits in query
integers, unknown query parameters, NUL bytes, huge numbers in a session config, binary and
malformed WebSocket frames, slow bodies on a route ending in ``/events``); then hypothesis
throws bounded, derandomized batches of arbitrary requests and commands at the server and
counts the answers of 500 or more (which must be none).

Nothing sleeps: readiness is polled with requests (``wait_until``), receives have deadlines.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import msgspec
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.sync.client import connect as connect_sync

from jidoka.server.routes import ROUTES
from tests.e2e.conftest import (
    ALICE_TOKEN,
    BOB_TOKEN,
    HTTP_TIMEOUT,
    ServerProcess,
    WsClient,
    bearer,
    http_client,
    new_session,
    problem_of,
    sse_frames,
    wait_until,
)

#: The limit a too-deep document is refused under (named in the problem).
DEPTH_LIMIT = "max_json_depth"
#: Digits that ``str.isdigit`` accepts and ``int`` does not, or that are not ASCII at all.
NON_ASCII_DIGITS = ["²", "¹²", "١٢", "\U0001d7d9", "①", "٣", "१"]
HOLD_DEADLINE = 20.0
JSON = {"Content-Type": "application/json"}
#: Examples per fuzz test: bounded so a run takes seconds, derandomized so it is reproducible.
FUZZ_EXAMPLES_PER_ROUTE = 12
WS_FUZZ_EXAMPLES = 120
FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES_PER_ROUTE,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def nested(depth: int, leaf: bytes = b"1") -> bytes:
    """``depth`` arrays inside each other around ``leaf``."""
    return b"[" * depth + leaf + b"]" * depth


@pytest.fixture
def sid(alice: httpx.Client) -> str:
    return new_session(alice)


# --- deep JSON ----------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_body_is_refused_naming_the_limit(
    alice: httpx.Client, sid: str, depth: int
) -> None:
    body = b'{"value": ' + nested(depth) + b"}"
    response = alice.put(f"/v1/sessions/{sid}/working-context/deep", content=body, headers=JSON)
    problem = problem_of(response, "invalid-argument", 422)
    assert problem["limit"] == DEPTH_LIMIT, problem
    assert problem["argument"] == "body"
    assert DEPTH_LIMIT in problem["detail"]
    assert problem["maximum"] < depth
    # Nothing was stored, and the same route takes a value within the limit.
    assert alice.get(f"/v1/sessions/{sid}/working-context").json() == {"working_context": {}}
    within = json.loads(nested(problem["maximum"] - 1))
    ok = alice.put(f"/v1/sessions/{sid}/working-context/deep", json={"value": within})
    assert ok.status_code == 200, ok.text
    assert alice.get(f"/v1/sessions/{sid}/working-context/deep").json()["value"] == within

    deep_metadata = b'{"metadata": {"x": ' + nested(depth) + b"}}"
    created = alice.post("/v1/sessions", content=deep_metadata, headers=JSON)
    assert problem_of(created, "invalid-argument", 422)["limit"] == DEPTH_LIMIT


# --- query parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize("digits", NON_ASCII_DIGITS)
def test_query_integers_take_ascii_digits_only(alice: httpx.Client, sid: str, digits: str) -> None:
    problem = problem_of(alice.get("/v1/sessions", params={"limit": digits}), "invalid-argument",
                         422)  # fmt: skip
    assert problem["argument"] == "limit"
    for name in ("after_seq", "lastEventId"):
        response = alice.get(f"/v1/sessions/{sid}/events", params={name: digits})
        assert problem_of(response, "invalid-argument", 422)["argument"] == name
    # The header is checked the same way (a header value is Latin-1: "²" and "¹" are in it).
    if digits in ("²", "¹²"):
        response = alice.get(
            f"/v1/sessions/{sid}/events", headers={b"Last-Event-ID": digits.encode("latin-1")}
        )
        assert problem_of(response, "invalid-argument", 422)["argument"] == "after_seq"


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/v1/sessions", "limt=5"),
        ("/v1/sessions", "limit=5&page=2"),
        ("/v1/saved-sessions", "limit=5"),
        ("/v1/sessions/{sid}", "verbose=1"),
        ("/v1/sessions/{sid}/messages", "after_seq=1"),
        ("/v1/sessions/{sid}/events", "after=3"),
        ("/v1/events", "after_seq=3"),
        ("/healthz", "x=1"),
        ("/openapi.json", "format=yaml"),
    ],
)
def test_unknown_query_parameter_is_422_naming_it(
    alice: httpx.Client, sid: str, path: str, query: str
) -> None:
    response = alice.get(f"{path.format(sid=sid)}?{query}")
    problem = problem_of(response, "invalid-argument", 422)
    unknown = [pair.partition("=")[0] for pair in query.split("&")][-1]
    assert problem["argument"] == unknown
    assert repr(unknown) in problem["detail"]


def test_unknown_query_parameter_on_a_write_changes_nothing(alice: httpx.Client, sid: str) -> None:
    response = alice.delete(f"/v1/sessions/{sid}?reason=x&force=1")
    assert problem_of(response, "invalid-argument", 422)["argument"] == "force"
    assert alice.get(f"/v1/sessions/{sid}").json()["status"] != "terminated"


def _ended_session(client: httpx.Client, messages: int) -> str:
    """A session with ``messages`` messages after its creation event, then terminated: its
    stream with a position replays what is stored and ends, so reading it cannot hang."""
    sid = new_session(client)
    for index in range(messages):
        sent = client.post(
            f"/v1/sessions/{sid}/messages", json={"role": "user", "content": f"m{index}"}
        )
        assert sent.status_code == 201, sent.text
    assert client.delete(f"/v1/sessions/{sid}").status_code == 200
    return sid


def _first_id(client: httpx.Client, path: str, **request: Any) -> int:
    with client.stream("GET", path, **request) as response:
        assert response.status_code == 200, response.read().decode()
        for frame in sse_frames(response):
            if frame.id is not None:
                return int(frame.id)
    raise AssertionError("the stream ended without an event")


def test_last_event_id_query_resumes_like_after_seq(alice: httpx.Client) -> None:
    """``?lastEventId=N`` (what EventSource polyfills send on reconnect) replays from N + 1,
    and the most recent position wins: Last-Event-ID header, then lastEventId, then after_seq."""
    sid = _ended_session(alice, messages=6)
    path = f"/v1/sessions/{sid}/events"
    assert _first_id(alice, path, params={"lastEventId": "3"}) == 4
    assert _first_id(alice, path, params={"after_seq": "1", "lastEventId": "3"}) == 4
    assert _first_id(alice, path, params={"lastEventId": "3"}, headers={"Last-Event-ID": "5"}) == 6
    assert _first_id(alice, path, params={"after_seq": "2"}) == 3
    # The lifecycle stream does not replay, but takes the parameter a polyfill adds.
    with alice.stream("GET", "/v1/events", params={"lastEventId": f"{sid}-3"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")


# --- the runtime behind the HTTP layer ----------------------------------------------------------


def test_nul_in_project_root_under_projects_dir_is_4xx(make_server: Any, tmp_path: Path) -> None:
    projects = tmp_path / "projects"
    (projects / "web").mkdir(parents=True)
    server = make_server(env={"JIDOKA_PROJECTS_DIR": str(projects)})
    with http_client(server.url, ALICE_TOKEN) as alice:
        for root in ("web\x00", "\x00", "web/\x00/..", "a" * 5000):
            response = alice.post("/v1/sessions", json={"project_root": root})
            assert 400 <= response.status_code < 500, (root[:20], response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
        assert alice.post("/v1/sessions", json={"project_root": "web"}).status_code == 201


HUGE_NUMBERS = [2**40, 2**63, 2**64 + 1, 10**30]


@pytest.mark.parametrize("huge", HUGE_NUMBERS)
def test_huge_numbers_in_a_session_config_are_never_a_500(
    alice: httpx.Client, tmp_path: Path, huge: int
) -> None:
    """Either the config is refused (4xx) or the session works with it: a file add, a message,
    a working-context write and a context build still answer below 500."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "a.py").write_text("x = 1\n", encoding="utf-8")
    fields = ["max_file_bytes", "max_message_bytes", "max_working_context_bytes",
              "max_history", "max_files", "max_index_entries"]  # fmt: skip
    config = dict.fromkeys(fields, huge)
    created = alice.post("/v1/sessions", json={"config": config, "project_root": str(root)})
    assert created.status_code < 500, created.text
    if created.status_code != 201:
        assert created.status_code in (413, 422), created.text
        return
    sid = created.json()["session_id"]
    calls = [
        ("POST", "files", {"path": "a.py"}),
        ("POST", "messages", {"role": "user", "content": "hi"}),
        ("PUT", "working-context/k", {"value": [1, 2, 3]}),
        ("POST", "context", {}),
    ]
    for method, route, body in calls:
        response = alice.request(method, f"/v1/sessions/{sid}/{route}", json=body)
        assert response.status_code < 500, (route, response.text)


# --- the in-flight limit ------------------------------------------------------------------------


def _stalled_put(url: str, path: str, token: str) -> socket.socket:
    """A raw connection that sends a request's head (with a Content-Length) and part of its
    body, and then holds the rest: the request stays in flight until the socket closes."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    connection = socket.create_connection((parts.hostname, parts.port), timeout=HTTP_TIMEOUT)
    head = (
        f"PUT {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    connection.sendall(head.encode() + b'{"value": ')
    return connection


def _answered(connection: socket.socket) -> bool:
    """Whether the server already answered a stalled request (a 429: it arrived while a poll of
    the same principal was in flight and the bound was reached), without waiting."""
    connection.setblocking(False)
    try:
        return bool(connection.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False
    finally:
        connection.setblocking(True)


def test_stalled_requests_on_a_path_ending_in_events_count_as_in_flight(make_server: Any) -> None:
    """``PUT .../working-context/x/events`` is a plain request whose path merely ends in
    ``/events``: held requests on it count against ``max_inflight`` like any other."""
    server = make_server(options={"max-inflight": 4})
    with (
        http_client(server.url, ALICE_TOKEN) as alice,
        http_client(server.url, BOB_TOKEN) as bob,
    ):
        sid = new_session(alice)
        path = f"/v1/sessions/{sid}/working-context/x/events"
        held = [_stalled_put(server.url, path, ALICE_TOKEN) for _ in range(4)]

        def poll() -> httpx.Response | None:
            # A stalled request that met one of these polls in flight was refused at once:
            # hold another in its place (the race is the test's, not the server's).
            for n, connection in enumerate(held):
                if _answered(connection):
                    connection.close()
                    held[n] = _stalled_put(server.url, path, ALICE_TOKEN)
            response = alice.get("/v1/sessions")
            return response if response.status_code == 429 else None

        try:
            refused = wait_until(poll, HOLD_DEADLINE, "the stalled requests to count as in flight")
            problem = problem_of(refused, "limit-exceeded", 429)
            assert problem["limit"] == "max_inflight_requests"
            assert problem["maximum"] == 4
            assert bob.get("/v1/sessions").status_code == 200  # per principal
            # The event streams are still not counted: alice can open some all the same.
            with (
                alice.stream("GET", f"/v1/sessions/{sid}/events") as one,
                alice.stream("GET", "/v1/events") as two,
            ):
                assert (one.status_code, two.status_code) == (200, 200)
        finally:
            for connection in held:
                connection.close()
        # The held requests end with their connections, and alice is served again.
        wait_until(
            lambda: alice.get("/v1/sessions").status_code == 200,
            HOLD_DEADLINE,
            "the closed requests to leave the in-flight count",
        )
        assert alice.get(f"/v1/sessions/{sid}/working-context").json() == {"working_context": {}}


# --- WebSocket ----------------------------------------------------------------------------------


def check_error(reply: dict[str, Any], status: int = 422) -> dict[str, Any]:
    assert reply["ok"] is False, reply
    error: dict[str, Any] = reply["error"]
    assert error["type"] == "https://jidoka.dev/problems/invalid-argument", error
    assert error["status"] == status, error
    assert error["detail"], error
    assert "Traceback" not in json.dumps(reply)
    return error


async def test_binary_frame_gets_an_error_reply_and_the_socket_stays(
    server: ServerProcess,
) -> None:
    async with connect(server.ws_url, additional_headers=bearer(ALICE_TOKEN)) as connection:
        ws = WsClient(connection)
        await connection.send(b'{"id": "b1", "op": "list_sessions"}')
        reply = await ws.receive()
        assert reply["id"] is None
        error = check_error(reply)
        assert error["argument"] == "frame"
        assert "binary" in error["detail"]
        assert isinstance((await ws.ok("list_sessions"))["sessions"], list)


async def test_bad_utf8_in_a_text_frame_closes_with_1007(server: ServerProcess) -> None:
    async with connect(server.ws_url, additional_headers=bearer(ALICE_TOKEN)) as connection:
        ws = WsClient(connection)
        assert isinstance((await ws.ok("list_sessions"))["sessions"], list)
        # A text frame whose payload is not UTF-8: the client library refuses to build one,
        # so the frame is written by hand (opcode 1, masked, as a client must).
        payload = b'{"op": "\xff\xfe"}'
        mask = b"\x01\x02\x03\x04"
        masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
        connection.transport.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.receive()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1007


async def test_a_websocket_message_past_the_body_limit_closes_with_1009(
    server: ServerProcess,
) -> None:
    """A WebSocket message is bounded like an HTTP body, not by the library's 16 MiB."""
    async with connect(
        server.ws_url, additional_headers=bearer(ALICE_TOKEN), max_size=None
    ) as connection:
        ws = WsClient(connection)
        assert isinstance((await ws.ok("list_sessions"))["sessions"], list)
        value = "x" * (2 << 20)  # 2 MiB: over the server's 1 MiB body limit
        frame = json.dumps({"id": "big", "op": "list_sessions", "args": {"pad": value}})
        await connection.send(frame)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.receive()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009


#: frame -> (the argument the error names, whether the reply carries the command's id). The
#: id cannot be known when the frame is not a well-formed command.
MALFORMED_COMMANDS = {
    "op-not-a-string": ('{"id": "m1", "op": 7}', "op", False),
    "args-not-an-object": ('{"id": "m1", "op": "list_sessions", "args": "x"}', "args", False),
    "wrong-type-session-id": ('{"id": "m1", "op": "get_session_info", "args": '
                              '{"session_id": ["S"]}}', "session_id", True),
    "wrong-type-path": ('{"id": "m1", "op": "add_file", "args": {"session_id": "S", '
                        '"path": 5}}', "path", True),
    "wrong-type-allow": ('{"id": "m1", "op": "approve", "args": {"session_id": "S", '
                         '"call_id": "c", "allow": "yes"}}', "allow", True),
    "subscribe-bad-session": ('{"id": "m1", "op": "subscribe", "args": {"session_id": 5}}',
                              "session_id", True),
    "deep-nesting": ('{"id": "m1", "op": "put_working_context", "args": {"session_id": "S", '
                     '"key": "k", "value": ' + "[" * 50_000 + "]" * 50_000 + "}}", "command",
                     False),
}  # fmt: skip


@pytest.mark.parametrize(
    ("frame", "argument", "has_id"), list(MALFORMED_COMMANDS.values()),
    ids=list(MALFORMED_COMMANDS),
)  # fmt: skip
async def test_malformed_commands_get_an_error_reply_naming_the_problem(
    server: ServerProcess, frame: str, argument: str, has_id: bool
) -> None:
    async with connect(server.ws_url, additional_headers=bearer(ALICE_TOKEN)) as connection:
        ws = WsClient(connection)
        sid = (await ws.ok("create_session"))["session_id"]
        await connection.send(frame.replace('"S"', json.dumps(sid)))
        reply = await ws.receive()
        error = check_error(reply)
        assert error["argument"] == argument, error
        assert reply["id"] == ("m1" if has_id else None)
        if "[[[" in frame:
            assert error["limit"] == DEPTH_LIMIT
        # Nothing happened to the session, and the socket takes the next command.
        info = await ws.ok("get_session_info", {"session_id": sid})
        assert info["conversation_count"] == 0
        empty: dict[str, dict[str, object]] = {"working_context": {}}
        assert await ws.ok("get_working_context_map", {"session_id": sid}) == empty


async def test_malformed_first_message_auth_is_1008_not_a_drop(make_server: Any) -> None:
    """With the token in the first message, a binary or too-deep first frame is a failed
    authentication (error reply, then close 1008), not a server error."""
    server = make_server()
    for first in (b'{"op": "auth"}', '{"op": "auth", "token": ' + "[" * 5000 + "]" * 5000 + "}"):
        async with connect(server.ws_url) as connection:
            ws = WsClient(connection)
            await connection.send(first)
            reply = await ws.receive()
            assert reply["ok"] is False
            assert reply["error"]["status"] == 401
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.receive()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1008


# --- fuzzing ------------------------------------------------------------------------------------

#: (method, path template, query parameter names, body field names).
Route = tuple[str, str, tuple[str, ...], tuple[str, ...]]
#: (method, path template, query parameter names, body field names) of every route, and a few
#: that do not exist.
ROUTE_CHOICES: list[Route] = [
    (spec.method, spec.path, spec.query,
     tuple(f.name for f in msgspec.structs.fields(spec.body)) if spec.body else ())
    for spec in ROUTES
] + [
    ("GET", "/v1/sessions/{session_id}/events", ("after_seq", "lastEventId"), ()),
    ("GET", "/v1/events", ("lastEventId",), ()),
    ("GET", "/healthz", (), ()),
    ("GET", "/metrics", (), ()),
    ("POST", "/v1/nowhere/{key}", (), ("value",)),
    ("PATCH", "/v1/sessions", (), ("metadata",)),
]  # fmt: skip
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]
QUERY_NAMES = ["limit", "status", "cursor", "reason", "path", "wait", "after_seq",
               "lastEventId", "after", "x"]  # fmt: skip
CONFIG_FIELDS = ["max_history", "max_files", "max_file_bytes", "max_message_bytes",
                 "max_index_entries", "max_working_context_bytes", "idle_after_seconds",
                 "timeout_minutes", "max_restarts", "max_iterations"]  # fmt: skip
_PARAMETER = re.compile(r"\{(\w+)(?::path)?\}")

_text = st.text(max_size=40)
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), _text,
    st.sampled_from([2**40, 2**63, 2**64 + 1, -(2**63), 10**30, 0, -1]),
)  # fmt: skip
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_odd_bodies = st.one_of(
    _json.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=200),
    st.sampled_from([b"", b"{", b'{"value": 1e999}', b"\x00", b'"\xff"', b"[" * 3000]),
)  # fmt: skip
#: Nesting depths: around the limit, past the interpreter's recursion limit, and anything between.
_depths = st.one_of(
    st.sampled_from([5_000, 1_000, 129, 128, 127, 999, 50_000]), st.integers(50, 5_000)
)
#: Values of a body's fields, encoded: any JSON, a config with huge numbers, and arrays nested
#: up to 5,000 deep (written as bytes: the test's own json module would not go that deep).
_field_values = st.one_of(
    _depths.map(nested),
    _json.map(lambda value: json.dumps(value).encode()),
    st.dictionaries(st.sampled_from(CONFIG_FIELDS), _scalars, min_size=1).map(
        lambda value: json.dumps(value).encode()
    ),
    _json.map(lambda value: json.dumps(value).encode()),
)


def _body(draw: st.DrawFn, fields: tuple[str, ...]) -> bytes:
    if not fields or draw(st.integers(0, 4)) == 0:
        return draw(_odd_bodies)
    chosen = draw(st.lists(st.sampled_from(fields), unique=True, max_size=len(fields)))
    members = [json.dumps(name).encode() + b": " + draw(_field_values) for name in chosen]
    return b"{" + b", ".join(members) + b"}"


_query_values = st.one_of(
    st.sampled_from(NON_ASCII_DIGITS), st.integers().map(str), _text,
    st.sampled_from(["", "0", "-1", "1" * 40, "\x00", "true", "%", "1e3", "१०"]),
)  # fmt: skip
#: Printable ASCII without surrounding blanks (what the HTTP client agrees to send).
_header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40
).map(str.strip)
_content_types = st.one_of(
    st.just("application/json"), st.just("application/json"), st.just("application/json"),
    st.sampled_from(["application/problem+json", "application/json; charset=latin-1"]),
    _header_text,
)  # fmt: skip
_headers = st.dictionaries(
    st.sampled_from(["Last-Event-ID", "X-Request-ID", "Accept", "X-Whatever"]),
    _header_text,
    max_size=2,
)


@st.composite
def requests(draw: st.DrawFn, route: Route) -> dict[str, Any]:
    """Mostly well-aimed: the route's method, its own query names and body fields, a JSON
    content type, so that the input reaches the decoders; sometimes anything at all."""
    method, template, names, fields = route
    if draw(st.integers(0, 9)) == 0:
        method = draw(st.sampled_from(METHODS))

    def segment(match: re.Match[str]) -> str:
        if match.group(1) == "session_id" and draw(st.integers(0, 3)) > 0:
            return "{sid}"
        return quote(draw(st.text(min_size=1, max_size=30)), safe="/" if ":path" in
                     match.group(0) else "")  # fmt: skip

    name = st.sampled_from(names) if names else st.sampled_from(QUERY_NAMES)
    query_name = st.one_of(name, name, st.sampled_from(QUERY_NAMES), _text)
    return {
        "method": method,
        "path": _PARAMETER.sub(segment, template),
        "query": draw(st.lists(st.tuples(query_name, _query_values), max_size=3)),
        "headers": {"Content-Type": draw(_content_types)} | draw(_headers),
        "body": _body(draw, fields),
    }


@pytest.fixture(scope="module")
def fuzz_client(server: ServerProcess) -> Iterator[httpx.Client]:
    """No connection reuse: the server may close one whose body it did not read."""
    with httpx.Client(
        base_url=server.url,
        headers=bearer(ALICE_TOKEN),
        timeout=HTTP_TIMEOUT,
        limits=httpx.Limits(max_keepalive_connections=0),
    ) as client:
        yield client


@pytest.mark.parametrize("route", ROUTE_CHOICES, ids=[f"{r[0]} {r[1]}" for r in ROUTE_CHOICES])
def test_http_fuzz_never_answers_5xx(
    server: ServerProcess, alice: httpx.Client, fuzz_client: httpx.Client, route: Route
) -> None:
    """Arbitrary paths, query strings, headers and bodies for each route (deep nesting and huge
    numbers included): every answer is below 500, and every error is a problem document.

    Each example gets a fresh session (an example may terminate it). Only the status line
    and headers of each answer are awaited, so a request that happens to open an event stream
    does not keep the test waiting."""
    failures: list[str] = []
    statuses: dict[int, int] = {}

    @FUZZ_SETTINGS
    @given(request=requests(route))
    def check(request: dict[str, Any]) -> None:
        path = request["path"]
        if "{sid}" in path:
            path = path.replace("{sid}", new_session(alice))
        query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in request["query"])
        url = f"{path}?{query}" if query else path
        try:
            with fuzz_client.stream(
                request["method"], url, content=request["body"], headers=request["headers"]
            ) as response:
                status = response.status_code
                kind = response.headers.get("content-type", "")
                if not kind.startswith("text/event-stream"):
                    response.read()
        except httpx.HTTPError as exc:  # the server dropped the connection
            failures.append(f"{request['method']} {url[:120]}: {exc!r}")
            return
        statuses[status] = statuses.get(status, 0) + 1
        if status >= 500 or (status >= 400 and not kind.startswith("application/problem+json")):
            failures.append(f"{request['method']} {url[:120]} -> {status} {kind}")

    check()
    print(f"HTTP fuzz {route[0]} {route[1]}: {sorted(statuses.items())}")
    assert not failures, f"{len(failures)} bad answers:\n" + "\n".join(failures[:20])
    assert server.running


_ops = st.sampled_from([
    "create_session", "get_session_info", "list_sessions", "terminate_session", "purge_session",
    "send_message",
    "get_conversation_history", "clear_conversation", "add_file", "remove_file",
    "get_active_files", "get_file_index", "update_file_index", "put_working_context",
    "get_working_context", "get_working_context_map", "delete_working_context",
    "build_context", "save_session",
    "restore_session", "list_saved_sessions", "delete_saved_session", "cancel", "approve",
    "subscribe", "unsubscribe", "auth", "", "nope",
])  # fmt: skip
_arg_names = st.sampled_from([
    "session_id", "role", "content", "path", "fields", "key", "value", "include", "max_tokens",
    "status", "limit", "cursor", "reason", "call_id", "allow", "metadata", "config",
    "project_root", "after_seq", "subscription", "bogus",
])  # fmt: skip


@st.composite
def frames(draw: st.DrawFn, sid: str) -> str | bytes:
    kind = draw(st.sampled_from(["command", "command", "command", "text", "binary", "deep"]))
    if kind == "text":
        return draw(st.text(max_size=80))
    if kind == "binary":
        return draw(st.binary(max_size=80))
    if kind == "deep":
        depth = draw(st.integers(min_value=100, max_value=5_000))
        return '{"op": "list_sessions", "args": {"x": ' + "[" * depth + "]" * depth + "}}"
    args = draw(st.dictionaries(_arg_names, st.one_of(_json, st.just(sid)), max_size=4))
    command: dict[str, Any] = {"op": draw(_ops), "args": args}
    command |= draw(st.fixed_dictionaries({}, optional={"id": _scalars, "token": _json}))
    return json.dumps(command)


def test_websocket_fuzz_always_gets_a_reply(server: ServerProcess, alice: httpx.Client) -> None:
    """Arbitrary frames on one socket: each gets exactly one reply (ok, or an error below 500)
    and the socket stays open to the end."""
    sid = new_session(alice)
    failures: list[str] = []
    replies = 0
    gone = False
    with connect_sync(
        server.ws_url, additional_headers=bearer(ALICE_TOKEN), open_timeout=HTTP_TIMEOUT
    ) as connection:

        def reply() -> dict[str, Any]:
            while True:
                message: dict[str, Any] = json.loads(connection.recv(timeout=HTTP_TIMEOUT))
                if "subscription" in message and "id" not in message:
                    continue  # an event of a subscription the fuzz opened
                return message

        @settings(FUZZ_SETTINGS, max_examples=WS_FUZZ_EXAMPLES)
        @given(frame=frames(sid))
        def check(frame: str | bytes) -> None:
            nonlocal replies, gone
            if gone:
                return  # the socket is gone (recorded): nothing more can be sent on it
            try:
                connection.send(frame)
                answer = reply()
            except (websockets.ConnectionClosed, TimeoutError) as exc:
                # Recorded, not raised: hypothesis would replay examples on a dead socket.
                failures.append(f"{str(frame)[:100]!r}: {exc!r}")
                gone = True
                return
            replies += 1
            if not answer.get("ok"):
                status = answer.get("error", {}).get("status", 0)
                if not 400 <= status < 500:
                    failures.append(f"{str(frame)[:100]!r} -> {answer}")

        check()
        print(f"WebSocket fuzz: {replies} replies")
        assert not failures, f"{len(failures)} bad replies:\n" + "\n".join(failures[:20])
        connection.send(json.dumps({"id": "last", "op": "get_session_info",
                                    "args": {"session_id": sid}}))  # fmt: skip
        last = reply()
        assert last["id"] == "last", last
        assert last["ok"] is True or last["error"]["status"] < 500, last


#: A traceback line in one of Jidoka's own files: an error the server did not expect.
_OUR_TRACEBACK = re.compile(r'File "[^"]*/jidoka/[^"]*\.py"')


@pytest.fixture(autouse=True)
def _no_traceback_in_server_log(server: ServerProcess) -> Iterator[None]:
    """A hostile request is the client's mistake: the server log must not show an unexpected
    error of ours for it (those are logged with their traceback)."""
    before = len(server.stderr_text(tail=10**9))
    yield
    added = server.stderr_text(tail=10**9)[before:]
    assert not _OUR_TRACEBACK.search(added), added[-4000:]
    assert "unexpected error" not in added, added[-4000:]
