"""The public surface of the ``jidoka`` package: pinned, so changing it is a deliberate act."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import subprocess
import sys

import pytest

import jidoka
from jidoka import cli

PUBLIC_API = [
    "ActiveFile",
    "Client",
    "Clock",
    "Compacted",
    "ContextBundle",
    "DataDirLocked",
    "Event",
    "EventType",
    "FakeClock",
    "FileCache",
    "FileExcerpt",
    "FileIndexEntry",
    "HostNotAllowed",
    "InvalidArgument",
    "InvalidConfig",
    "InvalidRole",
    "InvalidTransition",
    "JidokaError",
    "LLMConfig",
    "LLMError",
    "LimitExceeded",
    "Message",
    "NotOwner",
    "OriginNotAllowed",
    "PathNotAllowed",
    "ProjectRootUnavailable",
    "RemoteClient",
    "Rewound",
    "RunInfo",
    "RunNotFound",
    "RunPage",
    "Runtime",
    "RuntimeClosed",
    "SavedSession",
    "ScopedClient",
    "ServerUnavailable",
    "SessionBusy",
    "SessionConfig",
    "SessionExists",
    "SessionInfo",
    "SessionNotFound",
    "SessionTerminated",
    "Settings",
    "Status",
    "StoreError",
    "Subscription",
    "SystemClock",
    "TokenUsage",
    "Unauthorized",
    "UnsupportedMediaType",
    "__version__",
    "decode_event",
    "encode_event",
    "estimate_tokens",
]


def test_all_is_pinned() -> None:
    assert jidoka.__all__ == PUBLIC_API


def test_all_is_sorted_and_unique() -> None:
    assert jidoka.__all__ == sorted(jidoka.__all__)
    assert len(set(jidoka.__all__)) == len(jidoka.__all__)


@pytest.mark.parametrize("name", PUBLIC_API)
def test_every_name_is_importable(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from jidoka import {name}", namespace)
    assert namespace[name] is getattr(jidoka, name)


@pytest.mark.parametrize("name", [name for name in PUBLIC_API if name != "__version__"])
def test_every_name_is_the_object_defined_in_its_home_module(name: str) -> None:
    """Each public class or function is defined in a jidoka module and re-exported as that very
    object (the lazily loaded ones included): not a third-party object, a stale copy or a
    shadowing name, so that its repr, pickling and ``isinstance`` agree with its home."""
    exported = getattr(jidoka, name)
    home = exported.__module__
    assert home == "jidoka" or home.startswith("jidoka."), home
    assert getattr(importlib.import_module(home), exported.__qualname__) is exported


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from jidoka import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(PUBLIC_API)


def test_version() -> None:
    assert isinstance(jidoka.__version__, str)
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", jidoka.__version__)


def test_version_matches_installed_metadata() -> None:
    try:
        installed = importlib.metadata.version("jidoka-core")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("jidoka-core is not installed as a distribution")
    assert installed == jidoka.__version__


def test_cli_version_subprocess() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jidoka.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"jidoka {jidoka.__version__}"


def test_cli_version_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"jidoka {jidoka.__version__}"
