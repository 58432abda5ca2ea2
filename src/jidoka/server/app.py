"""The ASGI application: ``create_app(runtime, config)``, a Starlette ``Router``.

It owns no session state: the :class:`~jidoka.Runtime` it is given does. The runtime is opened
and closed by whoever runs it (a test, an embedding, a benchmark) or, for ``jidoka serve``, by
the app's own lifespan (:mod:`jidoka.server.lifespan`). What the app adds is the network's
concerns: the routes (:mod:`jidoka.server.router`, from :data:`~jidoka.server.routes.ROUTES`),
one middleware per concern (:mod:`jidoka.server.middleware`), event streams, metrics and docs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Router
from starlette.types import ASGIApp
from starlette.websockets import WebSocket

from ..errors import JidokaError
from ..runtime import Runtime
from .auth import Authenticator, InflightLimiter
from .browser_guard import BrowserGuard, HostPolicy, OriginPolicy
from .config import ServerConfig
from .docs import ApiDocs
from .forwarding import Forwarder, Forwarding, Signer
from .inputs import parse_seq, query_str
from .lifespan import ServerLifespan
from .mcp import MCP_PATH, McpEndpoint
from .metrics import CONTENT_TYPE, HttpMetrics, PrometheusMetrics
from .middleware import (
    PRINCIPAL_KEY,
    AccessLog,
    BearerPrincipal,
    BodyLimit,
    InflightBound,
    Problems,
    RequestId,
    StreamTicket,
)
from .openapi import openapi_document
from .responses import json_response
from .router import ApiRoute, build_router, route_table
from .routes import ROUTES, Scopes, SessionRoutes
from .streams import EventStream, StreamRegistry, named_frames
from .tickets import LocalTickets, SharedTickets, StreamTickets, TicketBook
from .ws import WebSocketSession

__all__ = ["create_app"]

logger = logging.getLogger("jidoka.server")
READY_TIMEOUT = 2.0


class _Endpoints:
    """The routes that are not plain request/response verbs: streams, probes, docs."""

    def __init__(
        self,
        runtime: Runtime,
        config: ServerConfig,
        auth: Authenticator,
        streams: StreamRegistry,
        metrics: PrometheusMetrics | None,
    ) -> None:
        self.runtime = runtime
        self.config = config
        self.scopes = Scopes(
            runtime.client, auth_enabled=config.auth_enabled, projects_dir=config.projects_dir
        )
        self.auth = auth
        self.streams = streams
        self.metrics = metrics
        self._openapi: bytes | None = None
        self.forwarding: Forwarding | None = None

    async def session_events(self, request: Request) -> ASGIApp:
        principal = request.scope.get(PRINCIPAL_KEY)
        sid = await self.scopes(principal).owned(request.path_params["session_id"])
        after = _after_seq(request)
        # A session that ended while the client was away still replays what the store holds
        # after its position, then ends; without a position it is a 409 (SessionTerminated).
        stream = EventStream(
            self.runtime.client.subscribe_to_session(sid, after_seq=after),
            registry=self.streams,
            heartbeat=self.config.heartbeat_seconds,
            by_seq=True,
            principal=principal,
            named=named_frames(request.query_params.getlist("frames")),
        )
        await stream.open()
        return stream

    async def all_events(self, request: Request) -> ASGIApp:
        principal = request.scope.get(PRINCIPAL_KEY)
        stream = EventStream(
            self.runtime.client.subscribe_to_all_sessions(),
            registry=self.streams,
            heartbeat=self.config.heartbeat_seconds,
            by_seq=False,
            keep=self.scopes(principal).visibility(),
            principal=principal,
            named=named_frames(request.query_params.getlist("frames")),
        )
        await stream.open()
        return stream

    async def websocket(self, websocket: WebSocket) -> None:
        session = WebSocketSession(
            websocket,
            scopes=self.scopes,
            client=self.runtime.client,
            auth=self.auth,
            registry=self.streams,
            forwarding=self.forwarding,
        )
        await session.run()

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """Ready when the store answers and, on a node of a cluster, the node holds a valid
        lease. A Redis bus that is down makes the node ``degraded``, still ready: streams fall
        back to reading the store, and taking every node out of a balancer for it would turn a
        slower stream into an outage."""
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await self.runtime.store.ping()
        except (JidokaError, TimeoutError) as exc:
            detail = str(exc) or "the store did not answer in time"
            return json_response({"status": "unavailable", "detail": detail}, 503)
        if self.streams.draining:
            return json_response({"status": "draining"}, 503)
        body: dict[str, object] = {"status": "ready", "store": "ok"}
        bus_ok, bus_detail = self.runtime.bus.health()
        body["bus"] = bus_detail
        if not bus_ok:
            body["status"] = "degraded"
        node = self.runtime.node
        if node is not None:
            member_ok, member_detail = node.health()
            body["membership"] = member_detail
            if not member_ok:
                body["status"] = "unavailable"
                return json_response(body, 503)
        return json_response(body)

    async def prometheus(self, request: Request) -> Response:
        body = b"" if self.metrics is None else await asyncio.to_thread(self.metrics.render)
        return Response(body, media_type=CONTENT_TYPE)

    async def openapi(self, request: Request) -> Response:
        if self._openapi is None:
            self._openapi = bytes(json_response(openapi_document()).body)
        return Response(self._openapi, media_type="application/json")


def _after_seq(request: Request) -> int | None:
    """Where a session stream resumes: the most recent position a client can have sent wins.

    A browser's ``EventSource`` reconnects with the ``Last-Event-ID`` header; polyfills that
    cannot set headers append ``?lastEventId=`` instead; both keep the URL's original
    ``?after_seq=``, which is therefore the oldest. So: header, then ``lastEventId``, then
    ``after_seq``; an empty value counts as absent. A bad header is reported as ``after_seq``
    (the position it stands for), a bad query value under its own name.
    """
    header = request.headers.get("last-event-id")
    if header:
        return parse_seq(header, argument="after_seq", source="the Last-Event-ID header")
    query = request.query_params
    for name in ("lastEventId", "after_seq"):
        raw = query_str(query, name)
        if raw:
            return parse_seq(raw, argument=name, source=f"query parameter {name}")
    return None


def create_app(
    runtime: Runtime,
    config: ServerConfig | None = None,
    *,
    metrics: PrometheusMetrics | None = None,
    owns_runtime: bool = False,
    on_ready: Callable[[], None] | None = None,
) -> Router:
    """The Jidoka ASGI app: Starlette's ``Router`` over the routes, with its middlewares and
    lifespan (:class:`~jidoka.server.lifespan.ServerLifespan`).

    Over a running ``runtime`` by default; with ``owns_runtime`` the lifespan starts it (the
    routes are built then) and closes it. The lifespan's shutdown, or a SIGINT/SIGTERM while it
    runs, ends every event stream and WebSocket with a final frame. ``on_ready`` is called once
    the app can serve."""
    config = config or ServerConfig()
    auth = Authenticator(config.tokens, enabled=config.auth_enabled)
    # Without auth there are no principals to tell apart: max_connections bounds the streams.
    per_principal = config.max_streams_per_principal if config.auth_enabled else None
    streams = StreamRegistry(max_per_principal=per_principal)
    # A node of a cluster forwards commands to their sessions' owners (set once it runs).
    forwarding = Forwarding()
    # Stream tickets: issued by a route handler, redeemed by the stream routes.
    tickets = TicketBook(
        ttl=config.stream_ticket_ttl,
        max_per_principal=config.max_stream_tickets_per_principal,
        max_total=config.max_stream_tickets,
    )
    limiter = InflightLimiter(config.max_inflight)
    hosts = HostPolicy(config.host, config.allowed_hosts)
    if hosts.wildcard and not config.allowed_hosts:
        logger.warning(
            "listening on every address (%s): requests must name the server by an IP address "
            "or localhost; add each host name clients use with --allowed-host",
            config.host,
        )
    middleware = [
        Middleware(RequestId),
        *([Middleware(AccessLog)] if config.access_log else []),
        Middleware(HttpMetrics, meter_provider=metrics.meter_provider if metrics else None),
        Middleware(Problems),
        Middleware(BearerPrincipal, auth=auth, forwarding=forwarding),
        Middleware(BodyLimit, max_body_bytes=config.max_body_bytes),
        # Inside Problems and RequestId: its refusals are problems with the request id.
        Middleware(BrowserGuard, hosts=hosts, origins=OriginPolicy(config.cors_origins)),
    ]
    if config.cors_origins:
        middleware.insert(0, _cors(config))

    def build_routes() -> None:
        endpoints = _Endpoints(runtime, config, auth, streams, metrics)
        endpoints.forwarding = forwarding
        node = runtime.node
        if node is not None:
            forwarding.signer = Signer(node.secret, node.node_id)
            forwarding.forwarder = Forwarder(
                node,
                forwarding.signer,
                runtime.manager.is_live,
                keepalive=min(2.0, config.idle_timeout / 2),
            )
        # A cluster's tickets are the store's: issued by one node, redeemed by any.
        shared: StreamTickets = (
            LocalTickets(tickets)
            if node is None
            else SharedTickets(
                node.pg,
                ttl=config.stream_ticket_ttl,
                max_per_principal=config.max_stream_tickets_per_principal,
                max_total=config.max_stream_tickets,
            )
        )
        handlers = SessionRoutes(endpoints.scopes, shared, forwarding)
        mcp.scopes = endpoints.scopes
        routes = _api_routes(endpoints, handlers, limiter, shared)
        counted = [Middleware(InflightBound, limiter=limiter)]
        routes.append(ApiRoute(MCP_PATH, "POST", mcp.endpoint, inflight=True, middleware=counted))
        router.routes[:] = route_table(routes, [("/v1/ws", endpoints.websocket)])

    async def close_forwarding() -> None:
        forwarder, forwarding.forwarder = forwarding.forwarder, None
        if forwarder is not None:
            await forwarder.aclose()

    # Jidoka as an MCP server (jidoka.server.mcp): its SDK session manager runs in the lifespan.
    mcp = McpEndpoint(max_body_bytes=config.max_body_bytes)
    mcp.routing.forwarding = forwarding
    lifespan = ServerLifespan(
        runtime,
        streams,
        owns_runtime=owns_runtime,
        on_ready=on_ready,
        on_close=close_forwarding,
        services=(mcp.running,),
    )
    router = build_router(middleware=middleware, lifespan=lifespan)
    if owns_runtime:
        lifespan.started = build_routes
    else:
        build_routes()
    return router


def _api_routes(
    endpoints: _Endpoints,
    handlers: SessionRoutes,
    limiter: InflightLimiter,
    tickets: StreamTickets,
) -> list[ApiRoute]:
    """One route per method of a path: the probes, the ``/v1`` verbs in :data:`ROUTES` order
    (their streams are the app's endpoints, every other verb a :class:`SessionRoutes`
    handler), then metrics and docs."""
    counted = [Middleware(InflightBound, limiter=limiter)]
    redeem = [Middleware(StreamTicket, tickets=tickets)]
    docs = ApiDocs()
    routes = [
        ApiRoute("/healthz", "GET", endpoints.healthz),
        ApiRoute("/readyz", "GET", endpoints.readyz),
    ]
    for spec in ROUTES:
        handler = getattr(endpoints, spec.name) if spec.stream else handlers.handler(spec.name)
        routes.append(
            ApiRoute(
                spec.path,
                spec.method,
                handler,
                query=spec.query,
                stream=spec.stream,
                inflight=not spec.stream,
                middleware=redeem if spec.stream else counted,
            )
        )
    return [
        *routes,
        ApiRoute("/metrics", "GET", endpoints.prometheus),
        ApiRoute("/openapi.json", "GET", endpoints.openapi),
        ApiRoute("/", "GET", docs.index),
        ApiRoute("/docs", "GET", docs.page),
        ApiRoute("/docs/assets/{name}", "GET", docs.asset, query={"v"}),  # ?v=<content hash>
    ]


def _cors(config: ServerConfig) -> Middleware:
    return Middleware(
        CORSMiddleware,
        allow_origins=list(config.cors_origins),
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        # What browser apps and their SSE libraries send: an EventSource polyfill adds
        # Cache-Control and Last-Event-ID, a retrying client Idempotency-Key.
        allow_headers=[
            "Accept",
            "Authorization",
            "Cache-Control",
            "Content-Type",
            "Idempotency-Key",
            "Last-Event-ID",
            "X-Request-ID",
        ],
        expose_headers=["Location", "X-Request-ID", "Retry-After"],
    )
