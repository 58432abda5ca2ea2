"""One owner per data directory, enforced with an OS file lock.

The lock is an exclusive ``flock`` on ``<data_dir>/jidoka.lock``, taken without waiting. The OS
releases it when its holder exits, however it exits (SIGKILL, power cut), so a crash never leaves
a stale lock behind; a second process or runtime gets :class:`~jidoka.DataDirLocked` at once
instead of writing beside the first.
"""

from __future__ import annotations

import fcntl
import os
from typing import Final

from .errors import DataDirLocked, StoreError

__all__ = ["LOCK_NAME", "DataDirLock"]

LOCK_NAME: Final = "jidoka.lock"


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
            os.close(fd)
            raise DataDirLocked(self.data_dir) from None
        except OSError as exc:
            os.close(fd)
            raise DataDirLocked(self.data_dir, str(exc)) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None
