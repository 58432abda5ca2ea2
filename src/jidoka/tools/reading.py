"""Reading project files through the sandbox: facts for a session's file index, text for its
context, and the bounded read the agent's file tools share.

All functions here block (they touch the disk); the session runs them in a worker thread.
"""

from __future__ import annotations

import os
import stat
from typing import Final

import msgspec

from ..errors import JidokaError, LimitExceeded, PathNotAllowed
from .sandbox import Sandbox

__all__ = [
    "FileFacts",
    "detect_language",
    "read_all",
    "read_bounded",
    "read_file",
    "stat_all",
    "stat_file",
]

_READ_CHUNK: Final = 1 << 16  # how much a read grows the buffer when a file grew mid-read

_LANGUAGES: Final[dict[str, str]] = {
    ".py": "python", ".pyi": "python", ".ex": "elixir", ".exs": "elixir", ".erl": "erlang",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".tsx": "typescript", ".rs": "rust", ".go": "go", ".java": "java",
    ".kt": "kotlin", ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".hpp": "cpp",
    ".cs": "csharp", ".rb": "ruby", ".php": "php", ".swift": "swift", ".scala": "scala",
    ".sh": "shell", ".bash": "shell", ".zsh": "shell", ".sql": "sql", ".html": "html",
    ".css": "css", ".scss": "scss", ".json": "json", ".yaml": "yaml", ".yml": "yaml",
    ".toml": "toml", ".xml": "xml", ".md": "markdown", ".rst": "restructuredtext",
    ".txt": "text", ".lua": "lua", ".hs": "haskell", ".ml": "ocaml", ".clj": "clojure",
    ".dart": "dart", ".r": "r", ".jl": "julia", ".vue": "vue", ".svelte": "svelte",
}  # fmt: skip
_NAMES: Final[dict[str, str]] = {
    "Makefile": "make", "Dockerfile": "dockerfile", "CMakeLists.txt": "cmake",
    "Gemfile": "ruby", "Rakefile": "ruby", "mix.lock": "elixir",
}  # fmt: skip


def detect_language(path: str) -> str | None:
    """Language name guessed from the file name or extension, or ``None``."""
    name = path.rsplit("/", 1)[-1]
    if name in _NAMES:
        return _NAMES[name]
    return _LANGUAGES.get(os.path.splitext(name)[1].lower())


class FileFacts(msgspec.Struct, frozen=True):
    """What one read of a file found: its key, stamps, shape and text."""

    path: str
    size: int
    mtime_ns: int
    line_count: int
    language: str | None
    text: str


def read_file(sandbox: Sandbox, path: object, max_bytes: int) -> FileFacts:
    """Blocking. Validate ``path`` through the sandbox and read it whole (at most ``max_bytes``)."""
    rel, fd, st = sandbox.open_regular(path)
    try:
        if st.st_size > max_bytes:
            raise LimitExceeded(
                "max_file_bytes", max_bytes, session_id=sandbox.session_id, actual=st.st_size,
                path=rel,
            )  # fmt: skip
        try:
            raw = read_bounded(fd, max_bytes, st.st_size)
        except OSError as exc:  # EIO, or a file system that refuses reads
            raise PathNotAllowed(
                sandbox.session_id, rel, f"cannot be read ({exc.strerror})"
            ) from None
    finally:
        os.close(fd)
    if len(raw) > max_bytes:  # grew between fstat and read
        raise LimitExceeded(
            "max_file_bytes", max_bytes, session_id=sandbox.session_id, actual=len(raw), path=rel
        )
    lines = raw.count(b"\n") + (1 if raw and not raw.endswith(b"\n") else 0)
    return FileFacts(
        path=rel,
        size=len(raw),
        mtime_ns=st.st_mtime_ns,
        line_count=lines,
        language=detect_language(rel),
        text=raw.decode("utf-8", errors="replace"),
    )


def read_bounded(fd: int, max_bytes: int, expected: int) -> bytearray:
    """Blocking. At most ``max_bytes + 1`` bytes of ``fd`` (one more than allowed, so a caller
    sees that the file is too long), read into one buffer sized from ``expected`` (the size
    ``fstat`` gave) and grown in chunks only if the file grew since.

    Never sized from ``max_bytes`` alone: that is a client-set number, and reading a 10-byte file
    under ``max_file_bytes=2**40`` must not ask for a terabyte."""
    limit = max_bytes + 1
    buf = bytearray(min(max(expected, 0) + 1, limit))
    filled = 0
    while True:
        if filled == len(buf):
            if filled >= limit:
                break
            buf.extend(bytes(min(_READ_CHUNK, limit - filled)))
        with memoryview(buf) as whole, whole[filled:] as free:
            got = os.readv(fd, [free])
        if got == 0:
            break
        filled += got
    del buf[filled:]
    return buf


def stat_file(sandbox: Sandbox, path: str) -> tuple[int, int] | None:
    """Blocking. ``(size, mtime_ns)`` of a file in the root; ``None`` if gone or now refused."""
    try:
        _, st = sandbox.stat(path)
    except JidokaError:  # gone, or now a link out of the root
        return None
    if not stat.S_ISREG(st.st_mode):
        return None  # replaced by a directory, FIFO, ...: read_file would refuse it
    return st.st_size, st.st_mtime_ns


def stat_all(sandbox: Sandbox, paths: list[str]) -> list[tuple[int, int] | None]:
    """:func:`stat_file` of each path, in one trip to a worker thread."""
    return [stat_file(sandbox, path) for path in paths]


def read_all(sandbox: Sandbox, paths: list[str], max_bytes: int) -> list[FileFacts | None]:
    """:func:`read_file` of each path, ``None`` for one that can no longer be read."""
    out: list[FileFacts | None] = []
    for path in paths:
        try:
            out.append(read_file(sandbox, path, max_bytes))
        except (OSError, PathNotAllowed, LimitExceeded):
            out.append(None)  # changed since it was added; the context skips it
    return out
