"""The path sandbox (jidoka.tools.sandbox) and the file readers built on it (jidoka.tools.reading).

Everything here blocks by design (callers run it in a worker thread), so the tests are plain
synchronous functions.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

import jidoka
from jidoka.tools.reading import FileFacts, detect_language, read_bounded, read_file, stat_file
from jidoka.tools.sandbox import (
    MAX_LINK_HOPS,
    MAX_PATH_CHARS,
    ProjectRoot,
    Sandbox,
    resolve_project_root,
)

SID = "01KDVDNA002TGFDYKMPAK7J69H"
BIG = 1 << 20


@pytest.fixture
def root(project: Path) -> str:
    return resolve_project_root(project)


@pytest.fixture
def sandbox(root: str) -> Sandbox:
    return Sandbox(root, SID)


def _open_and_close(sandbox: Sandbox, path: object) -> str:
    key, fd, _ = sandbox.open_regular(path)
    os.close(fd)
    return key


def _read(sandbox: Sandbox, path: object) -> str:
    return read_file(sandbox, path, BIG).path


def _resolve(sandbox: Sandbox, path: object) -> str:
    return sandbox.resolve(path)[0]


# Every entry point that validates a path; all of them must refuse the same things.
CHECKERS: list[Callable[[Sandbox, object], object]] = [_open_and_close, _read, _resolve]
FILE_CHECKERS: list[Callable[[Sandbox, object], object]] = [_open_and_close, _read]


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- resolve_project_root ---------------------------------------------------------------------


def test_project_root_is_canonical(project: Path, root: str) -> None:
    assert root == os.path.realpath(project)
    assert os.path.isabs(root)
    assert resolve_project_root(str(project)) == root
    assert resolve_project_root(project / "src" / "..") == root


def test_project_root_through_a_symlink(project: Path, tmp_path: Path, root: str) -> None:
    link = tmp_path / "link-to-project"
    os.symlink(project, link)
    assert resolve_project_root(str(link)) == root


def test_relative_project_root(project: Path, root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project / "src")
    assert resolve_project_root("..") == root


@pytest.mark.parametrize("value", [None, 42, b"/tmp", 1.5, ["/tmp"]])
def test_project_root_must_be_a_path(value: object) -> None:
    with pytest.raises(jidoka.InvalidArgument) as info:
        resolve_project_root(value)
    assert info.value.argument == "project_root"
    assert not isinstance(info.value, jidoka.PathNotAllowed)


def test_project_root_pathlike_of_bytes_is_refused() -> None:
    class BytesPath:
        def __fspath__(self) -> bytes:
            return b"/tmp"

    with pytest.raises(jidoka.PathNotAllowed):
        resolve_project_root(BytesPath())


@pytest.mark.parametrize("value", ["", "/tmp/\x00x", "/" + "a" * MAX_PATH_CHARS])
def test_project_root_invalid_strings(value: str) -> None:
    with pytest.raises(jidoka.PathNotAllowed) as info:
        resolve_project_root(value)
    assert info.value.session_id is None


def test_project_root_must_exist(tmp_path: Path) -> None:
    with pytest.raises(jidoka.PathNotAllowed, match="not an existing directory"):
        resolve_project_root(tmp_path / "missing")


def test_project_root_must_be_a_directory(project: Path) -> None:
    with pytest.raises(jidoka.PathNotAllowed, match="not an existing directory"):
        resolve_project_root(project / "README.md")


# --- accepted paths ----------------------------------------------------------------------------


@pytest.mark.parametrize("checker", CHECKERS)
@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("src/app.py", "src/app.py"),
        ("./src/app.py", "src/app.py"),
        ("src//app.py", "src/app.py"),
        ("src/./pkg/../app.py", "src/app.py"),
        ("src/../README.md", "README.md"),
        ("README.md", "README.md"),
        ("src/pkg/util.ts", "src/pkg/util.ts"),
        ("alias.py", "src/app.py"),  # a link inside the root, to a file inside it
    ],
)
def test_accepted_relative_paths(
    sandbox: Sandbox, checker: Callable[[Sandbox, object], object], path: str, key: str
) -> None:
    assert checker(sandbox, path) == key


@pytest.mark.parametrize("checker", CHECKERS)
def test_accepted_absolute_path_inside_root(
    sandbox: Sandbox, root: str, checker: Callable[[Sandbox, object], object]
) -> None:
    assert checker(sandbox, os.path.join(root, "src", "app.py")) == "src/app.py"
    assert checker(sandbox, os.path.join(root, "alias.py")) == "src/app.py"


def test_link_to_a_directory_inside_the_root(sandbox: Sandbox, root: str) -> None:
    os.symlink(os.path.join(root, "src"), os.path.join(root, "srclink"))
    assert _open_and_close(sandbox, "srclink/pkg/util.ts") == "src/pkg/util.ts"


def test_relative_link_chain_inside_the_root(sandbox: Sandbox, root: str) -> None:
    os.symlink("alias.py", os.path.join(root, "alias2.py"))
    os.symlink("../alias2.py", os.path.join(root, "src", "alias3.py"))
    assert _read(sandbox, "src/alias3.py") == "src/app.py"


def test_resolve_returns_the_real_path(sandbox: Sandbox, root: str) -> None:
    key, real = sandbox.resolve("alias.py")
    assert key == "src/app.py"
    assert real == os.path.join(root, "src", "app.py")


def test_relative_is_lexical(sandbox: Sandbox, root: str) -> None:
    assert sandbox.relative("./src/../README.md") == "README.md"
    assert sandbox.relative("alias.py") == "alias.py"  # no symlink resolution
    assert sandbox.relative(os.path.join(root, "src", "app.py")) == "src/app.py"
    assert sandbox.relative(".") == "."
    assert sandbox.relative("not/yet/there.py") == "not/yet/there.py"


def test_check_lexical_returns_normalised_absolute(sandbox: Sandbox, root: str) -> None:
    assert sandbox.check_lexical("src/./pkg/../app.py") == os.path.join(root, "src", "app.py")


def test_open_regular_returns_an_open_descriptor(sandbox: Sandbox, root: str) -> None:
    key, fd, st = sandbox.open_regular("alias.py")
    try:
        assert key == "src/app.py"
        assert stat.S_ISREG(st.st_mode)
        assert st.st_size == os.stat(os.path.join(root, "src", "app.py")).st_size
        assert os.read(fd, 100) == b"def main():\n    return 42\n"
    finally:
        os.close(fd)


def test_sandbox_at_filesystem_root_accepts_everything_inside(project: Path) -> None:
    sandbox = Sandbox(os.sep)
    key = sandbox.relative(str(project / "README.md"))
    assert key == str(project / "README.md").lstrip(os.sep)


# --- refused paths -------------------------------------------------------------------------------


@pytest.mark.parametrize("checker", [*CHECKERS, Sandbox.check_lexical, Sandbox.relative])
@pytest.mark.parametrize(
    "path",
    [
        "",
        "\x00",
        "src/\x00app.py",
        "src/app.py\x00",
        "a" * (MAX_PATH_CHARS + 1),
        "x/" * (MAX_PATH_CHARS // 2 + 1),
        "..",
        "../x",
        "../project-other/x",
        "src/../../x",
        "src/pkg/../../../x",
        "/etc/passwd",
        "/",
        "//etc/passwd",
    ],
)
def test_lexically_refused(
    sandbox: Sandbox, checker: Callable[[Sandbox, object], object], path: str
) -> None:
    with pytest.raises(jidoka.PathNotAllowed) as info:
        checker(sandbox, path)
    assert info.value.session_id == SID
    assert SID in str(info.value)
    assert info.value.reason


@pytest.mark.parametrize("checker", CHECKERS)
def test_absolute_path_outside_the_root(
    sandbox: Sandbox, tmp_path: Path, checker: Callable[[Sandbox, object], object]
) -> None:
    with pytest.raises(jidoka.PathNotAllowed, match="outside"):
        checker(sandbox, str(tmp_path / "secret.txt"))


@pytest.mark.parametrize("checker", CHECKERS)
def test_sibling_directory_with_root_as_prefix(
    sandbox: Sandbox, root: str, checker: Callable[[Sandbox, object], object]
) -> None:
    sibling = root + "-evil"
    os.mkdir(sibling)
    Path(sibling, "x.py").write_text("x\n", encoding="utf-8")
    with pytest.raises(jidoka.PathNotAllowed):
        checker(sandbox, os.path.join(sibling, "x.py"))
    os.symlink(os.path.join(sibling, "x.py"), os.path.join(root, "evil.py"))
    with pytest.raises(jidoka.PathNotAllowed):
        checker(sandbox, "evil.py")


@pytest.mark.parametrize("checker", [*CHECKERS, Sandbox.check_lexical, Sandbox.relative])
@pytest.mark.parametrize("path", [None, 1, b"src/app.py", Path("src/app.py"), ["src/app.py"]])
def test_non_string_path_is_an_invalid_argument(
    sandbox: Sandbox, checker: Callable[[Sandbox, object], object], path: object
) -> None:
    with pytest.raises(jidoka.InvalidArgument) as info:
        checker(sandbox, path)
    assert info.value.argument == "path"
    assert info.value.session_id == SID


@pytest.mark.parametrize("checker", CHECKERS)
def test_symlink_resolving_outside(
    sandbox: Sandbox, checker: Callable[[Sandbox, object], object]
) -> None:
    with pytest.raises(jidoka.PathNotAllowed, match="outside") as info:
        checker(sandbox, "leak.txt")
    assert info.value.path == "leak.txt"


@pytest.mark.parametrize("checker", CHECKERS)
def test_symlink_chain_resolving_outside(
    sandbox: Sandbox, root: str, checker: Callable[[Sandbox, object], object]
) -> None:
    os.symlink("../leak.txt", os.path.join(root, "src", "inner.txt"))  # inside -> leak -> outside
    with pytest.raises(jidoka.PathNotAllowed, match="outside"):
        checker(sandbox, "src/inner.txt")


@pytest.mark.parametrize("checker", CHECKERS)
def test_relative_symlink_out_of_the_root(
    sandbox: Sandbox, root: str, checker: Callable[[Sandbox, object], object]
) -> None:
    os.symlink("../../secret.txt", os.path.join(root, "src", "rel.txt"))
    with pytest.raises(jidoka.PathNotAllowed, match="outside"):
        checker(sandbox, "src/rel.txt")


@pytest.mark.parametrize("checker", CHECKERS)
def test_directory_link_out_of_the_root(
    sandbox: Sandbox, root: str, tmp_path: Path, checker: Callable[[Sandbox, object], object]
) -> None:
    os.symlink(tmp_path, os.path.join(root, "up"))
    with pytest.raises(jidoka.PathNotAllowed, match="outside"):
        checker(sandbox, "up/secret.txt")
    # Out and back in through the link: what counts is where it resolves.
    assert checker(sandbox, "up/project/README.md") == "README.md"


@pytest.mark.parametrize("checker", CHECKERS)
def test_symlink_to_dev_null(
    sandbox: Sandbox, root: str, checker: Callable[[Sandbox, object], object]
) -> None:
    os.symlink("/dev/null", os.path.join(root, "devnull"))
    with pytest.raises(jidoka.PathNotAllowed):
        checker(sandbox, "devnull")


@pytest.mark.parametrize("checker", CHECKERS)
def test_dev_null_absolute(sandbox: Sandbox, checker: Callable[[Sandbox, object], object]) -> None:
    with pytest.raises(jidoka.PathNotAllowed):
        checker(sandbox, "/dev/null")


@pytest.mark.parametrize("checker", FILE_CHECKERS)
def test_device_inside_the_root(
    sandbox: Sandbox, root: str, checker: Callable[[Sandbox, object], object]
) -> None:
    try:
        os.mknod(os.path.join(root, "null"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot create a device node here: {exc}")
    with pytest.raises(jidoka.PathNotAllowed, match="not a regular file"):
        checker(sandbox, "null")


@pytest.mark.parametrize("checker", FILE_CHECKERS)
@pytest.mark.parametrize("path", ["src", "src/", "src/pkg", ".", "./"])
def test_directory_is_refused(
    sandbox: Sandbox, checker: Callable[[Sandbox, object], object], path: str
) -> None:
    with pytest.raises(jidoka.PathNotAllowed, match="not a regular file"):
        checker(sandbox, path)


@pytest.mark.parametrize("checker", FILE_CHECKERS)
def test_root_itself_is_refused(
    sandbox: Sandbox, root: str, checker: Callable[[Sandbox, object], object]
) -> None:
    with pytest.raises(jidoka.PathNotAllowed):
        checker(sandbox, root)


@pytest.mark.parametrize("checker", FILE_CHECKERS)
def test_fifo_is_refused_without_hanging(
    sandbox: Sandbox, root: str, checker: Callable[[Sandbox, object], object]
) -> None:
    os.mkfifo(os.path.join(root, "pipe"))
    with pytest.raises(jidoka.PathNotAllowed, match="not a regular file"):
        checker(sandbox, "pipe")
    os.symlink("pipe", os.path.join(root, "pipe-link"))
    with pytest.raises(jidoka.PathNotAllowed, match="not a regular file"):
        checker(sandbox, "pipe-link")


@pytest.mark.parametrize("checker", FILE_CHECKERS)
def test_socket_is_refused(
    sandbox: Sandbox, root: str, checker: Callable[[Sandbox, object], object]
) -> None:
    path = os.path.join(root, "sock")
    if len(path) >= 100:
        pytest.skip("temporary path too long for an AF_UNIX socket")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path)
        with pytest.raises(jidoka.PathNotAllowed):
            checker(sandbox, "sock")


@pytest.mark.parametrize("checker", FILE_CHECKERS)
def test_symlink_loop_is_refused(
    sandbox: Sandbox, root: str, checker: Callable[[Sandbox, object], object]
) -> None:
    os.symlink("loop-b", os.path.join(root, "loop-a"))
    os.symlink("loop-a", os.path.join(root, "loop-b"))
    with pytest.raises(jidoka.PathNotAllowed):
        checker(sandbox, "loop-a")


@pytest.mark.parametrize("checker", FILE_CHECKERS)
@pytest.mark.parametrize(
    "path", ["missing.py", "src/missing.py", "nodir/x.py", "src/app.py/x", "a" * 300]
)
def test_nonexistent_or_unopenable(
    sandbox: Sandbox, checker: Callable[[Sandbox, object], object], path: str
) -> None:
    with pytest.raises(jidoka.PathNotAllowed) as info:
        checker(sandbox, path)
    assert info.value.session_id == SID


@pytest.mark.parametrize("checker", FILE_CHECKERS)
def test_dangling_symlink(
    sandbox: Sandbox, root: str, checker: Callable[[Sandbox, object], object]
) -> None:
    os.symlink("gone.py", os.path.join(root, "dangling.py"))
    with pytest.raises(jidoka.PathNotAllowed, match="no such file"):
        checker(sandbox, "dangling.py")


def test_refusal_names_path_and_reason(sandbox: Sandbox) -> None:
    with pytest.raises(jidoka.PathNotAllowed) as info:
        sandbox.open_regular("../x")
    error = info.value
    assert error.path == "../x"
    assert "escapes" in error.reason
    assert "'../x'" in str(error)
    assert error.reason in str(error)


def test_over_long_path_error_is_short(sandbox: Sandbox) -> None:
    with pytest.raises(jidoka.PathNotAllowed) as info:
        sandbox.check_lexical("a" * 100_000)
    assert len(str(info.value)) < 500


def test_sandbox_without_session(root: str) -> None:
    with pytest.raises(jidoka.PathNotAllowed) as info:
        Sandbox(root).open_regular("../x")
    assert info.value.session_id is None
    assert not str(info.value).startswith("session")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_refusals_leak_no_descriptors(sandbox: Sandbox, root: str) -> None:
    os.mkfifo(os.path.join(root, "pipe"))
    before = _fd_count()
    for _ in range(50):
        for path in ("src", "pipe", "missing", "leak.txt"):
            with pytest.raises(jidoka.PathNotAllowed):
                read_file(sandbox, path, BIG)
        with pytest.raises(jidoka.LimitExceeded):
            read_file(sandbox, "README.md", 1)
        read_file(sandbox, "README.md", BIG)
    assert _fd_count() == before


# --- read_file ---------------------------------------------------------------------------------


def test_read_file_facts(sandbox: Sandbox, root: str) -> None:
    facts = read_file(sandbox, "src/app.py", BIG)
    real = os.stat(os.path.join(root, "src", "app.py"))
    assert isinstance(facts, FileFacts)
    assert facts == FileFacts(
        path="src/app.py",
        size=real.st_size,
        mtime_ns=real.st_mtime_ns,
        line_count=2,
        language="python",
        text="def main():\n    return 42\n",
    )


def test_read_file_through_alias_uses_target_key(sandbox: Sandbox) -> None:
    facts = read_file(sandbox, "alias.py", BIG)
    assert facts.path == "src/app.py"
    assert facts.language == "python"


def test_read_markdown(sandbox: Sandbox) -> None:
    facts = read_file(sandbox, "./README.md", BIG)
    assert (facts.path, facts.line_count, facts.language) == ("README.md", 3, "markdown")
    assert facts.text == "# demo\n\nhello\n"
    assert facts.size == len(b"# demo\n\nhello\n")


@pytest.mark.parametrize(
    ("content", "lines"),
    [(b"", 0), (b"\n", 1), (b"a", 1), (b"a\nb", 2), (b"a\nb\n", 2), (b"\n\n\n", 3), (b"x\r\n", 1)],
)
def test_line_count(sandbox: Sandbox, root: str, content: bytes, lines: int) -> None:
    Path(root, "f.txt").write_bytes(content)
    facts = read_file(sandbox, "f.txt", BIG)
    assert facts.line_count == lines
    assert facts.size == len(content)
    assert facts.language == "text"


def test_size_is_bytes_and_text_is_utf8(sandbox: Sandbox, root: str) -> None:
    Path(root, "u.py").write_text("s = 'é€😀'\n", encoding="utf-8")
    facts = read_file(sandbox, "u.py", BIG)
    assert facts.text == "s = 'é€😀'\n"
    assert facts.size == len("s = 'é€😀'\n".encode())


def test_invalid_utf8_is_replaced(sandbox: Sandbox, root: str) -> None:
    Path(root, "bin.dat").write_bytes(b"ok\xff\xfe\n")
    facts = read_file(sandbox, "bin.dat", BIG)
    assert facts.text.startswith("ok")
    assert "\ufffd" in facts.text
    assert facts.size == 5
    assert facts.language is None


def test_read_exactly_max_bytes(sandbox: Sandbox, root: str) -> None:
    size = os.stat(os.path.join(root, "README.md")).st_size
    assert read_file(sandbox, "README.md", size).size == size


def test_read_over_max_bytes(sandbox: Sandbox, root: str) -> None:
    size = os.stat(os.path.join(root, "README.md")).st_size
    with pytest.raises(jidoka.LimitExceeded) as info:
        read_file(sandbox, "README.md", size - 1)
    error = info.value
    assert error.limit == "max_file_bytes"
    assert error.maximum == size - 1
    assert error.actual == size
    assert error.path == "README.md"
    assert error.session_id == SID
    assert "max_file_bytes" in str(error)


def test_read_over_max_bytes_reports_key_not_alias(sandbox: Sandbox) -> None:
    with pytest.raises(jidoka.LimitExceeded) as info:
        read_file(sandbox, "alias.py", 3)
    assert info.value.path == "src/app.py"


# --- detect_language ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "language"),
    [
        ("a.py", "python"),
        ("pkg/types.pyi", "python"),
        ("SHOUT.PY", "python"),
        ("src/pkg/util.ts", "typescript"),
        ("App.tsx", "typescript"),
        ("index.mjs", "javascript"),
        ("lib.rs", "rust"),
        ("main.go", "go"),
        ("x.ex", "elixir"),
        ("x.exs", "elixir"),
        ("a.hpp", "cpp"),
        ("a.h", "c"),
        ("run.sh", "shell"),
        ("conf.yml", "yaml"),
        ("conf.yaml", "yaml"),
        ("pyproject.toml", "toml"),
        ("notes.txt", "text"),
        ("README.md", "markdown"),
        ("Makefile", "make"),
        ("sub/dir/Makefile", "make"),
        ("Dockerfile", "dockerfile"),
        ("CMakeLists.txt", "cmake"),  # the special name beats the .txt extension
        ("cmake/CMakeLists.txt", "cmake"),
        ("Gemfile", "ruby"),
        ("mix.lock", "elixir"),
        ("README", None),
        ("LICENSE", None),
        (".bashrc", None),
        ("archive.tar.gz", None),
        ("weird.py/file", None),
        ("noext.", None),
        ("", None),
    ],
)
def test_detect_language(path: str, language: str | None) -> None:
    assert detect_language(path) == language


# --- stat_file -----------------------------------------------------------------------------------


def test_stat_file(sandbox: Sandbox, root: str) -> None:
    real = os.stat(os.path.join(root, "src", "app.py"))
    assert stat_file(sandbox, "src/app.py") == (real.st_size, real.st_mtime_ns)
    assert stat_file(sandbox, "alias.py") == (real.st_size, real.st_mtime_ns)


def test_stat_file_changes_with_content(sandbox: Sandbox, root: str) -> None:
    path = Path(root, "README.md")
    before = stat_file(sandbox, "README.md")
    path.write_text("changed and longer\n", encoding="utf-8")
    os.utime(path, ns=(1, 1))
    after = stat_file(sandbox, "README.md")
    assert after == (len("changed and longer\n"), 1)
    assert after != before


def test_stat_file_gone(sandbox: Sandbox, root: str) -> None:
    assert stat_file(sandbox, "src/app.py") is not None
    os.unlink(os.path.join(root, "src", "app.py"))
    assert stat_file(sandbox, "src/app.py") is None
    assert stat_file(sandbox, "alias.py") is None  # now dangling
    assert stat_file(sandbox, "never-existed.py") is None


def test_stat_file_refused_paths(sandbox: Sandbox, root: str) -> None:
    assert stat_file(sandbox, "leak.txt") is None
    assert stat_file(sandbox, "../secret.txt") is None
    assert stat_file(sandbox, "") is None
    assert stat_file(sandbox, "a\x00b") is None


def test_stat_file_now_a_link_out(sandbox: Sandbox, root: str, tmp_path: Path) -> None:
    target = os.path.join(root, "README.md")
    os.unlink(target)
    os.symlink(tmp_path / "secret.txt", target)
    assert stat_file(sandbox, "README.md") is None


def test_stat_file_not_a_regular_file_is_none(sandbox: Sandbox, root: str) -> None:
    os.unlink(os.path.join(root, "README.md"))
    os.mkdir(os.path.join(root, "README.md"))
    os.mkfifo(os.path.join(root, "pipe"))
    assert stat_file(sandbox, "README.md") is None
    assert stat_file(sandbox, "pipe") is None


# --- the descriptor walk (issue 10: a symlink swapped in mid-call) ------------------------------

INSIDE = "inside\n"


@pytest.fixture
def swappable(tmp_path: Path) -> tuple[Sandbox, Path, Path]:
    """A root with ``d/f.txt`` and a link ``x`` to an outside twin of ``d`` holding a secret."""
    base = tmp_path / "swap"
    (base / "project" / "d").mkdir(parents=True)
    (base / "project" / "d" / "f.txt").write_text(INSIDE, encoding="utf-8")
    outside = tmp_path / "swap-outside"
    outside.mkdir()
    (outside / "f.txt").write_text("SECRET\n", encoding="utf-8")
    os.symlink(outside, base / "project" / "x")
    root = resolve_project_root(base / "project")
    return Sandbox(root, SID), Path(root), outside


def _swap_on_first_open(
    monkeypatch: pytest.MonkeyPatch, name: str, swap: Callable[[], None]
) -> list[int]:
    """Make ``swap()`` happen just before the first ``os.open`` of a path ending in ``name``:
    exactly the interleaving a racing ``rename`` produces, made deterministic."""
    real_open = os.open
    done: list[int] = []

    def racing_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if not done and isinstance(path, str) and path.endswith(name):
            done.append(1)
            swap()
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", racing_open)
    return done


def _exchange(a: Path, b: Path) -> Callable[[], None]:
    def swap() -> None:
        os.rename(a, str(a) + ".tmp")
        os.rename(b, a)
        os.rename(str(a) + ".tmp", b)

    return swap


def test_a_directory_swapped_for_a_link_after_the_check_is_not_followed(
    swappable: tuple[Sandbox, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old sandbox resolved ``d/f.txt`` to a string, then opened the string: ``d``, swapped
    for a link in between, led the open outside. Now ``f.txt`` is opened relative to the
    descriptor of the ``d`` that was walked, wherever it has moved."""
    sandbox, root, _ = swappable
    done = _swap_on_first_open(monkeypatch, "f.txt", _exchange(root / "d", root / "x"))
    facts = read_file(sandbox, "d/f.txt", BIG)
    assert done
    assert facts.text == INSIDE
    assert facts.path == "d/f.txt"


