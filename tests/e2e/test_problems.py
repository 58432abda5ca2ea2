"""Every error class reachable over HTTP, as an RFC 9457 problem document.

Each test checks the content type, the ``type`` URI, ``title``, ``status``, ``detail``, the
request id, ``session_id`` where one applies, the error's own members, and that no body carries
a stack trace (see ``problem_of``).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.conftest import (
    ALICE_TOKEN,
    BOB_TOKEN,
    ServerProcess,
    http_client,
    new_session,
    problem_of,
    wait_until,
)

NO_SUCH_SESSION = "01ZZZZZZZZZZZZZZZZZZZZZZZZ"
MAX_BODY = 2048
HOLD_DEADLINE = 30.0
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def sid(alice: httpx.Client) -> str:
    return new_session(alice)


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with a small body bound and one request in flight per principal (set through
    the environment, as an operator would)."""
    root = tmp_path_factory.mktemp("e2e-limited")
    env = {"JIDOKA_MAX_BODY_BYTES": str(MAX_BODY), "JIDOKA_MAX_INFLIGHT": "1"}
    with ServerProcess(root / "data", log_dir=root, env=env, name="limited") as process:
        yield process


# --- 404 / 409 ----------------------------------------------------------------------------------


def test_session_not_found(alice: httpx.Client) -> None:
    problem = problem_of(
        alice.get(f"/v1/sessions/{NO_SUCH_SESSION}"),
        "session-not-found",
        404,
        session_id=NO_SUCH_SESSION,
    )
    assert problem["title"] == "Session not found"
    assert NO_SUCH_SESSION in problem["detail"]


def test_session_terminated(alice: httpx.Client, sid: str) -> None:
    assert alice.delete(f"/v1/sessions/{sid}", params={"reason": "over"}).status_code == 200
    response = alice.post(f"/v1/sessions/{sid}/messages", json={"role": "user", "content": "x"})
    problem = problem_of(response, "session-terminated", 409, session_id=sid)
    assert problem["title"] == "Session terminated"
    assert problem["reason"] == "over"


def test_invalid_transition(alice: httpx.Client, sid: str) -> None:
    assert alice.delete(f"/v1/sessions/{sid}").status_code == 200
    problem = problem_of(alice.delete(f"/v1/sessions/{sid}"), "invalid-transition", 409,
                         session_id=sid)  # fmt: skip
    assert problem["title"] == "Invalid lifecycle transition"
    assert problem["from_status"] == "terminated"
    assert problem["to_status"] == "terminating"
    # The detail is for people: status names, not Python reprs of the enum.
    assert "<Status." not in problem["detail"], problem["detail"]
    assert "'terminated'" in problem["detail"]


def test_session_exists(alice: httpx.Client, sid: str) -> None:
    assert alice.post(f"/v1/sessions/{sid}/save").status_code == 201
    problem = problem_of(alice.post(f"/v1/saved-sessions/{sid}/restore"), "session-exists", 409,
                         session_id=sid)  # fmt: skip
    assert problem["title"] == "Session already live"


# --- 422 ----------------------------------------------------------------------------------------


def test_invalid_role(alice: httpx.Client, sid: str) -> None:
    response = alice.post(f"/v1/sessions/{sid}/messages", json={"role": "wizard", "content": "x"})
    problem = problem_of(response, "invalid-role", 422, session_id=sid)
    assert problem["role"] == "wizard"


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"max_history": -1}, "max_history"),
        ({"max_history": "many"}, "max_history"),
        ({"idle_after_seconds": 0}, "idle_after_seconds"),
        ({"no_such_field": 1}, None),
    ],
)
def test_invalid_config(alice: httpx.Client, config: dict[str, Any], field: str | None) -> None:
    problem = problem_of(alice.post("/v1/sessions", json={"config": config}), "invalid-config", 422)
    assert problem["title"] == "Invalid configuration"
    if field is not None:
        assert problem["field"] == field
        assert field in problem["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"role": "user"},  # content missing
        {"role": "user", "content": 5},  # wrong type
        {"role": "user", "content": "x", "extra": True},  # unknown fields are refused
        ["user", "x"],  # not an object
        "user: x",
        None,
        {},
    ],
    ids=["missing-field", "wrong-type", "unknown-field", "array", "string", "null", "empty"],
)
def test_invalid_body_shape(alice: httpx.Client, sid: str, body: Any) -> None:
    raw = json.dumps(body).encode()  # (json=None would send no body at all)
    response = alice.post(
        f"/v1/sessions/{sid}/messages", content=raw, headers={"content-type": "application/json"}
    )
    problem = problem_of(response, "invalid-argument", 422)
    assert problem["title"] == "Invalid argument"
    assert problem["argument"]


