"""The SessionStore contract, run against every store implementation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jidoka.errors import InvalidArgument, RuntimeClosed, StoreError
from jidoka.events import Event, EventType
from jidoka.store.base import SavedSession, SeqConflict, SessionStore
from jidoka.store.memory import MemoryStore
from jidoka.store.postgres import PostgresStore
from jidoka.store.sqlite import SqliteStore

A, B, C, D = "A" * 26, "B" * 26, "C" * 26, "D" * 26
T0 = datetime(2026, 1, 1, tzinfo=UTC)


#: Each opener gets the test's request, to ask for what its store needs (a temporary
#: directory, a Postgres schema of the test's own: the Postgres run is skipped, or failed on
#: CI, when no server answers).
Opener = Callable[[pytest.FixtureRequest], Awaitable[SessionStore]]


async def open_memory(request: pytest.FixtureRequest) -> SessionStore:
    return MemoryStore()


async def open_sqlite(request: pytest.FixtureRequest) -> SessionStore:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    store = SqliteStore(tmp_path / "contract.sqlite3")
    await store.open()
    return store


async def open_postgres(request: pytest.FixtureRequest) -> SessionStore:
    dsn: str = request.getfixturevalue("postgres_dsn")
    store = PostgresStore(dsn, schema=request.getfixturevalue("postgres_schema"))
    await store.open()
    return store


STORES: dict[str, Opener] = {
    "memory": open_memory,
    "sqlite": open_sqlite,
    "postgres": open_postgres,
}


async def open_small_sqlite(request: pytest.FixtureRequest) -> SessionStore:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    store = SqliteStore(tmp_path / "small.sqlite3", max_database_bytes=128 * 1024)
    await store.open()
    return store


#: Stores whose commit can fail (a disk that fills up), each opened so that it soon does. The
#: memory store has no such failure: it refuses a batch at once or stores it. Nor is Postgres
#: here: its server's disk cannot be filled for one test's schema, and a failure provoked with a
#: constraint the store never has would test the fixture, not the store (its failed commits are
#: the outages of tests/fault/test_postgres_outage.py).
SMALL_STORES: dict[str, Opener] = {
    "sqlite": open_small_sqlite,
}


@pytest.fixture(params=sorted(STORES))
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SessionStore]:
    instance = await STORES[request.param](request)
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
    # A gap can only follow an append that was not stored (one queued behind a failed
    # commit): the error says so, for the caller who only sees this one.
    assert ("an earlier append of this session failed" in str(info.value)) == (first > expected)


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


async def test_the_snapshot_at_or_before_a_seq(store: SessionStore) -> None:
    """What a fork or rewind at an older seq starts its fold from: never a snapshot past the
    seq; a durable store has kept the older ones (the memory store the newest only)."""
    for seq in (3, 6, 9):
        await store.write_snapshot(A, seq, str(seq).encode())
    assert await store.read_snapshot(A, at_most=9) == (9, b"9")
    assert await store.read_snapshot(A, at_most=100) == (9, b"9")
    assert await store.read_snapshot(A, at_most=2) is None
    older = await store.read_snapshot(A, at_most=7)
    if store.durable:
        assert older == (6, b"6")
        assert await store.read_snapshot(A, at_most=5) == (3, b"3")
    else:
        assert older is None
    await store.write_snapshot(A, 6, b"again")  # the same seq twice: the first is kept
    assert await store.read_snapshot(A, at_most=6) == ((6, b"6") if store.durable else None)


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


async def test_stored_heads_follow_lifecycle_events(store: SessionStore) -> None:
    """The head records the latest status and when it changed; a terminated session is found
    by id but not listed unless asked for by status."""

    def status(sid: str, seq: int, type_: EventType, when: datetime, **data: object) -> Event:
        return Event(type_, sid, seq, when, dict(data))

    t1, t2 = T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)
    created, moved = EventType.SESSION_CREATED, EventType.SESSION_STATUS
    await store.append(A, [status(A, 1, created, T0, status="initializing"),
                           status(A, 2, moved, t1, status="active")])  # fmt: skip
    await store.append(
        A, [status(A, 3, EventType.CONVERSATION_ADDED, t2, role="user", content="x")]
    )
    await store.append(B, [status(B, 1, EventType.SESSION_CREATED, T0, status="initializing")])
    await store.append(B, [status(B, 2, EventType.SESSION_TERMINATED, t2, reason="requested")])
    found = await store.find_session(A)
    assert found is not None
    assert (found.session_id, found.status, found.last_seq) == (A, "active", 3)
    assert found.updated_at is not None
    assert t1 <= found.updated_at <= t2
    ended = await store.find_session(B)
    assert ended is not None
    assert (ended.status, ended.last_seq, ended.updated_at) == ("terminated", 2, t2)
    assert await store.find_session(C) is None
    assert [(s.session_id, s.status) for s in await store.list_sessions()] == [(A, "active")]
    assert [s.session_id for s in await store.list_sessions(status="terminated")] == [B]
    assert await store.list_sessions(status="idle") == []


async def test_stored_heads_record_the_owner(store: SessionStore) -> None:
    """The owner comes from the latest ``session_created`` (a restored session's from its saved
    copy) and survives the events after it, so a restarted runtime knows it without loading."""

    def event(sid: str, seq: int, type_: EventType, **data: object) -> Event:
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
    expected = [
        (A, "idle", 3, "alice"),
        (B, "initializing", 1, None),
        (C, "initializing", 3, "dave"),
        (D, "initializing", 1, None),
    ]
    listed = await store.list_sessions()
    assert [(s.session_id, s.status, s.last_seq, s.owner) for s in listed] == expected
    for sid, status_, last, owner in expected:
        found = await store.find_session(sid)
        assert found is not None
        assert (found.session_id, found.status, found.last_seq, found.owner) == (
            sid, status_, last, owner
        )  # fmt: skip
    assert [s.session_id for s in await store.list_sessions(owner="dave")] == [C]


CHUNK = EventType.LLM_STREAM_CHUNK


def turn_log(session_id: str) -> list[Event]:
    """1 created, 2-4 chunks, 5 message, 6 chunk, 7 message, 8 chunk (the log's last)."""
    kinds = [EventType.SESSION_CREATED, CHUNK, CHUNK, CHUNK, EventType.CONVERSATION_ADDED]
    kinds += [CHUNK, EventType.CONVERSATION_ADDED, CHUNK]
    return [
        Event(kind, session_id, seq, T0, {"text": str(seq)} if kind == CHUNK else data)
        for seq, kind in enumerate(kinds, start=1)
        for data in ({"status": "active"} if seq == 1 else {"n": seq},)
    ]


async def test_drop_events_leaves_a_gap_and_the_log_end(store: SessionStore) -> None:
    await store.append(A, turn_log(A))
    await store.append(B, turn_log(B))
    await store.write_snapshot(A, 5, b"state at 5")
    # Only the type asked for, only in the range, and never the log's last event.
    assert await store.drop_events(A, CHUNK, first_seq=3, last_seq=8) == 3
    assert [e.seq for e in await store.read_events(A)] == [1, 2, 5, 7, 8]
    assert await store.drop_events(A, CHUNK, first_seq=1, last_seq=8) == 1
    assert [e.seq for e in await store.read_events(A)] == [1, 5, 7, 8]
    assert [e.seq for e in await store.read_events(A, after_seq=1, limit=2)] == [5, 7]
    assert [e.seq for e in await store.read_events(A, after_seq=2)] == [5, 7, 8]
    assert await store.drop_events(A, CHUNK, first_seq=1, last_seq=8) == 0  # idempotent
    by_name: Any = "llm_stream_chunk"  # a type's name is accepted as well
    assert await store.drop_events(A, by_name, first_seq=1, last_seq=8) == 0
    assert await store.last_seq(A) == 8
    head = await store.find_session(A)
    assert head is not None
    assert head.last_seq == 8
    assert await store.read_snapshot(A) == (5, b"state at 5")
    assert [e.seq for e in await store.read_events(B)] == list(range(1, 9))  # untouched
    assert await store.drop_events(C, CHUNK, first_seq=1, last_seq=9) == 0  # no such log
    # The log goes on right after its end, gap or no gap.
    await store.append(A, events(A, 9, 1))
    with pytest.raises(SeqConflict):
        await store.append(A, events(A, 9, 1))
    assert [e.seq for e in await store.read_events(A, after_seq=7)] == [8, 9]


@pytest.mark.parametrize(
    ("args", "argument"),
    [
        (("", CHUNK, 1, 2), "session_id"),
        ((A, EventType.CONVERSATION_ADDED, 1, 2), "event_type"),
        ((A, "llm_stream_chunk ", 1, 2), "event_type"),
        ((A, CHUNK, 0, 2), "first_seq"),
        ((A, CHUNK, 1, True), "last_seq"),
        ((A, CHUNK, 3, 2), "last_seq"),
    ],
)
async def test_drop_events_refuses_what_it_must_not_delete(
    store: SessionStore, args: tuple[object, ...], argument: str
) -> None:
    await store.append(A, turn_log(A))
    sid, kind, first, last = args
    with pytest.raises(InvalidArgument) as info:
        await store.drop_events(sid, kind, first_seq=first, last_seq=last)  # type: ignore[arg-type]
    assert info.value.argument == argument
    assert len(await store.read_events(A)) == 8


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


async def test_memory_store_log_grows_one_event_at_a_time() -> None:
    """Past the length where the log stops being copied on append and grows in place."""
    store = MemoryStore(max_events_per_session=24)
    await store.append(A, [])  # nothing to keep
    assert await store.last_seq(A) == 0
    for seq in range(1, 41):
        await store.append(A, events(A, seq, 1))
        assert await store.last_seq(A) == seq
        kept = await store.read_events(A)
        assert [e.seq for e in kept] == list(range(kept[0].seq, seq + 1))
        assert len(kept) <= 30  # trimmed in chunks of a quarter
        page = await store.read_events(A, after_seq=seq - 1, limit=1)
        assert [e.seq for e in page] == [seq]
    with pytest.raises(SeqConflict):
        await store.append(A, events(A, 40, 1))


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


# --- the non-blocking append: the path every session command commits by -------------------------


class Settled:
    """An ``on_done`` that records what it is told, and lets a test wait for it."""

    def __init__(self) -> None:
        self.calls: list[BaseException | None] = []
        self.called = asyncio.get_running_loop().create_future()

    def __call__(self, error: BaseException | None) -> None:
        self.calls.append(error)
        if not self.called.done():
            self.called.set_result(None)


async def seqs(store: SessionStore, session_id: str) -> list[int]:
    return [e.seq for e in await store.read_events(session_id)]


async def test_append_nowait_commits_then_calls_back_once(store: SessionStore) -> None:
    settled = Settled()
    waiting = store.append_nowait(A, events(A, 1, 3), settled)
    if store.commits_inline:
        assert waiting is None  # committed, and called back, before it returned
        assert settled.calls == [None]
    if waiting is not None:
        await waiting
    assert settled.calls == [None]  # called before the awaitable completed, and once
    assert await seqs(store, A) == [1, 2, 3]
    waiting = store.append_nowait(A, events(A, 4, 1))  # on_done is optional
    if waiting is not None:
        await waiting
    assert await store.last_seq(A) == 4


async def test_append_nowait_is_not_cancelled_with_its_awaiter(store: SessionStore) -> None:
    """A caller cancelled while its append commits: the append goes on, and ``on_done`` still
    learns it committed (the session applies its events there)."""
    settled = Settled()
    waiting = store.append_nowait(A, events(A, 1, 2), settled)
    if waiting is not None:

        async def wait() -> None:
            await waiting

        caller = asyncio.ensure_future(wait())
        await asyncio.sleep(0)  # one turn: the caller now waits on the append
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
    async with asyncio.timeout(10):
        await settled.called
    assert settled.calls == [None]
    assert await seqs(store, A) == [1, 2]


async def test_append_nowait_refuses_a_malformed_batch_at_once(store: SessionStore) -> None:
    """What can be judged before anything is queued raises at once; ``on_done`` is not called."""
    settled = Settled()
    hole = [*events(A, 1, 1), *events(A, 3, 1)]
    with pytest.raises(SeqConflict):
        store.append_nowait(A, hole, settled)
    with pytest.raises(SeqConflict):
        store.append_nowait(A, events(B, 1, 1), settled)  # another session's events
    assert settled.calls == []
    assert await store.last_seq(A) == 0


async def test_append_nowait_conflicting_with_the_log(store: SessionStore) -> None:
    """A batch that does not follow the stored log is refused whole: at once (no call back), or
    at commit time through ``on_done`` and the awaitable, with the same error."""
    await store.append(A, events(A, 1, 3))
    settled = Settled()
    try:
        waiting = store.append_nowait(A, events(A, 2, 2), settled)
    except SeqConflict as exc:
        assert exc.expected == 4
        assert settled.calls == []
    else:
        assert waiting is not None  # not committed, so not settled before it returned
        with pytest.raises(SeqConflict) as info:
            await waiting
        assert settled.calls == [info.value]
        assert info.value.expected == 4
    assert await seqs(store, A) == [1, 2, 3]
    await store.append(A, events(A, 4, 1))  # the log goes on where it was


async def test_closed_store_refuses_append_nowait_at_once(store: SessionStore) -> None:
    await store.aclose()
    settled = Settled()
    with pytest.raises(RuntimeClosed):
        store.append_nowait(A, events(A, 1, 1), settled)
    assert settled.calls == []


@pytest.fixture(params=sorted(SMALL_STORES))
async def small_store(request: pytest.FixtureRequest) -> AsyncIterator[SessionStore]:
    instance = await SMALL_STORES[request.param](request)
    yield instance
    await instance.aclose()


async def test_a_failed_commit_stores_nothing_and_says_so(small_store: SessionStore) -> None:
    """A commit that fails (the disk is full) reports a StoreError naming the session through
    ``on_done`` and the awaitable; nothing of the batch is stored, and the store still serves."""
    store = small_store
    failure: BaseException | None = None
    seq = 0
    for _ in range(200):
        settled = Settled()
        batch = [
            Event(EventType.CONVERSATION_ADDED, A, seq + n, T0, {"content": "x" * 4_000})
            for n in (1, 2)
        ]
        try:
            waiting = store.append_nowait(A, batch, settled)
            assert waiting is not None  # a store that can fail a commit cannot commit inline
            await waiting
        except StoreError as exc:
            failure = exc
            assert settled.calls == [exc]
            break
        assert settled.calls == [None]
        seq += 2
    assert failure is not None, "the store never filled up"
    assert isinstance(failure, StoreError)
    assert not isinstance(failure, SeqConflict)
    assert failure.session_id == A
    assert await store.last_seq(A) == seq  # nothing of the failed batch
    assert await seqs(store, A) == list(range(1, seq + 1))
    await store.ping()


async def test_listing_pages_by_id_whatever_the_page_size(store: SessionStore) -> None:
    """Paging never skips or repeats a session; terminated ones are left out unless asked for;
    ``after`` need not be a stored id."""
    ids = [chr(ord("A") + n) * 26 for n in range(7)]
    for n, sid in enumerate(ids):
        created = Event(EventType.SESSION_CREATED, sid, 1, T0, {"status": "initializing"})
        await store.append(sid, [created])
        if n % 3 == 1:
            ended = Event(EventType.SESSION_TERMINATED, sid, 2, T0, {"reason": "requested"})
            await store.append(sid, [ended])
    live = [sid for n, sid in enumerate(ids) if n % 3 != 1]
    for limit in (1, 2, 4, 5, 100):
        found: list[str] = []
        after = None
        while True:
            page = await store.list_sessions(after=after, limit=limit)
            assert len(page) <= limit
            found.extend(s.session_id for s in page)
            if len(page) < limit:
                break
            after = page[-1].session_id
        assert found == live
    assert [s.session_id for s in await store.list_sessions(after="C")] == live[1:]
    assert [s.session_id for s in await store.list_sessions(after=live[-1])] == []
    ended_ids = [sid for n, sid in enumerate(ids) if n % 3 == 1]
    terminated = await store.list_sessions(status="terminated", limit=1, after=ended_ids[0])
    assert [s.session_id for s in terminated] == ended_ids[1:2]
    for bad in (0, -1):
        with pytest.raises(ValueError, match="at least 1"):
            await store.list_sessions(limit=bad)
        with pytest.raises(ValueError, match="at least 1"):
            await store.quiet_sessions(T0, limit=bad)


async def test_listing_filters_by_owner_and_status(store: SessionStore) -> None:
    created, status = EventType.SESSION_CREATED, EventType.SESSION_STATUS
    owners = {A: "alice", B: "bob", C: "alice", D: None}
    for sid, owner in owners.items():
        data: dict[str, object] = {"status": "initializing"}
        if owner is not None:
            data["owner"] = owner
        await store.append(sid, [Event(created, sid, 1, T0, data),
                                 Event(status, sid, 2, T0, {"status": "active"})])  # fmt: skip
    await store.append(C, [Event(status, C, 3, T0, {"status": "idle"})])
    await store.append(B, [Event(EventType.SESSION_TERMINATED, B, 3, T0, {"reason": "x"})])

    async def ids(
        owner: str | None = None, status: str | None = None, after: str | None = None
    ) -> list[str]:
        page = await store.list_sessions(owner=owner, status=status, after=after)
        return [s.session_id for s in page]

    assert await ids(owner="alice") == [A, C]
    assert await ids(owner="alice", status="idle") == [C]
    assert await ids(owner="alice", status="active") == [A]
    assert await ids(status="active") == [A, D]
    assert await ids(owner="bob") == []
    assert await ids(owner="bob", status="terminated") == [B]
    assert await ids(owner="carol") == []
    assert await ids(owner="alice", after=A) == [C]


async def test_quiet_sessions_oldest_first_from_a_cursor(store: SessionStore) -> None:
    """Sessions not terminated whose head changed before ``before``, by (updated_at, id): a
    sweep pages through them with the last one's (updated_at, id) as its cursor."""
    created, status = EventType.SESSION_CREATED, EventType.SESSION_STATUS
    at = {sid: T0 + timedelta(minutes=n) for n, sid in enumerate((D, B, C, A))}
    for sid, when in at.items():
        await store.append(sid, [Event(created, sid, 1, T0, {"status": "initializing"}),
                                 Event(status, sid, 2, when, {"status": "idle"})])  # fmt: skip
    late = T0 + timedelta(hours=1)
    await store.append(C, [Event(EventType.SESSION_TERMINATED, C, 3, late, {"reason": "x"})])
    before = T0 + timedelta(minutes=10)
    quiet = await store.quiet_sessions(before)
    assert [(s.session_id, s.updated_at) for s in quiet] == [(D, at[D]), (B, at[B]), (A, at[A])]
    assert [s.session_id for s in await store.quiet_sessions(at[A])] == [D, B]
    first = await store.quiet_sessions(before, limit=1)
    assert [s.session_id for s in first] == [D]
    cursor = (at[D], D)
    assert [s.session_id for s in await store.quiet_sessions(before, after=cursor)] == [B, A]
    assert await store.quiet_sessions(before, after=(at[A], A)) == []
    # Sessions quiet since the same moment are told apart by id.
    await store.append(C + "x", [Event(created, C + "x", 1, at[B], {"status": "idle"})])
    tie = await store.quiet_sessions(before, after=(at[B], B))
    assert [s.session_id for s in tie] == [C + "x", A]


# --- retention ------------------------------------------------------------------------------------


async def _lived(store: SessionStore, sid: str, ended: datetime | None, *, seqs: int = 3) -> None:
    """A session of ``seqs`` events, terminated at ``ended`` (``None``: still live), with a
    snapshot while it lived."""
    log = [Event(EventType.SESSION_CREATED, sid, 1, T0, {"status": "initializing"})]
    log += events(sid, 2, seqs - 1)
    await store.append(sid, log)
    await store.write_snapshot(sid, 2, b"state")
    if ended is not None:
        end = Event(EventType.SESSION_TERMINATED, sid, seqs + 1, ended, {"reason": "requested"})
        await store.append(sid, [end])


async def _nothing_stored(store: SessionStore, sid: str) -> bool:
    return (
        await store.find_session(sid) is None
        and await store.read_events(sid) == []
        and await store.last_seq(sid) == 0
        and await store.read_snapshot(sid) is None
        and await store.load_saved(sid) is None
    )


async def test_purge_removes_every_row_of_one_session_and_is_idempotent(
    store: SessionStore,
) -> None:
    await _lived(store, A, None)
    await _lived(store, B, T0)
    await store.save(SavedSession(session_id=A, saved_at=T0, message_count=1, metadata={}), b"s")
    assert await store.purge(A) is True
    assert await _nothing_stored(store, A)
    assert await store.purge(A) is False  # twice: nothing left, no harm
    assert await store.purge(C) is False
    # The other session is untouched.
    assert [e.seq for e in await store.read_events(B)] == [1, 2, 3, 4]
    assert (await store.find_session(B)) is not None
    # A purged id starts a log afresh.
    await store.append(A, events(A, 1, 1))
    assert await store.last_seq(A) == 1


async def test_purge_of_a_saved_copy_alone(store: SessionStore) -> None:
    await store.save(SavedSession(session_id=C, saved_at=T0, message_count=0, metadata={}), b"")
    assert await store.purge(C) is True
    assert await store.load_saved(C) is None


async def test_expire_terminated_removes_only_sessions_ended_before_the_cutoff(
    store: SessionStore,
) -> None:
    """Oldest first, a bounded batch at a time; live sessions and those ended after the
    cutoff stay, and so does an expired session's saved copy (it has an age of its own)."""
    ends = {D: T0 + timedelta(minutes=1), B: T0 + timedelta(minutes=2), C: T0 + timedelta(hours=2)}
    for sid, when in ends.items():
        await _lived(store, sid, when)
    await _lived(store, A, None)  # live, and long quiet: never expired
    await store.save(SavedSession(session_id=B, saved_at=T0, message_count=0, metadata={}), b"k")
    cutoff = T0 + timedelta(hours=1)
    first = await store.expire_terminated(cutoff, limit=1)
    assert [(s.session_id, s.status, s.updated_at) for s in first] == [(D, "terminated", ends[D])]
    assert first[0].last_seq == 4
    second = await store.expire_terminated(cutoff, limit=10)
    assert [s.session_id for s in second] == [B]
    assert await store.expire_terminated(cutoff, limit=10) == []  # twice: no harm
    for sid in (D, B):
        assert await store.find_session(sid) is None
        assert await store.read_events(sid) == []
        assert await store.read_snapshot(sid) is None
    assert await store.load_saved(B) is not None
    assert [e.seq for e in await store.read_events(C)] == [1, 2, 3, 4]
    assert [e.seq for e in await store.read_events(A)] == [1, 2, 3]
    assert await store.read_snapshot(A) == (2, b"state")
    for bad in (0, -1):
        with pytest.raises(ValueError, match="at least 1"):
            await store.expire_terminated(cutoff, limit=bad)
        with pytest.raises(ValueError, match="at least 1"):
            await store.expire_saved(cutoff, limit=bad)


async def test_expire_saved_removes_only_old_copies(store: SessionStore) -> None:
    """Only the copy goes: the session's log stays."""
    await _lived(store, A, None)
    saved_at = {A: T0, B: T0 + timedelta(minutes=1), C: T0 + timedelta(hours=2)}
    for sid, when in saved_at.items():
        await store.save(SavedSession(session_id=sid, saved_at=when, message_count=1,
                                      metadata={"n": sid[0]}), b"x")  # fmt: skip
    cutoff = T0 + timedelta(hours=1)
    first = await store.expire_saved(cutoff, limit=1)
    assert [(s.session_id, s.saved_at, s.metadata) for s in first] == [(A, T0, {"n": "A"})]
    assert [s.session_id for s in await store.expire_saved(cutoff)] == [B]
    assert await store.expire_saved(cutoff) == []
    assert [s.session_id for s in await store.list_saved()] == [C]
    assert [e.seq for e in await store.read_events(A)] == [1, 2, 3]


async def test_a_restored_session_is_not_expired(store: SessionStore) -> None:
    """A session restored under the same id after it ended is live again: never expired."""
    await _lived(store, A, T0)
    again = Event(EventType.SESSION_CREATED, A, 5, T0, {"status": "initializing", "state": {}})
    await store.append(A, [again])
    assert await store.expire_terminated(T0 + timedelta(days=1)) == []
    assert await store.last_seq(A) == 5