def test_a_middle_component_that_is_a_link_out_is_refused(
    swappable: tuple[Sandbox, Path, Path],
) -> None:
    sandbox, root, _ = swappable
    _exchange(root / "d", root / "x")()  # d is now the link out, x the real directory
    for checker in CHECKERS:
        with pytest.raises(jidoka.PathNotAllowed, match="outside the project root"):
            checker(sandbox, "d/f.txt")
    assert _read(sandbox, "x/f.txt") == "x/f.txt"


def test_a_root_whose_path_now_holds_a_symlink_is_refused(tmp_path: Path) -> None:
    """The stored root is canonical: a link in its path means it was swapped since, and the
    walk from ``/`` refuses it rather than follow it (to a twin tree with a secret)."""
    (tmp_path / "base" / "project").mkdir(parents=True)
    (tmp_path / "base" / "project" / "a.txt").write_text(INSIDE, encoding="utf-8")
    (tmp_path / "twin" / "project").mkdir(parents=True)
    (tmp_path / "twin" / "project" / "a.txt").write_text("SECRET\n", encoding="utf-8")
    root = resolve_project_root(tmp_path / "base" / "project")
    sandbox = Sandbox(root, SID)
    assert read_file(sandbox, "a.txt", BIG).text == INSIDE
    os.rename(tmp_path / "base", tmp_path / "base-old")
    os.symlink(tmp_path / "twin", tmp_path / "base")
    for checker in CHECKERS:
        with pytest.raises(jidoka.PathNotAllowed, match="symlink in its path"):
            checker(sandbox, "a.txt")
    with pytest.raises(jidoka.PathNotAllowed, match="symlink in its path"):
        sandbox.open_root()
    assert stat_file(sandbox, "a.txt") is None
    os.unlink(tmp_path / "base")
    with pytest.raises(jidoka.PathNotAllowed, match="not an existing directory"):
        sandbox.open_regular("a.txt")


