"""Stream tickets end to end (``POST /v1/stream-tickets``, then ``?ticket=`` on an event
stream): what a browser's ``EventSource`` authenticates with, since it cannot send a header.

A ticket opens one event stream, once, for a short time, as the principal that asked for it;
it is refused on every other route, never printed in the access log, and a principal cannot
hoard them. Expiry is watched by polling the ticket book's ceiling, never by sleeping.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    ALICE_TOKEN,
    BOB_TOKEN,
    SSEFrame,
    http_client,
    new_session,
    post_message,
    problem_of,
    sse_frames,
    wait_until,
)

#: A ticket from ``secrets.token_urlsafe(32)``: 43 characters of the URL-safe alphabet.
TICKET_CHARS = 43


def ticket(client: httpx.Client, session_id: str | None = None) -> str:
    """A new ticket (for ``session_id``'s stream only, if given), checked for its shape."""
    body = {} if session_id is None else {"session_id": session_id}
    response = client.post("/v1/stream-tickets", json=body)
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    answer = response.json()
    assert set(answer) == {"ticket", "expires_in", "session_id"}, answer
    assert answer["session_id"] == session_id
    assert 0 < answer["expires_in"] <= 60
    value: str = answer["ticket"]
    assert len(value) == TICKET_CHARS, value
    return value


def first_frames(response: httpx.Response, count: int) -> list[SSEFrame]:
    """The first ``count`` event frames of an open stream (the read timeout is the deadline)."""
    got: list[SSEFrame] = []
    for frame in sse_frames(response):
        if frame.comment is None:
            got.append(frame)
            if len(got) == count:
                return got
    raise AssertionError(f"the stream ended after {got}")


@pytest.fixture
def anonymous_client(server: Any) -> Iterator[httpx.Client]:
    """A client with no Authorization header: what an EventSource is."""
    with http_client(server.url) as client:
        yield client


def test_a_ticket_opens_a_session_stream_once(
    alice: httpx.Client, anonymous_client: httpx.Client
) -> None:
    sid = new_session(alice)
    seq = post_message(alice, sid, "hello")
    value = ticket(alice, sid)
    path = f"/v1/sessions/{sid}/events"
    params = {"ticket": value, "after_seq": "0"}
    with anonymous_client.stream("GET", path, params=params) as response:
        assert response.status_code == 200
        frames = first_frames(response, seq)
    assert [int(f.id or 0) for f in frames] == list(range(1, seq + 1))
    assert frames[-1].json()["data"]["content"] == "hello"
    # Spent: the same URL again (what EventSource's own reconnect would send) is refused.
    again = anonymous_client.get(path, params=params)
    problem = problem_of(again, "unauthorized", 401)
    assert value not in problem["detail"]
    assert again.headers["www-authenticate"].startswith("Bearer")


def test_a_ticket_without_a_session_opens_any_of_the_callers_streams(
    alice: httpx.Client, anonymous_client: httpx.Client
) -> None:
    with anonymous_client.stream("GET", "/v1/events", params={"ticket": ticket(alice)}) as one:
        assert one.status_code == 200
        frames = sse_frames(one)
        assert next(frames).comment == "ok"
        sid = new_session(alice)  # the ticket's principal sees its own lifecycle
        frame = next(f for f in frames if f.comment is None)
        assert (frame.json()["session_id"], frame.json()["type"]) == (sid, "session_created")
    seq = post_message(alice, sid, "x")
    params = {"ticket": ticket(alice), "after_seq": str(seq - 1)}
    with anonymous_client.stream("GET", f"/v1/sessions/{sid}/events", params=params) as two:
        assert two.status_code == 200
        assert [int(f.id or 0) for f in first_frames(two, 1)] == [seq]


def test_a_ticket_is_its_principals_only(
    alice: httpx.Client, bob: httpx.Client, anonymous_client: httpx.Client
) -> None:
    """A ticket acts as the principal that asked for it and for nothing more: not for
    another principal's session, nor (if made for one session) for another stream."""
    bobs = new_session(bob)
    mine, other = new_session(alice), new_session(alice)
    # Not for someone else's session, neither when asking nor when using.
    asked = alice.post("/v1/stream-tickets", json={"session_id": bobs})
    problem_of(asked, "session-not-found", 404, session_id=bobs)
    used = anonymous_client.get(
        f"/v1/sessions/{bobs}/events", params={"ticket": ticket(alice), "after_seq": "0"}
    )
    problem_of(used, "session-not-found", 404, session_id=bobs)
    # Made for one session: not for another one of the same principal, nor the global stream.
    for path in (f"/v1/sessions/{other}/events", "/v1/events"):
        refused = anonymous_client.get(path, params={"ticket": ticket(alice, mine)})
        detail = problem_of(refused, "unauthorized", 401)["detail"]
        assert "another event stream" in detail
    # A ticket replaces the Authorization header: with both, the ticket's principal acts.
    with bob.stream(
        "GET", f"/v1/sessions/{mine}/events", params={"ticket": ticket(alice, mine)}
    ) as response:
        assert response.status_code == 200


def test_a_ticket_opens_no_other_route(alice: httpx.Client, anonymous_client: httpx.Client) -> None:
    """Anywhere but an event stream, ``?ticket=`` is no credential (and is not spent)."""
    sid = new_session(alice)
    value = ticket(alice)
    for method, path in (
        ("GET", "/v1/sessions"),
        ("GET", f"/v1/sessions/{sid}"),
        ("GET", f"/v1/sessions/{sid}/messages"),
        ("POST", "/v1/stream-tickets"),  # a ticket cannot mint tickets
        ("DELETE", f"/v1/sessions/{sid}"),
    ):
        response = anonymous_client.request(method, path, params={"ticket": value})
        problem_of(response, "unauthorized", 401)
    assert alice.get(f"/v1/sessions/{sid}").json()["status"] != "terminated"
    with anonymous_client.stream("GET", "/v1/events", params={"ticket": value}) as response:
        assert response.status_code == 200  # still unspent


@pytest.mark.parametrize(
    "params",
    [
        {"ticket": ""},
        {"ticket": "x" * 43},
        {"ticket": "x" * 10_000},
        [("ticket", "a"), ("ticket", "b")],
    ],
    ids=["empty", "unknown", "huge", "twice"],
)
def test_a_bad_ticket_is_401(anonymous_client: httpx.Client, params: Any) -> None:
    problem_of(anonymous_client.get("/v1/events", params=params), "unauthorized", 401)


@pytest.mark.parametrize(
    ("body", "status", "argument"),
    [
        (b'{"session_id": 5}', 422, "session_id"),
        (b'{"stream": "all"}', 422, "body"),  # an unknown field (the detail names it)
        (b"[]", 422, "body"),
        (b"{", 400, "body"),
    ],
)
def test_a_bad_ticket_request_is_refused(
    alice: httpx.Client, body: bytes, status: int, argument: str
) -> None:
    response = alice.post(
        "/v1/stream-tickets", content=body, headers={"Content-Type": "application/json"}
    )
    problem = problem_of(response, "invalid-argument", status)
    assert problem["argument"] == argument
    if b"stream" in body:
        assert "stream" in problem["detail"]


def test_asking_for_a_ticket_needs_the_token(anonymous_client: httpx.Client) -> None:
    problem_of(anonymous_client.post("/v1/stream-tickets"), "unauthorized", 401)


def test_tickets_never_reach_the_access_log(
    server: Any, alice: httpx.Client, anonymous_client: httpx.Client
) -> None:
    sid = new_session(alice)
    used, refused = ticket(alice, sid), ticket(alice, sid)
    with anonymous_client.stream(
        "GET", f"/v1/sessions/{sid}/events", params={"ticket": used}
    ) as response:
        assert response.status_code == 200
    for value in (used, refused):  # spent, and refused for another stream (spent too)
        response = anonymous_client.get("/v1/events", params={"ticket": value})
        problem_of(response, "unauthorized", 401)
    marker = f"/v1/sessions/{sid}/events"
    log = wait_until(
        lambda: (text := server.stderr_path.read_text()).count(f"GET {marker} ") and text,
        10,
        "the stream's access-log line",
    )
    assert f"GET {marker} 200" in log
    assert "GET /v1/events 401" in log
    for value in (used, refused):
        assert value not in log
    assert "ticket=" not in log


def test_outstanding_tickets_are_bounded(make_server: Any) -> None:
    server = make_server(env={"JIDOKA_MAX_STREAM_TICKETS_PER_PRINCIPAL": "3"})
    with http_client(server.url, ALICE_TOKEN) as alice, http_client(server.url, BOB_TOKEN) as bob:
        tickets = [ticket(alice) for _ in range(3)]
        refused = alice.post("/v1/stream-tickets")
        problem = problem_of(refused, "limit-exceeded", 429)
        assert problem["limit"] == "max_stream_tickets_per_principal"
        assert refused.headers["retry-after"] == "1"
        ticket(bob)  # a ceiling per principal: bob is not held back by alice
        # Spending one gives room for one more.
        with (
            http_client(server.url) as anonymous,
            anonymous.stream("GET", "/v1/events", params={"ticket": tickets[0]}) as stream,
        ):
            assert stream.status_code == 200
        ticket(alice)
        problem_of(alice.post("/v1/stream-tickets"), "limit-exceeded", 429)


def test_a_ticket_expires(make_server: Any) -> None:
    """With a 0.2 s lifetime and room for one ticket per principal: once the book has room
    again, the old ticket has expired (unused, it has nowhere else to go), and is refused."""
    server = make_server(
        env={"JIDOKA_STREAM_TICKET_TTL": "0.2", "JIDOKA_MAX_STREAM_TICKETS_PER_PRINCIPAL": "1"}
    )
    with http_client(server.url, ALICE_TOKEN) as alice, http_client(server.url) as anonymous:
        old = ticket(alice)
        wait_until(
            lambda: alice.post("/v1/stream-tickets").status_code == 201,
            30,
            "the first ticket to expire",
        )
        response = anonymous.get("/v1/events", params={"ticket": old})
        problem_of(response, "unauthorized", 401)


def test_tickets_without_auth(make_server: Any) -> None:
    """``--insecure-no-auth``: the route still answers, and tickets still open a stream once
    (they stand for no principal)."""
    server = make_server(options={"insecure-no-auth": True})
    with http_client(server.url) as client:
        sid = new_session(client)
        seq = post_message(client, sid, "hello")
        response = client.post("/v1/stream-tickets", json={"session_id": sid})
        assert response.status_code == 201, response.text
        value = response.json()["ticket"]
        params = {"ticket": value, "after_seq": "0"}
        path = f"/v1/sessions/{sid}/events"
        with client.stream("GET", path, params=params) as stream:
            assert stream.status_code == 200
            assert len(first_frames(stream, seq)) == seq
        problem_of(client.get(path, params=params), "unauthorized", 401)
