"""What a web page could make a local server do, without a browser: the headers a page's
requests carry, forged with httpx and websockets against a real ``jidoka serve``.

- A request body must say it is JSON (415): a page may send ``text/plain`` or type-less bodies
  to any address without the browser asking first. Requests without a body need no type.
- A request that changes something, or the WebSocket handshake, with an ``Origin`` that is
  neither the server's own nor a ``--cors-origin`` is refused (403); no ``Origin`` (a program)
  is fine.
- ``Host`` must be a name of the server (421): the loopback names with its port or none,
  plus ``--allowed-host``; that is what defeats DNS rebinding. Probes answer any Host.

Each applies with auth on as well as off. tests/browser/test_hostile_page.py makes the same
attacks from a real Chromium.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

import jidoka
from tests.e2e.conftest import (
    ALICE_TOKEN,
    ServerProcess,
    WsClient,
    bearer,
    http_client,
    problem_of,
)

APP_ORIGIN = "http://app.test:5173"
FOREIGN = "http://127.0.0.1:9"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Auth off, one allowed browser origin, two more host names (one a wildcard)."""
    root = tmp_path_factory.mktemp("local-web")
    options = {
        "insecure-no-auth": True,
        "cors-origin": [APP_ORIGIN],
        "allowed-host": ["jidoka.test", "*.corp.test"],
    }
    with ServerProcess(root / "data", log_dir=root, options=options, tokens={}) as process:
        yield process


@pytest.fixture(params=["auth-off", "auth-on"])
def any_server(
    request: pytest.FixtureRequest, open_server: ServerProcess, server: ServerProcess
) -> Iterator[httpx.Client]:
    """A client of each kind of server: the checks do not depend on auth."""
    if request.param == "auth-off":
        with http_client(open_server.url) as client:
            yield client
    else:
        with http_client(server.url, ALICE_TOKEN) as client:
            yield client


def port_of(server: ServerProcess) -> int:
    return int(server.url.rsplit(":", 1)[1])


def session_ids(client: httpx.Client) -> set[str]:
    response = client.get("/v1/sessions", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return {s["session_id"] for s in response.json()["sessions"]}


def create(client: httpx.Client, **headers: str) -> str:
    response = client.post("/v1/sessions", json={}, headers=headers)
    assert response.status_code == 201, response.text
    session_id: str = response.json()["session_id"]
    return session_id


# --- JSON bodies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,
    ],
)
def test_a_body_must_say_it_is_json(any_server: httpx.Client, content_type: str | None) -> None:
    before = session_ids(any_server)
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps({"metadata": {"by": "a page"}})
    response = any_server.post("/v1/sessions", content=body, headers=headers)
    problem = problem_of(response, "unsupported-media-type", 415)
    assert problem["argument"] == "content-type"
    assert problem.get("content_type") == content_type
    assert "application/json" in problem["detail"]
    assert session_ids(any_server) == before


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/x+json"]
)
def test_json_media_types_are_accepted(any_server: httpx.Client, content_type: str) -> None:
    response = any_server.post(
        "/v1/sessions", content=b"{}", headers={"Content-Type": content_type}
    )
    assert response.status_code == 201, response.text


def test_requests_without_a_body_need_no_content_type(any_server: httpx.Client) -> None:
    """What RemoteClient and the CLI send for verbs without a body: no body, no type."""
    created = any_server.post("/v1/sessions")  # an empty body is every field's default
    assert created.status_code == 201, created.text
    sid = created.json()["session_id"]
    assert any_server.post(f"/v1/sessions/{sid}/cancel").status_code == 200
    assert any_server.post(f"/v1/sessions/{sid}/save").status_code == 201
    assert any_server.delete(f"/v1/sessions/{sid}").json()["status"] == "terminated"


# --- Origin --------------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", [FOREIGN, "null", "http://evil.test", "https://app.test:5173"])
def test_a_foreign_origin_may_not_change_anything(any_server: httpx.Client, origin: str) -> None:
    victim = create(any_server)
    before = session_ids(any_server)
    refused = [
        any_server.post("/v1/sessions", json={}, headers={"Origin": origin}),
        any_server.post("/v1/sessions", headers={"Origin": origin}),  # no body, no type
        any_server.put(
            f"/v1/sessions/{victim}/working-context/k",
            json={"value": 1},
            headers={"Origin": origin},
        ),
        any_server.delete(f"/v1/sessions/{victim}", headers={"Origin": origin}),
    ]
    for response in refused:
        assert problem_of(response, "origin-not-allowed", 403)["origin"] == origin
    assert session_ids(any_server) == before
    info = any_server.get(f"/v1/sessions/{victim}").json()
    assert info["status"] != "terminated"
    assert any_server.get(f"/v1/sessions/{victim}/working-context").json() == {
        "working_context": {}
    }


def test_reads_carry_no_origin_check(any_server: httpx.Client) -> None:
    """A browser shows a cross-origin answer to no page unless CORS allows it; GET changes
    nothing, so it is not refused (nor would a browser send ``Origin`` on a simple one)."""
    assert any_server.get("/v1/sessions", headers={"Origin": FOREIGN}).status_code == 200


def test_the_servers_own_and_the_allowed_origins_may(open_server: ServerProcess) -> None:
    port = port_of(open_server)
    with http_client(open_server.url) as client:
        create(client, Origin=APP_ORIGIN)  # --cors-origin
        create(client, Origin=open_server.url)  # its own: http://127.0.0.1:<port>
        create(client, Origin=f"http://localhost:{port}", Host=f"localhost:{port}")
        create(client, Origin="http://jidoka.test", Host="jidoka.test")  # default port both
        create(client)  # no Origin: not a browser
        # Own origin means the Host's: a page on localhost may not post to 127.0.0.1.
        response = client.post(
            "/v1/sessions", json={}, headers={"Origin": f"http://localhost:{port}"}
        )
        problem_of(response, "origin-not-allowed", 403)


