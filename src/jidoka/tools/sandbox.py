"""The path sandbox: every file a session touches must be a regular file inside its project root.

One implementation serves active files now and the agent's file tools later, so the rules cannot
drift apart. A path is refused (:class:`~jidoka.PathNotAllowed`, nothing added) when it

- is empty, too long, or contains a NUL byte;
- is absolute and outside the root, or uses ``..`` to climb out of it;
- resolves (through symlinks, at any depth) to somewhere outside the root;
- is not a regular file (a directory, device, FIFO, socket), or does not exist.

Checks that touch the file system are blocking; callers run them in a worker thread. The file is
opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked with ``fstat`` on the open descriptor, so a
FIFO cannot hang the check and the file that was checked is the file that is read.
"""

from __future__ import annotations

import os
import stat
from typing import Final

from ..errors import InvalidArgument, PathNotAllowed

__all__ = ["MAX_PATH_CHARS", "Sandbox", "resolve_project_root"]

MAX_PATH_CHARS: Final = 4096
_OPEN_FLAGS: Final = (
    os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | os.O_CLOEXEC
)


def resolve_project_root(project_root: object) -> str:
    """Validate and canonicalise a project root (blocking: it stats the directory)."""
    if not isinstance(project_root, str | os.PathLike):
        raise InvalidArgument(
            f"project_root must be a path, got {type(project_root).__name__}",
            argument="project_root",
        )
    raw = os.fspath(project_root)
    if not isinstance(raw, str) or not raw or "\x00" in raw or len(raw) > MAX_PATH_CHARS:
        raise PathNotAllowed(None, str(raw), "not a valid project_root")
    real = os.path.realpath(raw)
    if not os.path.isdir(real):
        raise PathNotAllowed(None, raw, "project_root is not an existing directory")
    return real


class Sandbox:
    """Path rules for one project root (an already canonical, absolute directory path)."""

    __slots__ = ("root", "session_id")

    def __init__(self, root: str, session_id: str | None = None) -> None:
        self.root = root
        self.session_id = session_id

    def _deny(self, path: str, reason: str) -> PathNotAllowed:
        return PathNotAllowed(self.session_id, path, reason)

    def check_lexical(self, path: object) -> str:
        """Checks that need no file system; returns the normalised absolute path."""
        if not isinstance(path, str):
            raise InvalidArgument(
                f"path must be a string, got {type(path).__name__}",
                argument="path",
                session_id=self.session_id,
            )
        if not path:
            raise self._deny(path, "empty path")
        if "\x00" in path:
            raise self._deny(path, "contains a NUL byte")
        if len(path) > MAX_PATH_CHARS:
            raise self._deny(path[:64] + "...", f"longer than {MAX_PATH_CHARS} characters")
        joined = os.path.normpath(os.path.join(self.root, path))
        if not _inside(joined, self.root):
            where = "is outside" if os.path.isabs(path) else "escapes"
            raise self._deny(path, f"{where} the project root")
        return joined

    def relative(self, path: object) -> str:
        """The session's key for ``path``: POSIX, relative to the root, lexically normalised."""
        joined = self.check_lexical(path)
        rel = os.path.relpath(joined, self.root)
        return "." if rel == os.curdir else rel.replace(os.sep, "/")

    def resolve(self, path: object) -> tuple[str, str]:
        """Blocking. Return ``(relative key, real absolute path)`` after following symlinks."""
        joined = self.check_lexical(path)
        real = os.path.realpath(joined)
        if not _inside(real, self.root):
            raise self._deny(str(path), "resolves outside the project root")
        rel = os.path.relpath(real, self.root).replace(os.sep, "/")
        return rel, real

    def open_regular(self, path: object) -> tuple[str, int, os.stat_result]:
        """Blocking. Resolve and open a regular file; return ``(key, fd, stat)``.

        The caller owns (and must close) the descriptor.
        """
        rel, real = self.resolve(path)
        try:
            fd = os.open(real, _OPEN_FLAGS)
        except FileNotFoundError:
            raise self._deny(str(path), "no such file") from None
        except OSError as exc:
            raise self._deny(str(path), f"cannot be opened ({exc.strerror})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise self._deny(str(path), "not a regular file")
        except BaseException:
            os.close(fd)
            raise
        return rel, fd, st


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root if root.endswith(os.sep) else root + os.sep)
