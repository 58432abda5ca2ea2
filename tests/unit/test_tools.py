"""The agent's file tools (jidoka.tools.files) and their registry (jidoka.tools.registry).

Real temporary directories, real files, real symlinks and FIFOs. The tool functions block by
design, so they are tested as plain synchronous functions; ``ToolRegistry.run`` is tested in async
tests, where the blockbuster fixture proves it does its file I/O off the event loop (those tests
build their files in sync fixtures and read results back through ``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

import jidoka
from jidoka import LimitExceeded, PathNotAllowed
from jidoka.llm.types import ToolCall
from jidoka.tools import files
from jidoka.tools.files import ToolContext, ToolError, ToolOutput
from jidoka.tools.registry import (
    ReadFileArgs,
    Tool,
    ToolRegistry,
    ToolResult,
    preview_write,
    quote_path,
)
from jidoka.tools.sandbox import Sandbox, resolve_project_root

SID = "01KDVDNA002TGFDYKMPAK7J69H"
APP = "def main():\n    return 42\n"
SECRET = "top secret\n"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret.txt").write_text(SECRET, encoding="utf-8")
    return out


@pytest.fixture
def root(tmp_path: Path, outside: Path) -> Path:
    """A project with every kind of trap: links out, a link to /dev/null, a FIFO, a binary."""
    root = tmp_path / "project"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "app.py").write_text(APP, encoding="utf-8")
    (root / "src" / "pkg" / "util.py").write_text("X = 1\nY = 2\n", encoding="utf-8")
    (root / "README.md").write_text("# demo\n\nhello\n", encoding="utf-8")
    (root / "data.bin").write_bytes(b"abc\x00def\n" * 10)
    os.symlink(outside / "secret.txt", root / "leak.txt")
    os.symlink(outside, root / "outdir")
    os.symlink("/dev/null", root / "devnull")
    os.symlink(root / "src" / "app.py", root / "alias.py")
    os.symlink(root / "src", root / "srclink")
    os.mkfifo(root / "pipe")
    os.symlink(root / "pipe", root / "pipe_link")
    return root


@pytest.fixture
def ctx(root: Path) -> ToolContext:
    return ToolContext(root=resolve_project_root(root), session_id=SID)


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry.default(allow_write=True)


def small(ctx: ToolContext, **limits: int) -> ToolContext:
    return msgspec.structs.replace(ctx, **limits)


def call(name: str, args: dict[str, Any] | str) -> ToolCall:
    text = args if isinstance(args, str) else json.dumps(args)
    return ToolCall(id="call-1", name=name, arguments=text)


def tmp_files(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*jidoka-tmp*")]


# --- read_file ----------------------------------------------------------------------------------


def test_read_file_numbers_lines(ctx: ToolContext) -> None:
    out = files.read_file(ctx, "src/app.py")
    assert out.content == "    1| def main():\n    2|     return 42"
    assert out.paths_read == ["src/app.py"]


def test_read_file_line_range_is_inclusive(ctx: ToolContext, root: Path) -> None:
    (root / "long.txt").write_text("".join(f"line {i}\n" for i in range(1, 51)), encoding="utf-8")
    out = files.read_file(ctx, "long.txt", start_line=12, end_line=14)
    assert out.content.splitlines() == [
        "   12| line 12",
        "   13| line 13",
        "   14| line 14",
        "[36 more lines in long.txt (50 in all)]",
    ]
    assert files.read_file(ctx, "long.txt", 49, 999).content == "   49| line 49\n   50| line 50"


def test_read_file_bad_ranges(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match=r"start_line 3 is past the end of src/app.py \(2 lines\)"):
        files.read_file(ctx, "src/app.py", start_line=3)
    with pytest.raises(ToolError, match=r"bad line range 2\.\.1"):
        files.read_file(ctx, "src/app.py", start_line=2, end_line=1)


def test_read_file_empty_and_crlf(ctx: ToolContext, root: Path) -> None:
    (root / "empty.txt").write_bytes(b"")
    (root / "dos.txt").write_bytes(b"a\r\nb\r\n")
    assert files.read_file(ctx, "empty.txt").content == "[empty.txt is empty]"
    assert files.read_file(ctx, "dos.txt").content == "    1| a\n    2| b"


def test_read_file_is_bounded_with_a_note(ctx: ToolContext, root: Path) -> None:
    (root / "big.txt").write_text("x" * 50 + "\n" + ("y" * 90 + "\n") * 1000, encoding="utf-8")
    out = files.read_file(small(ctx, max_output_chars=2_000), "big.txt").content
    assert len(out) <= 2_000
    assert out.startswith("    1| " + "x" * 50 + "\n    2| ")
    last = out.splitlines()[-1]
    assert last.startswith("[truncated: ")
    assert "more lines; read on from line" in last


def test_read_file_cuts_long_lines(ctx: ToolContext, root: Path) -> None:
    (root / "min.js").write_text("a" * 5000 + "\n", encoding="utf-8")
    out = files.read_file(small(ctx, max_line_chars=100), "min.js").content
    assert out == "    1| " + "a" * 100 + "… [+4900 chars]"


def test_read_file_through_a_link_inside_the_root(ctx: ToolContext) -> None:
    assert files.read_file(ctx, "alias.py").paths_read == ["src/app.py"]
    assert "return 42" in files.read_file(ctx, "srclink/app.py").content


def test_read_file_refuses_binary_and_large_files(ctx: ToolContext, root: Path) -> None:
    with pytest.raises(ToolError, match=r"data\.bin is a binary file"):
        files.read_file(ctx, "data.bin")
    (root / "big.txt").write_bytes(b"z" * 5000)
    with pytest.raises(LimitExceeded, match="max_file_bytes=4096") as info:
        files.read_file(small(ctx, max_file_bytes=4096), "big.txt")
    assert info.value.actual == 5000


# --- the sandbox, for every tool that takes a path ----------------------------------------------

BAD_PATHS = {
    "absolute outside": (lambda tmp: str(tmp / "outside" / "secret.txt"), "outside the project"),
    "dotdot": (lambda tmp: "../outside/secret.txt", "escapes the project root"),
    "deep dotdot": (lambda tmp: "src/../../outside/secret.txt", "escapes the project root"),
    "link out": (lambda tmp: "leak.txt", ""),
    "linked dir out": (lambda tmp: "outdir/secret.txt", "outside the project root"),
    "NUL": (lambda tmp: "src/app\x00.py", "NUL"),
    "FIFO": (lambda tmp: "pipe", "not a regular file"),
    "link to FIFO": (lambda tmp: "pipe_link", ""),
    "/dev/null via link": (lambda tmp: "devnull", ""),
    "directory": (lambda tmp: "src", "not a regular file"),
    "root": (lambda tmp: ".", ""),
}
PATH_TOOLS = {
    "read_file": {},
    "write_file": {"content": "pwned\n"},
    "edit_file": {"old_text": "top", "new_text": "pwned"},
}


@pytest.mark.timeout(20)  # a FIFO opened for reading without O_NONBLOCK would hang here
@pytest.mark.parametrize("case", BAD_PATHS)
@pytest.mark.parametrize("tool", PATH_TOOLS)
async def test_every_path_tool_refuses_every_bad_path(
    tool: str, case: str, tmp_path: Path, ctx: ToolContext, registry: ToolRegistry
) -> None:
    make, reason = BAD_PATHS[case]
    path = make(tmp_path)
    result = await registry.run(call(tool, {"path": path, **PATH_TOOLS[tool]}), ctx)
    assert result.is_error
    assert result.content.startswith("error: path ")
    assert "not allowed" in result.content
    assert reason in result.content
    assert SECRET.strip() not in result.content
    assert ctx.root not in result.content  # the model never sees the absolute root
    assert SID not in result.content
    assert result.paths_read == result.paths_written == []
    secret = await asyncio.to_thread((tmp_path / "outside" / "secret.txt").read_text)
    assert secret == SECRET
    assert await asyncio.to_thread(os.listdir, tmp_path / "outside") == ["secret.txt"]


@pytest.mark.parametrize("tool", ["read_file", "edit_file"])
def test_missing_file(tool: str, ctx: ToolContext) -> None:
    function = getattr(files, tool)
    extra = PATH_TOOLS[tool]
    with pytest.raises(PathNotAllowed, match="no such file"):
        function(ctx, "nope/none.py", **extra)
    with pytest.raises(PathNotAllowed, match="no such file"):
        function(ctx, "none.py", **extra)


@pytest.mark.parametrize("tool", ["write_file", "edit_file"])
def test_writes_refuse_large_and_binary_and_links(tool: str, ctx: ToolContext, root: Path) -> None:
    function = getattr(files, tool)
    with pytest.raises(PathNotAllowed, match="is a symlink; refusing to write through it"):
        function(ctx, "alias.py", **PATH_TOOLS[tool])
    assert (root / "src" / "app.py").read_text() == APP
    (root / "big.txt").write_text("top\n" * 2000, encoding="utf-8")
    limited = small(ctx, max_file_bytes=1000, max_write_bytes=1000)
    big = {"content": "top" * 500} if tool == "write_file" else {"old_text": "top", "new_text": ""}
    with pytest.raises(LimitExceeded, match=r"max_(file|write)_bytes=1000"):
        function(limited, "big.txt", **big)


def test_list_and_search_never_leave_the_root(ctx: ToolContext) -> None:
    listed = files.list_files(ctx).content.splitlines()
    assert listed == ["README.md", "alias.py", "data.bin", "src/app.py", "src/pkg/util.py"]
    found = files.search_code(ctx, "secret|pwned|.").content
    assert "top secret" not in found
    assert found.endswith("[skipped: 1 binary]")
    assert all(line.split(":", 1)[0] in listed for line in found.splitlines()[:-1])
    assert files.list_files(ctx, "../**").content == "[no files match '../**']"
    assert files.list_files(ctx, "/outside/**").content == "[no files match '/outside/**']"


# --- list_files ---------------------------------------------------------------------------------


@pytest.fixture
def ignoring(root: Path) -> Path:
    """Root and nested .gitignore files, with a negation in each."""
    (root / ".gitignore").write_text("*.log\n!important.log\nbuild/\n/top_only.txt\n")
    (root / "src" / ".gitignore").write_text("!keep.log\ngenerated/\n")
    for rel in [
        "debug.log", "important.log", "src/keep.log", "src/other.log", "src/pkg/deep.log",
        "build/out.py", "src/build/x.py", "src/generated/gen.py", "top_only.txt",
        "src/top_only.txt", ".git/config", ".git/objects/ab", "src/.git",
    ]:  # fmt: skip
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("needle\n")
    return root


def test_list_files_respects_gitignore(ctx: ToolContext, ignoring: Path) -> None:
    listed = files.list_files(ctx).content.splitlines()
    assert listed == [
        ".gitignore",
        "README.md",
        "alias.py",
        "data.bin",
        "important.log",  # re-included by the root's negation
        "src/.gitignore",
        "src/app.py",
        "src/keep.log",  # re-included by the nested negation
        "src/pkg/util.py",
        "src/top_only.txt",  # '/top_only.txt' is anchored to the root
    ]


def test_list_files_globs(ctx: ToolContext, ignoring: Path) -> None:
    assert files.list_files(ctx, "*.py").content == "alias.py\nsrc/app.py\nsrc/pkg/util.py"
    assert files.list_files(ctx, "src/*.py").content == "src/app.py"
    assert files.list_files(ctx, "src/**/*.py").content == "src/app.py\nsrc/pkg/util.py"
    assert files.list_files(ctx, "./src/pkg/**").content == "src/pkg/util.py"
    assert files.list_files(ctx, "*.rs").content == "[no files match '*.rs']"


def test_list_files_is_bounded(ctx: ToolContext, root: Path) -> None:
    (root / "many").mkdir()
    for i in range(30):
        (root / "many" / f"f{i:02}.txt").write_text("x")
    out = files.list_files(ctx, "many/*", max_results=10).content.splitlines()
    assert out == [f"many/f{i:02}.txt" for i in range(10)] + ["[20 more not shown]"]
    stopped = files.list_files(small(ctx, max_walk_entries=15), "many/*").content
    assert stopped.endswith("[stopped after 15 entries; use a narrower pattern]")
    assert len(files.list_files(small(ctx, max_output_chars=100), "many/*").content) <= 100


def test_list_files_skips_a_symlink_loop(ctx: ToolContext, root: Path) -> None:
    os.symlink(root / "loop", root / "loop")
    os.symlink(root, root / "src" / "up")
    assert "loop" not in files.list_files(ctx).content
    assert "src/up" not in files.list_files(ctx).content


# --- search_code --------------------------------------------------------------------------------


def test_search_code_finds_lines(ctx: ToolContext) -> None:
    out = files.search_code(ctx, r"return \d+")
    assert out.content == "alias.py:2: return 42\nsrc/app.py:2: return 42\n[skipped: 1 binary]"
    assert out.paths_read == ["alias.py", "src/app.py"]
    assert files.search_code(ctx, "RETURN", glob="src/**").content == "[no matches for 'RETURN']"
    insensitive = files.search_code(ctx, "RETURN", glob="src/**", case_sensitive=False)
    assert insensitive.content == "src/app.py:2: return 42"


def test_search_code_respects_gitignore_and_skips_git(ctx: ToolContext, ignoring: Path) -> None:
    lines = files.search_code(ctx, "needle").content.splitlines()
    assert lines[-1] == "[skipped: 1 binary]"
    assert {line.split(":")[0] for line in lines[:-1]} == {
        "important.log",
        "src/keep.log",
        "src/top_only.txt",
    }


def test_search_code_skips_binary_and_large(ctx: ToolContext, root: Path) -> None:
    (root / "big.txt").write_text("abc\n" * 1000)
    out = files.search_code(small(ctx, max_file_bytes=1000), "abc").content
    assert out == "[no matches for 'abc']\n[skipped: 1 binary, 1 over max_file_bytes]"


def test_search_code_is_bounded(ctx: ToolContext, root: Path) -> None:
    (root / "hay.txt").write_text("needle " + "x" * 5000 + "\n" + "needle\n" * 500)
    out = files.search_code(ctx, "needle", glob="hay.txt", max_matches=5).content.splitlines()
    assert out[0] == "hay.txt:1: needle " + "x" * 293 + "… [+4707 chars]"
    assert out[1:] == [f"hay.txt:{n}: needle" for n in range(2, 6)] + [
        "[stopped at max_matches=5; more matches may exist]"
    ]
    assert len(files.search_code(small(ctx, max_output_chars=500), "needle").content) <= 500
    many = files.search_code(small(ctx, max_search_bytes=10), ".", glob="*.md").content
    assert many.endswith("[stopped after reading max_search_bytes=10]")


def test_search_code_only_considers_the_start_of_long_lines(ctx: ToolContext, root: Path) -> None:
    (root / "long.txt").write_text("a" * 3000 + "needle\n")
    assert files.search_code(ctx, "needle", glob="*.txt").content == "[no matches for 'needle']"


def test_search_code_invalid_regex(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match=r"invalid regex '\(unclosed': missing \)"):
        files.search_code(ctx, "(unclosed")


@pytest.mark.parametrize("pattern", ["(a+)+$", "(a|a)+$"])
def test_search_code_stops_a_catastrophic_regex_at_its_deadline(
    ctx: ToolContext, root: Path, pattern: str
) -> None:
    """The worker thread cannot be killed: it must stop by itself, soon after the deadline."""
    (root / "evil.txt").write_text("a" * 1500 + "b\n")  # shorter than max_line_chars: 'b' counts
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        files.search_code(ctx, pattern, glob="evil.txt", deadline=started + 0.2)
    assert time.monotonic() - started < 5  # unbounded, it would take minutes or forever


# --- write_file ---------------------------------------------------------------------------------


def test_write_file_creates_parents_and_replaces(ctx: ToolContext, root: Path) -> None:
    out = files.write_file(ctx, "new/deep/mod.py", "x = 1\n")
    assert out == ToolOutput(
        content="wrote 6 bytes to new/deep/mod.py (created)", paths_written=["new/deep/mod.py"]
    )
    assert (root / "new" / "deep" / "mod.py").read_text() == "x = 1\n"
    os.chmod(root / "new" / "deep" / "mod.py", 0o640)
    out = files.write_file(ctx, "new/deep/mod.py", "x = 2\n")
    assert out.content == "wrote 6 bytes to new/deep/mod.py (replaced)"
    assert (root / "new" / "deep" / "mod.py").read_text() == "x = 2\n"
    assert stat.S_IMODE((root / "new" / "deep" / "mod.py").stat().st_mode) == 0o640
    assert tmp_files(root) == []


def test_write_file_through_a_linked_dir_inside_the_root(ctx: ToolContext, root: Path) -> None:
    out = files.write_file(ctx, "srclink/made.py", "y\n")
    assert out.paths_written == ["src/made.py"]
    assert (root / "src" / "made.py").read_text() == "y\n"


def test_write_file_refuses_a_parent_linked_outside(
    ctx: ToolContext, root: Path, outside: Path
) -> None:
    for path in ["outdir/new.txt", "outdir/sub/dir/new.txt", "srclink/../outdir/x.txt"]:
        with pytest.raises(PathNotAllowed, match="outside the project root"):
            files.write_file(ctx, path, "pwned")
    assert os.listdir(outside) == ["secret.txt"]


def test_write_file_refuses_a_file_where_a_dir_must_be(ctx: ToolContext, root: Path) -> None:
    with pytest.raises(PathNotAllowed, match="bad parent directory"):
        files.write_file(ctx, "README.md/x.txt", "no")
    with pytest.raises(PathNotAllowed, match="names a directory"):
        files.write_file(ctx, "src/", "no")


def test_write_file_refuses_git_internals(ctx: ToolContext, root: Path) -> None:
    with pytest.raises(PathNotAllowed, match=r"inside \.git/ is not allowed"):
        files.write_file(ctx, ".git/hooks/pre-commit", "#!/bin/sh\nrm -rf /\n")
    assert not (root / ".git").exists()


def test_write_file_bounds_content(ctx: ToolContext, root: Path) -> None:
    with pytest.raises(LimitExceeded, match=r"max_write_bytes=10 exceeded for 'x\.txt'"):
        files.write_file(small(ctx, max_write_bytes=10), "x.txt", "é" * 6)  # 12 bytes
    assert not (root / "x.txt").exists()


def test_a_failed_replace_leaves_the_file_and_no_temp(
    ctx: ToolContext, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="No space left"):
        files.write_file(ctx, "src/app.py", "half")
    with pytest.raises(OSError, match="No space left"):
        files.edit_file(ctx, "src/app.py", "42", "43")
    assert (root / "src" / "app.py").read_text() == APP
    assert tmp_files(root) == []


# --- edit_file ----------------------------------------------------------------------------------


def test_edit_file_replaces_exactly_once(ctx: ToolContext, root: Path) -> None:
    out = files.edit_file(ctx, "src/app.py", "return 42", "return 43")
    assert out.content == "edited src/app.py: replaced 1 occurrence, now 26 bytes"
    assert out.paths_read == out.paths_written == ["src/app.py"]
    assert (root / "src" / "app.py").read_text() == "def main():\n    return 43\n"
    assert tmp_files(root) == []


def test_edit_file_missing_and_ambiguous(ctx: ToolContext, root: Path) -> None:
    (root / "dup.py").write_text("x = 1\nx = 1\nx = 1\n")
    with pytest.raises(ToolError, match=r"^old_text not found in dup\.py$"):
        files.edit_file(ctx, "dup.py", "y = 1", "z")
    with pytest.raises(
        ToolError, match=r"^old_text occurs 3 times in dup\.py; include more context$"
    ):
        files.edit_file(ctx, "dup.py", "x = 1", "z")
    (root / "aaa.txt").write_text("aaa")
    with pytest.raises(ToolError, match="occurs 2 times"):  # overlapping occurrences count too
        files.edit_file(ctx, "aaa.txt", "aa", "b")
    assert (root / "dup.py").read_text() == "x = 1\nx = 1\nx = 1\n"


def test_edit_file_crlf_and_encoding(ctx: ToolContext, root: Path) -> None:
    (root / "dos.txt").write_bytes(b"one\r\ntwo\r\nthree\r\n")
    files.edit_file(ctx, "dos.txt", "one\ntwo", "uno\ndos")
    assert (root / "dos.txt").read_bytes() == b"uno\r\ndos\r\nthree\r\n"
    (root / "latin.txt").write_bytes(b"caf\xe9 x\n")
    with pytest.raises(ToolError, match=r"latin\.txt is not valid UTF-8"):
        files.edit_file(ctx, "latin.txt", "x", "y")
    assert (root / "latin.txt").read_bytes() == b"caf\xe9 x\n"


# --- the registry -------------------------------------------------------------------------------


def test_schemas_are_generated_plain_object_schemas(registry: ToolRegistry) -> None:
    specs = {spec.name: spec for spec in registry.specs()}
    assert list(specs) == ["read_file", "list_files", "search_code", "write_file", "edit_file"]
    read = specs["read_file"].parameters
    assert read["type"] == "object"
    assert read["required"] == ["path"]
    assert read["properties"]["start_line"]["default"] == 1
    assert read["properties"]["start_line"]["minimum"] == 1
    assert read["additionalProperties"] is False
    generated = msgspec.json.schema(ReadFileArgs)["$defs"]["ReadFileArgs"]["properties"]
    assert read["properties"] == generated  # generated from the Struct, not written by hand
    for spec in specs.values():
        text = json.dumps(spec.parameters)
        assert "$ref" not in text
        assert "$defs" not in text
        assert '"title"' not in text
        assert spec.parameters["additionalProperties"] is False
        assert spec.description
        assert "\n" not in spec.description
        assert "``" not in spec.description
    assert specs["read_file"].description.startswith("Read a text file of the project")


def test_structs_match_the_functions(registry: ToolRegistry) -> None:
    """The registry calls ``function(ctx, **struct_fields)``: a drift would be a TypeError."""
    tools: list[Tool] = list(registry._tools.values())
    for tool in tools:
        params = inspect.signature(tool.function).parameters
        positional = [p for p in params.values() if p.kind is p.POSITIONAL_OR_KEYWORD][1:]
        fields = msgspec.structs.fields(tool.args)
        assert [p.name for p in positional] == [f.name for f in fields], tool.name
        for param, field in zip(positional, fields, strict=True):
            expected = inspect.Parameter.empty if field.required else field.default
            assert param.default == expected, (tool.name, param.name)


def test_read_only_registry(registry: ToolRegistry) -> None:
    read_only = ToolRegistry.default(allow_write=False)
    assert [s.name for s in read_only.specs()] == ["read_file", "list_files", "search_code"]
    assert read_only.is_write("write_file")
    assert read_only.is_write("edit_file")
    assert registry.is_write("edit_file")
    assert not registry.is_write("read_file")
    assert not registry.is_write("nope")


async def test_run_happy_path(ctx: ToolContext, registry: ToolRegistry, root: Path) -> None:
    result = await registry.run(call("read_file", {"path": "src/app.py", "end_line": 1}), ctx)
    assert result == ToolResult(
        call_id="call-1",
        name="read_file",
        content="    1| def main():\n[1 more lines in src/app.py (2 in all)]",
        paths_read=["src/app.py"],
    )
    result = await registry.run(call("write_file", {"path": "a/b.txt", "content": "hi"}), ctx)
    assert not result.is_error
    assert result.paths_written == ["a/b.txt"]
    assert await asyncio.to_thread((root / "a" / "b.txt").read_text) == "hi"
    result = await registry.run(call("list_files", ""), ctx)  # empty arguments mean {}
    assert "a/b.txt" in result.content.splitlines()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ('{"path": "src/app.py"', "error: arguments for read_file are not valid JSON: "),
        ("[1, 2]", "error: invalid arguments for read_file: Expected `object`, got `array`"),
        ('{"path": 3}', "error: invalid arguments for read_file: Expected `str`, got `int`"),
        (
            '{"path": "a", "start_line": 0}',
            "error: invalid arguments for read_file: Expected `int` >= 1",
        ),
        (
            '{"path": "a", "x": 1}',
            "error: invalid arguments for read_file: Object contains unknown field `x`",
        ),
        ("{}", "error: invalid arguments for read_file: Object missing required field `path`"),
    ],
)
async def test_run_reports_bad_arguments(
    ctx: ToolContext, registry: ToolRegistry, arguments: str, message: str
) -> None:
    result = await registry.run(call("read_file", arguments), ctx)
    assert result.is_error
    assert result.content.startswith(message)
    assert result.call_id == "call-1"
    assert result.name == "read_file"


async def test_run_reports_unknown_and_refused_tools(ctx: ToolContext, root: Path) -> None:
    read_only = ToolRegistry.default(allow_write=False)
    result = await read_only.run(call("rm_rf", {}), ctx)
    assert result.is_error
    assert result.content == (
        "error: unknown tool 'rm_rf'; available: read_file, list_files, search_code"
    )
    result = await read_only.run(call("write_file", {"path": "x.txt", "content": "x"}), ctx)
    assert result.is_error
    assert "not allowed" in result.content
    assert not await asyncio.to_thread((root / "x.txt").exists)


async def test_run_reports_tool_errors(ctx: ToolContext, registry: ToolRegistry) -> None:
    result = await registry.run(call("search_code", {"pattern": "[z-a]"}), ctx)
    assert result.is_error
    assert result.content.startswith("error: invalid regex '[z-a]'")
    edit = {"path": "src/app.py", "old_text": "?", "new_text": ""}
    result = await registry.run(call("edit_file", edit), ctx)
    assert result.content == "error: old_text not found in src/app.py"
    big = small(ctx, max_write_bytes=5)
    result = await registry.run(call("write_file", {"path": "x", "content": "123456"}), big)
    assert result.content == "error: limit max_write_bytes=5 exceeded for 'x' (got 6)"


@pytest.mark.timeout(30)
async def test_run_times_out_without_freezing_the_loop(
    ctx: ToolContext, registry: ToolRegistry, root: Path
) -> None:
    """``re`` would hold the GIL for the whole match and freeze the loop; ``regex`` does not."""
    await asyncio.to_thread((root / "evil.txt").write_text, "a" * 1500 + "b\n")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    args = {"pattern": "(a+)+$", "glob": "evil.txt"}
    result = await registry.run(call("search_code", args), ctx, timeout=0.3)
    ticker.cancel()
    assert result.is_error
    assert result.content == "error: search_code timed out after 0.3s; narrow the request"
    assert ticks >= 3  # the event loop kept running while the regex did


async def test_run_turns_a_tool_bug_into_an_error_and_propagates_cancellation(
    ctx: ToolContext,
) -> None:
    started, release = threading.Event(), threading.Event()

    class NoArgs(msgspec.Struct, forbid_unknown_fields=True):
        pass

    def stuck(ctx: ToolContext, *, deadline: float | None = None) -> ToolOutput:
        """Wait for the test."""
        started.set()
        release.wait(10)
        return ToolOutput(content="done")

    def buggy(ctx: ToolContext, *, deadline: float | None = None) -> ToolOutput:
        """Fail like a bug."""
        raise KeyError("oops")

    registry = ToolRegistry([Tool("stuck", stuck, NoArgs), Tool("buggy", buggy, NoArgs)])
    result = await registry.run(call("buggy", {}), ctx)
    assert result.is_error
    assert result.content == "error: internal error in buggy: KeyError"
    task = asyncio.create_task(registry.run(call("stuck", {}), ctx))
    assert await asyncio.to_thread(started.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()


# --- preview_write ------------------------------------------------------------------------------


async def test_preview_write_shows_a_diff_and_writes_nothing(ctx: ToolContext, root: Path) -> None:
    args = {"path": "src/app.py", "old_text": "return 42", "new_text": "return 43"}
    key, diff = await preview_write(call("edit_file", args), ctx)
    assert key == "src/app.py"
    assert diff == (
        "--- a/src/app.py\n+++ b/src/app.py\n@@ -1,2 +1,2 @@\n"
        " def main():\n-    return 42\n+    return 43\n"
    )
    key, diff = await preview_write(call("write_file", {"path": "n/new.txt", "content": "a"}), ctx)
    assert key == "n/new.txt"
    assert (
        diff == "--- /dev/null\n+++ b/n/new.txt\n@@ -0,0 +1 @@\n+a\n\\ No newline at end of file\n"
    )
    assert await asyncio.to_thread((root / "src" / "app.py").read_text) == APP
    assert not await asyncio.to_thread((root / "n").exists)


async def test_preview_write_is_bounded(ctx: ToolContext) -> None:
    content = "".join(f"{i}\n" for i in range(1000))
    args = {"path": "src/app.py", "content": content}
    _, diff = await preview_write(call("write_file", args), ctx)
    lines = diff.splitlines()
    assert len(lines) == 201
    assert lines[-1] == "[diff truncated: 805 more lines]"


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("read_file", {"path": "src/app.py"}, "'read_file' is not a write tool"),
        (
            "edit_file",
            {"path": "src/app.py", "old_text": "zzz", "new_text": ""},
            "old_text not found",
        ),
        ("edit_file", {"path": "gone.py", "old_text": "a", "new_text": ""}, "no such file"),
        ("write_file", {"path": "leak.txt", "content": "x"}, "refusing to write through it"),
        ("write_file", {"path": "../x", "content": "x"}, "escapes the project root"),
        ("write_file", {"path": "x"}, "invalid arguments for write_file"),
    ],
)
async def test_preview_write_raises_tool_error(
    ctx: ToolContext, name: str, args: dict[str, Any], message: str
) -> None:
    with pytest.raises(ToolError, match=message):
        await preview_write(call(name, args), ctx)


# --- failures of any kind become tool errors; the turn goes on (issue 10, item 1) ---------------


_TURN_ENDS = ("idle", "failed", "cancelled")


def _scripted(*turns: dict[str, Any]) -> dict[str, Any]:
    return {"provider": "scripted", "script": list(turns)}


def _read_then(answer: str) -> dict[str, Any]:
    return _scripted({"tool_calls": [_tool_call("read_file", path="README.md")]}, {"text": answer})


def _tool_call(name: str, call_id: str = "c1", **arguments: Any) -> dict[str, Any]:
    return {"id": call_id, "name": name, "arguments": arguments}


async def _turn(
    client: jidoka.Client, sid: str, *, approve: bool | None = None
) -> tuple[str, list[jidoka.Event]]:
    """Chat once; the turn's answer and its events (approving writes if ``approve`` is set)."""
    seen: list[jidoka.Event] = []
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        turn = asyncio.create_task(client.chat(sid, "go"))
        async with asyncio.timeout(10):
            async for event in events:
                seen.append(event)
                if event.type == "approval_requested" and approve is not None:
                    await client.approve(sid, event.data["call_id"], allow=approve)
                if event.type == "agent_status" and event.data["status"] in _TURN_ENDS:
                    break
        result = await turn
    return result.message.content, seen


