"""An ASGI app served by uvicorn in the test's own event loop, on loopback: what the tests'
stand-in servers (the OpenAI-compatible model, the MCP server, the webhook receiver) share.

The socket is bound and listening before the server starts (connections wait in the backlog,
so the server is ready as soon as :func:`start` returns), and :func:`stop` closes it without
uvicorn's signal handlers or its 0.1 s polling loop.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Any

import uvicorn

__all__ = ["Served", "start", "stop"]


@dataclass
class Served:
    """A started server and its socket (``port`` is the one bound)."""

    server: uvicorn.Server
    socket: socket.socket

    @property
    def port(self) -> int:
        port: int = self.socket.getsockname()[1]
        return port


async def start(app: Any, *, port: int = 0, reuse: bool = False, **config: Any) -> Served:
    """Serve ``app`` on ``127.0.0.1:port`` (0: a free port); ``config`` adds uvicorn options."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    if reuse:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.setblocking(False)
    options: dict[str, Any] = {"http": "h11", **config}
    settings = uvicorn.Config(app, lifespan="off", ws="none", log_config=None, **options)
    settings.load()
    server = uvicorn.Server(settings)
    server.lifespan = settings.lifespan_class(settings)
    await server.startup(sockets=[sock])
    return Served(server, sock)


async def stop(served: Served, *, deadline: float = 10.0) -> None:
    """Stop listening, close idle connections at once and busy ones after their response (those
    still running after ``deadline`` seconds are left to end with the loop), close the socket."""
    server = served.server
    for listener in server.servers:
        listener.close()
    for connection in list(server.server_state.connections):
        connection.shutdown()
    tasks = list(server.server_state.tasks)
    if tasks:
        await asyncio.wait(tasks, timeout=deadline)
    for connection in list(server.server_state.connections):
        connection.shutdown()
    for listener in server.servers:
        await listener.wait_closed()
    served.socket.close()
