"""The path sandbox (jidoka.tools.sandbox) and the file readers built on it (jidoka.session.files).

Everything here blocks by design (callers run it in a worker thread), so the tests are plain
synchronous functions.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

import jidoka
from jidoka.session.files import FileFacts, detect_language, read_file, stat_file
from jidoka.tools.sandbox import MAX_PATH_CHARS, Sandbox, resolve_project_root

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
