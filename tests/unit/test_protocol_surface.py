"""The runtime uses a store and a bus only through what their Protocols declare.

Each backend is wrapped in a proxy that passes on the Protocol's members and fails the test on
any other name, so a ``getattr`` probe for an undeclared faster method (or any use of a
backend's own extras) is caught here: a Postgres store or a Redis bus that implements the
Protocols as written is then enough for the runtime.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import jidoka
from jidoka import runtime as runtime_module
from jidoka.bus.base import EventBus
from jidoka.bus.memory import MemoryBus
from jidoka.store.base import SessionStore
from jidoka.store.memory import MemoryStore
from jidoka.store.postgres import PostgresStore
from jidoka.store.sqlite import SqliteStore
from tests.helpers import drain, quiesce, take, until


def declared(protocol: type) -> frozenset[str]:
    """The public members a Protocol declares (methods, properties, attributes), those of the
    Protocols it extends included (a ``SessionStore`` is a ``RunIndex`` too)."""
    names: set[str] = set()
    for klass in protocol.__mro__:
        if klass is object or not getattr(klass, "_is_protocol", False):
            continue
        names |= {name for name in vars(klass) if not name.startswith("_")}
        names |= set(getattr(klass, "__annotations__", {}))
    return frozenset(names)


class Strict:
    """Passes on what ``protocol`` declares; any other name is a test failure (an
    ``AssertionError``, which ``getattr(obj, name, default)`` does not swallow)."""

    def __init__(self, inner: Any, protocol: type) -> None:
        self._inner = inner
        self._protocol = protocol
        self._names = declared(protocol)
        self.used: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        if name not in self._names:
            raise AssertionError(f"{name!r} is not declared on {self._protocol.__name__}")
        self.used.add(name)
        return getattr(self._inner, name)


def test_the_protocols_declare_the_non_blocking_paths() -> None:
    assert {
        "append_nowait",
        "commits_inline",
        "durable",
        "find_session",
        "list_sessions",
    } <= declared(SessionStore)
    assert {"publish_nowait", "subscriber_count", "published", "lost"} <= declared(EventBus)


async def open_memory(request: pytest.FixtureRequest) -> Any:
    return MemoryStore()


async def open_sqlite(request: pytest.FixtureRequest) -> Any:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    store = SqliteStore(tmp_path / "strict.sqlite3")
    await store.open()
    return store


async def open_postgres(request: pytest.FixtureRequest) -> Any:
    dsn: str = request.getfixturevalue("postgres_dsn")
    store = PostgresStore(dsn, schema=request.getfixturevalue("postgres_schema"))
    await store.open()
    return store


OPENERS: dict[str, Callable[[pytest.FixtureRequest], Any]] = {
    "memory": open_memory,
    "sqlite": open_sqlite,
    "postgres": open_postgres,
}


@pytest.fixture(params=sorted(OPENERS))
async def strict_runtime(
    request: pytest.FixtureRequest,
    clock: jidoka.FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[jidoka.Runtime, Strict, Strict]]:
    inner = await OPENERS[request.param](request)
    store = Strict(inner, SessionStore)
    buses: list[Strict] = []

    def make_bus(**kwargs: Any) -> Strict:
        buses.append(Strict(MemoryBus(**kwargs), EventBus))
        return buses[-1]

    monkeypatch.setattr(runtime_module, "MemoryBus", make_bus)
    rt = jidoka.Runtime(store=store, settings=jidoka.Settings(), clock=clock)
    async with rt:
        yield rt, store, buses[0]
    await inner.aclose()


async def test_a_session_s_life_uses_only_declared_members(
    strict_runtime: tuple[jidoka.Runtime, Strict, Strict], clock: jidoka.FakeClock
) -> None:
    rt, store, bus = strict_runtime
    client = rt.client
    async with client.subscribe_to_all_sessions() as lifecycle:
        sid = await client.create_session(
            config={"idle_after_seconds": 60, "timeout_minutes": 0, "persistence_enabled": True}
        )
        async with client.subscribe_to_session(sid) as events:
            await client.send_message(sid, "user", "hello")
            await client.put_working_context(sid, "k", [1])
            clock.advance(61)  # goes idle on its timer
            await until(lifecycle, "session_status", status="idle")
            await quiesce(rt)
            await client.send_message(sid, "user", "again")  # wakes it
            await client.save_session(sid)
            await client.terminate_session(sid)
            seen = await drain(events)
        assert seen[-1].type == "session_terminated"
        await take(lifecycle, 1)
    restored = await client.restore_session(sid)
    history = await client.get_conversation_history(restored.session_id)
    assert [m.content for m in history] == ["hello", "again"]
    counts = rt.counts()
    assert counts.events_published > 0
    assert {"append_nowait", "commits_inline"} <= store.used
    assert {"publish_nowait", "published", "lost"} <= bus.used
    if rt.store.commits_inline:  # asked only where a termination may run inline
        assert "subscriber_count" in bus.used
