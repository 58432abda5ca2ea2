"""The path sandbox: every file a session touches must be a regular file inside its project root.

One implementation serves active files and the agent's file tools, so the rules cannot drift
apart. A path is refused (:class:`~jidoka.PathNotAllowed`, nothing added) when it

- is empty, too long, or contains a NUL byte;
- is absolute and outside the root, or uses ``..`` to climb out of it;
- leads (through symlinks, at any depth) to somewhere outside the root;
- is not a regular file (a directory, device, FIFO, socket), or does not exist.

**How a path is followed** is the job of :mod:`jidoka.tools.walk`: component by component,
relative to held directory descriptors, never through a link it has not read and checked itself.

Descriptors live for one operation (a handful of ``openat`` calls): keeping one open per session
would make ten thousand idle sessions ten thousand descriptors.

Everything that touches the file system blocks; callers run it in a worker thread. Files are
opened with ``O_NONBLOCK`` and checked with ``fstat`` on the open descriptor, so a FIFO cannot hang
the check and the file that was checked is the file that is read. A directory moved out of the
root *while* a walk holds it is beyond what a path sandbox can see (the kernel's ``openat2``
``RESOLVE_BENEATH`` has the same limit); it needs write access outside the root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from typing import Final

from ..errors import InvalidArgument, PathNotAllowed
from .walk import DIR_FLAGS as _DIR_FLAGS
from .walk import MAX_LINK_HOPS, Walk

__all__ = ["MAX_LINK_HOPS", "MAX_PATH_CHARS", "ProjectRoot", "Sandbox", "resolve_project_root"]

MAX_PATH_CHARS: Final = 4096
_OPEN_FLAGS: Final = (
    os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
)


class ProjectRoot(str):
    """A project root that :func:`resolve_project_root` has already resolved and checked (the
    server's ``--projects-dir`` confinement makes these). Resolving one again does not follow
    links: it is re-checked as it is, so a symlink swapped into its path between the check and
    the session's creation is refused instead of followed out of the projects directory."""

    __slots__ = ()


def resolve_project_root(project_root: object, *, within: str | None = None) -> str:
    """Validate and canonicalise a project root (blocking: it walks the directories).

    With ``within``, a relative ``project_root`` is taken relative to it and the result must lie
    inside it; the check and the canonical path come from the same resolution. Either way the
    result is then opened from ``/`` without following any link, so what is returned is a chain
    of real directories at the time of the call (a component swapped for a symlink meanwhile is
    refused, never followed).
    """
    if not isinstance(project_root, str | os.PathLike):
        raise InvalidArgument(
            f"project_root must be a path, got {type(project_root).__name__}",
            argument="project_root",
        )
    raw = os.fspath(project_root)
    if isinstance(raw, str):
        raw = str.__str__(raw)  # a plain str (not a ProjectRoot) for errors, which get encoded
    if (
        not isinstance(raw, str)
        or not raw
        or "\x00" in raw
        or len(raw) > MAX_PATH_CHARS
        or not _encodable(raw)
    ):
        raise PathNotAllowed(None, str(raw)[:200], "not a valid project_root")
    if isinstance(project_root, ProjectRoot):
        real = str(project_root)  # resolved and checked already: only re-check, by descriptor
    else:
        try:
            if within is None:
                real = os.path.realpath(raw)
            else:
                base = os.path.realpath(within)
                real = os.path.realpath(os.path.join(base, raw))
        except OSError as exc:  # a component changed under realpath (EINVAL, ELOOP...)
            raise PathNotAllowed(None, raw, f"cannot be resolved ({exc.strerror})") from None
        except ValueError as exc:
            raise PathNotAllowed(None, raw, f"not a valid project_root ({exc})") from None
        if within is not None and not _inside(real, base):
            raise PathNotAllowed(None, raw, "outside the server's projects directory")
    if not os.path.isabs(real):
        raise PathNotAllowed(None, raw, "project_root must resolve to an absolute path")
    os.close(_open_root(real, lambda reason: PathNotAllowed(None, raw, reason), "project_root"))
    return real


class Sandbox:
    """Path rules for one project root (an already canonical, absolute directory path)."""

    __slots__ = ("_parts", "root", "session_id")

    def __init__(self, root: str, session_id: str | None = None) -> None:
        if not os.path.isabs(root):
            raise ValueError(f"a sandbox root must be absolute, got {root!r}")
        self.root = root
        self.session_id = session_id
        self._parts = tuple(part for part in root.split(os.sep) if part)

    def _deny(self, path: str, reason: str) -> PathNotAllowed:
        return PathNotAllowed(self.session_id, path, reason)

    def _walk(
        self, shown: str, *, missing_ok: bool = False, create: bool = False, writing: bool = False
    ) -> Walk:
        """A walk from this root; its refusals name ``shown`` (the path as the caller gave it)."""
        return Walk(
            self._parts,
            lambda: self.open_root(shown),
            lambda reason: self._deny(shown, reason),
            shown,
            missing_ok=missing_ok,
            create=create,
            writing=writing,
        )

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
        if not _encodable(path):
            raise self._deny(path, "has characters no file name can hold (a lone surrogate)")
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

    def _components(self, path: object) -> list[str]:
        rel = self.relative(path)
        return [] if rel == "." else rel.split("/")

    def open_root(self, path: str = ".") -> int:
        """Blocking. A descriptor of the root, opened from ``/`` without following links (the
        caller closes it); ``path`` is what a refusal names."""
        return _open_root(self.root, lambda reason: self._deny(path, reason), "the project root")

    def resolve(self, path: object) -> tuple[str, str]:
        """Blocking. ``(key, absolute path)`` of where ``path`` leads, symlinks inside the root
        followed. A part that does not exist (yet) is kept as written, so a deleted file still
        has its key."""
        parts = self._components(path)
        with self._walk(str(path), missing_ok=True) as walk:
            for part in parts[:-1]:
                walk.step(part)
            key = walk.last(parts[-1], _lstat)[0] if parts else "."
        return key, self.root if key == "." else os.path.join(self.root, *key.split("/"))

    def open_regular(self, path: object) -> tuple[str, int, os.stat_result]:
        """Blocking. Walk to a regular file and open it; return ``(key, fd, stat)``.

        The caller owns (and must close) the descriptor.
        """
        parts = self._components(path)
        if not parts:
            raise self._deny(str(path), "not a regular file")
        with self._walk(str(path)) as walk:
            for part in parts[:-1]:
                walk.step(part)
            try:
                key, opened = walk.last(parts[-1], _open_file)
            except FileNotFoundError:
                raise self._deny(str(path), "no such file") from None
            except OSError as exc:
                raise self._deny(str(path), f"cannot be opened ({exc.strerror})") from None
        assert opened is not None  # not missing_ok: a missing file raised above
        fd = opened
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise self._deny(str(path), "not a regular file")
        except BaseException:
            os.close(fd)
            raise
        return key, fd, st

    def stat(self, path: object) -> tuple[str, os.stat_result]:
        """Blocking. ``(key, stat)`` of what ``path`` leads to (symlinks inside the root
        followed); refused like :meth:`open_regular`, but any file type is returned."""
        parts = self._components(path)
        with self._walk(str(path)) as walk:
            for part in parts[:-1]:
                walk.step(part)
            try:
                key, st = walk.last(parts[-1] if parts else ".", _lstat)
            except FileNotFoundError:
                raise self._deny(str(path), "no such file") from None
            except OSError as exc:
                raise self._deny(str(path), f"cannot be examined ({exc.strerror})") from None
        if st is None:
            raise self._deny(str(path), "no such file")
        return key, st

    def open_parent(self, path: object, *, create: bool) -> tuple[str, int | None, str]:
        """Blocking. Open the directory that holds ``path`` for a write: ``(key, dir fd, file
        name)``; the fd is ``None`` when a directory on the way does not exist and ``create`` is
        false (with ``create``, missing directories are made, inside the root only). Writing
        into ``.git/`` is refused, also through a link. The caller closes the descriptor."""
        shown = path if isinstance(path, str) else ""
        parts = self._components(path)
        if not parts or shown.endswith("/"):
            raise self._deny(shown, "names a directory, not a file")
        *dirs, name = parts
        if ".git" in parts:
            raise self._deny(shown, "writing inside .git/ is not allowed")
        with self._walk(shown, missing_ok=True, create=create, writing=True) as walk:
            for part in dirs:
                walk.step(part)
            if walk.above is not None:
                raise self._deny(shown, "resolves outside the project root")
            key = "/".join([*walk.names, name])
            if walk.missing:
                return key, None, name
            return key, walk.detach(), name


def _open_file(dir_fd: int, name: str) -> int | None:
    try:
        return os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            return None
        raise


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    return None if stat.S_ISLNK(st.st_mode) else st


def _open_root(root: str, deny: Callable[[str], PathNotAllowed], what: str) -> int:
    """Open the canonical ``root`` from ``/``, one directory at a time, following no link."""
    fd = os.open("/", _DIR_FLAGS)
    try:
        for part in root.split(os.sep):
            if not part:
                continue
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise deny(_root_refusal(fd, part, exc, what)) from None
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _root_refusal(dir_fd: int, part: str, exc: OSError, what: str) -> str:
    with contextlib.suppress(OSError):
        os.readlink(part, dir_fd=dir_fd)
        return (
            f"{what} has a symlink in its path ({part!r}); it was canonical when it was set, "
            "so it changed since: refusing to follow it"
        )
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return f"{what} is not an existing directory"
    return f"{what} cannot be opened ({exc.strerror})"


def _encodable(path: str) -> bool:
    """Whether ``path`` can be given to the OS (a lone surrogate from JSON ``"\\ud800"``
    cannot; undecodable bytes, held as ``\\udc80``-``\\udcff``, can)."""
    try:
        os.fsencode(path)
    except UnicodeError:
        return False
    return True


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root if root.endswith(os.sep) else root + os.sep)
