"""The ASGI application: ``create_app(runtime, config)``.

It owns no session state: the :class:`~jidoka.Runtime` it is given does (and is opened and
closed by whoever runs the server, see :mod:`jidoka.server.serve`), so the same app can serve a
runtime embedded in a test, a benchmark or ``jidoka serve``. What it adds is the network's
concerns: routes, auth, limits, problem documents, event streams, metrics and docs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from opentelemetry import metrics as otel_metrics
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp
from starlette.websockets import WebSocket

from ..errors import JidokaError
from ..runtime import Runtime
from .auth import Authenticator, InflightLimiter
from .browser_guard import BrowserGuard, HostPolicy, OriginPolicy
from .config import ServerConfig
from .docs import ApiDocs
from .inputs import parse_seq, query_str
from .metrics import CONTENT_TYPE, PrometheusMetrics
from .middleware import PRINCIPAL_KEY, ApiMiddleware
from .openapi import openapi_document
from .responses import json_response
from .router import Endpoint, JidokaApp, MiddlewareFactory, Route, Router
from .routes import ROUTES, Scopes, SessionRoutes
from .streams import EventStream, StreamRegistry, named_frames
from .tickets import TicketBook
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
        scopes: Scopes,
        auth: Authenticator,
        streams: StreamRegistry,
        metrics: PrometheusMetrics | None,
    ) -> None:
        self.runtime = runtime
        self.config = config
        self.scopes = scopes
        self.auth = auth
        self.streams = streams
        self.metrics = metrics
        self._openapi: bytes | None = None

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
        )
        await session.run()

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await self.runtime.store.ping()
        except (JidokaError, TimeoutError) as exc:
            detail = str(exc) or "the store did not answer in time"
            return json_response({"status": "unavailable", "detail": detail}, 503)
        if self.streams.draining:
            return json_response({"status": "draining"}, 503)
        return json_response({"status": "ready"})

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


def _http_observer(metrics: PrometheusMetrics | None) -> Any:
    provider = metrics.meter_provider if metrics is not None else otel_metrics.get_meter_provider()
    meter = provider.get_meter("jidoka.server")
    requests = meter.create_counter("jidoka.http.requests", unit="{request}",
                                    description="HTTP requests answered")  # fmt: skip
    duration = meter.create_histogram("jidoka.http.request.duration", unit="s",
                                      description="Time to answer an HTTP request")  # fmt: skip

    def observe(method: str, route: str, status: int, seconds: float) -> None:
        attributes: dict[str, str | int] = {
            "http.method": method,
            "http.route": route,
            "http.status_code": status,
        }
        requests.add(1, attributes)
        duration.record(seconds, attributes)

    return observe


def create_app(
    runtime: Runtime,
    config: ServerConfig | None = None,
    *,
    metrics: PrometheusMetrics | None = None,
) -> JidokaApp:
    """The Jidoka ASGI app over a started ``runtime``. ``app.state.streams.drain()`` ends every
    event stream and WebSocket with a final frame (what a graceful shutdown calls first)."""
    config = config or ServerConfig()
    auth = Authenticator(config.tokens, enabled=config.auth_enabled)
    scopes = Scopes(
        runtime.client, auth_enabled=config.auth_enabled, projects_dir=config.projects_dir
    )
    # Without auth there are no principals to tell apart: max_connections bounds the streams.
    per_principal = config.max_streams_per_principal if config.auth_enabled else None
    streams = StreamRegistry(max_per_principal=per_principal)
    endpoints = _Endpoints(runtime, config, scopes, auth, streams, metrics)
    docs = ApiDocs()
    # Stream tickets: issued by a route handler, redeemed by the middleware (the auth step).
    tickets = TicketBook(
        ttl=config.stream_ticket_ttl,
        max_per_principal=config.max_stream_tickets_per_principal,
        max_total=config.max_stream_tickets,
    )
    handlers = SessionRoutes(scopes, tickets)
    by_path: dict[str, dict[str, Route | Endpoint]] = {
        "/healthz": {"GET": endpoints.healthz},
        "/readyz": {"GET": endpoints.readyz},
    }
    for spec in ROUTES:
        # Streams are the app's own endpoints; every other verb is a SessionRoutes handler.
        handler = getattr(endpoints, spec.name) if spec.stream else handlers.handler(spec.name)
        route = Route(handler, frozenset(spec.query), spec.stream)
        by_path.setdefault(spec.path, {})[spec.method] = route
    by_path |= {
        "/metrics": {"GET": endpoints.prometheus},
        "/openapi.json": {"GET": endpoints.openapi},
        "/": {"GET": docs.index},
        "/docs": {"GET": docs.page},
        "/docs/assets/{name}": {"GET": Route(docs.asset, frozenset({"v"}))},  # ?v=<content hash>
    }
    router = Router()
    for path, table in by_path.items():
        router.add(path, table)  # every method of a path at once: a 405 lists them in Allow
    hosts = HostPolicy(config.host, config.allowed_hosts)
    if hosts.wildcard and not config.allowed_hosts:
        logger.warning(
            "listening on every address (%s): requests must name the server by an IP address "
            "or localhost; add each host name clients use with --allowed-host",
            config.host,
        )
    middleware: list[MiddlewareFactory] = [
        functools.partial(
            ApiMiddleware,
            auth=auth,
            limiter=InflightLimiter(config.max_inflight),
            max_body_bytes=config.max_body_bytes,
            observe=_http_observer(metrics),
            access_log=config.access_log,
            is_stream=router.is_stream,
            tickets=tickets,
        ),
        # Inside ApiMiddleware, which turns its refusals into problems with the request id.
        functools.partial(BrowserGuard, hosts=hosts, origins=OriginPolicy(config.cors_origins)),
    ]
    if config.cors_origins:
        middleware.insert(
            0,
            functools.partial(
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
            ),
        )
    app = JidokaApp(router, websockets={"/v1/ws": endpoints.websocket}, middleware=middleware)
    app.state.streams = streams
    app.state.runtime = runtime
    return app
