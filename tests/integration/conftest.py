"""Every test here runs against each store backend (see ``store_backend`` in tests/conftest.py),
and every test that takes ``client`` runs with both clients: the in-process
:class:`jidoka.Client` (``local``) and a :class:`jidoka.RemoteClient` (``remote``) talking to the
HTTP server over the same runtime. Both runs share the ``runtime`` fixture (and its fake clock),
so a test may advance time or look at the runtime whichever client it drives.

The server is uvicorn in the test's own event loop, on a socket bound and listening before the
client is made (so it is ready at once: connections wait in the backlog), and stopped without
uvicorn's 0.1 s polling sleeps. A test that only the in-process client can pass says why with
``@pytest.mark.local_client("reason")``; its remote run is skipped with that reason.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import uvicorn

import jidoka
from jidoka.remote import RemoteClient  # imported now: a lazy import would block the loop
from jidoka.server import create_app
from jidoka.server.config import ServerConfig
from jidoka.server.lifespan import lifespan_of

#: How long stopping the server lets requests still being answered finish (a bound, not a sleep);
#: only a failed test leaves one behind (a request waiting for something that never came).
_STOP_DEADLINE = 2.0


@pytest.fixture(autouse=True)
def _store_under_test(store_backend: str) -> str:
    return store_backend


@pytest.fixture(params=["local", "remote"])
async def client(
    request: pytest.FixtureRequest, runtime: jidoka.Runtime
) -> AsyncIterator[jidoka.Client | RemoteClient]:
    """The runtime's in-process client, or a RemoteClient to a server over the same runtime."""
    if request.param == "local":
        yield runtime.client
        return
    marker = request.node.get_closest_marker("local_client")
    if marker is not None:
        reason = marker.args[0] if marker.args else "in-process behaviour"
        pytest.skip(f"in-process Client only: {reason}")
    async with _served(runtime) as url, RemoteClient(url) as remote:
        yield remote


class _InLoopServer:
    """``create_app(runtime)`` on uvicorn in the running loop, on a pre-bound socket."""

    def __init__(self, runtime: jidoka.Runtime) -> None:
        self.app = create_app(runtime, ServerConfig(insecure_no_auth=True, access_log=False))
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets that say TCP;
        # without it every answer written in two parts waits ~40 ms for a delayed ACK (Nagle).
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(128)
        self.socket.setblocking(False)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        config = uvicorn.Config(self.app, lifespan="off", ws="none", log_config=None)
        config.load()
        self.server = uvicorn.Server(config)

    async def start(self) -> None:
        # What Server.serve() does, minus its signal handlers and its 0.1 s polling loop.
        self.server.lifespan = self.server.config.lifespan_class(self.server.config)
        await self.server.startup(sockets=[self.socket])

    async def stop(self) -> None:
        server = self.server
        try:
            lifespan_of(self.app).streams.drain()  # open event streams end with their final frame
            for listener in server.servers:
                listener.close()
            for connection in list(server.server_state.connections):
                connection.shutdown()  # idle ones close now, busy ones after their response
            tasks = list(server.server_state.tasks)
            if tasks:  # requests still answered: the client is gone, they may finish or stop
                _, pending = await asyncio.wait(tasks, timeout=_STOP_DEADLINE)
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.wait(pending)
            for connection in list(server.server_state.connections):
                connection.shutdown()
            for listener in server.servers:
                await listener.wait_closed()
        finally:
            self.socket.close()


@asynccontextmanager
async def _served(runtime: jidoka.Runtime) -> AsyncIterator[str]:
    """The server's base URL while the block runs."""
    server = _InLoopServer(runtime)
    await server.start()
    try:
        yield server.url
    finally:
        await server.stop()