def test_links_inside_the_root_are_followed_by_hand(sandbox: Sandbox, root: str) -> None:
    os.symlink("..", os.path.join(root, "src", "up"))  # a ".." inside a link target
    os.symlink(f"{root}//src/./pkg/../app.py", os.path.join(root, "odd-spelling.py"))
    os.symlink("../project/README.md", os.path.join(root, "out-and-back.md"))
    os.symlink(".", os.path.join(root, "here"))
    os.symlink("../../project/../project/README.md", os.path.join(root, "src", "by-names"))
    assert _open_and_close(sandbox, "src/by-names") == "README.md"  # via the root's ancestors
    assert _open_and_close(sandbox, "src/up/README.md") == "README.md"
    assert _open_and_close(sandbox, "src/up/src/up/src/app.py") == "src/app.py"
    assert _open_and_close(sandbox, "odd-spelling.py") == "src/app.py"
    assert _open_and_close(sandbox, "out-and-back.md") == "README.md"
    assert _open_and_close(sandbox, "here/here/src/app.py") == "src/app.py"
    assert _resolve(sandbox, "src/up") == "."
    with pytest.raises(jidoka.PathNotAllowed, match="not a regular file"):
        _open_and_close(sandbox, "src/up")


@pytest.mark.parametrize("checker", CHECKERS)
def test_links_that_only_pass_near_the_root_are_refused(
    sandbox: Sandbox, root: str, checker: Callable[[Sandbox, object], object]
) -> None:
    """Above the root the walk knows only the root's own ancestors, by name: any other
    directory there is outside, even one that would lead back in."""
    os.symlink("../project-twin/x", os.path.join(root, "sideways"))
    os.makedirs(os.path.join(os.path.dirname(root), "project-twin"), exist_ok=True)
    os.symlink("../../project-twin/../project/README.md", os.path.join(root, "src", "dotdot-out"))
    os.symlink(os.path.dirname(root), os.path.join(root, "parent"))
    for path in ("sideways", "src/dotdot-out", "parent", "parent/secret.txt"):
        with pytest.raises(jidoka.PathNotAllowed, match="outside"):
            checker(sandbox, path)


