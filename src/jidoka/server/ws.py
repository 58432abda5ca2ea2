"""``GET /v1/ws``: the client verbs as JSON commands, and event subscriptions, on one socket.

Protocol (``docs/http-api.md``): ``{"id", "op", "args"}`` in, ``{"id", "ok", "result"|"error"}``
out, errors as the same problem documents as HTTP; ``subscribe``/``unsubscribe`` push
``{"subscription", "event"}`` frames. Commands of one socket run in order (a client that sends
a message and then reads the history sees its message); each subscription is its own task, and
one lock serialises writes to the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..client import Client
from ..errors import InvalidArgument, JidokaError, Unauthorized
from ..events import Event, encode_event
from .auth import Authenticator
from .middleware import REQUEST_ID_KEY
from .operations import Operations
from .responses import problem_body
from .streams import StreamRegistry

__all__ = ["WebSocketSession"]

logger = logging.getLogger("jidoka.server.ws")

AUTH_TIMEOUT: Final = 10.0
#: Verbs a command may name: the Operations methods (their first argument is the principal).
VERBS: Final = (
    "create_session", "get_session_info", "list_sessions", "terminate_session",
    "send_message", "get_conversation_history", "clear_conversation", "add_file",
    "remove_file", "get_active_files", "get_file_index", "update_file_index",
    "put_working_context", "get_working_context", "delete_working_context", "build_context",
    "save_session", "restore_session", "list_saved_sessions", "delete_saved_session",
    "chat", "cancel", "approve",
)  # fmt: skip
#: Verbs that may take long: each runs in a task of its own and replies when done, so the
#: socket keeps taking commands (``cancel`` above all) meanwhile.
BACKGROUND: Final = frozenset({"chat"})
_encode: Final = msgspec.json.Encoder().encode


class _Command(msgspec.Struct, forbid_unknown_fields=True):
    op: str
    id: str | int | None = None
    args: dict[str, Any] = {}
    token: str | None = None


class WebSocketSession:
    """One connected socket: authenticates, runs commands, pumps subscriptions."""

    def __init__(
        self,
        websocket: WebSocket,
        *,
        ops: Operations,
        client: Client,
        auth: Authenticator,
        registry: StreamRegistry,
    ) -> None:
        self.ws = websocket
        self.ops = ops
        self.client = client
        self.auth = auth
        self.registry = registry
        self.principal: str | None = None
        self._send_lock = asyncio.Lock()
        self._subscriptions: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._params = {verb: _parameters(getattr(ops, verb)) for verb in VERBS}

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
                raw = await self.ws.receive_text()
                await self._command(raw)
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

    async def _first_message_auth(self) -> bool:
        try:
            async with asyncio.timeout(AUTH_TIMEOUT):
                raw = await self.ws.receive_text()
            command = msgspec.json.decode(raw, type=_Command)
            if command.op != "auth" or command.token is None:
                raise Unauthorized('the first message must be {"op": "auth", "token": ...}')
            self.principal = self.auth.check_token(command.token)
        except (TimeoutError, msgspec.DecodeError, msgspec.ValidationError, Unauthorized) as exc:
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
                command = msgspec.json.decode(raw, type=_Command)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise InvalidArgument(f"invalid command: {exc}", argument="command") from None
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
        except JidokaError as exc:
            await self._send({"id": request_id, "ok": False, "error": self._problem(exc)})
            return
        await self._send({"id": request_id, "ok": True, "result": result})

    async def _run_background(self, command: _Command) -> None:
        try:
            result = await self._dispatch(command)
        except JidokaError as exc:
            await self._send({"id": command.id, "ok": False, "error": self._problem(exc)})
            return
        await self._send({"id": command.id, "ok": True, "result": result})

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
        params = self._params.get(command.op)
        if params is None:
            raise InvalidArgument(
                f"unknown op {command.op!r}; expected one of {[*VERBS, 'subscribe']}",
                argument="op",
            )
        unknown = set(command.args) - params
        if unknown:
            raise InvalidArgument(
                f"{command.op}: unknown arguments {sorted(unknown)}", argument="args"
            )
        method: Callable[..., Awaitable[Any]] = getattr(self.ops, command.op)
        try:
            result = await method(self.principal, **command.args)
        except TypeError as exc:  # a required argument is missing
            raise InvalidArgument(f"{command.op}: {exc}", argument="args") from None
        return msgspec.to_builtins(result)

    async def _subscribe(self, args: dict[str, Any]) -> tuple[dict[str, str], asyncio.Event]:
        unknown = set(args) - {"session_id", "after_seq"}
        if unknown:
            raise InvalidArgument(
                f"subscribe: unknown arguments {sorted(unknown)}", argument="args"
            )
        sid = args.get("session_id")
        name = f"s{next(self._ids)}"
        if sid is None:
            context = self.client.subscribe_to_all_sessions()
        else:
            sid = await self.ops.owned(self.principal, sid)
            context = self.client.subscribe_to_session(sid, after_seq=args.get("after_seq"))
        # A subscription is an event stream: it counts against the principal's stream limit.
        principal = self.principal
        self.registry.reserve(principal)
        try:
            subscription = await context.__aenter__()
        except BaseException:
            self.registry.release(principal)
            raise
        ready = asyncio.Event()
        visible = self.ops.visibility(self.principal)

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


def _parameters(method: Callable[..., Any]) -> frozenset[str]:
    names = list(inspect.signature(method).parameters)
    return frozenset(names[1:])  # the principal is the socket's, not the command's
