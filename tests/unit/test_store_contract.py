"""The SessionStore contract, run against every store implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jidoka.errors import RuntimeClosed, StoreError
from jidoka.events import Event, EventType
from jidoka.store.base import SavedSession, SeqConflict, SessionStore
from jidoka.store.memory import MemoryStore
from jidoka.store.sqlite import SqliteStore

A, B, C, D = "A" * 26, "B" * 26, "C" * 26, "D" * 26
T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def open_memory(tmp_path: Path) -> SessionStore:
    return MemoryStore()


async def open_sqlite(tmp_path: Path) -> SessionStore:
    store = SqliteStore(tmp_path / "contract.sqlite3")
    await store.open()
    return store


STORES: dict[str, Callable[[Path], Awaitable[SessionStore]]] = {
    "memory": open_memory,
    "sqlite": open_sqlite,
}


@pytest.fixture(params=sorted(STORES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionStore]:
    instance = await STORES[request.param](tmp_path)
    yield instance
    await instance.aclose()


def events(session_id: str, first: int, count: int) -> list[Event]:
    return [
        Event(
            EventType.CONVERSATION_ADDED, session_id, seq, T0, {"role": "user", "content": str(seq)}
        )
        for seq in range(first, first + count)
    ]


async def test_satisfies_protocol(store: SessionStore) -> None:
    assert isinstance(store, SessionStore)


async def test_append_and_read(store: SessionStore) -> None:
    await store.append(A, events(A, 1, 3))
    await store.append(A, events(A, 4, 2))
    await store.append(B, events(B, 1, 1))
    assert [e.seq for e in await store.read_events(A)] == [1, 2, 3, 4, 5]
    assert [e.seq for e in await store.read_events(A, after_seq=3)] == [4, 5]
    assert [e.seq for e in await store.read_events(A, after_seq=1, limit=2)] == [2, 3]
    assert await store.read_events(A, after_seq=5) == []
    assert await store.read_events("C" * 26) == []
    assert await store.last_seq(A) == 5
    assert await store.last_seq(B) == 1
    assert await store.last_seq("C" * 26) == 0
    assert (await store.read_events(A))[0] == events(A, 1, 1)[0]


@pytest.mark.parametrize(("first", "expected"), [(1, 4), (3, 4), (5, 4)])
async def test_conflicting_append_is_refused_whole(
    store: SessionStore, first: int, expected: int
) -> None:
    await store.append(A, events(A, 1, 3))
    with pytest.raises(SeqConflict) as info:
        await store.append(A, events(A, first, 2))
    assert (info.value.session_id, info.value.expected) == (A, expected)
    assert isinstance(info.value, StoreError)
    assert await store.last_seq(A) == 3


async def test_batch_with_a_hole_is_refused_whole(store: SessionStore) -> None:
    batch = [*events(A, 1, 2), *events(A, 4, 1)]
    with pytest.raises(SeqConflict):
        await store.append(A, batch)
    assert await store.read_events(A) == []


async def test_batch_for_another_session_is_refused(store: SessionStore) -> None:
    with pytest.raises(SeqConflict):
        await store.append(A, events(B, 1, 1))


async def test_snapshots(store: SessionStore) -> None:
    assert await store.read_snapshot(A) is None
    await store.write_snapshot(A, 5, b"five")
    await store.write_snapshot(A, 9, b"nine")
    assert await store.read_snapshot(A) == (9, b"nine")
    assert await store.read_snapshot(B) is None


async def test_saved_sessions(store: SessionStore) -> None:
    assert await store.list_saved() == []
    assert await store.load_saved(A) is None
    first = SavedSession(session_id=A, saved_at=T0, message_count=2, metadata={"k": [1]})
    await store.save(first, b"state-1")
    second = SavedSession(session_id=A, saved_at=T0, message_count=3, metadata={})
    await store.save(second, b"state-2")  # replaces
    await store.save(SavedSession(session_id=B, saved_at=T0, message_count=0, metadata={}), b"")
    assert await store.load_saved(A) == (second, b"state-2")
    assert [s.session_id for s in await store.list_saved()] == [A, B]
    assert await store.delete_saved(A) is True
    assert await store.delete_saved(A) is False
    assert [s.session_id for s in await store.list_saved()] == [B]


async def test_live_sessions_follow_lifecycle_events(store: SessionStore) -> None:
    def status(sid: str, seq: int, type_: str, **data: object) -> Event:
        return Event(type_, sid, seq, T0, dict(data))

    await store.append(A, [status(A, 1, EventType.SESSION_CREATED, status="initializing"),
                           status(A, 2, EventType.SESSION_STATUS, status="active")])  # fmt: skip
    await store.append(B, [status(B, 1, EventType.SESSION_CREATED, status="initializing")])
    await store.append(B, [status(B, 2, EventType.SESSION_TERMINATED, reason="requested")])
    live = await store.live_sessions()
    if store.durable:
        assert [(s.session_id, s.status, s.last_seq) for s in live] == [(A, "active", 2)]
    else:
        assert live == []  # a new process starts with an empty memory store


async def test_live_sessions_record_the_owner(store: SessionStore) -> None:
    """The owner comes from the latest ``session_created`` (a restored session's from its saved
    copy) and survives the events after it, so a restarted runtime knows it without loading."""

    def event(sid: str, seq: int, type_: str, **data: object) -> Event:
        return Event(type_, sid, seq, T0, dict(data))

    created, status = EventType.SESSION_CREATED, EventType.SESSION_STATUS
    await store.append(A, [event(A, 1, created, status="initializing", owner="alice"),
                           event(A, 2, status, status="active")])  # fmt: skip
    await store.append(A, [event(A, 3, status, status="idle")])
    await store.append(B, [event(B, 1, created, status="initializing")])
    await store.append(C, [event(C, 1, created, status="initializing", owner="carol")])
    await store.append(C, [event(C, 2, EventType.SESSION_TERMINATED, reason="requested")])
    restored = {"owner": "dave", "session_id": C}  # a saved copy (only its owner matters here)
    await store.append(C, [event(C, 3, created, status="initializing", state=restored)])
    await store.append(D, [event(D, 1, created, status="initializing", owner=7)])  # malformed
    live = await store.live_sessions()
    if store.durable:
        assert [(s.session_id, s.status, s.last_seq, s.owner) for s in live] == [
            (A, "idle", 3, "alice"),
            (B, "initializing", 1, None),
            (C, "initializing", 3, "dave"),
            (D, "initializing", 1, None),
        ]
    else:
        assert live == []


async def test_ping(store: SessionStore) -> None:
    await store.ping()


async def test_closed_store_refuses_work(store: SessionStore) -> None:
    await store.aclose()
    with pytest.raises(RuntimeClosed):
        await store.append(A, events(A, 1, 1))


async def test_release_and_close_are_idempotent(store: SessionStore) -> None:
    await store.append(A, events(A, 1, 1))
    await store.release(A)
    await store.release(A)
    await store.aclose()
    await store.aclose()


async def test_memory_store_frees_released_logs_and_trims() -> None:
    store = MemoryStore(max_events_per_session=8)
    for first in range(1, 41, 4):
        await store.append(A, events(A, first, 4))
    kept = await store.read_events(A)
    assert kept[-1].seq == 40
    assert len(kept) <= 10  # trimmed in chunks
    assert [e.seq for e in kept] == list(range(kept[0].seq, 41))
    assert await store.last_seq(A) == 40
    await store.append(A, events(A, 41, 1))  # the next seq is still expected
    await store.release(A)
    assert store.sessions() == frozenset()
    with pytest.raises(ValueError, match="at least 1"):
        MemoryStore(max_events_per_session=0)


async def test_read_events_bounded_by_bytes(store: SessionStore) -> None:
    """``max_bytes`` cuts a page after the event that reaches it, never before the first: a
    replaying reader's page stays bounded while it still always makes progress."""
    big = [
        Event(EventType.CONVERSATION_ADDED, A, seq, T0, {"role": "user", "content": "x" * 10_000})
        for seq in range(1, 21)
    ]
    await store.append(A, big)
    one = await store.read_events(A, after_seq=0, max_bytes=1)
    assert [e.seq for e in one][:1] == [1]
    page = await store.read_events(A, after_seq=4, limit=10, max_bytes=25_000)
    assert [e.seq for e in page] == list(range(5, 5 + len(page)))  # a prefix, in order
    assert 1 <= len(page) <= 10
    if store.durable:  # a store that reads from disk must honour the bound
        assert [e.seq for e in one] == [1]
        assert len(page) == 3  # 10 KB each: the third reaches 25 KB
    whole = await store.read_events(A, after_seq=0, max_bytes=1 << 30)
    assert [e.seq for e in whole] == list(range(1, 21))
