"""The app's ASGI lifespan: the runtime's start and stop, and a graceful shutdown's first step.

A server runs the lifespan's startup before it accepts a connection and its shutdown after the
last one closed (uvicorn waits up to its ``timeout_graceful_shutdown`` for them). What is
started here:

- **the runtime**, when the app owns it (``jidoka serve``): opened at startup, which recovers
  the stored sessions before the first request, and closed -- flushing the store -- at
  shutdown, after every connection has ended. An app over a runtime its caller runs (a test,
  an embedding, a benchmark) leaves it alone.
- **the services** (``/v1/mcp``'s session manager): async context managers entered once the
  runtime runs and left before it closes, whether the lifespan ends or is cancelled.
- **the drain**: every event stream ends with its final ``shutdown`` frame and every WebSocket
  with close code 1001 *as soon as* the server is told to stop. ASGI has no message for that
  moment (the lifespan's shutdown comes only after the connections closed, and a stream never
  closes by itself), so while the lifespan runs in the main thread it chains the process's
  SIGINT and SIGTERM handlers -- the server's own, installed before the lifespan starts -- with
  one that drains first, then calls the server's. The shutdown drains too (for a server
  stopped without a signal), then closes the runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from types import FrameType
from typing import Any

from starlette.routing import Router

from ..runtime import Runtime
from .streams import StreamRegistry

__all__ = ["ServerLifespan", "lifespan_of"]

logger = logging.getLogger("jidoka.server")
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ServerLifespan:
    """The lifespan context of :func:`~jidoka.server.create_app`'s app (see the module)."""

    def __init__(
        self,
        runtime: Runtime,
        streams: StreamRegistry,
        *,
        owns_runtime: bool,
        started: Callable[[], None] = lambda: None,
        on_ready: Callable[[], None] | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
        services: Sequence[Callable[[], AbstractAsyncContextManager[None]]] = (),
    ) -> None:
        self.runtime = runtime
        self.streams = streams
        self.owns_runtime = owns_runtime
        #: Called once the runtime runs (an app that owns it builds its routes then).
        self.started = started
        #: Called when the app is ready to serve (``jidoka serve`` prints its address then).
        self._on_ready = on_ready
        #: Called at shutdown, after the runtime closed (the forwarding client).
        self._on_close = on_close
        #: Run while the app serves: entered once the runtime runs (in order), left before it
        #: closes (in reverse order), whether the lifespan ends or is cancelled (``/v1/mcp``'s
        #: session manager).
        self.services = tuple(services)
        #: Why the startup failed (``jidoka serve`` says it in one line), if it did.
        self.startup_error: BaseException | None = None

    @contextlib.asynccontextmanager
    async def __call__(self, app: Any) -> AsyncIterator[None]:
        if self.owns_runtime:
            try:
                await self.runtime.start()
            except BaseException as exc:
                self.startup_error = exc
                raise
        try:
            self.started()
            async with contextlib.AsyncExitStack() as running:
                for service in self.services:
                    await running.enter_async_context(service())
                with _drain_on_signals(self._drain):
                    if self._on_ready is not None:
                        self._on_ready()
                    yield
        finally:
            self.streams.drain()
            try:
                if self.owns_runtime:
                    logger.info("connections closed; closing the runtime (flushing the store)")
                    await self.runtime.aclose()
            finally:
                if self._on_close is not None:
                    await self._on_close()

    def _drain(self) -> None:
        """The signal's first step: end the streams and, on a node of a cluster, start handing
        the sessions over (other nodes take them while this one waits for its connections)."""
        self.streams.drain()
        if self.owns_runtime:
            self.runtime.begin_leaving()


def lifespan_of(app: Router) -> ServerLifespan:
    """The :class:`ServerLifespan` of an app :func:`~jidoka.server.create_app` made: its
    ``runtime``, its ``streams`` (``drain()`` ends them all) and its ``startup_error``."""
    lifespan = app.lifespan_context
    if not isinstance(lifespan, ServerLifespan):
        raise TypeError(f"not an app create_app made: {app!r}")
    return lifespan


@contextlib.contextmanager
def _drain_on_signals(drain: Callable[[], None]) -> Iterator[None]:
    """While inside: SIGINT and SIGTERM call ``drain`` (in the loop), then the handler found."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only: its server drains at shutdown
        return
    loop = asyncio.get_running_loop()
    found: dict[int, Any] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(drain)
        handler = found.get(signum)
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    for sig in _SIGNALS:
        found[sig] = signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for signum, handler in found.items():
            signal.signal(signum, handler)
