"""The error tree: classes, attributes, and messages that stand on their own."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

import pytest

import jidoka
from jidoka import errors
from jidoka.errors import (
    DataDirLocked,
    HostNotAllowed,
    InvalidArgument,
    InvalidConfig,
    InvalidRole,
    InvalidTransition,
    JidokaError,
    LimitExceeded,
    LLMError,
    NotOwner,
    OriginNotAllowed,
    PathNotAllowed,
    ProjectRootUnavailable,
    RunNotFound,
    RuntimeClosed,
    SessionBusy,
    SessionExists,
    SessionNotFound,
    SessionTerminated,
    StoreError,
    Unauthorized,
    UnsupportedMediaType,
)

SID = "01KDVDNA002TGFDYKMPAK7J69H"

# Documented tree: class -> parent.
TREE: dict[type[JidokaError], type[Exception]] = {
    SessionNotFound: JidokaError,
    RunNotFound: JidokaError,
    SessionTerminated: JidokaError,
    InvalidTransition: JidokaError,
    InvalidArgument: JidokaError,
    InvalidRole: InvalidArgument,
    InvalidConfig: InvalidArgument,
    UnsupportedMediaType: InvalidArgument,
    PathNotAllowed: JidokaError,
    LimitExceeded: JidokaError,
    Unauthorized: JidokaError,
    StoreError: JidokaError,
    RuntimeClosed: JidokaError,
    SessionExists: JidokaError,
    DataDirLocked: JidokaError,
    SessionBusy: JidokaError,
    LLMError: JidokaError,
    HostNotAllowed: JidokaError,
    OriginNotAllowed: JidokaError,
    NotOwner: JidokaError,
    ProjectRootUnavailable: JidokaError,
}

# One instance of each class, about session SID.
MAKERS: dict[type[JidokaError], Callable[[], JidokaError]] = {
    JidokaError: lambda: JidokaError("something failed", session_id=SID),
    SessionNotFound: lambda: SessionNotFound(SID),
    RunNotFound: lambda: RunNotFound(SID, "run_x"),
    SessionTerminated: lambda: SessionTerminated(SID, reason="timeout"),
    InvalidTransition: lambda: InvalidTransition(SID, "terminated", "active"),
    InvalidArgument: lambda: InvalidArgument("limit must be positive", argument="limit",
                                             session_id=SID),
    InvalidRole: lambda: InvalidRole(SID, "robot"),
    InvalidConfig: lambda: InvalidConfig("too small", field="max_history", session_id=SID),
    PathNotAllowed: lambda: PathNotAllowed(SID, "../etc/passwd", "escapes the project root"),
    LimitExceeded: lambda: LimitExceeded("max_files", 50, session_id=SID, actual=51, path="a.py"),
    Unauthorized: lambda: Unauthorized("no such token", session_id=SID),
    StoreError: lambda: StoreError("write failed", session_id=SID),
    RuntimeClosed: lambda: RuntimeClosed("runtime is closed", session_id=SID),
    SessionExists: lambda: SessionExists(SID),
    SessionBusy: lambda: SessionBusy(SID),
    LLMError: lambda: LLMError("the model failed", provider="openai", session_id=SID),
    NotOwner: lambda: NotOwner(SID, owner="n2", owner_url="http://10.0.0.6:8765"),
    ProjectRootUnavailable: lambda: ProjectRootUnavailable(SID, "/srv/p", "n1"),
}  # fmt: skip
# Errors that are about no session at all.
SESSIONLESS: dict[type[JidokaError], Callable[[], JidokaError]] = {
    DataDirLocked: lambda: DataDirLocked("/var/lib/jidoka", "pid 123"),
    UnsupportedMediaType: lambda: UnsupportedMediaType("text/plain"),
    HostNotAllowed: lambda: HostNotAllowed("evil.test:8765"),
    OriginNotAllowed: lambda: OriginNotAllowed("http://evil.test"),
}


def test_all_error_classes_are_covered() -> None:
    assert {getattr(errors, name) for name in errors.__all__} == set(MAKERS) | set(SESSIONLESS)
    assert set(TREE) | {JidokaError} == set(MAKERS) | set(SESSIONLESS)


@pytest.mark.parametrize("cls", list(TREE), ids=lambda c: c.__name__)
def test_tree(cls: type[JidokaError]) -> None:
    assert issubclass(cls, JidokaError)
    assert TREE[cls] in cls.__mro__[1:]
    assert cls.__bases__[0] is TREE[cls]


def test_root_is_an_exception() -> None:
    assert issubclass(JidokaError, Exception)
    assert issubclass(InvalidArgument, ValueError)  # usable where a ValueError is expected


@pytest.mark.parametrize("cls", [*MAKERS, *SESSIONLESS], ids=lambda c: c.__name__)
def test_every_error_is_a_jidoka_error(cls: type[JidokaError]) -> None:
    error = {**MAKERS, **SESSIONLESS}[cls]()
    assert isinstance(error, JidokaError)
    assert type(error) is cls
    assert error.session_id == (None if cls in SESSIONLESS else SID)
    assert error.message == str(error)
    with pytest.raises(JidokaError):
        raise error


@pytest.mark.parametrize("cls", list(MAKERS), ids=lambda c: c.__name__)
def test_message_names_the_session(cls: type[JidokaError]) -> None:
    assert SID in str(MAKERS[cls]())


@pytest.mark.parametrize(
    "name",
    list(errors.__all__),
)  # fmt: skip
def test_error_is_exported_from_the_package(name: str) -> None:
    assert name in jidoka.__all__
    assert getattr(jidoka, name) is getattr(errors, name)


def test_session_exists() -> None:
    error = SessionExists(SID)
    assert "already live" in str(error)


def test_data_dir_locked() -> None:
    error = DataDirLocked("/var/lib/jidoka", "pid 123")
    assert error.data_dir == "/var/lib/jidoka"
    assert error.session_id is None
    assert "'/var/lib/jidoka'" in str(error)
    assert "pid 123" in str(error)
    assert "()" not in str(DataDirLocked("/d"))


def test_no_session() -> None:
    error = JidokaError("plain")
    assert error.session_id is None
    assert str(error) == "plain"
    assert error.message == "plain"
    for made in (
        InvalidArgument("bad", argument="x"),
        PathNotAllowed(None, "p", "r"),
        LimitExceeded("max_sessions", 10),
    ):
        assert made.session_id is None
        assert not str(made).startswith("session")
        assert "None" not in str(made)


def test_session_not_found() -> None:
    error = SessionNotFound(SID)
    assert "not found" in str(error)


def test_session_terminated() -> None:
    error = SessionTerminated(SID, reason="timeout")
    assert error.reason == "timeout"
    assert "timeout" in str(error)
    bare = SessionTerminated(SID)
    assert bare.reason is None
    assert "None" not in str(bare)
    assert "terminated" in str(bare)


def test_invalid_transition() -> None:
    error = InvalidTransition(SID, "terminated", "active")
    assert (error.from_status, error.to_status) == ("terminated", "active")
    assert "'terminated'" in str(error)
    assert "'active'" in str(error)


def test_invalid_argument() -> None:
    error = InvalidArgument("limit must be positive", argument="limit", session_id=SID)
    assert error.argument == "limit"
    assert "limit must be positive" in str(error)
    assert isinstance(error, ValueError)


def test_invalid_role() -> None:
    error = InvalidRole(SID, "robot")
    assert error.role == "robot"
    assert error.argument == "role"
    assert "'robot'" in str(error)
    for role in ("user", "assistant", "system"):
        assert role in str(error)
    assert InvalidRole(None, 3).session_id is None


def test_invalid_config() -> None:
    error = InvalidConfig("too small", field="features.beta", session_id=SID)
    assert error.field == "features.beta"
    assert error.argument == "features.beta"
    assert isinstance(error, InvalidArgument)


def test_path_not_allowed() -> None:
    error = PathNotAllowed(SID, "../etc/passwd", "escapes the project root")
    assert error.path == "../etc/passwd"
    assert error.reason == "escapes the project root"
    assert "'../etc/passwd'" in str(error)
    assert "escapes the project root" in str(error)


def test_limit_exceeded() -> None:
    error = LimitExceeded("max_files", 50, session_id=SID, actual=51, path="a.py")
    assert (error.limit, error.maximum, error.actual, error.path) == ("max_files", 50, 51, "a.py")
    message = str(error)
    assert "max_files" in message
    assert "50" in message
    assert "51" in message
    assert "'a.py'" in message


def test_limit_exceeded_optional_parts() -> None:
    error = LimitExceeded("max_sessions", 100_000)
    assert error.actual is None
    assert error.path is None
    assert error.session_id is None
    assert "max_sessions" in str(error)
    assert "100000" in str(error)
    assert "None" not in str(error)


def test_error_with_weird_session_id_is_quoted() -> None:
    error = SessionNotFound("a'b\nc")
    assert repr("a'b\nc") in str(error)
    assert "\n" not in str(error)


def _documented_tree() -> dict[str, str]:
    """The tree drawn in ``errors.__doc__``: class name -> parent name."""
    doc = errors.__doc__ or ""
    lines = doc[doc.index("    JidokaError\n") :].split("\n\n", 1)[0].splitlines()[1:]
    parents = ["JidokaError"]
    tree: dict[str, str] = {}
    for line in lines:
        branch = max(line.find("├── "), line.find("└── "))
        if branch < 0:
            continue  # a description that goes on to a second line
        depth = (branch - 4) // 4  # the tree starts four spaces in; each level is four wide
        name = line[branch + 4 :].split()[0]
        del parents[depth + 1 :]
        tree[name] = parents[depth]
        parents.append(name)
    return tree


def _every_error_class() -> set[type[JidokaError]]:
    for module in pkgutil.walk_packages(jidoka.__path__, "jidoka."):
        if not module.name.endswith("__main__"):  # importing it would run the CLI
            importlib.import_module(module.name)
    found: set[type[JidokaError]] = set()
    todo = [JidokaError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.startswith("jidoka.") and not sub.__name__.startswith("_"):
                found.add(sub)
                todo.append(sub)
    return found


def test_the_docstring_draws_every_error_with_its_parent() -> None:
    """Every error class in the package is in the drawn tree under its real parent, or named
    among the few that never leave the package; nothing drawn is made up."""
    tree = _documented_tree()
    classes = _every_error_class()
    assert {"ServerUnavailable", "CorruptSession", "StoreError"} <= set(tree)
    internal = {cls.__name__ for cls in classes} - set(tree)
    assert internal == {
        "KeyNotFound",
        "MalformedBody",
        "NestingTooDeep",
        "RouteNotFound",
        "ToolError",
    }
    for name in internal:
        assert f"``{name}``" in (errors.__doc__ or "")
    for cls in classes:
        if cls.__name__ in tree:
            assert tree[cls.__name__] == cls.__bases__[0].__name__, cls
    assert set(tree) <= {cls.__name__ for cls in classes}
