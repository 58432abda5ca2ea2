"""One owner per data directory, enforced with an OS file lock.

The lock is an exclusive ``flock`` on ``<data_dir>/jidoka.lock``, taken without waiting. The OS
releases it when its holder exits, however it exits (SIGKILL, power cut), so a crash never leaves
a stale lock behind; a second process or runtime gets :class:`~jidoka.DataDirLocked` at once
instead of writing beside the first. The holder writes its pid into the file, so the refusal can
say which process to stop (or that it is a runtime of the same process).
"""

from __future__ import annotations

import fcntl
import os
from typing import Final

from .errors import DataDirLocked, StoreError

__all__ = ["LOCK_NAME", "DataDirLock"]

LOCK_NAME: Final = "jidoka.lock"
#: The lock file holds a pid and a newline: no more is read from it.
_PID_BYTES: Final = 32


def _holder(fd: int) -> int | None:
    """The pid the holder wrote, if it has (it writes just after locking) and it is one."""
    try:
        text = os.pread(fd, _PID_BYTES, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and 0 < int(text) < 2**31 else None


def _advice(pid: int | None) -> str:
    """Who holds the directory and what to do, for the error's message (which puts it in
    parentheses after "in use by another Jidoka runtime")."""
    choose = "or give this one another directory with --data-dir or JIDOKA_DATA_DIR"
    if pid is None:
        return f"its pid is not recorded yet: stop it, {choose}"
    if pid == os.getpid():
        return f"in this very process, pid {pid}: close that runtime first, {choose}"
    return f"pid {pid}: stop that process (a jidoka serve?), {choose}"


class DataDirLock:
    """Blocking methods: call them from a worker thread."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            os.makedirs(self.data_dir, exist_ok=True)
            fd = os.open(os.path.join(self.data_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot use the data directory {self.data_dir!r}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = _holder(fd)
            finally:
                os.close(fd)
            raise DataDirLocked(self.data_dir, _advice(holder)) from None
        except OSError as exc:
            os.close(fd)
            raise DataDirLocked(self.data_dir, str(exc)) from exc
        pid = f"{os.getpid()}\n".encode()
        os.pwrite(fd, pid, 0)  # over the last holder's, then cut: never an empty file to read
        os.ftruncate(fd, len(pid))
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None
