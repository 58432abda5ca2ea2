"""A browser app follows a session's events the way docs/http-api.md ("Browsers") says, in a
real Chromium, from a page on another loopback origin.

The page fetches a stream ticket (``fetch`` with its bearer token: ``EventSource`` cannot send
one), opens ``EventSource`` with ``?ticket=...&frames=unnamed`` and takes every event -- the
agent's error included -- in its one ``onmessage`` handler. When its ``EventSource`` closes after
having been open (a spent ticket is refused on the automatic reconnect), it fetches a new ticket
and resumes with ``after_seq`` = the last event id; when a fresh one closes without ever opening,
the stream is over (the server's 204) and it stops.

The test drops the connection from the server's side with a real restart (SIGTERM, then a new
``jidoka serve`` on the same port and data directory), writes events while the page is away, and
checks that the page ends with every event of the log exactly once and in order; then it ends the
session and checks that the page's ``EventSource`` is CLOSED and that the server sees no request
of it afterwards (its access log). Every wait is on the page's state or the log, except the one
bounded look for reconnects that must not happen.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import BrowserThread, StaticSite
from tests.e2e.conftest import (
    ALICE_TOKEN,
    ServerProcess,
    http_client,
    serve_command_available,
    sse_frames,
    wait_until,
)

pytestmark = pytest.mark.timeout(240)

#: The agent's first model call fails half-way (its ``error`` event); later calls answer.
FAILING_MODEL = {
    "provider": "scripted",
    "script": [{"chunks": ["half an ans"], "error": {"message": "overloaded", "status": 500}}],
}
#: Longer than Chromium's default reconnection time (3 s): how long the page is watched for a
#: reconnect that must not come once its EventSource is closed.
NO_RECONNECT_WATCH_MS = 4000

#: The app: one message handler for every event; a new ticket for each new connection.
PAGE = """<!doctype html><html><body><h1>jidoka events</h1><script>
window.state = {events: [], opens: 0, tickets: 0, finished: false, readyState: null, notes: []};
const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function newTicket(server, token, sessionId) {
  for (let attempt = 0; attempt < 40; attempt++) {  // about 30 s, then give up
    try {
      const answer = await fetch(server + "/v1/stream-tickets", {
        method: "POST",
        headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json"},
        body: JSON.stringify({session_id: sessionId}),
      });
      if (answer.status === 201) {
        state.tickets++;
        return (await answer.json()).ticket;
      }
      state.notes.push("ticket answered " + answer.status);
    } catch (error) {
      state.notes.push("ticket: " + error);  // the server is restarting: try again
    }
    await pause(Math.min(50 * 2 ** attempt, 1000));
  }
  state.gaveUp = true;
  throw new Error("no stream ticket: " + state.notes.slice(-3).join("; "));
}

async function follow(server, token, sessionId, after) {
  const ticket = await newTicket(server, token, sessionId);
  const url = server + "/v1/sessions/" + sessionId + "/events?frames=unnamed&after_seq=" +
    after + "&ticket=" + encodeURIComponent(ticket);
  const source = new EventSource(url);
  let opened = false;
  source.onopen = () => { opened = true; state.opens++; };
  source.onmessage = (message) => {  // every event, whatever its type
    state.events.push(JSON.parse(message.data));
    state.lastId = message.lastEventId;
  };
  source.onerror = () => {
    if (source.readyState !== EventSource.CLOSED) return;  // it reconnects by itself
    if (opened) {
      follow(server, token, sessionId, state.lastId);  // spent ticket: a new one, resume
    } else {
      state.finished = true;  // a fresh ticket, refused at once: nothing left (204)
      state.readyState = source.readyState;
    }
  };
  state.source = source;
}
</script></body></html>"""


class FixedPortServer(ServerProcess):
    """A ``jidoka serve`` that comes back on the same port after a restart, as a server does
    for a page whose ``EventSource`` URL names that port."""

    port = 0

    def command(self) -> list[str]:
        command = super().command()
        command[command.index("--port") + 1] = str(self.port)
        return command


@pytest.fixture
def site() -> Iterator[StaticSite]:
    with StaticSite({"/": PAGE}) as pages:
        yield pages


@pytest.fixture
def server(tmp_path: Path, site: StaticSite) -> Iterator[FixedPortServer]:
    if not serve_command_available():
        pytest.skip("needs `python -m jidoka serve` (the port is given on its command line)")
    options = {"cors-origin": [site.origin]}
    with FixedPortServer(tmp_path / "data", log_dir=tmp_path, options=options) as process:
        process.port = int(process.url.rsplit(":", 1)[1])
        yield process


def stream_statuses(server: ServerProcess, sid: str) -> list[int]:
    """The statuses of the requests for ``sid``'s event stream, from the access log."""
    line = re.compile(rf"GET /v1/sessions/{sid}/events (\d{{3}}) ")
    return [int(m.group(1)) for m in line.finditer(server.stderr_path.read_text())]


def post(client: httpx.Client, sid: str, content: str) -> int:
    response = client.post(
        f"/v1/sessions/{sid}/messages", json={"role": "user", "content": content}
    )
    assert response.status_code == 201, response.text
    seq: int = response.json()["seq"]
    return seq


def whole_log(server: ServerProcess, sid: str) -> list[dict[str, Any]]:
    """Every event of the ended session, read with the bearer token (no browser)."""
    with (
        http_client(server.url, ALICE_TOKEN) as client,
        client.stream("GET", f"/v1/sessions/{sid}/events", params={"after_seq": 0}) as response,
    ):
        assert response.status_code == 200
        return [f.json() for f in sse_frames(response) if f.comment is None and f.event != "end"]


