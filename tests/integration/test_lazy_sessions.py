"""Issue 15: a node's start-up reads no list of sessions. A stored session is found by id on
first use (once, however many callers ask), listed from the store's index page by page, and
timed out by the sweep through the store's index of quiet sessions if nobody touches it."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import jidoka
from jidoka import FakeClock, Status
from jidoka.session.session import Session
from jidoka.store.base import SessionStore
from jidoka.store.memory import MemoryStore
from jidoka.store.sqlite import SqliteStore
from tests.helpers import quiesce, until

#: What a store is asked when a session or a list of sessions is read.
READS = frozenset(
    {"find_session", "list_sessions", "quiet_sessions", "read_events", "read_snapshot", "last_seq"}
)


class Counting:
    """A store that counts the calls made of it (and keeps their keyword arguments)."""

    def __init__(self, inner: SessionStore) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.kwargs: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.inner, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            self.kwargs.append((name, kwargs))
            return value(*args, **kwargs)

        return call

    def reads(self) -> Counter[str]:
        return Counter({name: n for name, n in self.calls.items() if name in READS})


async def populate(path: Path, clock: FakeClock, count: int) -> list[str]:
    """``count`` sessions, owned by alice and bob in turn, left in the store."""
    store = SqliteStore(path)
    await store.open()
    try:
        async with jidoka.Runtime(store=store, clock=clock, max_sessions=count + 1) as rt:
            ids: list[str] = []
            for start in range(0, count, 250):
                ids += await asyncio.gather(
                    *(
                        rt.client.create_session(owner=("alice", "bob")[n % 2])
                        for n in range(start, min(start + 250, count))
                    )
                )
    finally:
        await store.aclose()
    return ids


@pytest.mark.stores("sqlite")
async def test_start_up_reads_no_session_and_finds_one_by_id(
    tmp_path: Path, clock: FakeClock, store_backend: str
) -> None:
    path = tmp_path / "many.sqlite3"
    ids = await populate(path, clock, 2000)
    store = SqliteStore(path)
    await store.open()
    counting = Counting(store)
    try:
        async with jidoka.Runtime(store=counting, clock=clock) as rt:
            assert counting.reads() == Counter()  # not one session read, not one listed
            assert rt.manager.live_count() == 0
            info = await rt.client.get_session_info(ids[1234])
            assert (info.session_id, info.status, info.owner) == (ids[1234], Status.IDLE, "alice")
            assert counting.calls["find_session"] == 1  # one lookup by id
            assert rt.manager.live_ids() == {ids[1234]}
            assert await rt.manager.owner_of(ids[7]) == "bob"  # from the store's head alone
            assert not rt.manager.is_live(ids[7])
            with pytest.raises(jidoka.SessionNotFound):  # right shape, never existed
                await rt.client.get_session_info("01ZZZZZZZZZZZZZZZZZZZZZZZZ")
    finally:
        await store.aclose()


@pytest.mark.stores("sqlite")
async def test_concurrent_first_use_loads_once(
    tmp_path: Path, clock: FakeClock, store_backend: str
) -> None:
    path = tmp_path / "few.sqlite3"
    ids = await populate(path, clock, 3)
    store = SqliteStore(path)
    await store.open()
    counting = Counting(store)
    try:
        async with jidoka.Runtime(store=counting, clock=clock) as rt:
            sid = ids[1]
            calls: list[Callable[[], Any]] = [
                lambda: rt.client.get_session_info(sid),
                lambda: rt.client.send_message(sid, "user", "hello"),
                lambda: rt.client.get_conversation_history(sid),
                lambda: rt.manager.session(sid),
            ]
            results = await asyncio.gather(*(calls[n % 4]() for n in range(40)))
            assert counting.calls["find_session"] == 1
            assert counting.calls["read_snapshot"] == 1  # one load
            sessions = {id(r) for r in results if isinstance(r, Session)}
            assert sessions == {id(rt.manager.get(sid))}  # one Session for all of them
            history = await rt.client.get_conversation_history(sid)
            assert [m.content for m in history] == ["hello"] * 10
            assert rt.manager.live_ids() == {sid}
    finally:
        await store.aclose()


@pytest.mark.stores("sqlite", "postgres")
async def test_listing_after_a_restart_pages_through_the_store(
    clock: FakeClock, store_backend: str
) -> None:
    async with jidoka.Runtime(clock=clock) as rt:
        client = rt.client
        alice, bob = [], []
        for n in range(6):
            quick = {"idle_after_seconds": 5} if n % 2 else None
            alice.append(await client.create_session(owner="alice", config=quick))
            bob.append(await client.create_session(owner="bob"))
        clock.advance(5)  # half of alice's go idle; the others stay active in the store
        await quiesce(rt)
        ended = alice.pop(2)
        await client.terminate_session(ended, reason="finished")
    async with jidoka.Runtime(clock=clock) as rt:
        client, manager = rt.client, rt.manager
        assert manager.live_count() == 0
        pages: list[list[str]] = []
        after = None
        while True:
            page = await client.list_sessions(owner="alice", limit=2, after=after)
            assert all((i.owner, i.status) == ("alice", Status.IDLE) for i in page)
            pages.append([i.session_id for i in page])
            if len(page) < 2:
                break
            after = page[-1].session_id
        assert pages == [alice[0:2], alice[2:4], alice[4:]]
        assert manager.live_ids() == frozenset(alice)  # loaded: the pages, none of bob's
        # Stored active and idle ones both come back idle; none is active until used.
        idle = await client.list_sessions(Status.IDLE, after=bob[0])
        assert [i.session_id for i in idle] == sorted(alice + bob)[
            sorted(alice + bob).index(bob[0]) + 1 :
        ]
        assert await client.list_sessions(Status.ACTIVE) == []
        await client.send_message(bob[3], "user", "back")
        assert [i.session_id for i in await client.list_sessions(Status.ACTIVE)] == [bob[3]]
        idle_bob = await client.list_sessions(Status.IDLE, owner="bob")
        assert [i.session_id for i in idle_bob] == [sid for sid in bob if sid != bob[3]]
        # The ended one answers terminated, and is then listed among the terminated.
        gone = await client.get_session_info(ended)
        assert (gone.status, gone.reason) == (Status.TERMINATED, "finished")
        listed = await client.list_sessions(Status.TERMINATED, owner="alice")
        assert [i.session_id for i in listed] == [ended]
        everything = await client.list_sessions()
        assert [i.session_id for i in everything] == sorted([*alice, *bob, ended])


@pytest.mark.stores("sqlite", "postgres")
async def test_a_session_ended_before_the_restart_answers_terminated(
    clock: FakeClock, store_backend: str
) -> None:
    async with jidoka.Runtime(clock=clock) as rt:
        sid = await rt.client.create_session(owner="carol")
        await rt.client.terminate_session(sid, reason="finished")
    async with jidoka.Runtime(clock=clock) as rt:
        client = rt.client
        with pytest.raises(jidoka.SessionTerminated):
            await client.send_message(sid, "user", "too late")
        with pytest.raises(jidoka.InvalidTransition):
            await client.terminate_session(sid)
        info = await client.get_session_info(sid)
        assert (info.status, info.reason, info.owner) == (Status.TERMINATED, "finished", "carol")
        assert await rt.manager.owner_of(sid) == "carol"
        assert rt.manager.live_count() == 0


@pytest.mark.stores("sqlite", "postgres")
async def test_a_stored_session_nobody_touches_is_timed_out_by_the_sweep(
    clock: FakeClock, store_backend: str
) -> None:
    async with jidoka.Runtime(clock=clock) as rt:
        plain = await rt.client.create_session()
        longer = await rt.client.create_session(config={"timeout_minutes": 60})
        never = await rt.client.create_session(config={"timeout_minutes": 0})
    async with jidoka.Runtime(clock=clock) as rt:
        manager = rt.manager
        clock.advance(30 * 60 - 1)
        await quiesce(rt)
        assert manager.live_count() == 0  # nothing due yet: nothing swept
        async with rt.client.subscribe_to_all_sessions() as events:
            clock.advance(1)  # one default time-out after the start: the first pass
            ended = await until(events, "session_terminated")
        assert (ended.session_id, ended.data["reason"]) == (plain, "timeout")
        await quiesce(rt)
        assert [s.session_id for s in await rt.client.list_saved_sessions()] == [plain]
        # The others were loaded and are judged by their own configs.
        assert manager.live_ids() == {longer, never}
        assert manager._sweep.cursor is not None
        assert manager._sweep.cursor[1] in (longer, never)
        async with rt.client.subscribe_to_session(longer) as events:
            clock.advance(30 * 60)
            ended = await until(events, "session_terminated")
        assert ended.data["reason"] == "timeout"
        clock.advance(24 * 3600)
        await quiesce(rt)
        assert manager.live_ids() == {never}  # never times out
        assert manager._sweep.loaded == 3  # each stored session swept up once


@pytest.mark.stores("sqlite")
async def test_downtime_does_not_count_toward_a_time_out(
    tmp_path: Path, clock: FakeClock, store_backend: str
) -> None:
    """A session nobody could touch while the node was down is not timed out on first use:
    its time-out counts from the start, as it always has."""
    data = tmp_path / "data"
    async with jidoka.Runtime(data, clock=clock) as rt:
        sid = await rt.client.create_session()
    clock.advance(10 * 3600)  # the node was down for ten hours
    async with jidoka.Runtime(data, clock=clock) as rt:
        info = await rt.client.get_session_info(sid)
        assert info.status is Status.IDLE
        clock.advance(29 * 60)
        await quiesce(rt)
        assert rt.manager.is_live(sid)
        async with rt.client.subscribe_to_session(sid) as events:
            clock.advance(60)
            ended = await until(events, "session_terminated")
        assert ended.data["reason"] == "timeout"


@pytest.mark.stores("sqlite")
async def test_max_sessions_counts_the_loaded_sessions(
    tmp_path: Path, clock: FakeClock, store_backend: str
) -> None:
    data = tmp_path / "data"
    async with jidoka.Runtime(data, clock=clock) as rt:
        stored = [await rt.client.create_session() for _ in range(3)]
    async with jidoka.Runtime(data, clock=clock, max_sessions=2) as rt:
        new = [await rt.client.create_session() for _ in range(2)]  # the stored 3 do not count
        with pytest.raises(jidoka.LimitExceeded):
            await rt.client.create_session()
        # A stored session exists already: loading it is never refused.
        assert (await rt.client.get_session_info(stored[0])).status is Status.IDLE
        assert rt.manager.live_ids() == {*new, stored[0]}


@pytest.mark.stores("sqlite")
async def test_restoring_a_session_live_in_the_store_is_refused(
    tmp_path: Path, clock: FakeClock, store_backend: str
) -> None:
    data = tmp_path / "data"
    async with jidoka.Runtime(data, clock=clock) as rt:
        sid = await rt.client.create_session()
        await rt.client.save_session(sid)
    async with jidoka.Runtime(data, clock=clock) as rt:
        with pytest.raises(jidoka.SessionExists):  # not loaded here, but live in the store
            await rt.client.restore_session(sid)
        assert (await rt.client.get_session_info(sid)).status is Status.IDLE


@pytest.mark.stores("memory")
async def test_the_memory_store_is_neither_paged_nor_swept(
    clock: FakeClock, store_backend: str
) -> None:
    """Every session of the memory store lives in this process: listing it reads nothing of
    the store, and no sweep runs."""
    store = MemoryStore()
    counting = Counting(store)
    async with jidoka.Runtime(store=counting, clock=clock) as rt:
        ids = [await rt.client.create_session(owner="dan") for _ in range(3)]
        await rt.client.terminate_session(ids[0])
        listed = await rt.client.list_sessions(owner="dan")
        assert [i.session_id for i in listed] == ids
        assert counting.calls["list_sessions"] == 0
        assert not rt.manager._sweep.enabled
        with pytest.raises(jidoka.SessionNotFound):
            await rt.client.get_session_info("01ZZZZZZZZZZZZZZZZZZZZZZZZ")


class FailingOnce(Counting):
    """Counts calls, and fails the first ``quiet_sessions`` as a store that is down would."""

    def __getattr__(self, name: str) -> Any:
        if name == "quiet_sessions" and self.calls[name] == 0:
            self.calls[name] += 1

            async def down(*args: Any, **kwargs: Any) -> Any:
                raise jidoka.StoreError("the store is down")

            return down
        return super().__getattr__(name)


@pytest.mark.stores("sqlite")
async def test_a_failed_sweep_is_retried_and_passes_carry_a_cursor(
    tmp_path: Path, clock: FakeClock, store_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "db.sqlite3"
    first = await populate(path, clock, 2)
    store = SqliteStore(path)
    await store.open()
    counting = FailingOnce(store)
    try:
        async with jidoka.Runtime(store=counting, clock=clock) as rt:
            manager = rt.manager
            clock.advance(30 * 60)  # the first pass: the store is down
            await quiesce(rt)
            assert "sweep for quiet stored sessions failed" in caplog.text
            assert manager.live_count() == 0
            async with rt.client.subscribe_to_all_sessions() as events:
                clock.advance(300)  # retried one default idle_after_seconds later
                ended = {(await until(events, "session_terminated")).session_id for _ in first}
            assert ended == set(first)
            assert manager._sweep.cursor is not None
            assert manager._sweep.cursor[1] == max(first)
            # Sessions that went quiet later are found by a later pass, from the cursor on.
            late = await rt.client.create_session()
            clock.advance(5 * 60)  # idle after 300 s
            await quiesce(rt)
            calls = [kw for name, kw in counting.kwargs if name == "quiet_sessions"]
            assert calls[-1]["after"] == manager._sweep.cursor
            assert manager.is_live(late)  # created here: never swept, its own timer runs
    finally:
        await store.aclose()
