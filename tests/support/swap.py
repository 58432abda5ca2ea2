"""A thread that keeps swapping a directory with a symlink, for sandbox race tests.

``renameat2(RENAME_EXCHANGE)`` through ctypes swaps the two names atomically (what an attacker
with write access to a project would run in a loop); where libc or the kernel lacks it, three
plain renames do the same with a moment in which the name is missing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["Swapper", "swapping"]

RENAME_EXCHANGE = 2
AT_FDCWD = -100


def _renameat2() -> Callable[[str, str], None] | None:
    """``exchange(a, b)`` through libc's renameat2, or None if this system lacks it."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    function = getattr(libc, "renameat2", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p] * 2 + [ctypes.c_uint]

    def exchange(a: str, b: str) -> None:
        if function(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), a)

    return exchange


class Swapper:
    """A thread that swaps ``real`` (a directory) and ``link`` (a symlink) until stopped."""

    def __init__(self, real: Path, link: Path) -> None:
        self.real, self.link = str(real), str(link)
        self.swaps = 0
        self.exchange = _renameat2()
        self.started = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.swapped = False

    def _run(self) -> None:
        try:
            if self.exchange is not None:
                try:
                    self.exchange(self.real, self.link)
                    self.exchange(self.real, self.link)
                except OSError:
                    self.exchange = None
            while not self.stop.is_set():
                self._swap_once()
                self.swaps += 1
                if self.swaps >= 2:
                    self.started.set()
        except BaseException as exc:  # surfaced by the test
            self.error = exc
            self.started.set()

    def _swap_once(self) -> None:
        if self.exchange is not None:
            self.exchange(self.real, self.link)
            self.swapped = not self.swapped
            return
        # Without renameat2: move the directory aside, put the link in its place, and back.
        aside = self.real + ".aside"
        spare = self.link + ".spare"
        if not self.swapped:
            os.rename(self.real, aside)
            os.rename(self.link, self.real)
            os.rename(aside, self.link)
        else:
            os.rename(self.real, spare)
            os.rename(self.link, self.real)
            os.rename(spare, self.link)
        self.swapped = not self.swapped

    def restore(self) -> None:
        """Put the directory back in its place (the thread has stopped)."""
        if self.swapped:
            self.swapped = not self.swapped
            if self.exchange is not None:
                self.exchange(self.real, self.link)
            else:
                spare = self.link + ".spare"
                os.rename(self.real, spare)
                os.rename(self.link, self.real)
                os.rename(spare, self.link)


@contextmanager
def swapping(real: Path, link: Path) -> Iterator[Swapper]:
    swapper = Swapper(real, link)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # hand the GIL over often, so the swaps land mid-call
    swapper.thread.start()
    try:
        assert swapper.started.wait(30), "the swapper did not start"
        assert swapper.error is None, swapper.error
        yield swapper
    finally:
        swapper.stop.set()
        swapper.thread.join(30)
        sys.setswitchinterval(interval)
        assert not swapper.thread.is_alive()
        swapper.restore()
    assert swapper.error is None, swapper.error
    assert swapper.swaps > 0
