"""Shared fixtures.

- Every async test runs with blockbuster on: a blocking call (file I/O, ``time.sleep``...) made on
  the event loop's thread fails the test. Work Jidoka does in worker threads is not affected.
- Time is a :class:`jidoka.FakeClock`: tests advance it and wait for the *event* they expect;
  nothing sleeps.
- ``project`` is a real directory with a few real files (and a link pointing out of it).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

import jidoka
from tests.support import postgres


@pytest.fixture(autouse=True)
def blockbuster(request: pytest.FixtureRequest) -> Iterator[BlockBuster | None]:
    """Fail async tests that block the event loop (opt out with ``@pytest.mark.allow_blocking``)."""
    if request.node.get_closest_marker("allow_blocking") or not _is_async(request):
        yield None
        return
    with blockbuster_ctx("jidoka") as bb:
        # asyncpg reads the libpq password and service files (~/.pgpass, a few bytes) while it
        # opens a connection, on the loop: once per connection of the Postgres store's pool and
        # writer, and again only on a reconnect. The one blocking call allowed.
        for function in bb.functions.values():
            function.can_block_in("asyncpg/connect_utils.py", ASYNCPG_CONNECT_FILE_READS)
        yield bb


#: Where asyncpg touches the password and service files while connecting.
ASYNCPG_CONNECT_FILE_READS = frozenset(
    {"_read_password_file", "_dot_postgresql_path", "_parse_connect_dsn_and_args"}
)


def _is_async(request: pytest.FixtureRequest) -> bool:
    function = getattr(request.node, "function", None)
    return function is not None and asyncio.iscoroutinefunction(function)


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's JIDOKA_* variables or writes a data directory outside its
    own temporary one; unless a test says otherwise, runtimes use the memory store."""
    for name in list(os.environ):
        if name.startswith("JIDOKA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("JIDOKA_STORE", "memory")
    monkeypatch.setenv("JIDOKA_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture
def clock() -> jidoka.FakeClock:
    return jidoka.FakeClock()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A small project tree: two source files, a nested one, a link out of the tree."""
    root = tmp_path / "project"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "app.py").write_text("def main():\n    return 42\n", encoding="utf-8")
    (root / "src" / "pkg" / "util.ts").write_text("export const x = 1;\n", encoding="utf-8")
    (root / "README.md").write_text("# demo\n\nhello\n", encoding="utf-8")
    outside = tmp_path / "secret.txt"
    outside.write_text("top secret\n", encoding="utf-8")
    os.symlink(outside, root / "leak.txt")
    os.symlink(root / "src" / "app.py", root / "alias.py")
    return root


@pytest.fixture
async def runtime(clock: jidoka.FakeClock) -> AsyncIterator[jidoka.Runtime]:
    """A running runtime on a fake clock, with a short worker grace period (the memory store,
    or the store under test for integration and fault tests)."""
    async with jidoka.Runtime(clock=clock, shutdown_grace_seconds=2.0) as rt:
        yield rt


@pytest.fixture
async def client(runtime: jidoka.Runtime) -> jidoka.Client:
    return runtime.client


# --- every store -------------------------------------------------------------------------------
#
# Integration and fault tests run once per store backend: the environment tells every
# ``jidoka.Runtime()`` they build which store to use (and a fresh data directory, or a fresh
# Postgres schema), so the same behaviour is demanded of the memory, the SQLite and the Postgres
# store. ``@pytest.mark.stores("memory")`` narrows a test that is about one backend's specifics.

STORE_BACKENDS = ("memory", "sqlite", "postgres")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_backend" not in metafunc.fixturenames:
        return  # only tests under a conftest that asks for it (integration/, fault/)
    marker = metafunc.definition.get_closest_marker("stores")
    backends = marker.args if marker else STORE_BACKENDS
    metafunc.parametrize("store_backend", backends, indirect=True)


@pytest.fixture
def store_backend(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    _isolated_settings: None,
) -> str:
    backend: str = request.param
    monkeypatch.setenv("JIDOKA_DATA_DIR", str(tmp_path / "data"))
    if backend == "postgres":
        monkeypatch.setenv("JIDOKA_STORE", request.getfixturevalue("postgres_dsn"))
        monkeypatch.setenv("JIDOKA_POSTGRES_SCHEMA", request.getfixturevalue("postgres_schema"))
    else:
        monkeypatch.setenv("JIDOKA_STORE", backend)
    return backend


@pytest.fixture
def postgres_dsn() -> str:
    """The test server's DSN; the test is skipped (failed on CI) if it does not answer."""
    return postgres.require_postgres()


@pytest.fixture
def postgres_schema(postgres_dsn: str) -> Iterator[str]:
    """A schema of this test's own (not created: the store creates it), dropped afterwards."""
    with postgres.schema(postgres_dsn) as name:
        yield name
