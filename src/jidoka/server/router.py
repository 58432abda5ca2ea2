"""The app's own ASGI core: find the route by the path's segments, call its endpoint.

Starlette's ``Router`` tries each route's regular expression in turn and wraps every endpoint
in two exception-handling layers, and its application adds two more middlewares around that.
On a server answering thousands of small requests a second that is a measurable share of each
request (see ``docs/performance.md``), and none of it is needed here: every path is a fixed
number of segments, some of them ``{parameters}``, so one dictionary probe (paths without
parameters) or a scan of the few templates with the same number of segments finds the route.

What it keeps of Starlette's behaviour: a ``{parameter}`` matches one non-empty segment
(``[^/]+`` on the decoded path) and a last ``{parameter:path}`` the rest of the path, slashes
included; among templates that fit, the first added wins (those of a fixed length are tried
before those ending in a ``:path``); ``HEAD`` is served by the ``GET`` endpoint; an unknown
path is a 404 problem, a known path with an unknown method a 405 problem listing the methods
in ``Allow``, and a WebSocket to an unknown path is closed. Unlike Starlette, a path with an
extra trailing slash is not redirected: an API client gets the 404 and sees its mistake.
Exceptions are left to :class:`~jidoka.server.middleware.ApiMiddleware`, which turns a
:class:`~jidoka.JidokaError` into its problem document and anything else into a 500.

What it adds: each method of a path is a :class:`Route` that declares its query parameters
(any other is refused with a 422 naming it, before the endpoint runs) and whether it is an
event stream. :meth:`Router.is_stream` answers that for the middleware, which runs first and
counts every other request against the in-flight limit -- by the route a request matches,
not by how its path ends (``PUT .../working-context/x/events`` is no stream).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from starlette.datastructures import QueryParams, State
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketClose

from .inputs import check_query
from .middleware import REQUEST_ID_KEY, ROUTE_KEY
from .responses import RouteNotFound, problem_response

__all__ = ["Endpoint", "JidokaApp", "Route", "Router", "WebSocketEndpoint"]

#: Takes the request, answers with any ASGI response (a ``Response``, an event stream).
Endpoint = Callable[[Request], Awaitable[ASGIApp]]
WebSocketEndpoint = Callable[[WebSocket], Awaitable[None]]
#: Wraps an ASGI app in a middleware (``functools.partial(SomeMiddleware, option=...)``).
MiddlewareFactory = Callable[[ASGIApp], ASGIApp]


#: Where :meth:`Router.is_stream` leaves its match for the app's routing of the same request.
_MATCH_KEY: Final = "jidoka.match"
_UNMATCHED: Final = object()


@dataclass(frozen=True, slots=True)
class Route:
    """One method of a path: its endpoint, the query parameters it takes, whether it streams."""

    endpoint: Endpoint
    #: Query parameter names the endpoint reads; a request with any other is refused (422).
    query: frozenset[str] = frozenset()
    #: A long-lived event stream: not counted against the in-flight limit.
    stream: bool = False


@dataclass(frozen=True, slots=True)
class _Template:
    path: str
    literals: tuple[tuple[int, str], ...]  # (segment index, text) of the fixed segments
    params: tuple[tuple[int, str], ...]  # (segment index, name) of the {parameters}
    tail: str | None  # the name of a last {name:path}, which takes the rest of the path
    routes: Mapping[str, Route]  # by method, HEAD included where GET is
    allow: str  # the ``Allow`` header of a 405


class Router:
    """Path templates (``/v1/sessions/{session_id}/messages``) with an endpoint per method."""

    def __init__(self) -> None:
        self._fixed: dict[str, _Template] = {}
        self._by_length: dict[int, list[_Template]] = {}
        self._tails: list[_Template] = []

    def add(self, path: str, endpoints: Mapping[str, Route | Endpoint]) -> None:
        """Add ``path`` with all its methods; a bare endpoint is a :class:`Route` that takes
        no query parameters and is no stream."""
        if not path.startswith("/") or not endpoints:
            raise ValueError(f"a route needs an absolute path and a method: {path!r}")
        methods = {
            method: route if isinstance(route, Route) else Route(route)
            for method, route in endpoints.items()
        }
        if "GET" in methods:
            methods.setdefault("HEAD", methods["GET"])
        segments = path.split("/")
        literals, params = [], []
        tail: str | None = None
        for index, segment in enumerate(segments):
            if segment.startswith("{") and segment.endswith("}"):
                name, _, kind = segment[1:-1].partition(":")
                if kind == "path" and index == len(segments) - 1:
                    tail = name
                elif kind in ("", "str"):
                    params.append((index, name))
                else:
                    raise ValueError(f"unsupported parameter {segment} in {path!r}")
            elif "{" in segment or "}" in segment:
                raise ValueError(f"a parameter must be a whole segment: {path!r}")
            else:
                literals.append((index, segment))
        allow = ", ".join(sorted(methods))
        template = _Template(path, tuple(literals), tuple(params), tail, methods, allow)
        if any(t.path == path for t in self.templates()):
            raise ValueError(f"route {path!r} is already defined: give all its methods at once")
        if tail is not None:
            self._tails.append(template)
        elif params:
            self._by_length.setdefault(len(segments), []).append(template)
        else:
            self._fixed[path] = template

    def templates(self) -> Iterable[_Template]:
        yield from self._fixed.values()
        for templates in self._by_length.values():
            yield from templates
        yield from self._tails

    def match(self, path: str) -> tuple[_Template, dict[str, str]] | None:
        """The route of ``path`` and its parameters, or ``None``."""
        fixed = self._fixed.get(path)
        if fixed is not None:
            return fixed, {}
        segments = path.split("/")
        for template in self._by_length.get(len(segments), ()):
            values = _fit(template, segments)
            if values is not None:
                return template, values
        for template in self._tails:
            last = len(template.literals) + len(template.params)  # the tail's segment index
            if len(segments) > last:
                values = _fit(template, segments)
                if values is not None:
                    assert template.tail is not None
                    values[template.tail] = "/".join(segments[last:])
                    return template, values
        return None

    def is_stream(self, scope: Scope) -> bool:
        """Whether the request in ``scope`` is for a stream route (by its path and method).

        The middleware asks before the app runs; the match is kept in the scope so the app
        does not look the path up a second time."""
        found = self.match(scope["path"])
        scope[_MATCH_KEY] = found
        if found is None:
            return False
        route = found[0].routes.get(scope["method"])
        return route is not None and route.stream


def _fit(template: _Template, segments: list[str]) -> dict[str, str] | None:
    """The parameters if ``segments`` has the template's fixed segments, else ``None``."""
    for index, text in template.literals:
        if segments[index] != text:
            return None
    values = {name: segments[index] for index, name in template.params}
    return values if all(values.values()) else None


