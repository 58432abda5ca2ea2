"""The terminal side of ``jidoka chat``: lines from stdin without blocking the event loop, and
Ctrl-C as an event-loop signal handler.

:class:`StdinLines` lets the loop watch the descriptor (``add_reader``) instead of blocking a
thread in ``input()``: a read abandoned on Ctrl-C leaves no thread behind that would keep the
process alive until Enter. Stdin that cannot be watched (a regular file, ``/dev/null``) is read
in a thread, where a read never waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable

__all__ = ["StdinLines", "handle_sigint"]


class StdinLines:
    """Lines from stdin, read without blocking the event loop; abandoning a read loses nothing
    (what was read stays buffered for the next one)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()
        self._eof = False
        self._watchable = True

    @classmethod
    def open(cls) -> StdinLines | None:
        try:
            return cls(sys.stdin.fileno()) if sys.stdin is not None else None
        except (OSError, ValueError):
            return None

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def discard_typeahead(self) -> None:
        """Forget lines typed before a question (a terminal only: a pipe's lines are answers)."""
        if self.isatty():
            self._buffer.clear()

    async def readline(self) -> str | None:
        """The next line without its newline; ``None`` at end of input."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line.decode(errors="replace").removesuffix("\r")
            if self._eof:
                rest, self._buffer = bytes(self._buffer), bytearray()
                return rest.decode(errors="replace") if rest else None
            try:
                data = await self._read()
            except OSError:  # the terminal went away: as good as the end of input
                data = b""
            self._eof = not data
            self._buffer += data

    async def _read(self) -> bytes:
        loop = asyncio.get_running_loop()
        if self._watchable:
            ready: asyncio.Future[None] = loop.create_future()

            def wake() -> None:
                if not ready.done():
                    ready.set_result(None)

            try:
                loop.add_reader(self._fd, wake)
            except (OSError, ValueError, NotImplementedError):
                self._watchable = False  # a regular file (or no selector): a read never waits
            else:
                try:
                    await ready
                finally:
                    loop.remove_reader(self._fd)
                return os.read(self._fd, 65536)
        return await asyncio.to_thread(os.read, self._fd, 65536)


def handle_sigint(loop: asyncio.AbstractEventLoop, handler: Callable[[], None]) -> bool:
    """Handle Ctrl-C in the loop; ``False`` where that cannot be done (then it interrupts)."""
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGINT, handler)
        return True
    return False
