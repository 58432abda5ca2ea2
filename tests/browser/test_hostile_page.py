"""A web page the user merely opens must not drive ``jidoka serve --insecure-no-auth``.

The server runs with auth off, as for a personal server on loopback; an attacker's page is served
from another loopback origin and opened in a real Chromium, which then tries what any page can:

- ``no-cors`` POSTs to create a session (``text/plain`` JSON, an empty body, a plain HTML form
  whose ``text/plain`` encoding spells out JSON): the browser sends them without asking;
- a WebSocket to ``/v1/ws`` that lists the sessions (browsers apply no CORS to WebSockets);
- DNS rebinding: a page loaded as ``http://evil.test:<server port>/`` whose name then points at
  127.0.0.1, so the server is its own origin for the browser; only ``Host`` says otherwise.

What counts is on the server's side: the sessions, listed through a plain client, are exactly
those there were before, and nothing the page got back holds the victim's session. Each attack
has a control that shows the browser would carry it out if the server let it (an allowed
``--cors-origin`` page, a page on the server's own name), so a pass means the server refused.
Every wait is on an event of the page (a response, a socket's close, a frame's load).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.conftest import BrowserThread, StaticSite
from tests.e2e.conftest import ServerProcess, http_client

pytestmark = pytest.mark.timeout(180)

SECRET = "the-victims-secret-9f2c"
PAGE = "<!doctype html><html><body><h1>totally harmless page</h1></body></html>"

#: Run in the page: the simple requests any page may send, and what it could observe of them.
SIMPLE_POSTS = """async (server) => {
  const url = server + "/v1/sessions";
  const seen = {};
  const attempt = (init) => fetch(url, {method: "POST", mode: "no-cors", ...init})
    .then((r) => r.type, (e) => "error: " + e);
  seen.text_plain = await attempt({
    headers: {"Content-Type": "text/plain"},
    body: JSON.stringify({metadata: {by: "attacker"}}),
  });
  seen.empty = await attempt({});
  // A form needs no script at all: name + "=" + value makes the JSON.
  seen.form = await new Promise((resolve) => {
    const frame = document.createElement("iframe");
    frame.name = "sink";
    frame.onload = () => resolve("submitted");
    document.body.appendChild(frame);
    const form = document.createElement("form");
    form.method = "POST";
    form.enctype = "text/plain";
    form.action = url;
    form.target = "sink";
    const field = document.createElement("input");
    field.name = '{"metadata": {"by": "form", "x": "';
    field.value = '"}}';
    form.appendChild(field);
    document.body.appendChild(form);
    form.submit();
  });
  return seen;
}"""

#: Run in the page: open the WebSocket, ask for the sessions, report what came back.
WEBSOCKET = """(url) => new Promise((resolve) => {
  const seen = {opened: false, messages: []};
  const socket = new WebSocket(url);
  socket.onopen = () => {
    seen.opened = true;
    socket.send(JSON.stringify({id: "r1", op: "list_sessions", args: {}}));
  };
  socket.onmessage = (message) => { seen.messages.push(message.data); socket.close(); };
  socket.onclose = (event) => { seen.code = event.code; resolve(seen); };
})"""

#: Run in a page whose origin is the server's address: same-origin reads and writes.
SAME_ORIGIN = """async () => {
  const answer = (r) => r.text().then((body) => ({status: r.status, body}));
  const failed = (e) => ({error: String(e)});
  return {
    read: await fetch("/v1/sessions").then(answer, failed),
    create: await fetch("/v1/sessions", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({metadata: {by: "rebinding"}}),
    }).then(answer, failed),
  };
}"""


@pytest.fixture(scope="module")
def sites() -> Iterator[tuple[StaticSite, StaticSite]]:
    """The attacker's site and a friendly one (the origin the server allows with
    ``--cors-origin``), each on a loopback port of its own."""
    with StaticSite({"/": PAGE}) as attacker, StaticSite({"/": PAGE}) as friend:
        yield attacker, friend


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, sites: tuple[StaticSite, StaticSite]
) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("hostile-page")
    options = {"insecure-no-auth": True, "cors-origin": [sites[1].origin]}
    with ServerProcess(root / "data", log_dir=root, options=options, tokens={}) as process:
        yield process


@pytest.fixture(scope="module")
def victim(server: ServerProcess) -> str:
    """A session of the user's, whose metadata no page may read."""
    with http_client(server.url) as client:
        response = client.post("/v1/sessions", json={"metadata": {"secret": SECRET}})
        assert response.status_code == 201, response.text
        session_id: str = response.json()["session_id"]
        return session_id