@pytest.mark.parametrize("error", [OSError(5, "Input/output error"), ValueError("bad value")])
async def test_a_tool_raising_anything_gives_the_model_an_error(
    client: jidoka.Client,
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(files, "read_facts", broken)
    sid = await client.create_session(
        project_root=str(root),
        llm_config=_read_then("carried on"),
    )
    answer, seen = await _turn(client, sid)
    [result] = [e for e in seen if e.type == "tool_result"]
    assert result.data["is_error"]
    assert result.data["content"].startswith("error: ")
    assert answer == "carried on"
    assert (await client.get_session_info(sid)).status == "active"


async def test_a_preview_raising_anything_gives_the_model_an_error(
    client: jidoka.Client, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: an unexpected error while preparing an approval prompt killed the turn."""

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("preview bug")

    monkeypatch.setattr(files, "current_text", broken)
    sid = await client.create_session(
        project_root=str(root),
        config={"allow_write": "ask"},
        llm_config=_scripted(
            {"tool_calls": [_tool_call("write_file", path="n.txt", content="x")]},
            {"text": "carried on"},
        ),
    )
    answer, seen = await _turn(client, sid)
    [result] = [e for e in seen if e.type == "tool_result"]
    assert result.data["content"] == "error: internal error in write_file: ValueError"
    assert answer == "carried on"
    assert not [e for e in seen if e.type == "approval_requested"]


async def test_a_failed_index_update_does_not_end_the_turn(
    client: jidoka.Client, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the sandbox's realpath raised EINVAL mid-race while the file index was updated
    after a tool, and the OSError ended the turn."""

    def einval(self: Sandbox, path: object) -> tuple[str, str]:
        raise OSError(errno.EINVAL, "Invalid argument", str(path))

    sid = await client.create_session(
        project_root=str(root),
        llm_config=_read_then("carried on"),
    )
    monkeypatch.setattr(Sandbox, "resolve", einval)
    answer, seen = await _turn(client, sid)
    [result] = [e for e in seen if e.type == "tool_result"]
    assert not result.data["is_error"]
    assert answer == "carried on"


# --- approval prompts name files unambiguously (issue 10, item 11) ------------------------------


@pytest.mark.parametrize(
    ("path", "shown", "header"),
    [
        (" lead.txt", '" lead.txt"', '+++ "b/ lead.txt"'),
        ("trail.txt ", '"trail.txt "', '+++ "b/trail.txt "'),
        ("a\nb.txt", '"a\\nb.txt"', '+++ "b/a\\nb.txt"'),
        ("e\x1b[2Jx.txt", '"e\\x1b[2Jx.txt"', '+++ "b/e\\x1b[2Jx.txt"'),
        ("rtl\u202eexe.txt", '"rtl\\u202eexe.txt"', '+++ "b/rtl\\u202eexe.txt"'),
        ('q"uote.txt', '"q\\"uote.txt"', '+++ "b/q\\"uote.txt"'),
        ("plain dir/ok.txt", "plain dir/ok.txt", "+++ b/plain dir/ok.txt"),
    ],
)
async def test_approval_prompts_quote_odd_file_names(
    client: jidoka.Client, root: Path, path: str, shown: str, header: str
) -> None:
    sid = await client.create_session(
        project_root=str(root),
        config={"allow_write": "ask"},
        llm_config=_scripted(
            {"tool_calls": [_tool_call("write_file", "w1", path=path, content="new\n")]},
            {"text": "ok"},
        ),
    )
    _, seen = await _turn(client, sid, approve=False)
    [asked] = [e for e in seen if e.type == "approval_requested"]
    assert asked.data["path"] == path  # the raw key, as data
    assert asked.data["summary"] == f"write_file wants to change {shown}"
    assert header in asked.data["diff"].splitlines()
    assert "\n+new\n" in asked.data["diff"]
    [result] = [e for e in seen if e.type == "tool_result"]
    assert result.data["content"] == f"error: the user denied the write to {shown}; it was not made"
    assert not await asyncio.to_thread((root / path).exists)


def test_quote_path() -> None:
    assert quote_path("src/app.py") == "src/app.py"
    assert quote_path("src/app.py", "a/") == "a/src/app.py"
    assert quote_path(" x") == '" x"'
    assert quote_path(" x", "a/") == '"a/ x"'
    assert quote_path("") == '""'
    assert quote_path("back\\slash") == '"back\\\\slash"'
    assert quote_path("tab\there") == '"tab\\there"'
    assert quote_path("é/ü.py") == "é/ü.py"


async def test_preview_quotes_odd_names_in_the_diff(ctx: ToolContext, root: Path) -> None:
    await asyncio.to_thread((root / " odd.txt").write_text, "old\n")
    key, diff = await preview_write(call("write_file", {"path": " odd.txt", "content": "x"}), ctx)
    assert key == " odd.txt"
    assert diff.splitlines()[:2] == ['--- "a/ odd.txt"', '+++ "b/ odd.txt"']
    _, same = await preview_write(call("write_file", {"path": " odd.txt", "content": "old\n"}), ctx)
    assert same == '[no changes to " odd.txt"]'