def test_a_page_follows_a_session_through_a_restart_to_its_end(
    chromium: BrowserThread, server: FixedPortServer, site: StaticSite
) -> None:
    with http_client(server.url, ALICE_TOKEN) as alice:
        created = alice.post("/v1/sessions", json={"llm_config": FAILING_MODEL})
        assert created.status_code == 201, created.text
        sid: str = created.json()["session_id"]

    def scenario(context: Any) -> dict[str, Any]:
        page = context.new_page()
        assert page.goto(site.url()).ok
        # Started, not awaited: the page follows the stream on its own from now on.
        page.evaluate("([s, t, id]) => { follow(s, t, id, 0); }", [server.url, ALICE_TOKEN, sid])
        with http_client(server.url, ALICE_TOKEN) as alice:
            post(alice, sid, "before the restart")
            failed = alice.post(f"/v1/sessions/{sid}/chat?wait=true", json={"text": "hi"})
            assert failed.status_code == 502, failed.text
        # The agent's error reached the one handler (not the page's connection-loss handler).
        page.wait_for_function("state.events.some((e) => e.type === 'error')")
        assert page.evaluate("state.opens") == 1

        server.restart()  # SIGTERM, then the same port and data directory
        with http_client(server.url, ALICE_TOKEN) as alice:
            # Written while the page is away (or coming back): it must get them all the same.
            last = max(post(alice, sid, f"after the restart {i}") for i in range(3))
        page.wait_for_function(f"state.events.some((e) => e.seq === {last})")
        assert page.evaluate("state.opens") == 2  # a new ticket, a new EventSource

        with http_client(server.url, ALICE_TOKEN) as alice:
            assert alice.delete(f"/v1/sessions/{sid}").status_code == 200
        page.wait_for_function("state.finished")
        seen: dict[str, Any] = page.evaluate(
            "({events: state.events, readyState: state.readyState, now: state.source.readyState,"
            " opens: state.opens, tickets: state.tickets, notes: state.notes})"
        )
        seen["statuses"] = wait_until(
            lambda: (got := stream_statuses(server, sid)) and got[-1] == 204 and got,
            30,
            "the 204 in the access log",
        )
        # Anything the page would still send comes within its reconnection time.
        page.evaluate(f"new Promise((resolve) => setTimeout(resolve, {NO_RECONNECT_WATCH_MS}))")
        seen["later"] = page.evaluate("state.source.readyState")
        seen["statuses_later"] = stream_statuses(server, sid)
        return seen

    seen = chromium.run(scenario, timeout=200)
    log = whole_log(server, sid)
    got = seen["events"]
    # Every event, once, in order, whatever its type: no gap across the restart.
    assert [e["seq"] for e in got] == list(range(1, len(log) + 1)), json.dumps(seen)[:2000]
    assert [(e["seq"], e["type"]) for e in got] == [(e["seq"], e["type"]) for e in log]
    assert {"error", "conversation_added", "session_terminated"} <= {e["type"] for e in got}
    assert got[-1]["type"] == "session_terminated"
    # The finished stream stopped the EventSource: CLOSED, and no request from it since.
    assert seen["readyState"] == seen["now"] == seen["later"] == 2  # EventSource.CLOSED
    statuses = seen["statuses"]
    assert seen["statuses_later"] == statuses
    assert statuses[-3:] == [200, 401, 204], statuses  # live, spent ticket, end of stream
    assert statuses.count(200) == 2, statuses  # before and after the restart
    assert seen["tickets"] == 3  # the first, after the restart, after the end


def test_the_fetch_alternative_reads_the_stream_with_a_header(
    chromium: BrowserThread, server: FixedPortServer, site: StaticSite
) -> None:
    """The other browser path of the docs: ``fetch`` with an ``Authorization`` header and a
    reader over the body, parsing the frames itself (no ticket at all)."""
    token = ALICE_TOKEN
    with http_client(server.url, token) as alice:
        sid = alice.post("/v1/sessions").json()["session_id"]
        seq = post(alice, sid, "hello")
        assert alice.delete(f"/v1/sessions/{sid}").status_code == 200
    script = """async ([server, token, sid]) => {
      const answer = await fetch(server + "/v1/sessions/" + sid + "/events?after_seq=0", {
        headers: {"Authorization": "Bearer " + token, "Accept": "text/event-stream"},
      });
      const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
      const frames = [];
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\\n\\n")) >= 0) {
          const frame = {};
          for (const line of buffer.slice(0, cut).split("\\n")) {
            if (line.startsWith(":")) continue;
            const at = line.indexOf(":");
            frame[line.slice(0, at)] = line.slice(at + 1).trimStart();
          }
          buffer = buffer.slice(cut + 2);
          if (frame.data !== undefined) frames.push(frame);
        }
      }
      return {status: answer.status, frames};
    }"""

    def read(context: Any) -> Any:
        page = context.new_page()
        assert page.goto(site.url()).ok
        return page.evaluate(script, [server.url, token, sid])

    seen = chromium.run(read)
    assert seen["status"] == 200
    frames = seen["frames"]
    assert frames[-1]["event"] == "end"
    events = [json.loads(f["data"]) for f in frames[:-1]]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert seq in {e["seq"] for e in events}
    assert events[-1]["type"] == "session_terminated"
