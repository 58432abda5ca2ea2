"""The segment router and the app core around it, driven as ASGI (no server)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from starlette.requests import Request
from starlette.responses import Response

from jidoka.errors import InvalidArgument
from jidoka.server.middleware import ROUTE_KEY
from jidoka.server.router import Endpoint, JidokaApp, Route, Router


def endpoint(name: str) -> Endpoint:
    async def answer(request: Request) -> Response:
        body = msgspec.json.encode({"name": name, "params": request.path_params})
        return Response(body, media_type="application/json")

    return answer


def router(*paths: str) -> Router:
    made = Router()
    for path in paths:
        made.add(path, {"GET": endpoint(path)})
    return made


def matched(made: Router, path: str) -> tuple[str, dict[str, str]] | None:
    found = made.match(path)
    return None if found is None else (found[0].path, found[1])


def test_fixed_paths_and_parameters() -> None:
    made = router(
        "/healthz", "/v1/sessions", "/v1/sessions/{session_id}", "/v1/sessions/{session_id}/files"
    )
    assert matched(made, "/healthz") == ("/healthz", {})
    assert matched(made, "/v1/sessions") == ("/v1/sessions", {})
    assert matched(made, "/v1/sessions/S1") == ("/v1/sessions/{session_id}", {"session_id": "S1"})
    assert matched(made, "/v1/sessions/S1/files") == (
        "/v1/sessions/{session_id}/files", {"session_id": "S1"},
    )  # fmt: skip
    for unknown in ("/", "", "/healthz/", "/v1/sessions/", "/v1/sessions//files", "/v1/x/S1"):
        assert matched(made, unknown) is None, unknown
    assert matched(made, "/v1/sessions/S1/files/more") is None


def test_a_path_parameter_takes_the_rest_of_the_path() -> None:
    made = router("/v1/s/{sid}/wc", "/v1/s/{sid}/wc/{key:path}", "/v1/s/{sid}/approvals/{call}")
    assert matched(made, "/v1/s/A/wc/notes/2024/plan.md") == (
        "/v1/s/{sid}/wc/{key:path}", {"sid": "A", "key": "notes/2024/plan.md"},
    )  # fmt: skip
    assert matched(made, "/v1/s/A/wc/k") == ("/v1/s/{sid}/wc/{key:path}", {"sid": "A", "key": "k"})
    assert matched(made, "/v1/s/A/wc") == ("/v1/s/{sid}/wc", {"sid": "A"})
    # Fixed-length templates first: the approvals route is not swallowed by anything.
    assert matched(made, "/v1/s/A/approvals/c1") == (
        "/v1/s/{sid}/approvals/{call}", {"sid": "A", "call": "c1"},
    )  # fmt: skip
    assert matched(made, "/v1/s//wc/k") is None


def test_the_first_template_that_fits_wins() -> None:
    made = router("/v1/{a}/x", "/v1/{b}/{c}")
    assert matched(made, "/v1/q/x") == ("/v1/{a}/x", {"a": "q"})
    assert matched(made, "/v1/q/y") == ("/v1/{b}/{c}", {"b": "q", "c": "y"})


@pytest.mark.parametrize(
    ("path", "complaint"),
    [
        ("relative", "absolute path"),
        ("/v1/{a}b", "whole segment"),
        ("/v1/{a:int}", "unsupported parameter"),
        ("/v1/{rest:path}/more", "unsupported parameter"),
        ("/v1/sessions", "already defined"),
    ],
)
def test_bad_or_repeated_templates_are_refused(path: str, complaint: str) -> None:
    made = router("/v1/sessions")
    with pytest.raises(ValueError, match=complaint):
        made.add(path, {"GET": endpoint(path)})


def test_get_routes_answer_head() -> None:
    made = Router()
    made.add("/r", {"GET": endpoint("get"), "POST": endpoint("post")})
    found = made.match("/r")
    assert found is not None
    assert set(found[0].routes) == {"GET", "HEAD", "POST"}
    assert found[0].allow == "GET, HEAD, POST"


async def call(
    app: Any, scope: dict[str, Any], inbox: tuple[dict[str, Any], ...] = ()
) -> list[dict[str, Any]]:
    """What ``app`` sends for ``scope``; it receives ``inbox`` (default: an empty body)."""
    sent: list[dict[str, Any]] = []
    messages = iter(inbox or ({"type": "http.request", "body": b"", "more_body": False},))

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def http(method: str, path: str) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "headers": [], "query_string": b""}


async def test_app_routes_and_refuses_with_problems() -> None:
    made = Router()
    made.add("/v1/s/{sid}", {"GET": endpoint("one"), "DELETE": endpoint("gone")})
    app = JidokaApp(made, websockets={})
    scope = http("GET", "/v1/s/A")
    ok = await call(app, scope)
    assert ok[0]["status"] == 200
    assert msgspec.json.decode(ok[1]["body"]) == {"name": "one", "params": {"sid": "A"}}
    assert scope[ROUTE_KEY] == "/v1/s/{sid}"  # what the middleware's metrics label with

    missing = await call(app, http("GET", "/v1/nowhere"))
    assert missing[0]["status"] == 404
    assert (b"content-type", b"application/problem+json") in missing[0]["headers"]
    assert b"no route GET /v1/nowhere" in missing[1]["body"]

    wrong = await call(app, http("PUT", "/v1/s/A"))
    assert wrong[0]["status"] == 405
    assert (b"allow", b"DELETE, GET, HEAD") in wrong[0]["headers"]


async def test_errors_are_left_to_the_middleware() -> None:
    async def refuse(request: Request) -> Response:
        raise InvalidArgument("no", argument="x")

    made = Router()
    made.add("/r", {"GET": refuse})
    with pytest.raises(InvalidArgument):
        await call(JidokaApp(made, websockets={}), http("GET", "/r"))


async def test_middleware_wraps_in_order_and_lifespan_completes() -> None:
    order: list[str] = []

    def tag(name: str) -> Any:
        def wrap(inner: Any) -> Any:
            async def app(scope: Any, receive: Any, send: Any) -> None:
                order.append(name)
                await inner(scope, receive, send)

            return app

        return wrap

    app = JidokaApp(router("/r"), websockets={}, middleware=[tag("outer"), tag("inner")])
    await call(app, http("GET", "/r"))
    assert order == ["outer", "inner"]
    assert app.state is not None

    inbox = ({"type": "lifespan.startup"}, {"type": "lifespan.shutdown"})
    lifespan = await call(app, {"type": "lifespan"}, inbox)
    assert [m["type"] for m in lifespan] == [
        "lifespan.startup.complete", "lifespan.shutdown.complete",
    ]  # fmt: skip


async def test_unknown_websocket_path_is_closed() -> None:
    sent = await call(JidokaApp(Router(), websockets={}), {"type": "websocket", "path": "/x"})
    assert sent == [{"type": "websocket.close", "code": 1000, "reason": ""}]


# --- routes: query parameters and streams --------------------------------------------------------


def stream_router() -> Router:
    """A stream route and a plain route whose key may end in ``/events``."""
    made = Router()
    made.add("/v1/s/{sid}/events", {"GET": Route(endpoint("events"), stream=True)})
    made.add("/v1/s/{sid}/wc/{key:path}", {"GET": endpoint("get"), "PUT": endpoint("put")})
    return made


@pytest.mark.parametrize(
    ("method", "path", "stream"),
    [
        ("GET", "/v1/s/A/events", True),
        ("HEAD", "/v1/s/A/events", True),  # HEAD is the GET route
        ("POST", "/v1/s/A/events", False),  # a 405 is answered at once: it counts
        ("PUT", "/v1/s/A/wc/x/events", False),  # a path ending in /events is not a stream
        ("GET", "/v1/s/A/wc/events", False),
        ("GET", "/v1/nowhere/events", False),
        ("GET", "/v1/ws", False),
    ],
)
def test_streams_are_decided_by_the_matched_route(method: str, path: str, stream: bool) -> None:
    assert stream_router().is_stream(http(method, path)) is stream


async def test_the_app_routes_by_the_match_the_stream_test_kept() -> None:
    made = stream_router()
    app = JidokaApp(made, websockets={})
    scope = http("PUT", "/v1/s/A/wc/x/events")
    assert made.is_stream(scope) is False
    sent = await call(app, scope)
    assert msgspec.json.decode(sent[1]["body"]) == {
        "name": "put", "params": {"sid": "A", "key": "x/events"},
    }  # fmt: skip


async def test_unknown_query_parameters_are_refused_before_the_endpoint() -> None:
    called: list[str] = []

    async def listing(request: Request) -> Response:
        called.append(request.url.query)
        return Response(b"{}", media_type="application/json")

    made = Router()
    made.add("/r", {"GET": Route(listing, query=frozenset({"limit", "cursor"}))})
    made.add("/plain", {"GET": endpoint("plain")})
    app = JidokaApp(made, websockets={})
    ok = await call(app, {**http("GET", "/r"), "query_string": b"limit=5&cursor=x"})
    assert ok[0]["status"] == 200
    for query, unknown in ((b"limt=5", "limt"), (b"limit=5&page=2", "page"), (b"%00=1", "\x00")):
        with pytest.raises(InvalidArgument) as refused:
            await call(app, {**http("GET", "/r"), "query_string": query})
        assert refused.value.argument == unknown
        assert repr(unknown) in refused.value.message
        assert "cursor, limit" in refused.value.message  # what the route takes
    with pytest.raises(InvalidArgument, match="takes: none"):
        await call(app, {**http("GET", "/plain"), "query_string": b"x=1"})
    assert called == ["limit=5&cursor=x"]
    # HEAD takes the GET route's parameters.
    head = await call(app, {**http("HEAD", "/r"), "query_string": b"limit=1"})
    assert head[0]["status"] == 200
