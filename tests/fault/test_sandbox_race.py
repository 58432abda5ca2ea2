"""The path sandbox under a symlink race: a thread keeps swapping a directory with a symlink to an
outside directory (``renameat2(RENAME_EXCHANGE)``, or plain renames where the kernel lacks it)
while the file tools, ``add_file`` and ``--projects-dir`` session creation use paths through it.

Two places are swapped: a directory inside the project (``d``, whose twin outside holds a secret),
and the directory *holding* the project root (so the root's own path leads outside mid-call).
Whatever the interleaving, nothing outside may be read, listed, written or rooted, and every
refusal must be a Jidoka error (anything else would be a 5xx over HTTP or a dead turn).

The loops are bounded by count; the wall-clock cap is only a safety stop. The assertions do not
depend on timing: with the sandbox walking by descriptor, no interleaving can escape.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import jidoka
from jidoka.errors import JidokaError
from jidoka.tools.files import (
    ToolContext,
    ToolOutput,
    edit_file,
    list_files,
    read_file,
    search_code,
    write_file,
)

from ..support.swap import swapping

pytestmark = pytest.mark.stores("memory")  # the race is about the file system, not the store

TRIES = 200  # per operation and layout: 6 operations x 2 layouts + 2 creates -> 2,800 tries
SAFETY_STOP = 120.0  # seconds per loop; a stop, not an assertion
INSIDE = "inside\n"
SECRET = "SECRET-9f3c\nSECRET-9f3c\nSECRET-9f3c\n"
ONLY_OUTSIDE = "only-outside.txt"


@dataclass
class Tally:
    tries: int = 0
    escapes: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # non-Jidoka exceptions: 5xx / dead turns
    refused: int = 0

    def __str__(self) -> str:
        return (
            f"{self.tries} tries, {len(self.escapes)} escapes {self.escapes[:3]}, "
            f"{len(self.foreign)} non-Jidoka errors {self.foreign[:3]}, {self.refused} refused"
        )


@dataclass
class Layout:
    """A project whose ``d`` (or whose root's parent) can be swapped for a link to a twin outside
    that holds the secret."""

    root: str  # canonical project root
    swap_real: Path
    swap_link: Path
    outside: Path  # the twin of the swapped directory
    secret: Path  # the outside twin of d/f.txt

    def leaked_writes(self) -> list[str]:
        return [str(p) for p in self.outside.rglob("w-*.txt")]


def _inner_layout(tmp_path: Path) -> Layout:
    """``root/d`` <-> ``root/x`` (a link to ``outside``)."""
    root = tmp_path / "project"
    outside = tmp_path / "outside"
    (root / "d").mkdir(parents=True)
    outside.mkdir()
    (root / "d" / "f.txt").write_text(INSIDE, encoding="utf-8")
    (outside / "f.txt").write_text(SECRET, encoding="utf-8")
    (outside / ONLY_OUTSIDE).write_text(SECRET, encoding="utf-8")
    os.symlink(outside, root / "x")
    return Layout(os.path.realpath(root), root / "d", root / "x", outside, outside / "f.txt")


def _ancestor_layout(tmp_path: Path) -> Layout:
    """``base`` (holding the root ``base/project``) <-> ``evil`` (a link to a twin tree)."""
    base = tmp_path / "base"
    twin = tmp_path / "twin"
    for top, text in ((base, INSIDE), (twin, SECRET)):
        (top / "project" / "d").mkdir(parents=True)
        (top / "project" / "d" / "f.txt").write_text(text, encoding="utf-8")
    (twin / "project" / ONLY_OUTSIDE).write_text(SECRET, encoding="utf-8")
    os.symlink(twin, tmp_path / "evil")
    secret = twin / "project" / "d" / "f.txt"
    return Layout(os.path.realpath(base / "project"), base, tmp_path / "evil", twin, secret)


LAYOUTS = {"inner": _inner_layout, "ancestor": _ancestor_layout}


def _run_tool(tally: Tally, layout: Layout, call: Callable[[], ToolOutput], leak: str) -> None:
    tally.tries += 1
    try:
        output = call()
    except JidokaError:
        tally.refused += 1
    except Exception as exc:
        tally.foreign.append(f"{type(exc).__name__}: {exc}")
    else:
        if leak in output.content:
            tally.escapes.append(output.content[:80])
    written = layout.leaked_writes()
    if written:
        tally.escapes.append(f"wrote {written}")
        for path in written:
            os.unlink(path)
    if layout.secret.read_text(encoding="utf-8") != SECRET:
        tally.escapes.append("edited the outside file")
        layout.secret.write_text(SECRET, encoding="utf-8")


TOOLS: dict[str, Callable[[ToolContext, int], tuple[Callable[[], ToolOutput], str]]] = {
    "read_file": lambda ctx, i: (lambda: read_file(ctx, "d/f.txt"), "SECRET"),
    "list_files": lambda ctx, i: (lambda: list_files(ctx), ONLY_OUTSIDE),
    "search_code": lambda ctx, i: (lambda: search_code(ctx, "SECRET-.f3c"), "SECRET-9f3c"),
    "write_file": lambda ctx, i: (lambda: write_file(ctx, f"d/w-{i}.txt", "x"), "\x00never"),
    "edit_file": lambda ctx, i: (lambda: edit_file(ctx, "d/f.txt", "SECRET-9f3c", "x"), "edited"),
}


@pytest.mark.parametrize("layout_name", LAYOUTS)
@pytest.mark.parametrize("tool", TOOLS)
def test_file_tools_never_escape(tmp_path: Path, layout_name: str, tool: str) -> None:
    layout = LAYOUTS[layout_name](tmp_path)
    ctx = ToolContext(root=layout.root, session_id="01KDVDNA002TGFDYKMPAK7J69H")
    tally = Tally()
    stop_at = time.monotonic() + SAFETY_STOP
    with swapping(layout.swap_real, layout.swap_link):
        for i in range(TRIES):
            if time.monotonic() > stop_at:
                break
            call, leak = TOOLS[tool](ctx, i)
            _run_tool(tally, layout, call, leak)
    print(f"{tool} ({layout_name}): {tally}")
    assert not tally.escapes, str(tally)
    assert not tally.foreign, str(tally)
    # Undisturbed, the tool works: the sandbox refused the race, not the path.
    if tool == "edit_file":
        assert edit_file(ctx, "d/f.txt", "inside", "inside").paths_written == ["d/f.txt"]
    else:
        call, _ = TOOLS[tool](ctx, TRIES)
        assert call().content


@pytest.mark.parametrize("layout_name", LAYOUTS)
async def test_add_file_never_escapes(
    runtime: jidoka.Runtime, tmp_path: Path, layout_name: str
) -> None:
    layout = LAYOUTS[layout_name](tmp_path)
    client = runtime.client
    sid = await client.create_session(project_root=layout.root)
    tally = Tally()
    stop_at = time.monotonic() + SAFETY_STOP
    with swapping(layout.swap_real, layout.swap_link):
        for _ in range(TRIES):
            if time.monotonic() > stop_at:
                break
            tally.tries += 1
            try:
                await client.add_file(sid, "d/f.txt")
            except JidokaError:
                tally.refused += 1
                continue
            except Exception as exc:
                tally.foreign.append(f"{type(exc).__name__}: {exc}")
                continue
            [entry] = [e for e in await client.get_file_index(sid) if e.path == "d/f.txt"]
            if entry.size != len(INSIDE):
                tally.escapes.append(f"indexed {entry.size} bytes")
            bundle = await client.build_context(sid, include=["files"])
            if "SECRET" in str(bundle):
                tally.escapes.append("secret in the context")
    print(f"add_file ({layout_name}): {tally}")
    assert not tally.escapes, str(tally)
    assert not tally.foreign, str(tally)
    assert (await client.add_file(sid, "d/f.txt")).path == "d/f.txt"


async def test_projects_dir_create_never_roots_outside(
    runtime: jidoka.Runtime, tmp_path: Path
) -> None:
    """``--projects-dir``: the root a session gets is inside it, however ``project_root`` is
    swapped while it is checked and resolved."""
    projects = tmp_path / "projects"
    outside = tmp_path / "outside"
    (projects / "proj").mkdir(parents=True)
    outside.mkdir()
    os.symlink(outside, projects / "evil")
    scoped = runtime.client.scoped(None, projects_dir=str(projects))
    real_projects = await asyncio.to_thread(os.path.realpath, projects)
    tally = Tally()
    stop_at = time.monotonic() + SAFETY_STOP
    with swapping(projects / "proj", projects / "evil"):
        for _ in range(2 * TRIES):
            if time.monotonic() > stop_at:
                break
            tally.tries += 1
            try:
                sid = await scoped.create_session(project_root="proj")
                info = await runtime.client.get_session_info(sid)
            except JidokaError:
                tally.refused += 1
                continue
            except Exception as exc:
                tally.foreign.append(f"{type(exc).__name__}: {exc}")
                continue
            root = info.project_root
            assert root is not None
            if os.path.commonpath([root, real_projects]) != real_projects:
                tally.escapes.append(root)
            await runtime.client.terminate_session(info.session_id)
    print(f"create --projects-dir: {tally}")
    assert not tally.escapes, str(tally)
    assert not tally.foreign, str(tally)
