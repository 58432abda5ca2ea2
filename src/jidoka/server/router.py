"""Routing on Starlette's :class:`~starlette.routing.Router`, with the facts of each route on it.

The app *is* a Starlette ``Router`` (no ``Starlette()`` application around it, so none of its
exception-handling layers): :func:`build_router` gives it one :class:`ApiRoute` per method of
a path, a WebSocket route, a 404 problem for an unknown path and no slash redirects (an API
client that adds a trailing slash gets the 404 and sees its mistake).

An :class:`ApiRoute` is a Starlette ``Route`` that also carries what the middlewares must know
about it: the query parameters it takes (any other is a 422 naming it, before the endpoint
runs), whether it is an event stream (it redeems ``?ticket=`` and is long-lived by design) and
whether it counts against the in-flight bound. Those per-route middlewares are wrapped around
the route's own endpoint when the route is made, so a fact about a route lives on the route:
``PUT .../working-context/x/events`` is no stream because its route says so, not because of
how its path ends. A path's routes share one ``Allow`` list, so a 405 names every method the
path has, whichever of its routes Starlette picked as the partial match.

Endpoints are called directly (``await endpoint(request)`` then the response), not through
Starlette's ``request_response`` and ``websocket_session`` wrappers: every error goes up to
:class:`~jidoka.server.middleware.Problems`, which turns it into its problem document.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final

from starlette.datastructures import QueryParams
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import BaseRoute, Match, Route, Router, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketClose

from ..errors import Unauthorized
from .inputs import check_query
from .middleware import TICKET_KEY
from .responses import RouteNotFound

__all__ = [
    "ApiRoute",
    "Endpoint",
    "WebSocketEndpoint",
    "build_router",
    "route_table",
    "route_template",
]

#: Takes the request, answers with any ASGI response (a ``Response``, an event stream).
Endpoint = Callable[[Request], Awaitable[ASGIApp]]
WebSocketEndpoint = Callable[[WebSocket], Awaitable[None]]
_UNMATCHED: Final = "unmatched"


class _Call:
    """The endpoint as an ASGI app: build the request, await the response, send it."""

    __slots__ = ("endpoint",)

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.endpoint(Request(scope, receive, send))
        await response(scope, receive, send)


class _WebSocketCall:
    """A WebSocket endpoint as an ASGI app (Starlette's own wrapper adds an exception layer)."""

    __slots__ = ("endpoint",)

    def __init__(self, endpoint: WebSocketEndpoint) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.endpoint(WebSocket(scope, receive, send))


class ApiRoute(Route):
    """One method of a path (``HEAD`` comes with ``GET``), and the facts the server needs."""

    def __init__(
        self,
        path: str,
        method: str,
        endpoint: Endpoint,
        *,
        query: Iterable[str] = (),
        stream: bool = False,
        inflight: bool = False,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        # An instance, not a function: Starlette then takes it as a plain ASGI app.
        super().__init__(path, _Call(endpoint), methods=[method], middleware=middleware or None)
        self.name = getattr(endpoint, "__name__", self.name)
        #: The query parameter names it reads; a request with any other is refused (422).
        self.query = frozenset(query)
        #: A long-lived event stream: redeems a ``?ticket=`` and is bounded as a stream.
        self.stream = stream
        #: Counts against the principal's in-flight bound while it runs.
        self.inflight = inflight
        #: Every method of the path, for a 405 (set by :func:`build_router`).
        self.allow = ", ".join(sorted(self.methods or ()))
        #: The fixed text the path ends with (``/messages``; empty after a parameter): a path
        #: that does not end with it cannot match, which spares the regular expression.
        self.suffix = "" if path.endswith("}") else path[path.rfind("}") + 1 :]

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        # Most routes of the table are ruled out here, without Starlette's regex match.
        if scope["type"] == "http" and not scope["path"].endswith(self.suffix):
            return Match.NONE, {}
        return super().matches(scope)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            raise RouteNotFound(
                f"no route {scope['method']} {scope['path']}", status=405, allow=self.allow
            )
        if not self.stream and TICKET_KEY in scope:
            # Only an event stream takes a ticket in place of the bearer token.
            raise Unauthorized("a stream ticket opens an event stream only; send the bearer token")
        if scope.get("query_string"):
            check_query(QueryParams(scope["query_string"]), self.query)
        await self.app(scope, receive, send)


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        await WebSocketClose()(scope, receive, send)
        return
    raise RouteNotFound(f"no route {scope['method']} {scope['path']}", status=404)


def build_router(
    routes: Sequence[ApiRoute] = (),
    websockets: Iterable[tuple[str, WebSocketEndpoint]] = (),
    *,
    middleware: Sequence[Middleware] = (),
    lifespan: Any = None,
) -> Router:
    """Starlette's router over ``routes`` and ``websockets`` (see :func:`route_table`), with
    ``middleware`` around it (the first outermost) and the app's ``lifespan``."""
    return Router(
        route_table(routes, websockets),
        redirect_slashes=False,
        default=_not_found,
        lifespan=lifespan,
        middleware=middleware,
    )


def route_table(
    routes: Sequence[ApiRoute], websockets: Iterable[tuple[str, WebSocketEndpoint]] = ()
) -> list[BaseRoute]:
    """The router's table: ``routes`` in order (the first that fits a path wins), each told
    every method of its path (its 405's ``Allow``), then the WebSocket routes. A method
    defined twice for one path is refused."""
    methods: dict[str, set[str]] = {}
    for route in routes:
        known = methods.setdefault(route.path, set())
        if known & (route.methods or set()):
            raise ValueError(f"{sorted(route.methods or ())} {route.path} is defined twice")
        known |= route.methods or set()
    for route in routes:
        route.allow = ", ".join(sorted(methods[route.path]))
    table: list[BaseRoute] = [*routes]
    table += [WebSocketRoute(path, _WebSocketCall(endpoint)) for path, endpoint in websockets]
    return table


def route_template(scope: Scope) -> str:
    """The path template of the route the router matched (``/v1/sessions/{session_id}``),
    for metrics and logs: never an id; ``unmatched`` for a 404."""
    route = scope.get("route")
    return route.path if isinstance(route, Route) else _UNMATCHED
