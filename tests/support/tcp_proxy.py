"""A TCP proxy that a test can cut, stall and restore: a database outage on demand.

The store under test connects to the proxy, the proxy to the real server. ``cut()`` resets every
open connection (both sides, with RST) and answers each new one with a reset until
``restore()``: the server is gone and refuses. ``stall()`` keeps every connection open but
forwards nothing, and new connections are accepted and then left silent: the server is
unreachable without anyone saying so (a dropped route, a frozen host), which only a timeout can
detect. ``mute()`` forwards what clients send but holds back every reply: the server does the
work and the client never hears of it (a connection lost after a ``COMMIT`` was sent).
``restore()`` ends any of them: stalled or muted connections are reset (their bytes are lost),
new ones are forwarded again.

The proxy knows the local port of each of its connections to the server, so a test can find the
store's own backends in ``pg_stat_activity`` (column ``client_port``) and terminate them.

:class:`TcpProxy` runs in the loop of whoever starts it (a test driving a store in process);
:class:`ThreadedTcpProxy` runs one in a thread of its own, with blocking methods, for a test that
drives a server subprocess with a blocking client.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, Self, TypeVar

__all__ = ["TcpProxy", "ThreadedTcpProxy"]

_T = TypeVar("_T")
#: How long a blocking call of :class:`ThreadedTcpProxy` waits for the proxy's loop (a bound).
_CALL_DEADLINE = 30.0
_CHUNK = 65536


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (linger 0), so the peer learns at once that it is gone."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One client connection and its connection to the server."""

    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server
        sockname = server.get_extra_info("sockname")
        self.server_side_port: int = sockname[1]
        self.task = asyncio.current_task()

    def reset(self) -> None:
        _reset(self.client)
        _reset(self.server)


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream``; see the module docstring."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._accept = asyncio.Event()
        self.accepted = 0  #: connections accepted so far (forwarded or not)
        self._mode = "open"  # "open", "cut" or "stall"
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._silent: set[asyncio.StreamWriter] = set()  # accepted while stalled
        self._restored = asyncio.Event()
        self._restored.set()

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def server_side_ports(self) -> list[int]:
        """The local ports of the open connections to the server (``client_port`` there)."""
        return sorted(link.server_side_port for link in self._links)

    async def cut(self) -> None:
        """Reset every connection now, and every new one until :meth:`restore`."""
        self._mode = "cut"
        self._restored.clear()
        await self._reset_all()

    def stall(self) -> None:
        """Forward nothing (open connections stay open, silent) until :meth:`restore`."""
        self._mode = "stall"
        self._restored.clear()

    def mute(self) -> None:
        """Forward requests, hold back replies (until :meth:`restore`, which resets those
        connections): the server acts on what it is sent, the client never learns it did."""
        self._mode = "mute"
        self._restored.clear()

    async def restore(self) -> None:
        """Forward again; connections left over from a stall are reset (their bytes are lost)."""
        stalled = self._mode in ("stall", "mute")
        self._mode = "open"
        self._restored.set()  # held-back pumps return (their links are reset just below)
        if stalled:
            await self._reset_all()

    async def _reset_all(self) -> None:
        links, self._links = self._links, set()
        silent, self._silent = self._silent, set()
        for link in links:
            link.reset()
        for writer in silent:
            _reset(writer)
        # Each link's pumps now read the end of their streams, and its task ends by itself.
        tasks = [link.task for link in links if link.task is not None]
        if tasks:
            await asyncio.wait(tasks)

    async def wait_accepted(self, count: int) -> None:
        """Return once the proxy has accepted ``count`` connections in all (a reconnect)."""
        while self.accepted < count:
            self._accept.clear()
            await self._accept.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._accept.set()
        if self._mode == "cut":
            _reset(writer)
            return
        if self._mode == "stall":
            self._silent.add(writer)  # accepted, never answered; reset by restore()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(writer)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pump(reader, up_writer, replies=False))
                group.create_task(self._pump(up_reader, writer, replies=True))
        except* OSError:
            pass  # a side went away: both are closed below
        finally:
            self._links.discard(link)
            link.reset()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, replies: bool
    ) -> None:
        while data := await reader.read(_CHUNK):
            held = self._mode == "stall" or (replies and self._mode == "mute")
            if held:  # hold the bytes back until the stall ends (then reset)
                await self._restored.wait()
                return
            writer.write(data)
            await writer.drain()
        writer.close()  # the other side said goodbye: pass it on (the peer pump then ends)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._reset_all()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class ThreadedTcpProxy:
    """A :class:`TcpProxy` on a loop in its own thread, driven by blocking calls."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._make = (upstream_host, upstream_port)
        self._proxy: TcpProxy | None = None

    @property
    def proxy(self) -> TcpProxy:
        assert self._proxy is not None, "not started"
        return self._proxy

    def _call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(_CALL_DEADLINE)

    def start(self) -> Self:
        self._thread.start()

        async def make() -> TcpProxy:
            return await TcpProxy(*self._make).start()

        self._proxy = self._call(make())
        return self

    @property
    def port(self) -> int:
        return self.proxy.port

    def cut(self) -> None:
        self._call(self.proxy.cut())

    def stall(self) -> None:
        async def stall() -> None:
            self.proxy.stall()

        self._call(stall())

    def restore(self) -> None:
        self._call(self.proxy.restore())

    def server_side_ports(self) -> list[int]:
        async def ports() -> list[int]:
            return self.proxy.server_side_ports()

        return self._call(ports())

    def close(self) -> None:
        if self._thread.is_alive():
            if self._proxy is not None:
                self._call(self._proxy.aclose())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_CALL_DEADLINE)
        if not self._loop.is_closed() and not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