def test_invalid_create_body(alice: httpx.Client) -> None:
    problem = problem_of(
        alice.post("/v1/sessions", json={"metadata": "not a mapping"}), "invalid-argument", 422
    )
    assert problem["argument"] == "metadata"


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "1001", "1.5", "", "99999999999999999999"])
def test_bad_limit_query(alice: httpx.Client, limit: str) -> None:
    problem = problem_of(
        alice.get("/v1/sessions", params={"limit": limit}), "invalid-argument", 422
    )
    assert problem["argument"] == "limit"


def test_bad_status_query(alice: httpx.Client) -> None:
    problem = problem_of(alice.get("/v1/sessions", params={"status": "bogus"}), "invalid-argument",
                         422)  # fmt: skip
    assert problem["argument"] == "status"


def test_repeated_query_parameter(alice: httpx.Client) -> None:
    response = alice.get("/v1/sessions?status=active&status=idle")
    assert problem_of(response, "invalid-argument", 422)["argument"] == "status"


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b'{"role": "user", "content": "x"', b"\xff\xfe\x00garbage", b"nul\x00"],
    ids=["broken", "truncated", "not-utf8", "nul"],
)
def test_body_that_is_not_json_is_400(alice: httpx.Client, sid: str, raw: bytes) -> None:
    response = alice.post(
        f"/v1/sessions/{sid}/messages",
        content=raw,
        headers={"content-type": "application/json"},
    )
    problem = problem_of(response, "invalid-argument", 400)
    assert problem["argument"] == "body"


def test_empty_body_where_one_is_required(alice: httpx.Client, sid: str) -> None:
    response = alice.post(f"/v1/sessions/{sid}/messages")  # no body: not JSON either
    assert problem_of(response, "invalid-argument", 400)["argument"] == "body"


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "src/../../outside.txt"])
def test_path_not_allowed(alice: httpx.Client, tmp_path: Path, path: str) -> None:
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "src" / "ok.py").write_text("ok = True\n", encoding="utf-8")
    (tmp_path / "outside.txt").write_text("no\n", encoding="utf-8")
    sid = new_session(alice, project_root=str(root))
    response = alice.post(f"/v1/sessions/{sid}/files", json={"path": path})
    problem = problem_of(response, "path-not-allowed", 422, session_id=sid)
    assert problem["title"] == "Path not allowed"
    assert problem["path"] == path
    assert problem["reason"]
    assert alice.get(f"/v1/sessions/{sid}/files").json() == {"files": []}
    # The same session still takes a path inside its root.
    assert alice.post(f"/v1/sessions/{sid}/files", json={"path": "src/ok.py"}).status_code == 201


def test_path_without_a_project_root(alice: httpx.Client, sid: str) -> None:
    response = alice.post(f"/v1/sessions/{sid}/files", json={"path": "a.py"})
    problem = problem_of(response, "path-not-allowed", 422, session_id=sid)
    assert problem["path"] == "a.py", "the problem should name the path the caller gave"


def test_bad_after_seq(alice: httpx.Client, sid: str) -> None:
    for headers, params in (({"Last-Event-ID": "abc"}, {}), ({}, {"after_seq": "-1"})):
        response = alice.get(f"/v1/sessions/{sid}/events", headers=headers, params=params)
        assert problem_of(response, "invalid-argument", 422)["argument"] == "after_seq"


# --- limits -------------------------------------------------------------------------------------


def test_message_over_max_message_bytes_is_413(alice: httpx.Client) -> None:
    sid = new_session(alice, config={"max_message_bytes": 100})
    fits = alice.post(f"/v1/sessions/{sid}/messages", json={"role": "user", "content": "é" * 50})
    assert fits.status_code == 201, fits.text  # 100 bytes of UTF-8
    response = alice.post(
        f"/v1/sessions/{sid}/messages", json={"role": "user", "content": "x" * 101}
    )
    problem = problem_of(response, "limit-exceeded", 413, session_id=sid)
    assert problem["limit"] == "max_message_bytes"
    assert problem["maximum"] == 100
    assert problem["actual"] == 101
    assert "retry-after" not in response.headers
    history = alice.get(f"/v1/sessions/{sid}/messages").json()["messages"]
    assert [m["content"] for m in history] == ["é" * 50]