# --- Host ----------------------------------------------------------------------------------------


def test_host_names_the_server(open_server: ServerProcess, server: ServerProcess) -> None:
    port = port_of(open_server)
    answers = {
        f"127.0.0.1:{port}": 200,
        "127.0.0.1": 200,
        f"localhost:{port}": 200,
        "LocalHost.": 200,
        f"[::1]:{port}": 200,
        "evil.test": 421,
        f"evil.test:{port}": 421,  # DNS rebinding: the attacker's name, the server's port
        "localhost:1": 421,  # a loopback name at another port than the bound one
        "127.0.0.1.evil.test": 421,
        # --allowed-host jidoka.test and *.corp.test, at any port:
        "jidoka.test": 200,
        "jidoka.test:8443": 200,
        "api.corp.test": 200,
        f"a.b.corp.test:{port}": 200,
        "corp.test": 421,
        "x.jidoka.test": 421,
    }
    with http_client(open_server.url) as client:
        got = {host: client.get("/v1/sessions", headers={"Host": host}) for host in answers}
    assert {host: r.status_code for host, r in got.items()} == answers
    problem = problem_of(got["evil.test"], "host-not-allowed", 421)
    assert problem["host"] == "evil.test"
    assert "--allowed-host" in problem["detail"]
    # Without --allowed-host (and with auth on), only the defaults: --allowed-host widens.
    with http_client(server.url, ALICE_TOKEN) as client:
        assert client.get("/v1/sessions", headers={"Host": "jidoka.test"}).status_code == 421
        assert client.get("/v1/sessions", headers={"Host": "localhost"}).status_code == 200


def test_a_misdirected_request_changes_nothing(any_server: httpx.Client) -> None:
    before = session_ids(any_server)
    response = any_server.post("/v1/sessions", json={}, headers={"Host": "evil.test"})
    problem_of(response, "host-not-allowed", 421)
    assert session_ids(any_server) == before


def test_probes_answer_any_host_and_the_rest_does_not(any_server: httpx.Client) -> None:
    evil = {"Host": "evil.test"}
    assert any_server.get("/healthz", headers=evil).status_code == 200
    assert any_server.get("/readyz", headers=evil).status_code == 200
    assert any_server.get("/metrics", headers=evil).status_code == 421
    assert any_server.get("/openapi.json", headers=evil).status_code == 421


# --- the WebSocket -------------------------------------------------------------------------------


async def refused_handshake(url: str, **kwargs: Any) -> websockets.InvalidStatus:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with connect(url, open_timeout=30, **kwargs):
            pass
    return refused.value


@pytest.mark.parametrize("origin", [FOREIGN, "null", "http://evil.test"])
async def test_a_websocket_from_a_foreign_origin_never_opens(
    open_server: ServerProcess, server: ServerProcess, origin: str
) -> None:
    for url, headers in ((open_server.ws_url, {}), (server.ws_url, bearer(ALICE_TOKEN))):
        refused = await refused_handshake(url, origin=origin, additional_headers=headers)
        assert refused.response.status_code == 403
        problem = json.loads(refused.response.body or b"{}")
        assert problem["type"].endswith("/origin-not-allowed"), problem
        assert problem["origin"] == origin


async def test_a_websocket_with_a_foreign_host_never_opens(open_server: ServerProcess) -> None:
    """DNS rebinding: the page's own origin, but under the attacker's name."""
    port = port_of(open_server)
    refused = await refused_handshake(
        f"ws://evil.test:{port}/v1/ws",
        host="127.0.0.1",
        port=port,
        origin=f"http://evil.test:{port}",
    )
    assert refused.response.status_code == 421
    assert json.loads(refused.response.body or b"{}")["host"] == f"evil.test:{port}"


@pytest.mark.parametrize("origin", ["none", "own", "cors", "allowed-host"])
async def test_a_websocket_from_an_allowed_origin_works(
    open_server: ServerProcess, origin: str
) -> None:
    port = port_of(open_server)
    url = open_server.ws_url
    extra: dict[str, Any] = {}
    if origin == "own":
        extra = {"origin": open_server.url}
    elif origin == "cors":
        extra = {"origin": APP_ORIGIN}
    elif origin == "allowed-host":
        url = f"ws://jidoka.test:{port}/v1/ws"
        extra = {"origin": f"http://jidoka.test:{port}", "host": "127.0.0.1", "port": port}
    async with connect(url, open_timeout=30, **extra) as connection:
        page = await WsClient(connection).ok("list_sessions")
    assert isinstance(page["sessions"], list)


# --- the project's own clients -------------------------------------------------------------------


async def test_remote_client_keeps_working(open_server: ServerProcess) -> None:
    """RemoteClient sends JSON with its type, nothing without a body, no Origin, its URL's Host."""
    async with jidoka.RemoteClient(open_server.url) as client:
        sid = await client.create_session(metadata={"by": "remote"})
        await client.send_message(sid, "user", "hello")
        await client.put_working_context(sid, "k", {"v": 1})
        assert await client.cancel(sid) is False
        saved = await client.save_session(sid)
        assert saved.session_id == sid
        assert [m.content for m in await client.get_conversation_history(sid)] == ["hello"]
        await client.terminate_session(sid)
        assert (await client.get_session_info(sid)).status == "terminated"