def sessions(server: ServerProcess) -> dict[str, dict[str, Any]]:
    """Every session's metadata by id, as a plain client (no browser) lists them."""
    with http_client(server.url) as client:
        response = client.get("/v1/sessions", params={"limit": 1000})
        assert response.status_code == 200, response.text
        return {s["session_id"]: s["metadata"] for s in response.json()["sessions"]}


def port_of(server: ServerProcess) -> int:
    return int(server.url.rsplit(":", 1)[1])


def open_page(context: Any, url: str) -> Any:
    page = context.new_page()
    response = page.goto(url)
    assert response is not None
    assert response.ok, response.status
    return page


def test_simple_posts_from_another_origin_create_nothing(
    chromium: BrowserThread,
    server: ServerProcess,
    sites: tuple[StaticSite, StaticSite],
    victim: str,
) -> None:
    attacker, _ = sites
    before = sessions(server)

    def attack(context: Any) -> Any:
        return open_page(context, attacker.url()).evaluate(SIMPLE_POSTS, server.url)

    seen = chromium.run(attack)
    # The browser sent all three (an opaque answer is one it may not read, not a failure).
    assert seen == {"text_plain": "opaque", "empty": "opaque", "form": "submitted"}
    assert sessions(server) == before


def test_a_websocket_from_another_origin_never_opens(
    chromium: BrowserThread,
    server: ServerProcess,
    sites: tuple[StaticSite, StaticSite],
    victim: str,
) -> None:
    attacker, friend = sites
    before = sessions(server)
    ws_url = server.ws_url

    def attack(context: Any) -> Any:
        return open_page(context, attacker.url()).evaluate(WEBSOCKET, ws_url)

    def control(context: Any) -> Any:
        return open_page(context, friend.url()).evaluate(WEBSOCKET, ws_url)

    seen = chromium.run(attack)
    assert seen["opened"] is False, seen
    assert seen["messages"] == [], seen
    assert SECRET not in json.dumps(seen)
    assert victim not in json.dumps(seen)
    # The same script from the allowed origin reads the sessions: the server decided.
    allowed = chromium.run(control)
    assert allowed["opened"] is True, allowed
    assert SECRET in allowed["messages"][0]
    assert sessions(server) == before


def test_a_dns_rebound_page_can_neither_read_nor_create(
    chromium: BrowserThread, server: ServerProcess, victim: str
) -> None:
    """The page is loaded as ``http://evil.test:<server port>/`` (its document supplied by the
    browser's request interception, as the attacker's own server would have answered before
    the name was re-pointed); its requests to its own origin then reach the server."""
    port = port_of(server)
    before = sessions(server)

    def rebound(host: str) -> Any:
        def work(context: Any) -> Any:
            origin = f"http://{host}:{port}"
            page = context.new_page()
            page.route(
                f"{origin}/", lambda route: route.fulfill(body=PAGE, content_type="text/html")
            )
            page.goto(f"{origin}/")
            return {
                **page.evaluate(SAME_ORIGIN),
                "ws": page.evaluate(WEBSOCKET, f"ws://{host}:{port}/v1/ws"),
            }

        return work

    seen = chromium.run(rebound("evil.test"))
    assert seen["read"]["status"] == 421, seen
    assert "host-not-allowed" in seen["read"]["body"]
    assert seen["create"]["status"] == 421, seen
    assert seen["ws"]["opened"] is False, seen
    assert SECRET not in json.dumps(seen)
    assert victim not in json.dumps(seen)
    assert sessions(server) == before
    # Control: the same page under a name the server answers to does read and create.
    own = chromium.run(rebound("localhost"))
    assert own["read"]["status"] == 200, own
    assert SECRET in own["read"]["body"]
    assert own["create"]["status"] == 201, own
    assert own["ws"]["opened"] is True, own
    assert set(sessions(server)) - set(before) == {json.loads(own["create"]["body"])["session_id"]}


def test_the_browser_is_the_debian_chromium(chromium: BrowserThread) -> None:
    """The fixture drives the machine's Chromium (never a downloaded build)."""
    assert chromium.executable.endswith("/chromium")
    assert chromium.version.split(".")[0].isdigit()