@pytest.mark.parametrize("checker", FILE_CHECKERS)
def test_dangling_links_in_the_middle(
    sandbox: Sandbox, root: str, checker: Callable[[Sandbox, object], object]
) -> None:
    os.symlink("gone", os.path.join(root, "dl"))
    with pytest.raises(jidoka.PathNotAllowed, match="no such file"):
        checker(sandbox, "dl/x.py")
    assert _resolve(sandbox, "dl/x.py") == "gone/x.py"  # a key, like realpath gives one


def test_the_link_hop_bound(sandbox: Sandbox, root: str) -> None:
    previous = "src/app.py"
    for n in range(MAX_LINK_HOPS):
        os.symlink(previous, os.path.join(root, f"hop{n}"))
        previous = f"hop{n}"
    assert _open_and_close(sandbox, previous) == "src/app.py"
    os.symlink(previous, os.path.join(root, "one-too-many"))
    with pytest.raises(jidoka.PathNotAllowed, match=f"more than {MAX_LINK_HOPS} symlinks"):
        _open_and_close(sandbox, "one-too-many")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_long_paths_hold_few_descriptors(sandbox: Sandbox, root: str) -> None:
    deep = "/".join(["d"] * 300)
    Path(root, deep).mkdir(parents=True)
    Path(root, deep, "f.txt").write_text(INSIDE, encoding="utf-8")
    before = _fd_count()
    assert read_file(sandbox, f"{deep}/f.txt", BIG).text == INSIDE
    assert _resolve(sandbox, f"{deep}/../../f.txt") == "/".join(["d"] * 298) + "/f.txt"
    key, fd, name = sandbox.open_parent(f"{deep}/new.txt", create=False)
    assert fd is not None
    os.close(fd)
    assert (key, name) == (f"{deep}/new.txt", "new.txt")
    assert _fd_count() == before


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_every_walk_closes_what_it_opened(sandbox: Sandbox, root: str) -> None:
    os.symlink("..", os.path.join(root, "src", "up"))
    before = _fd_count()
    for _ in range(20):
        for path in ("src/up/README.md", "leak.txt", "missing/x", "src/app.py/x", "alias.py"):
            with contextlib.suppress(jidoka.PathNotAllowed):
                _open_and_close(sandbox, path)
            with contextlib.suppress(jidoka.PathNotAllowed):
                sandbox.resolve(path)
            with contextlib.suppress(jidoka.PathNotAllowed):
                sandbox.stat(path)
            with contextlib.suppress(jidoka.PathNotAllowed):
                _, fd, _ = sandbox.open_parent(path, create=False)
                if fd is not None:
                    os.close(fd)
    assert _fd_count() == before


