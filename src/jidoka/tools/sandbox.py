"""The path sandbox: every file a session touches must be a regular file inside its project root.

One implementation serves active files and the agent's file tools, so the rules cannot drift
apart. A path is refused (:class:`~jidoka.PathNotAllowed`, nothing added) when it

- is empty, too long, or contains a NUL byte;
- is absolute and outside the root, or uses ``..`` to climb out of it;
- leads (through symlinks, at any depth) to somewhere outside the root;
- is not a regular file (a directory, device, FIFO, socket), or does not exist.

**How a path is followed.** Resolving a path to a string and then opening that string is a race:
a directory swapped for a symlink in between (``renameat2(RENAME_EXCHANGE)`` in a loop does it
within microseconds) sends the open outside the root, whatever the check said. So nothing here
opens a path string. Each operation opens the root from ``/`` one component at a time with
``O_NOFOLLOW | O_DIRECTORY`` (the stored root is canonical, so a symlink anywhere in it now means
it was swapped: refused), then opens every component of the path relative to the descriptor of
the directory before it, again with ``O_NOFOLLOW``. A symlink met on the way is read and followed
*by this module*, relative to the descriptors it holds: absolute targets and ``..`` are tracked
by name, a target that leaves the root is refused, and at most :data:`MAX_LINK_HOPS` links are
followed. Links inside the root therefore keep working (a session's key for a file is the path of
its target, as before), and no interleaving of renames can make a walk touch anything outside.
A link that leads out and back in (``up -> ..``, then ``up/project/x``) works only by names, since
the root's ancestors are known to be plain directories: the walk never opens anything outside.

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
from typing import Final, TypeVar

from ..errors import InvalidArgument, PathNotAllowed

__all__ = ["MAX_LINK_HOPS", "MAX_PATH_CHARS", "ProjectRoot", "Sandbox", "resolve_project_root"]

MAX_PATH_CHARS: Final = 4096
#: Symlinks one resolution may follow (the kernel's own bound); a loop ends here.
MAX_LINK_HOPS: Final = 40
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FLAGS: Final = (
    os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
)
_T = TypeVar("_T")


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
        with _Walk(self, str(path), missing_ok=True) as walk:
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
        with _Walk(self, str(path)) as walk:
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
        with _Walk(self, str(path)) as walk:
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
        with _Walk(self, shown, missing_ok=True, create=create, writing=True) as walk:
            for part in dirs:
                walk.step(part)
            if walk.above is not None:
                raise self._deny(shown, "resolves outside the project root")
            key = "/".join([*walk.names, name])
            if walk.missing:
                return key, None, name
            return key, walk.detach(), name


class _Walk:
    """One resolution in progress, as a context manager that closes what it opened.

    It holds the root's descriptor and the current directory's, with ``names`` (the current
    directory's path below the root, links resolved). After a link that climbs above the root,
    ``above`` is how deep among the root's own ancestors the walk stands, by name only: from
    there it may only come back down into the root. ``missing`` means a directory on the way
    does not exist; the rest is then taken as written (``missing_ok``) or refused.
    """

    __slots__ = (
        "_create",
        "_fd",
        "_hops",
        "_missing_ok",
        "_root_fd",
        "_sandbox",
        "_shown",
        "_writing",
        "above",
        "missing",
        "names",
    )

    def __init__(
        self,
        sandbox: Sandbox,
        shown: str,
        *,
        missing_ok: bool = False,
        create: bool = False,
        writing: bool = False,
    ) -> None:
        self._sandbox = sandbox
        self._shown = shown
        self._missing_ok = missing_ok
        self._create = create
        self._writing = writing
        self._root_fd = self._fd = -1
        self._hops = 0
        self.names: list[str] = []
        self.above: int | None = None
        self.missing = False

    def __enter__(self) -> _Walk:
        self._root_fd = self._fd = self._sandbox.open_root(self._shown)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0 and self._fd != self._root_fd:
            os.close(self._fd)
        if self._root_fd >= 0:
            os.close(self._root_fd)
        self._fd = self._root_fd = -1

    def detach(self) -> int:
        """The current directory's descriptor, now the caller's to close."""
        fd = self._fd
        if fd == self._root_fd:
            self._root_fd = -1
        self._fd = -1
        return fd

    def _deny(self, reason: str) -> PathNotAllowed:
        return self._sandbox._deny(self._shown, reason)

    def _here(self, part: str) -> str:
        return "/".join([*self.names, part])

    def _move(self, fd: int, names: list[str]) -> None:
        if self._fd != self._root_fd:
            os.close(self._fd)
        self._fd, self.names = fd, names

    # --- directories ----------------------------------------------------------------------------

    def step(self, part: str) -> None:
        """Enter directory ``part`` of the current directory, following a symlink by hand."""
        if part in ("", "."):
            return
        if self.above is not None:
            self._step_above(part)
            return
        if part == "..":
            self._up()
            return
        if self._writing and part == ".git":
            raise self._deny("writing inside .git/ is not allowed")
        if self.missing:
            self.names.append(part)
            return
        for _ in range(3):  # mkdir, then open what was made (or what replaced it)
            try:
                fd = os.open(part, _DIR_FLAGS, dir_fd=self._fd)
            except FileNotFoundError:
                if not self._create:
                    if not self._missing_ok:
                        raise self._deny("no such file") from None
                    self.missing = True
                    self.names.append(part)
                    return
                self._mkdir(part)
                continue
            except OSError as exc:  # a symlink (ELOOP, ENOTDIR), a file, no permission
                target = self._readlink(part)
                if target is None:
                    why = "a file where a directory must be" if exc.errno == errno.ENOTDIR else ""
                    raise self._deny(
                        f"bad parent directory {self._here(part)!r} ({why or exc.strerror})"
                    ) from None
                self._follow(target)
                return
            self._move(fd, [*self.names, part])
            return
        raise self._deny(f"{self._here(part)!r} changed while it was being resolved")

    def _mkdir(self, part: str) -> None:
        try:
            os.mkdir(part, 0o777, dir_fd=self._fd)
        except FileExistsError:
            pass  # made meanwhile, or a (dangling) link: the next open sees which
        except OSError as exc:
            raise self._deny(
                f"cannot create directory {self._here(part)!r} ({exc.strerror})"
            ) from None

    def _readlink(self, part: str) -> str | None:
        try:
            return os.readlink(part, dir_fd=self._fd)
        except OSError:  # not a link (EINVAL), or gone
            return None

    def _follow(self, target: str) -> None:
        for part in self._link_parts(target):
            self.step(part)

    def _hop(self) -> None:
        self._hops += 1
        if self._hops > MAX_LINK_HOPS:
            raise self._deny(f"more than {MAX_LINK_HOPS} symlinks on the way (a loop?)")

    def _link_parts(self, target: str) -> list[str]:
        """Count a hop, move to ``/`` for an absolute target, and return its components."""
        self._hop()
        if target.startswith("/"):
            self._move(self._root_fd, [])
            self.missing = False
            self.above = 0 if self._sandbox._parts else None
        return target.split("/")

    def _up(self) -> None:
        """``..`` inside the root: re-walk from the root by name (never ``openat(..)``, which
        would follow a directory moved out of the root)."""
        if not self.names:
            if self._sandbox._parts:
                self.above = len(self._sandbox._parts) - 1
            return  # ".." of "/" is "/"
        names = self.names[:-1]
        if self.missing:
            self.names = names
            return
        fd = self._root_fd
        try:
            for name in names:
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
                if fd != self._root_fd:
                    os.close(fd)
                fd = nxt
        except OSError:
            if fd != self._root_fd:
                os.close(fd)
            raise self._deny("changed while it was being resolved") from None
        self._move(fd, names)

    def _step_above(self, part: str) -> None:
        depth = self.above
        assert depth is not None
        parts = self._sandbox._parts
        if part == "..":
            self.above = max(depth - 1, 0)
        elif depth < len(parts) and part == parts[depth]:
            if depth + 1 == len(parts):
                self.above = None  # back at the root
                self._move(self._root_fd, [])
                self.missing = False
            else:
                self.above = depth + 1
        elif part not in ("", "."):
            raise self._deny("resolves outside the project root")

    # --- the last component ---------------------------------------------------------------------

    def last(self, name: str, probe: Callable[[int, str], _T | None]) -> tuple[str, _T | None]:
        """Resolve the path's last component: ``probe(dir_fd, name)`` returns what the caller
        wants, or ``None`` for a symlink, which is followed here. ``(key, result)``; the result
        is ``None`` only for a missing file with ``missing_ok`` (the key is then as written)."""
        while True:
            if name == "..":
                self.step("..")
                name = "."
            if self.above is not None:
                if name not in ("", "."):
                    self._step_above(name)
                    name = "."
                if self.above is not None:
                    raise self._deny("resolves outside the project root")
            if name == "":
                name = "."
            key = ("/".join(self.names) or ".") if name == "." else self._here(name)
            if self.missing:
                if self._missing_ok:
                    return key, None
                raise FileNotFoundError(errno.ENOENT, "no such file", self._shown)
            try:
                result = probe(self._fd, name)
            except FileNotFoundError:
                if self._missing_ok:
                    return key, None
                raise
            if result is not None:
                return key, result
            target = self._readlink(name)
            if target is None:  # no longer a link: look again (a counted hop, so this ends)
                self._hop()
                continue
            *dirs, name = self._link_parts(target)
            for part in dirs:
                self.step(part)


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
