"""The app's ASGI lifespan, driven as ASGI in process: the runtime it owns, and the drain."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from types import FrameType
from typing import Any

import httpx
import pytest

import jidoka
from jidoka.errors import RuntimeClosed
from jidoka.server.app import create_app
from jidoka.server.config import ServerConfig
from jidoka.server.lifespan import lifespan_of


class Lifespan:
    """The server's side of the lifespan protocol: startup, then shutdown when asked."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def startup(self) -> str:
        self.task = asyncio.create_task(self._run())
        await self.inbox.put({"type": "lifespan.startup"})
        return str((await self.sent.get())["type"])

    async def shutdown(self) -> str:
        await self.inbox.put({"type": "lifespan.shutdown"})
        answer = str((await self.sent.get())["type"])
        assert self.task is not None
        await self.task
        return answer

    async def _run(self) -> None:
        # A failed startup is raised again after it was reported: the report is what counts.
        with contextlib.suppress(Exception):
            await self.app({"type": "lifespan", "state": {}}, self.inbox.get, self.sent.put)


@pytest.fixture
async def owned() -> AsyncIterator[tuple[Any, jidoka.Runtime, list[str]]]:
    runtime = jidoka.Runtime(settings=jidoka.Settings(), store="memory")
    ready: list[str] = []
    app = create_app(
        runtime,
        ServerConfig(insecure_no_auth=True, access_log=False),
        owns_runtime=True,
        on_ready=lambda: ready.append("ready"),
    )
    yield app, runtime, ready
    await runtime.aclose()


async def test_an_owned_runtime_starts_and_stops_with_the_lifespan(
    owned: tuple[Any, jidoka.Runtime, list[str]],
) -> None:
    app, runtime, ready = owned
    with pytest.raises(RuntimeClosed):
        runtime.client  # noqa: B018 -- not started before the lifespan
    lifespan = Lifespan(app)
    assert await lifespan.startup() == "lifespan.startup.complete"
    assert ready == ["ready"]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        created = await http.post("/v1/sessions", json={})
        assert created.status_code == 201
    streams = lifespan_of(app).streams
    before = streams.draining
    assert await lifespan.shutdown() == "lifespan.shutdown.complete"
    assert (before, streams.draining) == (False, True)  # the shutdown drained the streams
    with pytest.raises(RuntimeClosed):
        runtime.client  # noqa: B018 -- closed by the lifespan


async def test_a_runtime_that_cannot_start_fails_the_startup_and_says_why(
    tmp_path: Any,
) -> None:
    async with jidoka.Runtime(data_dir=tmp_path, store="sqlite"):
        # The data directory is held: a second runtime on it cannot start.
        second = jidoka.Runtime(data_dir=tmp_path, store="sqlite")
        app = create_app(second, ServerConfig(insecure_no_auth=True), owns_runtime=True)
        lifespan = Lifespan(app)
        assert await lifespan.startup() == "lifespan.startup.failed"
        assert lifespan.task is not None
        await lifespan.task
        context = lifespan_of(app)
        assert isinstance(context.startup_error, jidoka.JidokaError)
        assert "in use" in str(context.startup_error)


async def test_a_signal_drains_the_streams_at_once_then_reaches_the_servers_handler() -> None:
    """The server's SIGTERM handler (installed before the lifespan starts) still runs, after
    the streams were told to end; the handlers are put back at shutdown."""
    caught: list[int] = []

    def servers_handler(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    previous = signal.signal(signal.SIGTERM, servers_handler)
    try:
        async with jidoka.Runtime(settings=jidoka.Settings(), store="memory") as runtime:
            app = create_app(runtime, ServerConfig(insecure_no_auth=True))
            streams = lifespan_of(app).streams
            lifespan = Lifespan(app)
            assert await lifespan.startup() == "lifespan.startup.complete"
            assert signal.getsignal(signal.SIGTERM) is not servers_handler
            signal.raise_signal(signal.SIGTERM)
            assert caught == [signal.SIGTERM]
            # The drain is scheduled on the loop: a callback scheduled after it runs after it.
            after = asyncio.Event()
            asyncio.get_running_loop().call_soon_threadsafe(after.set)
            await after.wait()
            assert streams.draining
            assert await lifespan.shutdown() == "lifespan.shutdown.complete"
            assert signal.getsignal(signal.SIGTERM) is servers_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