@pytest.mark.parametrize("checker", [*CHECKERS, Sandbox.check_lexical, Sandbox.relative])
def test_a_lone_surrogate_is_refused(
    sandbox: Sandbox, checker: Callable[[Sandbox, object], object]
) -> None:
    with pytest.raises(jidoka.PathNotAllowed, match="surrogate"):
        checker(sandbox, "src/\ud800.py")


def test_open_parent_refuses_git_through_a_link(sandbox: Sandbox, root: str) -> None:
    os.mkdir(os.path.join(root, ".git"))
    os.symlink(".git", os.path.join(root, "g"))
    for path in (".git/config", "g/config", "g/hooks/new"):
        with pytest.raises(jidoka.PathNotAllowed, match=r"\.git/"):
            sandbox.open_parent(path, create=True)
    assert os.listdir(os.path.join(root, ".git")) == []  # nothing was made on the way


# --- resolve_project_root under a projects directory --------------------------------------------


def test_project_root_within(tmp_path: Path) -> None:
    (tmp_path / "projects" / "web").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "projects" / "out")
    base = str(tmp_path / "projects")
    real = os.path.realpath(tmp_path / "projects" / "web")
    assert resolve_project_root("web", within=base) == real
    assert resolve_project_root(real, within=base) == real
    for escape in ("..", "../elsewhere", "out", str(tmp_path / "elsewhere"), "web/../.."):
        with pytest.raises(jidoka.PathNotAllowed, match="projects directory"):
            resolve_project_root(escape, within=base)
    for bad in ("a\x00b", "\ud800", ""):
        with pytest.raises(jidoka.PathNotAllowed, match="not a valid project_root"):
            resolve_project_root(bad, within=base)


