"""Following a path inside a project root without ever leaving it: one :class:`Walk` per lookup.

Resolving a path to a string and then opening that string is a race: a directory swapped for a
symlink in between (``renameat2(RENAME_EXCHANGE)`` in a loop does it within microseconds) sends the
open outside the root, whatever the check said. So nothing here opens a path string. Each operation
opens the root from ``/`` one component at a time with ``O_NOFOLLOW | O_DIRECTORY`` (the stored
root is canonical, so a symlink anywhere in it now means it was swapped: refused), then opens every
component of the path relative to the descriptor of the directory before it, again with
``O_NOFOLLOW``. A symlink met on the way is read and followed *by this module*, relative to the
descriptors it holds: absolute targets and ``..`` are tracked by name, a target that leaves the
root is refused, and at most :data:`MAX_LINK_HOPS` links are followed. Links inside the root
therefore keep working (a session's key for a file is the path of its target, as before), and no
interleaving of renames can make a walk touch anything outside. A link that leads out and back in
(``up -> ..``, then ``up/project/x``) works only by names, since the root's ancestors are known to
be plain directories: the walk never opens anything outside.

Every call here blocks; :class:`~jidoka.tools.sandbox.Sandbox` is the only user, and its callers
run it in a worker thread. A walk refuses with the :class:`~jidoka.PathNotAllowed` its ``deny``
makes, so a refusal names the path as the caller gave it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Final, TypeVar

from ..errors import PathNotAllowed

__all__ = ["DIR_FLAGS", "MAX_LINK_HOPS", "Walk"]

#: Symlinks one resolution may follow (the kernel's own bound); a loop ends here.
MAX_LINK_HOPS: Final = 40
#: How every directory on the way is opened: never through a symlink.
DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_T = TypeVar("_T")


class Walk:
    """One resolution in progress, as a context manager that closes what it opened.

    It holds the root's descriptor and the current directory's, with ``names`` (the current
    directory's path below the root, links resolved). After a link that climbs above the root,
    ``above`` is how deep among the root's own ancestors the walk stands, by name only: from
    there it may only come back down into the root. ``missing`` means a directory on the way
    does not exist; the rest is then taken as written (``missing_ok``) or refused.
    """

    __slots__ = (
        "_create",
        "_deny",
        "_fd",
        "_hops",
        "_missing_ok",
        "_open_root",
        "_parts",
        "_root_fd",
        "_shown",
        "_writing",
        "above",
        "missing",
        "names",
    )

    def __init__(
        self,
        root_parts: tuple[str, ...],
        open_root: Callable[[], int],
        deny: Callable[[str], PathNotAllowed],
        shown: str,
        *,
        missing_ok: bool = False,
        create: bool = False,
        writing: bool = False,
    ) -> None:
        self._parts = root_parts
        self._open_root = open_root
        self._deny = deny
        self._shown = shown
        self._missing_ok = missing_ok
        self._create = create
        self._writing = writing
        self._root_fd = self._fd = -1
        self._hops = 0
        self.names: list[str] = []
        self.above: int | None = None
        self.missing = False

    def __enter__(self) -> Walk:
        self._root_fd = self._fd = self._open_root()
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
                fd = os.open(part, DIR_FLAGS, dir_fd=self._fd)
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
            self.above = 0 if self._parts else None
        return target.split("/")

    def _up(self) -> None:
        """``..`` inside the root: re-walk from the root by name (never ``openat(..)``, which
        would follow a directory moved out of the root)."""
        if not self.names:
            if self._parts:
                self.above = len(self._parts) - 1
            return  # ".." of "/" is "/"
        names = self.names[:-1]
        if self.missing:
            self.names = names
            return
        fd = self._root_fd
        try:
            for name in names:
                nxt = os.open(name, DIR_FLAGS, dir_fd=fd)
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
        parts = self._parts
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
