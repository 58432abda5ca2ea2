"""The ``/v1`` HTTP routes, made from the verb table (:data:`jidoka.verbs.VERBS`).

One generic handler serves every verb: the path parameters, the declared query parameters and
the body become the verb's argument struct, the verb runs on the caller's
:class:`~jidoka.scoped.ScopedClient` (which checks whose session it is), and its answer is
encoded as declared. Validation of values belongs to the core (which names the session and the
argument in its errors), errors to the app's one exception handler, which turns any
:class:`~jidoka.JidokaError` into problem+json. :data:`ROUTES` (the router's table) and the
OpenAPI document both read the verb table, so they cannot disagree: the query parameters a verb
declares are the only ones its route accepts, and a route marked ``stream`` is the only kind the
in-flight limit leaves uncounted.
"""

from __future__ import annotations

import asyncio
import logging
import typing
from collections.abc import Awaitable, Callable
from typing import Any, Final, NamedTuple
from urllib.parse import quote

import msgspec
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from ..client import Client
from ..errors import InvalidArgument
from ..llm.turns import ChatResult
from ..scoped import ScopedClient
from ..verbs import DEFAULT_PAGE, MAX_PAGE, VERBS, Param, Scope, Verb, by_name, selected, sharing
from ..wire import Accepted, StreamTicket, StreamTicketRequest
from .forwarding import FORWARDED_KEY, Forwarding, check_body
from .inputs import decode_json, query_int, query_str
from .middleware import PRINCIPAL_KEY
from .responses import json_response
from .tickets import StreamTickets

__all__ = [
    "DEFAULT_PAGE",
    "MAX_PAGE",
    "ROUTES",
    "SERVED_ANYWHERE",
    "RouteSpec",
    "Scopes",
    "SessionRoutes",
]

logger = logging.getLogger("jidoka.server")


class RouteSpec(NamedTuple):
    """One route, as the router and the OpenAPI document read it (from its :class:`Verb`)."""

    method: str
    path: str
    name: str
    summary: str
    body: type | None
    response: type | None
    status: int
    #: The query parameters it takes; the router refuses any other (422 naming it).
    query: tuple[str, ...]
    #: An event stream: long-lived by design, so not counted as a request in flight (its
    #: handler is the app's, not :class:`SessionRoutes`').
    stream: bool
    verb: Verb


def _route_query(verb: Verb) -> tuple[str, ...]:
    """What a route takes: its verb's query parameters, then each flag that selects another
    verb on it and that verb's own."""
    names = list(verb.query_names)
    for other in sharing(verb):
        assert other.selected_by is not None
        names += [other.selected_by, *other.query_names]
    return tuple(dict.fromkeys(names))


#: One route per method and path: a verb selected by a query flag rides on its route's verb.
ROUTES: Final = tuple(
    RouteSpec(v.method, v.path, v.name, v.summary, v.body, v.result, v.status, _route_query(v),
              v.stream, v)
    for v in VERBS
    if v.selected_by is None
)  # fmt: skip

Handler = Callable[[Request], Awaitable[Response]]

#: Session verbs every node of a cluster serves itself, from the store: the log.
SERVED_ANYWHERE: Final = frozenset({"read_events"})


class Scopes:
    """Makes the :class:`ScopedClient` of a request's principal. Without auth there is one
    anonymous principal, which sees every session (``None``)."""

    __slots__ = ("_auth", "_projects_dir", "client")

    def __init__(self, client: Client, *, auth_enabled: bool, projects_dir: str | None) -> None:
        self.client = client
        self._auth = auth_enabled
        self._projects_dir = projects_dir

    def __call__(self, principal: str | None) -> ScopedClient:
        return self.client.scoped(
            principal if self._auth else None, projects_dir=self._projects_dir
        )

    def of(self, request: Request) -> ScopedClient:
        principal: str | None = request.scope.get(PRINCIPAL_KEY)
        return self(principal)


def _bounds(kind: Any) -> tuple[int, int]:
    """The ``ge``/``le`` of an ``Annotated[int, Meta(...)]`` query parameter."""
    low, high = 0, 10**18 - 1
    for meta in typing.get_args(kind)[1:]:
        if isinstance(meta, msgspec.Meta):
            low = int(meta.ge) if meta.ge is not None else low
            high = int(meta.le) if meta.le is not None else high
    return low, high


def _query_value(query: QueryParams, param: Param, raw: str) -> Any:
    """A query string's value as the parameter's type (what a WebSocket op gets as JSON):
    integers in ASCII digits only (:func:`~jidoka.server.inputs.query_int`)."""
    kind = param.type
    if typing.get_origin(kind) is typing.Annotated and typing.get_args(kind)[0] is int:
        low, high = _bounds(kind)
        return query_int(query, param.name, default=None, minimum=low, maximum=high)
    try:
        return msgspec.convert(raw, kind, strict=False)
    except msgspec.ValidationError as exc:
        message = f"query parameter {param.name}: {exc}"
        raise InvalidArgument(message, argument=param.name) from None


async def arguments(verb: Verb, request: Request) -> Any:
    """The verb's argument struct from the request: path, query and body, each already checked
    against its type (so the struct is built without a second pass)."""
    values: dict[str, Any] = dict(request.path_params)
    query = request.query_params
    for param in verb.query:
        raw = query_str(query, param.name)
        if raw is not None:
            values[param.name] = _query_value(query, param, raw)
        elif param.default is msgspec.NODEFAULT:
            message = f"query parameter {param.name} is required"
            raise InvalidArgument(message, argument=param.name)
    if verb.body is not None:
        raw_body = await request.body()
        if verb.body_optional and not raw_body.strip():
            body = verb.body()
        else:
            body = decode_json(raw_body, verb.body)
        for name in verb.body_fields:
            values[name] = getattr(body, name)
        if "idempotency_key" in values:
            values["idempotency_key"] = _idempotency_key(request, values["idempotency_key"])
    return verb.args(**values)


