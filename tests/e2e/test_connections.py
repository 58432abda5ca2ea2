"""Connection limits of ``jidoka serve``, seen by an attacker with raw sockets.

Each test starts its own server with short limits (flags) and talks to it over plain TCP, the
way a hostile client would: an oversized head, a head dribbled in one byte at a time
(slowloris), a silent connection, a body that stops half way, more connections than the cap.
Nothing here sleeps to decide an outcome: a test waits for the server to answer or close the
socket with a ``recv`` that has a generous deadline. The slowloris and stalled-body clients pace
themselves with short ``recv`` timeouts (while watching for the server's answer), and every loop
is bounded.
"""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
import websockets.sync.client

from tests.e2e.conftest import (
    ALICE_TOKEN,
    ServerProcess,
    bearer,
    http_client,
    sse_frames,
    wait_until,
)

#: How long a test waits for the server to answer or close (a deadline, not a pace).
DEADLINE = 10.0
#: Pace of the clients that dribble bytes (a recv timeout between two sends).
PACE = 0.05
#: Short limits, so that the tests are fast.
SHORT = 0.5
#: A limit too long to be reached during a test (so that another one is what acts).
LONG = 60
HEAD = 16 << 10

Make = Callable[..., ServerProcess]


def address(server: ServerProcess) -> tuple[str, int]:
    parts = urlsplit(server.url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


def connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(address(server), timeout=DEADLINE)
    sock.settimeout(DEADLINE)
    return sock


def request(path: str, *headers: str, method: str = "GET", body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as a close);
    fails if it neither closes nor sends within ``DEADLINE`` seconds of the last byte."""
    received = b""
    while len(received) <= limit:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        except TimeoutError:
            raise AssertionError(
                f"the server kept the connection open for {DEADLINE}s; it sent {received[:200]!r}"
            ) from None
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server sent more than {limit} bytes")


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length (the connection stays open)."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole response head: {received!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk, f"closed in the middle of a response body: {received!r}"
        body += chunk
    return int(status_line.split()[1]), headers, body


def refusal(answer: bytes, status: int, limit: str) -> dict[str, Any]:
    """``answer`` is a whole ``status`` response that closes the connection, with a problem
    document naming ``limit``."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), answer[:300]
    assert b"\r\nconnection: close" in head.lower(), head
    assert b"\r\ncontent-type: application/problem+json" in head.lower(), head
    problem: dict[str, Any] = json.loads(body)
    assert problem["status"] == status, problem
    assert problem["limit"] == limit, problem
    assert limit in problem["detail"], problem
    return problem


def established(server: ServerProcess) -> int:
    """The server process's open TCP connections on its port (psutil, from the server's side)."""
    assert server.process is not None
    port = address(server)[1]
    connections = psutil.Process(server.process.pid).net_connections(kind="tcp")
    return sum(
        1 for c in connections if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
    )


def send_all(sock: socket.socket, data: bytes) -> bool:
    """Send ``data`` in pieces; False if the server stopped reading and closed first."""
    view = memoryview(data)
    try:
        for start in range(0, len(view), 65536):
            sock.sendall(view[start : start + 65536])
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def dribble(sock: socket.socket, byte: bytes, most: int) -> tuple[int, bytes]:
    """Send ``byte`` once per ``PACE`` (at most ``most`` times) until the server answers or
    closes; returns how many were sent and what came back (``b""``: closed without a word)."""
    sock.settimeout(PACE)
    try:
        for sent in range(most):
            try:
                sock.sendall(byte)
            except (BrokenPipeError, ConnectionResetError):
                return sent, b""
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                return sent, b""
            sock.settimeout(DEADLINE)
            return sent + 1, answer + (read_until_closed(sock) if answer else b"")
    finally:
        sock.settimeout(DEADLINE)
    raise AssertionError(f"the server still read after {most} bytes, {most * PACE:.0f}s")


# --- request head size ---------------------------------------------------------------------------


def test_oversized_head_is_431_and_closed(make_server: Make) -> None:
    server = make_server(options={"idle-timeout": LONG})
    # One header of 8 MiB: refused while it is still arriving.
    with closing(connect(server)) as sock:
        send_all(sock, request("/healthz", "X-Big: " + "a" * (8 << 20)))
        problem = refusal(read_until_closed(sock), 431, "max_header_bytes")
        assert problem["maximum"] == HEAD
    # Many small headers that add up to more than 16 KiB, in one piece.
    with closing(connect(server)) as sock:
        headers = [f"X-Many-{i}: {'b' * 500}" for i in range(40)]
        send_all(sock, request("/healthz", *headers))
        refusal(read_until_closed(sock), 431, "max_header_bytes")
    # 15 KiB is fine, and the connection stays usable.
    with closing(connect(server)) as sock:
        sock.sendall(request("/healthz", "X-Big: " + "a" * (15 << 10)))
        assert read_response(sock)[0] == 200
        sock.sendall(request("/healthz"))
        assert read_response(sock)[0] == 200


# --- timeouts ------------------------------------------------------------------------------------


def test_slowloris_head_is_closed_after_header_timeout(make_server: Make) -> None:
    """A request line, then one header byte per ``PACE``: every byte arrives well within the
    idle timeout, but the head as a whole never completes; the header timeout ends it."""
    server = make_server(options={"header-timeout": SHORT, "idle-timeout": LONG})
    with closing(connect(server)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        sent, answer = dribble(sock, b"a", most=int(DEADLINE / PACE))
        assert sent < HEAD  # the size limit is not what closed it
        refusal(answer, 408, "header_timeout")


def test_idle_connections_are_closed(make_server: Make) -> None:
    """A connection that never sends a byte, one that is silent after a response, and one that
    sends only empty lines (which begin no request) are all closed after the idle timeout
    (without an answer: there is no request to answer). An event stream and a WebSocket, open
    all along, are answers under way, not idle: they outlive it."""
    server = make_server(options={"idle-timeout": SHORT, "header-timeout": LONG})
    with (
        http_client(server.url, ALICE_TOKEN) as alice,
        websockets.sync.client.connect(server.ws_url, additional_headers=bearer(ALICE_TOKEN)) as ws,
    ):
        sid = alice.post("/v1/sessions", json={}).json()["session_id"]
        with alice.stream("GET", f"/v1/sessions/{sid}/events") as stream:
            assert stream.status_code == 200
            frames = sse_frames(stream)
            with closing(connect(server)) as sock:
                assert read_until_closed(sock) == b""
            with closing(connect(server)) as sock:
                sock.sendall(request("/healthz"))
                assert read_response(sock)[0] == 200
                assert read_until_closed(sock) == b""
            with closing(connect(server)) as sock:
                assert dribble(sock, b"\r\n", most=int(DEADLINE / PACE))[1] == b""
            # Three idle timeouts have passed; the stream and the WebSocket still work.
            posted = alice.post(
                f"/v1/sessions/{sid}/messages", json={"role": "user", "content": "still here"}
            )
            assert posted.status_code == 201, posted.text
            assert any("still here" in (frame.data or "") for frame in frames)
        assert ws.ping().wait(DEADLINE)


def test_stalled_body_is_408_and_frees_the_inflight_slot(make_server: Make) -> None:
    """Content-Length 1000, 10 bytes sent, then nothing: the request ends with a 408 and its
    principal's only in-flight slot (``--max-inflight 1``) is free again."""
    server = make_server(
        options={
            "body-timeout": 1.0,
            "max-inflight": 1,
            "header-timeout": LONG,
            "idle-timeout": LONG,
        }
    )
    auth = f"Authorization: Bearer {ALICE_TOKEN}"
    length = "Content-Length: 1000"
    head = request("/v1/sessions", auth, "Content-Type: application/json", length, method="POST")
    with closing(connect(server)) as stalled, http_client(server.url, ALICE_TOKEN) as alice:
        stalled.sendall(head + b'{"metadata')
        # While the body stalls, the request holds alice's slot: her next one is refused,
        # unless (on a very slow machine) the stalled one has already been answered.
        during = alice.get("/v1/sessions")
        if during.status_code != 429:
            assert select.select([stalled], [], [], 0)[0], during
        problem = refusal(read_until_closed(stalled), 408, "body_timeout")
        assert problem["maximum"] == 1.0
        after = alice.post("/v1/sessions", json={})
        assert after.status_code == 201, after.text
    # The app saw the client go; that is not an error of the server's.
    assert "Traceback" not in server.stderr_text(), server.stderr_text()
    assert " POST /v1/sessions 499 " in server.stderr_text()


# --- the connection cap --------------------------------------------------------------------------


@pytest.fixture
def sockets() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def test_connections_beyond_the_cap_are_refused(make_server: Make, sockets: ExitStack) -> None:
    """``--max-connections 8``: eight connections are served; the next ones get a 503 and are
    closed at once; the server holds eight sockets throughout (psutil); once one of the eight
    goes, a new connection is served again."""
    cap, extra = 8, 4
    server = make_server(
        options={"max-connections": cap, "idle-timeout": LONG, "header-timeout": LONG}
    )
    before = established(server)
    kept = [sockets.enter_context(closing(connect(server))) for _ in range(cap)]
    for sock in kept:  # served, so certainly accepted before the extra ones connect
        sock.sendall(request("/healthz"))
        assert read_response(sock)[0] == 200
    full = established(server)
    for _ in range(extra):
        with closing(connect(server)) as sock:
            answer = read_until_closed(sock)
            problem = refusal(answer, 503, "max_connections")
            assert problem["maximum"] == cap
            assert b"\r\nretry-after: 1\r\n" in answer.lower()
    after = established(server)
    for sock in kept:  # the eight are untouched
        sock.sendall(request("/healthz"))
        assert read_response(sock)[0] == 200
    kept.pop().close()
    freed = wait_until(lambda: established(server) < cap, DEADLINE, "the closed one to go")
    with closing(connect(server)) as sock:
        sock.sendall(request("/healthz"))
        assert read_response(sock)[0] == 200
    print(f"server connections: {before} before, {full} at the cap, {after} after {extra} more")
    assert (before, full, after) == (0, cap, cap)
    assert freed is True
