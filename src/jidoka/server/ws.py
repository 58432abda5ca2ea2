"""``GET /v1/ws``: the client verbs as JSON commands, and event subscriptions, on one socket.

Protocol (``docs/http-api.md``): ``{"id", "op", "args"}`` in, ``{"id", "ok", "result"|"error"}``
out. The ops are the verbs of :data:`jidoka.verbs.VERBS`, their ``args`` the verb's argument
struct (checked here, naming the argument at fault as HTTP does), their ``result`` the very
bytes the HTTP route answers, and errors the same problem documents as HTTP;
``subscribe``/``unsubscribe`` push ``{"subscription", "event"}`` frames. Commands of one socket
run in order (a client that sends a message and then reads the history sees its message); each
subscription is its own task, and one lock serialises writes to the socket.

Whatever a client sends gets a reply, never a dropped socket: a binary frame, a frame that is
not JSON, nests too deep, is not a command, names an unknown op or gives an argument of the
wrong type is answered with an ``invalid-argument`` error naming the part at fault (``frame``,
``command``, ``op``, the argument) and the socket takes the next command. A text frame that is
not UTF-8 is closed with 1007 by the protocol layer before it reaches this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import Annotated, Any, Final
from urllib.parse import urlencode

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from .._remote_verbs import request_for
from ..client import Client
from ..errors import InvalidArgument, JidokaError, Unauthorized
from ..events import Event, encode_event
from ..problems import error_from_problem
from ..scoped import ScopedClient
from ..verbs import VERBS, Scope, Verb, by_name
from .auth import Authenticator
from .forwarding import Forwarder, Forwarding
from .inputs import decode_json, error_path
from .middleware import REQUEST_ID_KEY
from .responses import MalformedBody, problem_body
from .routes import SERVED_ANYWHERE, Scopes
from .streams import StreamRegistry

__all__ = ["WebSocketSession"]

logger = logging.getLogger("jidoka.server.ws")

AUTH_TIMEOUT: Final = 10.0
#: The ops a command may name: every verb that is not the server's own (event streams are
#: ``subscribe`` here, stream tickets are for browsers' ``EventSource``).
OPS: Final = tuple(verb.name for verb in VERBS if verb.websocket)
#: Verbs that may take long: each runs in a task of its own and replies when done, so the
#: socket keeps taking commands (``cancel`` above all) meanwhile.
BACKGROUND: Final = frozenset(verb.name for verb in VERBS if verb.background)
_encode: Final = msgspec.json.Encoder().encode


class _Command(msgspec.Struct, forbid_unknown_fields=True):
    op: str
    id: str | int | None = None
    args: dict[str, Any] = {}
    token: str | None = None


class _SubscribeArgs(msgspec.Struct, forbid_unknown_fields=True):
    session_id: str | None = None
    after_seq: Annotated[int, msgspec.Meta(ge=0)] | None = None


#: The binary frame's refusal (commands are JSON text frames).
_BINARY: Final = "binary frames are not commands: send each command as a JSON text frame"


def _field(exc: msgspec.ValidationError) -> str:
    """The argument a conversion error is about (``$.include[0]`` -> ``include``)."""
    return error_path(exc, "args").split(".", 1)[0].split("[", 1)[0] or "args"


def _converted(op: str, args: dict[str, Any], kind: type[msgspec.Struct]) -> Any:
    """``args`` checked against ``kind`` (type and presence of each argument), naming the
    argument at fault as the HTTP route names it."""
    unknown = set(args) - set(kind.__struct_fields__)
    if unknown:
        raise InvalidArgument(f"{op}: unknown arguments {sorted(unknown)}", argument="args")
    try:
        return msgspec.convert(args, type=kind)
    except msgspec.ValidationError as exc:
        raise InvalidArgument(f"{op}: {exc}", argument=_field(exc)) from None


class WebSocketSession:
    """One connected socket: authenticates, runs commands, pumps subscriptions."""

    def __init__(
        self,
        websocket: WebSocket,
        *,
        scopes: Scopes,
        client: Client,
        auth: Authenticator,
        registry: StreamRegistry,
        forwarding: Forwarding | None = None,
    ) -> None:
        self.ws = websocket
        #: On a node of a cluster: ops on sessions owned elsewhere go to their owner (HTTP).
        self.forwarding = forwarding
        self.scopes = scopes
        self.client = client
        self.auth = auth
        self.registry = registry
        self.principal: str | None = None
        self._send_lock = asyncio.Lock()
        self._subscriptions: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)

    async def run(self) -> None:
        header = self.ws.headers.get("authorization")
        authenticated = False
        if header is not None or not self.auth.enabled:
            try:
                self.principal = self.auth.principal(header)
                authenticated = True
            except Unauthorized:
                await self.ws.close(code=1008, reason="unauthorized")
                return
        await self.ws.accept()
        closer = self._close_for_shutdown
        self.registry.add(closer)
        try:
            if not authenticated and not await self._first_message_auth():
                return
            while True:
                frame = await self._receive()
                if isinstance(frame, bytes):
                    error = InvalidArgument(_BINARY, argument="frame")
                    await self._send({"id": None, "ok": False, "error": self._problem(error)})
                    continue
                await self._command(frame)
        except WebSocketDisconnect:
            pass
        finally:
            self.registry.discard(closer)
            tasks = [*self._subscriptions.values(), *self._background]
            for task in tasks:
                task.cancel()  # a chat's turn goes on: it belongs to the session
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _close_for_shutdown(self) -> None:
        task = asyncio.get_running_loop().create_task(self._close(1001, "server shutting down"))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            async with self._send_lock:
                await self.ws.close(code=code, reason=reason)

    async def _receive(self) -> str | bytes:
        """The next frame: its text, or its bytes if it is a binary frame."""
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
        text: str | None = message.get("text")
        if text is not None:
            return text
        data: bytes | None = message.get("bytes")
        return data or b""

    async def _first_message_auth(self) -> bool:
        try:
            async with asyncio.timeout(AUTH_TIMEOUT):
                frame = await self._receive()
            if isinstance(frame, bytes):
                raise Unauthorized(f"authentication failed: {_BINARY}")
            command = decode_json(frame, _Command, argument="command", what="the first message")
            if command.op != "auth" or command.token is None:
                raise Unauthorized('the first message must be {"op": "auth", "token": ...}')
            self.principal = self.auth.check_token(command.token)
        except (TimeoutError, InvalidArgument, Unauthorized) as exc:
            error = exc if isinstance(exc, Unauthorized) else Unauthorized("authentication failed")
            await self._send({"id": None, "ok": False, "error": self._problem(error)})
            await self._close(1008, "unauthorized")
            return False
        await self._send({"id": command.id, "ok": True, "result": {"principal": self.principal}})
        return True

    async def _command(self, raw: str) -> None:
        request_id: str | int | None = None
        try:
            try:
                command = decode_json(raw, _Command, argument="command", what="the command")
            except MalformedBody as exc:  # not JSON: 422 here, as any bad command
                raise InvalidArgument(exc.message, argument="command") from None
            request_id = command.id
            if command.op in BACKGROUND:
                task = asyncio.get_running_loop().create_task(self._run_background(command))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
                return
            if command.op == "subscribe":
                result, ready = await self._subscribe(command.args)
                await self._send({"id": request_id, "ok": True, "result": result})
                ready.set()  # events only after the client knows the subscription's name
                return
            result = await self._dispatch(command)
        except Exception as exc:
            await self._send({"id": request_id, "ok": False, "error": self._failure(exc)})
            return
        await self._send({"id": request_id, "ok": True, "result": result})

    async def _run_background(self, command: _Command) -> None:
        try:
            result = await self._dispatch(command)
        except Exception as exc:
            await self._send({"id": command.id, "ok": False, "error": self._failure(exc)})
            return
        await self._send({"id": command.id, "ok": True, "result": result})

    def _failure(self, exc: Exception) -> dict[str, Any]:
        """The problem of a failed command. An error that is not a :class:`JidokaError` is a
        bug of ours: its traceback goes to the log, the client gets an internal-error problem
        with the request id, and the socket goes on (as an HTTP request gets a 500)."""
        if not isinstance(exc, JidokaError):
            request_id = self.ws.scope.get(REQUEST_ID_KEY)
            logger.error("websocket %s: unexpected error in a command", request_id, exc_info=exc)
            exc = JidokaError(
                f"internal error (request id {request_id}); the server log has the details"
            )
        return self._problem(exc)

    async def _dispatch(self, command: _Command) -> Any:
        if command.op == "unsubscribe":
            name = command.args.get("subscription")
            task = self._subscriptions.pop(name, None) if isinstance(name, str) else None
            if task is None:
                raise InvalidArgument(f"no subscription {name!r}", argument="subscription")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return {"subscription": name}
        verb = by_name(command.op)
        if verb is None or not verb.websocket:
            expected = [*OPS, "subscribe", "unsubscribe"]
            raise InvalidArgument(
                f"unknown op {command.op[:64]!r}; expected one of {expected}", argument="op"
            )
        parsed = _converted(command.op, command.args, verb.args)
        forwarder = self.forwarding.forwarder if self.forwarding is not None else None
        sid = getattr(parsed, "session_id", None)
        if (
            forwarder is not None
            and verb.scope is Scope.SESSION
            and verb.name not in SERVED_ANYWHERE
            and isinstance(sid, str)
            and not forwarder.is_live(sid)
        ):
            return await self._routed(forwarder, verb, parsed, sid)
        return await self._run_here(verb, parsed)

    async def _run_here(self, verb: Verb, parsed: Any) -> msgspec.Raw:
        result = await self._scoped().run(verb, parsed)
        # The very bytes the HTTP route answers (its body), inside the reply.
        return msgspec.Raw(_encode(result))

    async def _routed(self, forwarder: Forwarder, verb: Verb, parsed: Any, sid: str) -> msgspec.Raw:
        """A node of a cluster: the op runs on the session's owner, as the HTTP request its
        verb makes (the answer's body is the op's result, a problem its error)."""
        request = request_for(verb, msgspec.structs.asdict(parsed))
        target = request.path
        if request.params:
            target += "?" + urlencode(request.params)
        body = request.body or b""
        headers = {"content-type": "application/json"} if request.body is not None else {}
        principal = self.principal

        async def here() -> msgspec.Raw:
            return await self._run_here(verb, parsed)

        async def there(url: str) -> msgspec.Raw | None:
            answer = await forwarder.send(
                url, request.method, target, body, headers, sid, principal
            )
            if answer is None:
                return None
            if answer.status_code >= 400:
                try:
                    problem = msgspec.json.decode(answer.content)
                except msgspec.DecodeError:
                    problem = {"detail": answer.text[:200]}
                raise error_from_problem(problem, status=answer.status_code)
            return msgspec.Raw(answer.content or b"null")

        return await forwarder.route(sid, here, there)

    def _scoped(self) -> ScopedClient:
        return self.scopes(self.principal)

    async def _subscribe(self, args: dict[str, Any]) -> tuple[dict[str, str], asyncio.Event]:
        parsed: _SubscribeArgs = _converted("subscribe", args, _SubscribeArgs)
        sid = parsed.session_id
        name = f"s{next(self._ids)}"
        if sid is None:
            context = self.client.subscribe_to_all_sessions()
        else:
            sid = await self._scoped().owned(sid)
            context = self.client.subscribe_to_session(sid, after_seq=parsed.after_seq)
        # A subscription is an event stream: it counts against the principal's stream limit.
        principal = self.principal
        self.registry.reserve(principal)
        try:
            subscription = await context.__aenter__()
        except BaseException:
            self.registry.release(principal)
            raise
        ready = asyncio.Event()
        visible = self._scoped().visibility()

        async def pump() -> None:
            try:
                await ready.wait()
                async for event in subscription:
                    if sid is None and not await visible(event):
                        continue
                    await self._send_event(name, event)
                await self._send({"subscription": name, "end": True})
            except (WebSocketDisconnect, OSError, RuntimeError):
                pass
            finally:
                await context.__aexit__(None, None, None)

        task = asyncio.create_task(pump())
        # Released when the task is done, even if it is cancelled before it ever ran.
        task.add_done_callback(lambda _: self.registry.release(principal))
        self._subscriptions[name] = task
        return {"subscription": name}, ready

    async def _send_event(self, name: str, event: Event) -> None:
        frame = b'{"subscription":"%s","event":%s}' % (name.encode(), encode_event(event))
        async with self._send_lock:
            await self.ws.send_text(frame.decode())

    async def _send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.ws.send_text(_encode(message).decode())

    def _problem(self, exc: JidokaError) -> dict[str, Any]:
        return problem_body(exc, self.ws.scope.get(REQUEST_ID_KEY))[1]