def _idempotency_key(request: Request, in_body: str | None) -> str | None:
    """The ``Idempotency-Key`` header is the ``idempotency_key`` argument (both: the same)."""
    header = request.headers.get("idempotency-key")
    if header is None:
        return in_body
    if in_body is not None and in_body != header:
        raise InvalidArgument(
            "the Idempotency-Key header and idempotency_key in the body differ",
            argument="idempotency_key",
        )
    return header


class SessionRoutes:
    """The handlers of :data:`ROUTES` (streams aside), by name."""

    def __init__(
        self, scopes: Scopes, tickets: StreamTickets, forwarding: Forwarding | None = None
    ) -> None:
        self.scopes = scopes
        #: On a node of a cluster: commands on sessions owned elsewhere go to their owner.
        self.forwarding = forwarding
        #: Stream tickets this server issues (the middleware redeems them).
        self.tickets = tickets
        #: Turns running in the background (202), until they end: to log how they ended.
        self._background: set[asyncio.Future[ChatResult]] = set()

    def handler(self, name: str) -> Handler:
        if name == "create_stream_ticket":
            return self.create_stream_ticket
        verb = by_name(name)
        if verb is None or verb.call is None:
            raise LookupError(f"no verb {name!r} for a route handler")

        if sharing(verb):

            async def serve(request: Request) -> Response:
                return await self._serve(selected(verb, request.query_params), request)

        else:

            async def serve(request: Request) -> Response:
                return await self._serve(verb, request)

        serve.__name__ = name
        return serve

    async def _serve(self, verb: Verb, request: Request) -> Response:
        forwarder = self.forwarding.forwarder if self.forwarding is not None else None
        if (
            forwarder is None
            or verb.scope is not Scope.SESSION
            or verb.name in SERVED_ANYWHERE
            or FORWARDED_KEY in request.scope
        ):
            if FORWARDED_KEY in request.scope:
                check_body(request, await request.body())
            return await self._serve_here(verb, request)
        sid = request.path_params.get("session_id")
        if not isinstance(sid, str) or forwarder.is_live(sid):
            return await self._serve_here(verb, request)
        # Another node's, or nobody's: to its owner, or taken here (activation on demand).
        principal: str | None = request.scope.get(PRINCIPAL_KEY)

        async def here() -> Response:
            return await self._serve_here(verb, request)

        async def there(url: str) -> Response | None:
            return await forwarder.forward(
                request,
                url,
                sid,
                principal,
                long_lived=(verb.background and _wait(request)) or verb.long_running,
            )

        return await forwarder.route(sid, here, there)

    async def _serve_here(self, verb: Verb, request: Request) -> Response:
        args = await arguments(verb, request)
        scoped = self.scopes.of(request)
        if verb.background and not _wait(request):
            return await self._submit(scoped, args)
        result = await scoped.run(verb, args)
        if result is None:
            return Response(status_code=204)
        headers = {"Location": verb.location(result)} if verb.location is not None else None
        return json_response(result, verb.status, headers)

    async def _submit(self, scoped: ScopedClient, args: Any) -> Response:
        """A turn queued (202) rather than awaited. Queued before answering: a turn the session
        cannot take (busy, or past its queue limits) is the problem answer, not a 202 for a
        turn that will never run."""
        sid = await scoped.owned(args.session_id)
        turn = await scoped.client.submit_chat(sid, args.text)
        self._background.add(turn)
        turn.add_done_callback(self._chat_done)
        events = f"/v1/sessions/{quote(sid, safe='')}/events"
        return json_response(Accepted(session_id=sid, events=events), 202, {"Location": events})

    def _chat_done(self, task: asyncio.Future[ChatResult]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Already an `error` event on the session's stream; the log gets a line too.
            logger.info("background chat ended with %r", task.exception())

    async def create_stream_ticket(self, request: Request) -> Response:
        """A ticket for a browser's ``EventSource`` (see :mod:`jidoka.server.tickets`). With a
        ``session_id``, the session must be the caller's, and the ticket opens its stream only.
        ``Cache-Control: no-store``: it is a credential, if a short-lived one."""
        raw = await request.body()
        body = decode_json(raw, StreamTicketRequest) if raw.strip() else StreamTicketRequest()
        principal: str | None = request.scope.get(PRINCIPAL_KEY)
        sid = path = None
        if body.session_id is not None:
            sid = await self.scopes(principal).owned(body.session_id)
            path = f"/v1/sessions/{sid}/events"
        ticket = await self.tickets.issue(principal, path=path)
        answer = StreamTicket(ticket=ticket, expires_in=self.tickets.ttl, session_id=sid)
        return json_response(answer, 201, {"Cache-Control": "no-store"})


def _wait(request: Request) -> bool:
    """``?wait=true``: answer with the turn's result (the connection stays open for the whole
    turn); without, 202 at once and the turn's progress on the event stream."""
    wait = query_str(request.query_params, "wait")
    if wait not in (None, "true", "false"):
        raise InvalidArgument(f"wait must be true or false, got {wait!r}", argument="wait")
    return wait == "true"