def test_count_limit_is_429(alice: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("a\n", encoding="utf-8")
    (tmp_path / "b.py").write_text("b\n", encoding="utf-8")
    sid = new_session(alice, project_root=str(tmp_path), config={"max_files": 1})
    assert alice.post(f"/v1/sessions/{sid}/files", json={"path": "a.py"}).status_code == 201
    response = alice.post(f"/v1/sessions/{sid}/files", json={"path": "b.py"})
    problem = problem_of(response, "limit-exceeded", 429, session_id=sid)
    assert problem["limit"] == "max_files"
    assert problem["maximum"] == 1


def test_body_over_max_body_bytes_is_413(limited: ServerProcess) -> None:
    with http_client(limited.url, ALICE_TOKEN) as client:
        small = client.post("/v1/sessions", json={"metadata": {"x": "y" * 100}})
        assert small.status_code == 201
        response = client.post("/v1/sessions", json={"metadata": {"x": "y" * MAX_BODY}})
        problem = problem_of(response, "limit-exceeded", 413)
        assert problem["limit"] == "max_request_bytes"
        assert problem["maximum"] == MAX_BODY
        assert problem["actual"] > MAX_BODY


def test_streamed_body_over_max_body_bytes_is_413(limited: ServerProcess) -> None:
    """No Content-Length (chunked): the bound applies while the body is read."""

    def chunks() -> Iterator[bytes]:
        yield b'{"metadata": {"x": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}}'

    with http_client(limited.url, ALICE_TOKEN) as client:
        before = len(client.get("/v1/sessions").json()["sessions"])
        response = client.post("/v1/sessions", content=chunks(), headers=JSON)
        problem = problem_of(response, "limit-exceeded", 413)
        assert problem["limit"] == "max_request_bytes"
        assert problem["maximum"] == MAX_BODY
        assert len(client.get("/v1/sessions").json()["sessions"]) == before


class _HeldPost:
    """A ``POST /v1/sessions`` on a raw connection whose body is sent in two halves: in flight
    from the first until :meth:`finish` sends the second."""

    REST = b'{"held": true}}'

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None
        assert parts.port is not None
        self.connection = socket.create_connection((parts.hostname, parts.port), timeout=30)
        first = b'{"metadata": '
        head = (
            f"POST /v1/sessions HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Authorization: Bearer {ALICE_TOKEN}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(first) + len(self.REST)}\r\nConnection: close\r\n\r\n"
        )
        self.connection.sendall(head.encode() + first)

    def answered(self) -> bool:
        """Whether it was answered already: refused (429) because it met a poll of alice's in
        flight, the bound being 1. That race is the test's: the caller holds another."""
        self.connection.setblocking(False)
        try:
            return bool(self.connection.recv(1, socket.MSG_PEEK))
        except BlockingIOError:
            return False
        finally:
            self.connection.setblocking(True)

    def finish(self) -> tuple[int, dict[str, Any]]:
        """Send the rest; the status and JSON body of the answer."""
        self.connection.sendall(self.REST)
        raw = b""
        while chunk := self.connection.recv(65536):
            raw += chunk
        self.connection.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)

    def close(self) -> None:
        self.connection.close()


def test_too_many_requests_in_flight_is_429(limited: ServerProcess) -> None:
    """Hold one request open by not finishing its body; the principal's next request is refused
    with 429 and ``Retry-After``; another principal is not; after the held one finishes, the
    principal is served again."""
    held = _HeldPost(limited.url)
    with (
        http_client(limited.url, ALICE_TOKEN) as alice,
        http_client(limited.url, BOB_TOKEN) as bob,
    ):

        def poll() -> httpx.Response | None:
            nonlocal held
            if held.answered():
                held.close()
                held = _HeldPost(limited.url)
            response = alice.get("/v1/sessions")
            return response if response.status_code == 429 else None

        try:
            # Each poll is a request of alice's: 200 until the held one is in flight.
            refused = wait_until(poll, HOLD_DEADLINE, "the held request to count as in flight")
            problem = problem_of(refused, "limit-exceeded", 429)
            assert problem["limit"] == "max_inflight_requests"
            assert problem["maximum"] == 1
            assert refused.headers["retry-after"] == "1"
            assert bob.get("/v1/sessions").status_code == 200  # per principal
            # Public routes and event streams do not count.
            assert alice.get("/healthz").status_code == 200
            status, created = held.finish()
        finally:
            held.close()
        assert status == 201, created
        assert created["metadata"] == {"held": True}
        assert alice.get("/v1/sessions").status_code == 200


# --- routing and auth ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/nope", "/v1/sessions/x/nope", "/nope", "/v2/sessions"])
def test_unknown_route_is_404_not_found(alice: httpx.Client, path: str) -> None:
    problem = problem_of(alice.get(path), "not-found", 404)
    assert problem["title"] == "Not found"
    assert "session_id" not in problem


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/sessions", {"GET", "POST"}),
        ("PATCH", f"/v1/sessions/{NO_SUCH_SESSION}", {"GET", "DELETE"}),
        ("POST", "/healthz", {"GET"}),
        ("DELETE", "/v1/saved-sessions", {"GET"}),
    ],
)
def test_wrong_method_is_405(
    alice: httpx.Client, method: str, path: str, allowed: set[str]
) -> None:
    response = alice.request(method, path)
    problem = problem_of(response, "method-not-allowed", 405)
    assert problem["title"] == "Method not allowed"
    assert allowed <= {m.strip() for m in response.headers["allow"].split(",")}


def test_unauthorized(anonymous: httpx.Client) -> None:
    response = anonymous.get("/v1/sessions")
    problem = problem_of(response, "unauthorized", 401)
    assert problem["title"] == "Unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer")
