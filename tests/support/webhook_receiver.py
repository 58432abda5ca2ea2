"""A webhook receiver for tests: a real HTTP server (Starlette on uvicorn, in the test's event
loop, on a loopback port) that records every request and answers as the test queued.

``answers`` are status codes (``200`` when none is left), ``"redirect"`` (a 307 to ``/elsewhere``
on the same server, so a followed redirect would show as a request there) or ``"hang"`` (no
answer until the receiver stops). Tests wait for requests with :meth:`WebhookReceiver.wait`,
which waits on a condition, never a sleep.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import loopback

__all__ = ["Received", "WebhookReceiver", "free_port"]

Answer = int | str


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


def free_port() -> int:
    """A loopback port nothing listens on now (bound, read, closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class WebhookReceiver:
    def __init__(self, *answers: Answer) -> None:
        self.requests: list[Received] = []
        self.answers: deque[Answer] = deque(answers)
        self.port = 0
        self._changed = asyncio.Condition()
        self._closing = asyncio.Event()
        self._served: loopback.Served | None = None
        self.app = Starlette(routes=[Route("/{path:path}", self._receive, methods=["POST", "GET"])])

    def url(self, path: str = "/hooks") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> WebhookReceiver:
        self._served = await loopback.start(self.app, port=port, reuse=True)
        self.port = self._served.port
        return self

    async def stop(self) -> None:
        served, self._served = self._served, None
        if served is None:
            return
        self._closing.set()
        await loopback.stop(served)

    async def __aenter__(self) -> WebhookReceiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait(self, count: int, *, within: float = 10.0) -> list[Received]:
        """The first ``count`` requests, once that many arrived."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: len(self.requests) >= count)
        return self.requests[:count]

    async def _receive(self, request: Request) -> Response:
        body = await request.body()
        async with self._changed:
            self.requests.append(Received(request.url.path, dict(request.headers), body))
            self._changed.notify_all()
        answer = self.answers.popleft() if self.answers else 200
        if answer == "hang":
            await self._closing.wait()
            return Response(status_code=503)
        if answer == "redirect":
            return Response(status_code=307, headers={"location": "/elsewhere"})
        assert isinstance(answer, int)
        return Response(b"x" * 100_000 if answer >= 400 else b"ok", status_code=answer)