def test_a_checked_project_root_is_rechecked_not_resolved_again(tmp_path: Path) -> None:
    """``ProjectRoot`` marks a root already confined: a link swapped into its path afterwards
    is refused, where resolving again would follow it out of the projects directory."""
    (tmp_path / "projects" / "web").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    checked = ProjectRoot(resolve_project_root("web", within=str(tmp_path / "projects")))
    assert resolve_project_root(checked) == checked
    os.rename(tmp_path / "projects" / "web", tmp_path / "projects" / "web-old")
    os.symlink(tmp_path / "elsewhere", tmp_path / "projects" / "web")
    with pytest.raises(jidoka.PathNotAllowed, match="symlink in its path") as info:
        resolve_project_root(checked)
    assert type(info.value.path) is str  # a ProjectRoot there could not be encoded (a 500)
    assert resolve_project_root(str(checked)) == os.path.realpath(tmp_path / "elsewhere")


# --- bounded reads (issue 10, item 4) ------------------------------------------------------------


def test_a_huge_max_bytes_allocates_only_what_the_file_holds(sandbox: Sandbox) -> None:
    """``max_file_bytes=2**40`` used to preallocate a terabyte (MemoryError) to read 14 bytes."""
    facts = read_file(sandbox, "README.md", 1 << 40)
    assert facts.text == "# demo\n\nhello\n"


def test_read_bounded_reads_a_file_that_grew_since_fstat(tmp_path: Path) -> None:
    path = tmp_path / "grown.txt"
    path.write_bytes(b"x" * 200_000)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert bytes(read_bounded(fd, 1 << 40, expected=10)) == b"x" * 200_000
        os.lseek(fd, 0, os.SEEK_SET)
        assert len(read_bounded(fd, 150_000, expected=10)) == 150_001  # one over: too long
        os.lseek(fd, 0, os.SEEK_SET)
        assert len(read_bounded(fd, 5, expected=200_000)) == 6
    finally:
        os.close(fd)
