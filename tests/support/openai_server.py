"""A real, local OpenAI-compatible HTTP server for tests: Starlette on uvicorn, on loopback.

``POST /v1/chat/completions`` answers in the exact Chat Completions wire format, streaming (SSE:
``data: {chunk}`` ... ``data: [DONE]``, plus the ``choices: []`` usage chunk when the request asks
for ``stream_options.include_usage``) or not. What it answers is scripted per test with a queue of
*behaviours*, one per request::

    async with openai_server() as server:
        server.queue(RateLimited(), Text(["Hel", "lo"]))
        ...  # point a client at server.base_url
        assert len(server.requests) == 2

Behaviours: :class:`Text`, :class:`ToolCalls`, :class:`Status` (any error status, e.g.
:func:`rate_limited`), :class:`Cut` (the connection is closed after k chunks, without ``[DONE]``),
:class:`Slow` (chunks held back until the test sets an :class:`asyncio.Event`), :class:`Hang` (no
answer at all), :class:`Malformed` (an event that is not JSON), :class:`Recorded` (a real
server's answer replayed byte for byte from tests/fixtures/llm_streams). A request with nothing
queued gets a 500 the SDK does not retry.

The server runs in the test's own event loop on a pre-bound, already listening socket (so it is
ready as soon as the context is entered: connections queue in the backlog), and is shut down
without uvicorn's polling sleeps.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import loopback

__all__ = [
    "llm_config",
    "Arrivals",
    "arrived",
    "Cut",
    "Empty",
    "Hang",
    "JSONInstead",
    "Malformed",
    "OpenAIServer",
    "Recorded",
    "RecordedRequest",
    "Slow",
    "Status",
    "Text",
    "ToolCalls",
    "openai_server",
    "rate_limited",
]

MODEL = "test-model"


# --- behaviours ----------------------------------------------------------------------------------


@dataclass
class Text:
    """Answer ``chunks`` of text, one content delta each, then ``finish_reason``."""

    chunks: list[str]
    finish_reason: str = "stop"
    prompt_tokens: int = 7
    completion_tokens: int | None = None  # default: one per chunk
    #: False: ignore ``stream_options.include_usage`` (send no usage), as llama-cpp-python does.
    usage: bool = True


@dataclass
class ToolCalls:
    """Answer tool calls ``(id, name, arguments)``; each call's arguments are split into
    ``pieces`` deltas (the first delta carries id, type and name, as OpenAI does)."""

    calls: list[tuple[str, str, str]]
    text: list[str] = field(default_factory=list)
    pieces: int = 3
    prompt_tokens: int = 11
    completion_tokens: int = 5
    #: True: every fragment repeats the id and the name (llama-cpp-python's shape).
    repeat_name: bool = False
    #: ``length``: the answer was cut by max_tokens (give the last call cut arguments).
    finish_reason: str = "tool_calls"


@dataclass
class Status:
    """Answer HTTP ``status`` with an OpenAI error document and ``headers``."""

    status: int
    message: str = "error"
    headers: dict[str, str] = field(default_factory=dict)


def rate_limited(message: str = "Rate limit reached") -> Status:
    """A 429 asking for an immediate retry. The SDK ignores ``Retry-After: 0`` (it only honours
    delays in (0, 120] s and otherwise backs off 0.5 s, 1 s...), so ``retry-after-ms: 1`` is
    what makes its retry fast."""
    return Status(429, message, {"Retry-After": "0", "retry-after-ms": "1"})


@dataclass
class Cut:
    """Stream ``chunks``, then drop the connection (``abrupt``: no terminating HTTP chunk, the
    client sees a broken body) or end the body cleanly -- either way without a finish_reason
    nor ``[DONE]``."""

    chunks: list[str]
    abrupt: bool = True


@dataclass
class Slow:
    """Stream the first ``before`` chunks, then wait until ``release`` is set (or the client
    disconnects), then stream the rest."""

    chunks: list[str]
    release: asyncio.Event = field(default_factory=asyncio.Event)
    before: int = 1


@dataclass
class Hang:
    """Never answer (not even the status line) until the client goes away."""


@dataclass
class Malformed:
    """Stream ``chunks``, then an SSE event whose data is not JSON."""

    chunks: list[str] = field(default_factory=list)
    data: str = "{this is not json"


@dataclass
class Recorded:
    """Replay a recorded answer of a real server byte for byte: ``NAME.sse`` is the body as it
    came off the wire, ``NAME.json`` its status, headers and how the body ended (``complete``,
    or ``dropped``: the server closed the connection without ending the body). The recorder is
    ``scripts/compat-llama --record``; tests/fixtures/llm_streams/README.md says how each was
    made. The body is sent in the pieces it came in: one per SSE event."""

    path: Path  # either file of the pair, or the name without a suffix

    @property
    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = json.loads(self.path.with_suffix(".json").read_text())
        return meta

    @property
    def body(self) -> bytes:
        return self.path.with_suffix(".sse").read_bytes()

    @property
    def request(self) -> dict[str, Any]:
        """The request the server was sent when this was recorded."""
        request: dict[str, Any] = self.meta["request"]
        return request


@dataclass
class Empty:
    """HTTP 200 with an event stream that has no event at all, then the end of the body (or a
    dropped connection, ``dropped``): a server that failed after answering 200."""

    dropped: bool = False


@dataclass
class JSONInstead:
    """HTTP 200 with a JSON error document where the stream should be."""

    message: str


Behaviour = (
    Text | ToolCalls | Status | Cut | Slow | Hang | Malformed | Recorded | Empty | JSONInstead
)


@dataclass(frozen=True)
class RecordedRequest:
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


# --- the server ----------------------------------------------------------------------------------


class OpenAIServer:
    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        #: Set when a client disconnects while the server is still answering (``disconnects``
        #: counts them): how a test sees that cancelling closed the HTTP request.
        self.disconnected = asyncio.Event()
        self.disconnects = 0
        self.base_url = ""
        self._behaviours: deque[Behaviour] = deque()
        self._closing = asyncio.Event()
        self._served: loopback.Served | None = None
        self.app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])

    def queue(self, *behaviours: Behaviour) -> None:
        """Answer the next requests with these behaviours, in order."""
        self._behaviours.extend(behaviours)

    @property
    def pending(self) -> int:
        return len(self._behaviours)

    async def start(self) -> None:
        self._served = await loopback.start(self.app)
        self.base_url = f"http://127.0.0.1:{self._served.port}/v1"

    async def stop(self) -> None:
        served, self._served = self._served, None
        if served is None:
            return
        self._closing.set()  # Slow and Hang behaviours stop waiting
        await loopback.stop(served)

    # --- the endpoint ---------------------------------------------------------------------------

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(RecordedRequest(body=body, headers=dict(request.headers)))
        behaviour = self._behaviours.popleft() if self._behaviours else None
        if behaviour is None:
            return _error(500, "test server: no behaviour queued", {"x-should-retry": "false"})
        if isinstance(behaviour, Status):
            return _error(behaviour.status, behaviour.message, behaviour.headers)
        if isinstance(behaviour, Hang):
            return _Raw(self._hang)
        if isinstance(behaviour, Recorded):
            return _Raw(lambda receive, send: self._replay(behaviour, send))
        if isinstance(behaviour, JSONInstead):
            document = {"error": {"message": behaviour.message, "type": "server_error"}}
            return JSONResponse(document, status_code=200)
        if isinstance(behaviour, Empty):
            return _Raw(lambda receive, send: self._empty(behaviour, send))
        if not body.get("stream"):
            return JSONResponse(_completion(behaviour))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if isinstance(behaviour, Text) and not behaviour.usage:
            include_usage = False
        return _Raw(lambda receive, send: self._stream(behaviour, include_usage, receive, send))

    async def _stream(
        self, behaviour: Behaviour, include_usage: bool, receive: Receive, send: Send
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        sse = _Chunks(include_usage)

        async def emit(*chunks: dict[str, Any]) -> None:
            for chunk in chunks:
                await send({"type": "http.response.body", "body": _event(chunk), "more_body": True})

        await emit(sse.delta({"role": "assistant", "content": ""}))
        if isinstance(behaviour, Cut):
            await emit(*(sse.delta({"content": c}) for c in behaviour.chunks))
            if not behaviour.abrupt:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return  # abrupt: uvicorn closes the connection mid-body
        if isinstance(behaviour, Malformed):
            await emit(*(sse.delta({"content": c}) for c in behaviour.chunks))
            body = f"data: {behaviour.data}\n\n".encode()
            await send({"type": "http.response.body", "body": body, "more_body": True})
        elif isinstance(behaviour, Slow):
            await emit(*(sse.delta({"content": c}) for c in behaviour.chunks[: behaviour.before]))
            if not await self._wait(behaviour.release.wait(), receive):
                return
            await emit(*(sse.delta({"content": c}) for c in behaviour.chunks[behaviour.before :]))
            await emit(sse.finish("stop"), *sse.usage(7, len(behaviour.chunks)))
        elif isinstance(behaviour, Text):
            await emit(*(sse.delta({"content": c}) for c in behaviour.chunks))
            completion = behaviour.completion_tokens
            completion = len(behaviour.chunks) if completion is None else completion
            await emit(
                sse.finish(behaviour.finish_reason), *sse.usage(behaviour.prompt_tokens, completion)
            )
        elif isinstance(behaviour, ToolCalls):
            await emit(*(sse.delta({"content": c}) for c in behaviour.text))
            for index, (call_id, name, arguments) in enumerate(behaviour.calls):
                head = {"name": name, "arguments": ""}
                first = {"index": index, "id": call_id, "type": "function", "function": head}
                await emit(sse.delta({"tool_calls": [first]}))
                for piece in _split(arguments, behaviour.pieces):
                    fragment: dict[str, Any] = {"index": index, "function": {"arguments": piece}}
                    if behaviour.repeat_name:
                        fragment.update(id=call_id, type="function")
                        fragment["function"]["name"] = name
                    await emit(sse.delta({"tool_calls": [fragment]}))
            await emit(
                sse.finish(behaviour.finish_reason),
                *sse.usage(behaviour.prompt_tokens, behaviour.completion_tokens),
            )
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    async def _replay(self, recorded: Recorded, send: Send) -> None:
        meta, body = recorded.meta, recorded.body
        headers = [
            (name.lower().encode(), value.encode())
            for name, value in meta.get("headers", {}).items()
            if name.lower() in ("content-type", "cache-control")
        ]
        await send({"type": "http.response.start", "status": meta["status"], "headers": headers})
        pieces = [piece + b"\n\n" for piece in body.split(b"\n\n")]
        pieces[-1] = pieces[-1][:-2]  # the split added a separator after the last one
        for piece in pieces:
            if piece:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        if meta.get("ended", "complete") == "complete":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        # "dropped": return without ending the body; uvicorn closes the connection mid-body

    async def _empty(self, behaviour: Empty, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        if not behaviour.dropped:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _hang(self, receive: Receive, send: Send) -> None:
        if await self._wait(asyncio.Event().wait(), receive):
            raise AssertionError("unreachable: a hang ends only by disconnect or shutdown")
        if self._closing.is_set():  # shutting down with the client still waiting
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _wait(self, released: Awaitable[Any], receive: Receive) -> bool:
        """Wait for ``released``; False if the client disconnected (or the server is closing)
        first -- the disconnect is recorded."""
        waiters = {
            asyncio.ensure_future(released): "released",
            asyncio.ensure_future(_disconnect(receive)): "disconnect",
            asyncio.ensure_future(self._closing.wait()): "closing",
        }
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        outcome = {waiters[w] for w in done}
        if "disconnect" in outcome:
            self.disconnects += 1
            self.disconnected.set()
        return outcome == {"released"}


@asynccontextmanager
async def openai_server() -> AsyncIterator[OpenAIServer]:
    """A running :class:`OpenAIServer`; ``server.base_url`` ends with ``/v1``."""
    server = OpenAIServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# --- wire format ---------------------------------------------------------------------------------


class _Raw(Response):
    """A response that is a raw ASGI callable ``(receive, send)``: full control of the body."""

    def __init__(self, answer: Any) -> None:
        super().__init__()
        self._answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._answer(receive, send)


class _Chunks:
    """Builds ``chat.completion.chunk`` objects sharing one id and timestamp."""

    def __init__(self, include_usage: bool) -> None:
        self.id = f"chatcmpl-{time.monotonic_ns()}"
        self.created = int(time.time())
        self.include_usage = include_usage

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": MODEL,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return self._chunk([{"index": 0, "delta": delta, "finish_reason": None}])

    def finish(self, reason: str) -> dict[str, Any]:
        return self._chunk([{"index": 0, "delta": {}, "finish_reason": reason}])

    def usage(self, prompt: int, completion: int) -> list[dict[str, Any]]:
        if not self.include_usage:
            return []
        chunk = self._chunk([])
        chunk["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        return [chunk]


def _event(chunk: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(chunk)}\n\n".encode()


def _split(text: str, pieces: int) -> Iterable[str]:
    size = max(1, -(-len(text) // max(1, pieces)))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _error(status: int, message: str, headers: dict[str, str]) -> JSONResponse:
    kind = "rate_limit_error" if status == 429 else "invalid_request_error"
    document = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return JSONResponse(document, status_code=status, headers=headers)


def _completion(behaviour: Behaviour) -> dict[str, Any]:
    """The non-streaming answer for a text or tool-call behaviour."""
    message: dict[str, Any] = {"role": "assistant", "content": None}
    finish, prompt, completion = "stop", 7, 1
    if isinstance(behaviour, Text | Slow | Cut | Malformed):
        message["content"] = "".join(behaviour.chunks)
        completion = len(behaviour.chunks)
    if isinstance(behaviour, Text):
        finish, prompt = behaviour.finish_reason, behaviour.prompt_tokens
    if isinstance(behaviour, ToolCalls):
        message["content"] = "".join(behaviour.text) or None
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
            for i, n, a in behaviour.calls
        ]
        finish, prompt, completion = (
            "tool_calls",
            behaviour.prompt_tokens,
            behaviour.completion_tokens,
        )
    return {
        "id": f"chatcmpl-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class Arrivals(list[RecordedRequest]):
    """A server's request log (``server.requests = Arrivals()``), plus an event set at each
    arrival: so a test waits for the server to have received a request instead of sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def append(self, item: RecordedRequest) -> None:
        super().append(item)
        self.changed.set()


async def arrived(server: OpenAIServer, count: int, *, within: float = 10.0) -> None:
    """Wait (at most ``within`` seconds) until the server has received ``count`` requests;
    its ``requests`` must be an :class:`Arrivals`."""
    requests = server.requests
    assert isinstance(requests, Arrivals)
    async with asyncio.timeout(within):
        while len(requests) < count:
            requests.changed.clear()
            await requests.changed.wait()


def llm_config(server: OpenAIServer, *, timeout: float = 10.0, **extra: Any) -> dict[str, Any]:
    """An ``llm_config`` for the test server: no key needed, no SDK retries unless asked, a
    request timeout of the tests' ``PROMPTLY`` (10 s) unless given; ``extra`` adds keys."""
    return {
        "provider": "openai",
        "model": "test-model",
        "base_url": server.base_url,
        "api_key_env": None,
        "max_retries": 0,
        "timeout": timeout,
        **extra,
    }
