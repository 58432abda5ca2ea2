"""The route table on Starlette's router, and the middlewares, driven as ASGI (no server)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from jidoka.errors import InvalidArgument, LimitExceeded, Unauthorized
from jidoka.server.auth import Authenticator, InflightLimiter
from jidoka.server.middleware import (
    PRINCIPAL_KEY,
    REQUEST_ID_KEY,
    BearerPrincipal,
    InflightBound,
    Problems,
    RequestId,
    StreamTicket,
)
from jidoka.server.responses import RouteNotFound
from jidoka.server.router import ApiRoute, Endpoint, build_router, route_template
from jidoka.server.tickets import LocalTickets, TicketBook


def endpoint(name: str) -> Endpoint:
    async def answer(request: Request) -> Response:
        body = msgspec.json.encode(
            {
                "name": name,
                "params": request.path_params,
                "principal": request.scope.get(PRINCIPAL_KEY),
            }
        )
        return Response(body, media_type="application/json")

    return answer


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


def http(method: str, path: str, query: bytes = b"", headers: Any = ()) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "headers": list(headers),
        "query_string": query,
    }


def answer(sent: list[dict[str, Any]]) -> Any:
    return msgspec.json.decode(sent[1]["body"])


def get(path: str, name: str | None = None, **facts: Any) -> ApiRoute:
    return ApiRoute(path, "GET", endpoint(name or path), **facts)


async def test_fixed_paths_parameters_and_the_rest_of_a_path() -> None:
    app = build_router(
        [
            get("/healthz"),
            get("/v1/s/{sid}"),
            get("/v1/s/{sid}/wc"),
            get("/v1/s/{sid}/wc/{key:path}"),
            get("/v1/s/{sid}/approvals/{call}"),
        ]
    )
    scope = http("GET", "/v1/s/A/wc/notes/2024/plan.md")
    sent = await call(app, scope)
    assert answer(sent)["params"] == {"sid": "A", "key": "notes/2024/plan.md"}
    assert route_template(scope) == "/v1/s/{sid}/wc/{key:path}"  # what metrics label with
    assert answer(await call(app, http("GET", "/v1/s/A/wc")))["params"] == {"sid": "A"}
    assert answer(await call(app, http("GET", "/v1/s/A/approvals/c1")))["name"] == (
        "/v1/s/{sid}/approvals/{call}"
    )
    for unknown in ("/", "/healthz/", "/v1/s/", "/v1/s//wc", "/v1/x/S1", "/v1/s/A/approvals"):
        scope = http("GET", unknown)
        with pytest.raises(RouteNotFound) as missing:  # no redirect, no plain-text 404
            await call(app, scope)
        assert missing.value.status == 404, unknown
        assert route_template(scope) == "unmatched"


async def test_a_405_lists_every_method_of_the_path_and_get_answers_head() -> None:
    app = build_router(
        [
            get("/v1/s/{sid}", "one"),
            ApiRoute("/v1/s/{sid}", "DELETE", endpoint("gone")),
            ApiRoute("/v1/s/{sid}", "PATCH", endpoint("patch")),
        ]
    )
    assert answer(await call(app, http("DELETE", "/v1/s/A")))["name"] == "gone"
    assert (await call(app, http("HEAD", "/v1/s/A")))[0]["status"] == 200
    with pytest.raises(RouteNotFound) as wrong:
        await call(app, http("PUT", "/v1/s/A"))
    assert (wrong.value.status, wrong.value.allow) == (405, "DELETE, GET, HEAD, PATCH")


def test_a_method_defined_twice_for_a_path_is_refused() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        build_router([get("/r"), get("/r")])


async def test_unknown_query_parameters_are_refused_before_the_endpoint() -> None:
    called: list[str] = []

    async def listing(request: Request) -> Response:
        called.append(request.url.query)
        return Response(b"{}", media_type="application/json")

    app = build_router([ApiRoute("/r", "GET", listing, query={"limit", "cursor"}), get("/plain")])
    assert (await call(app, http("GET", "/r", b"limit=5&cursor=x")))[0]["status"] == 200
    for query, unknown in ((b"limt=5", "limt"), (b"limit=5&page=2", "page"), (b"%00=1", "\x00")):
        with pytest.raises(InvalidArgument) as refused:
            await call(app, http("GET", "/r", query))
        assert refused.value.argument == unknown
        assert repr(unknown) in refused.value.message
        assert "cursor, limit" in refused.value.message  # what the route takes
    with pytest.raises(InvalidArgument, match="takes: none"):
        await call(app, http("GET", "/plain", b"x=1"))
    assert called == ["limit=5&cursor=x"]
    # HEAD takes the GET route's parameters.
    assert (await call(app, http("HEAD", "/r", b"limit=1")))[0]["status"] == 200


async def test_unknown_websocket_path_is_closed() -> None:
    sent = await call(build_router(), {"type": "websocket", "path": "/x", "headers": []})
    assert sent == [{"type": "websocket.close", "code": 1000, "reason": ""}]


async def test_the_lifespan_runs_through_the_router() -> None:
    import contextlib

    seen: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        seen.append("start")
        yield
        seen.append("stop")

    inbox = ({"type": "lifespan.startup"}, {"type": "lifespan.shutdown"})
    sent = await call(build_router(lifespan=lifespan), {"type": "lifespan"}, inbox)
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete", "lifespan.shutdown.complete",
    ]  # fmt: skip
    assert seen == ["start", "stop"]


# --- per-route facts: streams, tickets, the in-flight bound ---------------------------------------


def stream_app(limiter: InflightLimiter, tickets: TicketBook) -> Any:
    """A stream route and plain routes (one whose key may end in ``/events``), behind the
    middlewares in their order."""
    counted = [Middleware(InflightBound, limiter=limiter)]
    routes = [
        ApiRoute("/v1/s/{sid}/events", "GET", endpoint("events"), query={"ticket"},
                 stream=True, middleware=[Middleware(StreamTicket, tickets=LocalTickets(tickets))]),
        ApiRoute("/v1/s/{sid}/wc/{key:path}", "PUT", endpoint("put"), inflight=True,
                 middleware=counted),
    ]  # fmt: skip
    auth = Authenticator({"secret-token-0123": "alice"})
    return build_router(
        routes,
        middleware=[
            Middleware(RequestId),
            Middleware(Problems),
            Middleware(BearerPrincipal, auth=auth),
        ],
    )


BEARER = ((b"authorization", b"Bearer secret-token-0123"),)


async def test_only_stream_routes_redeem_a_ticket_and_only_others_count_in_flight() -> None:
    limiter = InflightLimiter(1)
    tickets = TicketBook()
    app = stream_app(limiter, tickets)
    # A path ending in /events that is no stream route: bearer only, counted in flight.
    limiter.acquire("alice")  # the principal's one request in flight
    refused = await call(app, http("PUT", "/v1/s/A/wc/x/events", headers=BEARER))
    assert refused[0]["status"] == 429
    assert msgspec.json.decode(refused[1]["body"])["limit"] == "max_inflight_requests"
    # The stream route does not count, and takes a ticket in place of the header.
    ticket = tickets.issue("alice", path="/v1/s/A/events")
    opened = await call(app, http("GET", "/v1/s/A/events", b"ticket=" + ticket.encode()))
    assert answer(opened) == {"name": "events", "params": {"sid": "A"}, "principal": "alice"}
    limiter.release("alice")
    assert limiter.inflight("alice") == 0
    # A ticket on any other route is refused; it never stands for the bearer there.
    other = tickets.issue("alice")
    sent = await call(app, http("PUT", "/v1/s/A/wc/k", b"ticket=" + other.encode(), BEARER))
    assert sent[0]["status"] == 401
    assert b"event stream only" in sent[1]["body"]
    # Spent tickets and missing tokens are 401s, with the request id.
    again = await call(app, http("GET", "/v1/s/A/events", b"ticket=" + ticket.encode()))
    assert again[0]["status"] == 401
    assert (b"x-request-id", msgspec.json.decode(again[1]["body"])["request_id"].encode()) in (
        again[0]["headers"]
    )
    assert (await call(app, http("GET", "/v1/nowhere")))[0]["status"] == 401  # before routing


async def test_the_in_flight_bound_is_released_when_the_route_fails() -> None:
    limiter = InflightLimiter(1)

    async def fail(request: Request) -> Response:
        raise Unauthorized("no")

    app = build_router(
        [ApiRoute("/v1/r", "GET", fail, middleware=[Middleware(InflightBound, limiter=limiter)])]
    )
    scope = {**http("GET", "/v1/r"), PRINCIPAL_KEY: "bob"}
    with pytest.raises(Unauthorized):
        await call(app, scope)
    assert limiter.inflight("bob") == 0
    limiter.acquire("bob")
    with pytest.raises(LimitExceeded):
        await call(app, {**http("GET", "/v1/r"), PRINCIPAL_KEY: "bob"})


async def test_problems_answer_errors_and_500s_with_the_request_id() -> None:
    async def boom(request: Request) -> Response:
        raise RuntimeError("secret detail")

    app = build_router([get("/r"), ApiRoute("/boom", "GET", boom)],
                       middleware=[Middleware(RequestId), Middleware(Problems)])  # fmt: skip
    scope = http("PUT", "/r", headers=((b"x-request-id", b"req-1"),))
    sent = await call(app, scope)
    assert scope[REQUEST_ID_KEY] == "req-1"
    assert sent[0]["status"] == 405
    headers = dict(sent[0]["headers"])
    assert headers[b"allow"] == b"GET, HEAD"
    assert headers[b"x-request-id"] == b"req-1"
    assert headers[b"content-type"] == b"application/problem+json"
    failed = await call(app, http("GET", "/boom"))
    assert failed[0]["status"] == 500
    assert b"secret detail" not in failed[1]["body"]
