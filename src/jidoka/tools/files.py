"""The agent's file tools: what the model may do to a session's project, one function each.

Each tool is a plain typed function of the session's :class:`ToolContext` that blocks (the
registry runs it in a worker thread, which cannot be killed, so every loop here checks a deadline
and a size budget itself) and returns a :class:`ToolOutput` bounded by ``max_output_chars``. Reads
go through :class:`~jidoka.tools.sandbox.Sandbox`, so the tools refuse exactly what active files
refuse, and every path is walked the sandbox's way: directory by directory relative to held
descriptors, never through a link it has not checked, so a symlink swapped in mid-call is refused
(see :mod:`jidoka.tools.sandbox`). Writes add their own rules: no writing through a symlink or into
``.git/``, parents made only inside the root, and an atomic replace.

Two libraries do what the standard library cannot do safely here. ``pathspec`` applies
``.gitignore`` files with git's rules (negation, anchoring, ``dir/``). ``regex`` runs the model's
patterns: ``re`` holds the GIL for a whole match, so a catastrophic pattern like ``(a|a)+$`` in a
worker thread would freeze every session's event loop; ``regex`` releases it and has a timeout.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import time
from typing import Final

import msgspec
import regex
from pathspec import GitIgnoreSpec

from ..errors import JidokaError, LimitExceeded, PathNotAllowed
from .reading import read_bounded
from .reading import read_file as read_facts
from .sandbox import Sandbox

__all__ = [
    "ToolContext",
    "ToolError",
    "ToolOutput",
    "current_text",
    "edit_file",
    "edit_text",
    "encode_content",
    "list_files",
    "read_file",
    "search_code",
    "write_file",
]

_BINARY_PROBE: Final = 8192  # a NUL byte in this many leading bytes marks a file as binary
_SHOWN_LINE_CHARS: Final = 300  # a search hit shows at most this much of its line
_GITIGNORE_BYTES: Final = 256 * 1024
_READ_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_TMP_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class ToolContext(msgspec.Struct, frozen=True, kw_only=True):
    """Where the tools act and how much one call may do. ``root`` must be canonical (as
    :func:`~jidoka.tools.sandbox.resolve_project_root` returns it, like a session's root)."""

    root: str
    session_id: str
    max_output_chars: int = 20_000
    max_file_bytes: int = 1 << 20  # larger files are refused by read/edit and skipped by search
    max_write_bytes: int = 1 << 20
    max_line_chars: int = 2_000  # longer lines are cut when shown and when searched
    max_walk_entries: int = 50_000  # directory entries one list/search may look at
    max_search_bytes: int = 64 << 20  # file bytes one search may read
    max_diff_lines: int = 200

    @property
    def sandbox(self) -> Sandbox:
        return Sandbox(self.root, self.session_id)


class ToolError(JidokaError):
    """A tool refused the call; the message is written for the model, which gets it back as
    ``error: ...`` and can correct itself. (Path and limit refusals stay
    :class:`~jidoka.PathNotAllowed` / :class:`~jidoka.LimitExceeded` inside the tools.)"""


class ToolOutput(msgspec.Struct, frozen=True, kw_only=True):
    """What a tool returns: bounded text for the model, and the keys it read and wrote."""

    content: str
    paths_read: list[str] = []
    paths_written: list[str] = []


# --- reading ------------------------------------------------------------------------------------


def read_file(
    ctx: ToolContext,
    path: str,
    start_line: int = 1,
    end_line: int | None = None,
    *,
    deadline: float | None = None,
) -> ToolOutput:
    """Read a text file of the project; lines come prefixed with their numbers ("   12| code").
    Use start_line/end_line to read a part of a large file.

    Binary files (a NUL byte in the first 8 KiB) are refused rather than shown as noise.
    """
    facts = read_facts(ctx.sandbox, path, ctx.max_file_bytes)
    if "\x00" in facts.text[:_BINARY_PROBE]:
        raise ToolError(f"{facts.path} is a binary file; only text files can be read")
    lines = _split_lines(facts.text)
    total, key = len(lines), facts.path
    if start_line < 1 or (end_line is not None and end_line < start_line):
        raise ToolError(f"bad line range {start_line}..{end_line}: lines are numbered from 1")
    if total == 0:
        return ToolOutput(content=f"[{key} is empty]", paths_read=[key])
    if start_line > total:
        raise ToolError(f"start_line {start_line} is past the end of {key} ({total} lines)")
    last = min(end_line or total, total)
    budget = max(ctx.max_output_chars - 120, 80)  # room for the note
    rows: list[str] = []
    used = 0
    for number in range(start_line, last + 1):
        row = f"{number:>5}| {_clip(lines[number - 1], ctx.max_line_chars)}"
        if rows and used + len(row) + 1 > budget:
            rows.append(f"[truncated: {last - number + 1} more lines; read on from line {number}]")
            break
        rows.append(row[:budget])
        used += len(row) + 1
    else:
        if last < total:
            rows.append(f"[{total - last} more lines in {key} ({total} in all)]")
    return ToolOutput(content=_bound("\n".join(rows), ctx), paths_read=[key])


def list_files(
    ctx: ToolContext,
    pattern: str = "**/*",
    max_results: int = 200,
    *,
    deadline: float | None = None,
) -> ToolOutput:
    """List the project's files (relative paths, sorted) that match a glob, skipping what
    .gitignore files ignore and the .git directory.

    Symlinks count when they lead to a regular file inside the root; linked directories are not
    entered (that avoids cycles and listing a tree twice).
    """
    found, cut = _walk(ctx, pattern, deadline)
    rows = found[:max_results] or [f"[no files match {pattern!r}]"]
    if len(found) > max_results:
        rows.append(f"[{len(found) - max_results} more not shown]")
    if cut:
        rows.append(f"[stopped after {ctx.max_walk_entries} entries; use a narrower pattern]")
    return ToolOutput(content=_bound("\n".join(rows), ctx))


def search_code(
    ctx: ToolContext,
    pattern: str,
    glob: str = "**/*",
    max_matches: int = 100,
    case_sensitive: bool = True,
    *,
    deadline: float | None = None,
) -> ToolOutput:
    """Search the project's text files for a regular expression; prints "path:line: text" for
    each matching line. Use glob to narrow the files searched.

    Matching is per line (a pattern cannot span lines) over the first ``max_line_chars`` of each;
    binaries, files over ``max_file_bytes`` and gitignored files are skipped.
    """
    try:
        rx = regex.compile(pattern, 0 if case_sensitive else regex.IGNORECASE)
    except regex.error as exc:
        raise ToolError(f"invalid regex {pattern!r}: {exc}") from None
    files, cut = _walk(ctx, glob, deadline)
    hits: list[str] = []
    paths: list[str] = []
    skipped = {"binary": 0, "over max_file_bytes": 0}
    spent = 0
    for key in files:
        if len(hits) >= max_matches or spent >= ctx.max_search_bytes:
            break
        _check(deadline)
        try:
            facts = read_facts(ctx.sandbox, key, ctx.max_file_bytes)
        except LimitExceeded:
            skipped["over max_file_bytes"] += 1
            continue
        except (PathNotAllowed, OSError):  # changed since the walk
            continue
        spent += facts.size
        if "\x00" in facts.text[:_BINARY_PROBE]:
            skipped["binary"] += 1
            continue
        for number, line in enumerate(_split_lines(facts.text), 1):
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            if rx.search(line[: ctx.max_line_chars], timeout=timeout) is None:
                continue
            hits.append(f"{key}:{number}: {_clip(line.strip(), _SHOWN_LINE_CHARS)}")
            if not paths or paths[-1] != key:
                paths.append(key)
            if len(hits) >= max_matches:
                break
    rows = hits or [f"[no matches for {pattern!r}]"]
    if len(hits) >= max_matches:
        rows.append(f"[stopped at max_matches={max_matches}; more matches may exist]")
    elif spent >= ctx.max_search_bytes:
        rows.append(f"[stopped after reading max_search_bytes={ctx.max_search_bytes}]")
    if cut:
        rows.append(f"[stopped after {ctx.max_walk_entries} entries; use a narrower glob]")
    if any(skipped.values()):
        rows.append("[skipped: " + ", ".join(f"{n} {w}" for w, n in skipped.items() if n) + "]")
    return ToolOutput(content=_bound("\n".join(rows), ctx), paths_read=paths)


def _walk(ctx: ToolContext, glob: str, deadline: float | None) -> tuple[list[str], bool]:
    """Sorted keys of the regular files that ``glob`` matches and no .gitignore ignores, and
    whether the walk stopped at ``max_walk_entries``. It starts from the root's descriptor (opened
    without following links, so a swapped component of the root's own path is refused), and
    ``os.fwalk`` moves by directory descriptor and never enters a symlink, so a link swapped in
    mid-walk cannot lead it out of the root."""
    want = _spec([glob.removeprefix("./")], f"invalid glob {glob!r}")
    root_fd = ctx.sandbox.open_root()
    try:
        return _walk_from(ctx, root_fd, want, deadline)
    finally:
        os.close(root_fd)


def _walk_from(
    ctx: ToolContext, root_fd: int, want: GitIgnoreSpec, deadline: float | None
) -> tuple[list[str], bool]:
    found: list[str] = []
    seen = 0
    inherited: dict[str, list[tuple[str, GitIgnoreSpec]]] = {"": []}
    # Leaving the loop early drops the generator, which closes its descriptors (not root_fd).
    walk = os.fwalk(os.curdir, dir_fd=root_fd, follow_symlinks=False)
    for top, dirnames, filenames, dir_fd in walk:
        _check(deadline)
        rel = os.path.normpath(top)
        base = "" if rel == os.curdir else rel.replace(os.sep, "/") + "/"
        rules = [*inherited.pop(base, []), *_gitignore(ctx, base)]
        subdirs: list[str] = []
        for name in dirnames + filenames:
            seen += 1
            if seen > ctx.max_walk_entries:
                return sorted(found), True
            key = base + name
            try:
                mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
            except OSError:
                continue
            if name == ".git":
                continue
            if stat.S_ISDIR(mode):
                if not _ignored(rules, key + "/"):
                    subdirs.append(name)
                    inherited[key + "/"] = rules
            elif (
                (stat.S_ISREG(mode) or (stat.S_ISLNK(mode) and _links_to_file(ctx.sandbox, key)))
                and not _ignored(rules, key)
                and want.match_file(key)
            ):
                found.append(key)
        dirnames[:] = subdirs
    return sorted(found), False


def _links_to_file(sb: Sandbox, key: str) -> bool:
    try:
        return stat.S_ISREG(sb.stat(key)[1].st_mode)
    except JidokaError:  # out of the root, dangling, a loop
        return False


def _gitignore(ctx: ToolContext, base: str) -> list[tuple[str, GitIgnoreSpec]]:
    """The rules of ``base``'s .gitignore (none if it is missing, refused or unreadable)."""
    try:
        text = read_facts(ctx.sandbox, base + ".gitignore", _GITIGNORE_BYTES).text
        return [(base, _spec(text.splitlines(), "bad .gitignore"))]
    except (JidokaError, OSError):
        return []


def _spec(lines: list[str], what: str) -> GitIgnoreSpec:
    try:
        return GitIgnoreSpec.from_lines(lines)
    except (ValueError, TypeError) as exc:
        raise ToolError(f"{what}: {exc}") from None


def _ignored(rules: list[tuple[str, GitIgnoreSpec]], key: str) -> bool:
    for base, spec in reversed(rules):  # a deeper .gitignore overrides a shallower one
        decided = spec.check_file(key[len(base) :]).include
        if decided is not None:
            return decided
    return False


# --- writing ------------------------------------------------------------------------------------


def write_file(
    ctx: ToolContext, path: str, content: str, *, deadline: float | None = None
) -> ToolOutput:
    """Create or replace a file of the project with the given content (parent directories are
    created). Prefer edit_file for a small change to an existing file.

    The new content appears atomically (temp file in the same directory, then ``os.replace``);
    a replaced file keeps its permission bits.
    """
    data = encode_content(ctx, content, path)
    key, fd, name = _open_parent(ctx.sandbox, path, create=True)
    assert fd is not None  # create=True makes the parents or raises
    try:
        mode = _existing_mode(ctx.sandbox, fd, name, path)
        _replace(fd, name, data, mode)
    finally:
        os.close(fd)
    verb = "created" if mode is None else "replaced"
    return ToolOutput(content=f"wrote {len(data)} bytes to {key} ({verb})", paths_written=[key])


def edit_file(
    ctx: ToolContext, path: str, old_text: str, new_text: str, *, deadline: float | None = None
) -> ToolOutput:
    """Replace one exact, unique occurrence of old_text with new_text in a file of the project.
    Include enough surrounding lines in old_text to make it unique.

    A file that is not valid UTF-8 is refused: decoding it leniently would corrupt it on write.
    """
    key, fd, name = _open_parent(ctx.sandbox, path, create=False)
    if fd is None:
        raise PathNotAllowed(ctx.session_id, path, "no such file")
    try:
        mode = _existing_mode(ctx.sandbox, fd, name, path)
        if mode is None:
            raise PathNotAllowed(ctx.session_id, path, "no such file")
        old = _decode(_read_at(ctx, fd, name, key), key, strict=True)
        data = encode_content(ctx, edit_text(old, old_text, new_text, key), path)
        _replace(fd, name, data, mode)
    finally:
        os.close(fd)
    summary = f"edited {key}: replaced 1 occurrence, now {len(data)} bytes"
    return ToolOutput(content=summary, paths_read=[key], paths_written=[key])


def current_text(ctx: ToolContext, path: str, *, strict: bool) -> tuple[str, str | None]:
    """Blocking. ``(key, text)`` of the file a write would replace, reading it under the write
    rules (so a refused write is refused here too); ``None`` when it does not exist yet.
    ``strict`` refuses a file that is not UTF-8 (as edit_file does)."""
    key, fd, name = _open_parent(ctx.sandbox, path, create=False)
    if fd is None:
        return key, None
    try:
        if _existing_mode(ctx.sandbox, fd, name, path) is None:
            return key, None
        return key, _decode(_read_at(ctx, fd, name, key), key, strict=strict)
    finally:
        os.close(fd)


def edit_text(text: str, old: str, new: str, key: str) -> str:
    """``text`` with the one occurrence of ``old`` replaced; a CRLF file is matched with CRLF."""
    pos = text.find(old)
    if pos < 0 and "\r\n" in text and "\n" in old and "\r\n" not in old:
        old, new = old.replace("\n", "\r\n"), new.replace("\n", "\r\n")
        pos = text.find(old)
    if pos < 0:
        raise ToolError(f"old_text not found in {key}")
    count, at = 1, pos
    while count < 1000 and (at := text.find(old, at + 1)) >= 0:
        count += 1
    if count > 1:
        many = f"{count}+" if count >= 1000 else str(count)
        raise ToolError(f"old_text occurs {many} times in {key}; include more context")
    return text[:pos] + new + text[pos + len(old) :]


def _open_parent(sb: Sandbox, path: str, *, create: bool) -> tuple[str, int | None, str]:
    """The directory that holds ``path``, opened by the sandbox's descriptor walk: ``(key, dir
    fd or None when it doesn't exist and not create, file name)``. The caller closes the fd."""
    return sb.open_parent(path, create=create)


def _existing_mode(sb: Sandbox, fd: int, name: str, path: str) -> int | None:
    """Permission bits of the file to replace, ``None`` if there is none yet."""
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise PathNotAllowed(sb.session_id, path, "is a symlink; refusing to write through it")
    if not stat.S_ISREG(st.st_mode):
        raise PathNotAllowed(sb.session_id, path, "not a regular file")
    return stat.S_IMODE(st.st_mode)


def _read_at(ctx: ToolContext, dir_fd: int, name: str, key: str) -> bytes:
    fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PathNotAllowed(ctx.session_id, key, "not a regular file")
        if st.st_size > ctx.max_file_bytes:
            raise LimitExceeded("max_file_bytes", ctx.max_file_bytes, actual=st.st_size, path=key)
        raw = read_bounded(fd, ctx.max_file_bytes, st.st_size)
    finally:
        os.close(fd)
    if len(raw) > ctx.max_file_bytes:
        raise LimitExceeded("max_file_bytes", ctx.max_file_bytes, actual=len(raw), path=key)
    return bytes(raw)


def _replace(dir_fd: int, name: str, data: bytes, mode: int | None) -> None:
    """Write ``data`` to a temp file beside ``name``, then rename it over ``name``: a reader sees
    the old file or the new one, never half of it; a failure leaves no temp file behind."""
    tmp = f".{name[:180]}.{secrets.token_hex(6)}.jidoka-tmp"
    tfd = os.open(tmp, _TMP_FLAGS, 0o666, dir_fd=dir_fd)
    try:
        with os.fdopen(tfd, "wb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


# --- helpers ------------------------------------------------------------------------------------


def encode_content(ctx: ToolContext, text: str, path: str) -> bytes:
    """``text`` as the bytes a write would store; refuses what a write would refuse."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ToolError(f"content for {path} is not valid Unicode text") from None
    if len(data) > ctx.max_write_bytes:
        raise LimitExceeded("max_write_bytes", ctx.max_write_bytes, actual=len(data), path=path)
    return data


def _decode(raw: bytes, key: str, *, strict: bool) -> str:
    try:
        return raw.decode("utf-8", "strict" if strict else "replace")
    except UnicodeDecodeError:
        raise ToolError(f"{key} is not valid UTF-8; use write_file to replace it") from None


def _split_lines(text: str) -> list[str]:
    """Lines as editors number them: split on LF only (``str.splitlines`` also splits on form
    feeds and Unicode separators), a trailing CR dropped, no phantom line after a final LF."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _clip(line: str, limit: int) -> str:
    return line if len(line) <= limit else f"{line[:limit]}… [+{len(line) - limit} chars]"


def _bound(text: str, ctx: ToolContext) -> str:
    """``text`` cut to ``max_output_chars``, saying how much was cut (the last resort: each tool
    bounds its output by rows first, so this rarely fires)."""
    limit = ctx.max_output_chars
    if len(text) <= limit:
        return text
    keep = max(limit - 60, 0)
    return text[:keep] + f"\n[truncated: {len(text) - keep} more chars]"


def _check(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError("tool deadline passed")