_NOT_FOUND: Final = 404
_NOT_ALLOWED: Final = 405


class JidokaApp:
    """The ASGI application :func:`~jidoka.server.create_app` returns.

    ``state`` holds what the server around it needs (``state.streams``, ``state.runtime``).
    ``middleware`` wraps the routing, the first one outermost. A lifespan scope is answered
    at once: the app owns nothing to start or stop (the runtime belongs to its caller).
    """

    def __init__(
        self,
        router: Router,
        *,
        websockets: Mapping[str, WebSocketEndpoint],
        middleware: Iterable[MiddlewareFactory] = (),
    ) -> None:
        self.state = State()
        self.router = router
        self._websockets = dict(websockets)
        app: ASGIApp = self._route
        for wrap in reversed(list(middleware)):
            app = wrap(app)
        self._stack = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        scope["app"] = self
        await self._stack(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if scope["type"] == "websocket":
            endpoint = self._websockets.get(path)
            if endpoint is None:
                await WebSocketClose()(scope, receive, send)
                return
            await endpoint(WebSocket(scope, receive, send))
            return
        cached = scope.pop(_MATCH_KEY, _UNMATCHED)
        found: tuple[_Template, dict[str, str]] | None = (
            self.router.match(path) if cached is _UNMATCHED else cached
        )
        method: str = scope["method"]
        if found is None:
            await self._refuse(scope, receive, send, _NOT_FOUND)
            return
        template, params = found
        scope[ROUTE_KEY] = template.path
        route = template.routes.get(method)
        if route is None:
            await self._refuse(scope, receive, send, _NOT_ALLOWED, {"Allow": template.allow})
            return
        if scope.get("query_string"):
            check_query(QueryParams(scope["query_string"]), route.query)
        scope["path_params"] = params
        response = await route.endpoint(Request(scope, receive, send))
        await response(scope, receive, send)

    @staticmethod
    async def _refuse(
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        headers: dict[str, str] | None = None,
    ) -> None:
        error = RouteNotFound(f"no route {scope['method']} {scope['path']}", status=status)
        await problem_response(error, scope.get(REQUEST_ID_KEY), headers)(scope, receive, send)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
