"""The RunIndex contract (runs, webhook outbox, idempotency keys: jidoka.store.runs), run against
every store: what each store derives from the run and message events it appends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest

from jidoka.events import Event, EventType
from jidoka.store.base import SessionStore
from jidoka.store.memory import MemoryStore
from jidoka.store.postgres import PostgresStore
from jidoka.store.runs import RunIndex, RunRecord
from jidoka.store.sqlite import SqliteStore
from tests.unit.test_store_contract import STORES, T0

A, B, C = "A" * 26, "B" * 26, "C" * 26


class Store(SessionStore, RunIndex, Protocol):
    """What every store is: a session store with a runs index."""


@dataclass
class Opened:
    store: Store
    #: Close the store and open it again on what it wrote (``None``: not durable).
    reopen: Callable[[], Awaitable[Store]] | None


async def _reopen_sqlite(request: pytest.FixtureRequest, old: Store) -> Store:
    await old.aclose()
    tmp_path: Path = request.getfixturevalue("tmp_path")
    store = SqliteStore(tmp_path / "contract.sqlite3")
    await store.open()
    return store


async def _reopen_postgres(request: pytest.FixtureRequest, old: Store) -> Store:
    await old.aclose()
    return await STORES["postgres"](request)


_REOPEN = {"sqlite": _reopen_sqlite, "postgres": _reopen_postgres}


@pytest.fixture(params=sorted(STORES))
async def opened(request: pytest.FixtureRequest) -> AsyncIterator[Opened]:
    stores: list[Store] = [await STORES[request.param](request)]
    reopen = _REOPEN.get(request.param)

    async def again() -> Store:
        assert reopen is not None
        stores.append(await reopen(request, stores[-1]))
        return stores[-1]

    yield Opened(stores[0], None if reopen is None else again)
    await stores[-1].aclose()


@pytest.fixture
def store(opened: Opened) -> Store:
    return opened.store


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ev(sid: str, seq: int, kind: EventType, when: float = 0, **data: Any) -> Event:
    return Event(kind, sid, seq, at(when), data)


def created(sid: str, seq: int = 1, owner: str | None = None) -> Event:
    data: dict[str, Any] = {"status": "initializing"}
    if owner is not None:
        data["owner"] = owner
    return ev(sid, seq, EventType.SESSION_CREATED, **data)


def queued(sid: str, seq: int, run_id: str, when: float = 0, **extra: Any) -> Event:
    data = {"run_id": run_id, "text": f"do {run_id}", "multitask": "enqueue", **extra}
    return ev(sid, seq, EventType.RUN_QUEUED, when, **data)


def started(sid: str, seq: int, run_id: str, when: float = 0) -> Event:
    return ev(sid, seq, EventType.RUN_STARTED, when, run_id=run_id)


def completed(sid: str, seq: int, run_id: str, when: float = 0, status: str = "completed") -> Event:
    return ev(
        sid, seq, EventType.RUN_COMPLETED, when,
        run_id=run_id, status=status, message=None, usage={"input_tokens": 3}, error=None,
    )  # fmt: skip


def message(sid: str, seq: int, when: float = 0, content: str = "hi", **extra: Any) -> Event:
    return ev(sid, seq, EventType.CONVERSATION_ADDED, when, role="user", content=content, **extra)


async def get(store: Store, run_id: str) -> RunRecord:
    run = await store.get_run(run_id)
    assert run is not None, run_id
    return run


async def test_satisfies_the_protocol(store: Store) -> None:
    assert isinstance(store, RunIndex)


async def test_a_run_goes_queued_running_and_ends(store: Store) -> None:
    await store.append(A, [created(A, owner="alice"), queued(A, 2, "r1", 1, metadata={"k": 1})])
    run = await get(store, "r1")
    assert (run.session_id, run.owner, run.seq, run.status) == (A, "alice", 2, "queued")
    assert (run.created_at, run.started_at, run.ended_at, run.completed) == (
        at(1),
        None,
        None,
        None,
    )
    assert run.queued == {
        "run_id": "r1", "text": "do r1", "multitask": "enqueue", "metadata": {"k": 1}
    }  # fmt: skip
    assert (run.webhook_state, run.webhook_attempts, run.webhook_next_at) == (None, 0, None)
    await store.append(A, [started(A, 3, "r1", 2), message(A, 4, 2)])
    run = await get(store, "r1")
    assert (run.status, run.started_at, run.ended_at) == ("running", at(2), None)
    await store.append(A, [completed(A, 5, "r1", 3, status="failed")])
    run = await get(store, "r1")
    assert (run.status, run.started_at, run.ended_at) == ("failed", at(2), at(3))
    assert run.completed is not None
    assert (run.completed["status"], run.completed["usage"]) == ("failed", {"input_tokens": 3})
    assert run.webhook_state is None  # no webhook: never in the outbox
    assert await store.get_run("nope") is None


async def test_a_run_queued_in_the_creating_batch_has_the_owner(store: Store) -> None:
    await store.append(B, [created(B, owner="bob"), queued(B, 2, "rb", idempotency_key="k")])
    assert (await get(store, "rb")).owner == "bob"
    found = await store.find_idempotency("bob", "k")
    assert found is not None
    assert (found.owner, found.run_id) == ("bob", "rb")


async def test_a_restored_session_s_runs_have_its_saved_owner(store: Store) -> None:
    """The owner is the one the session's head records: a restored session's comes from its
    saved copy (``state``), as every store's head takes it."""
    restored = ev(A, 1, EventType.SESSION_CREATED, status="initializing", state={"owner": "dee"})
    await store.append(A, [restored, queued(A, 2, "r", idempotency_key="k")])
    assert (await get(store, "r")).owner == "dee"
    assert await store.find_idempotency("dee", "k") is not None


#: A string with what JSON must escape, non-ASCII, and a backslash before ``u0000`` (text, not
#: a NUL character).
TRICKY = 'q"uote \\ back \\u0000 not nul \t\n\x01 é€😀 \u2028 "idempotency_key":"x"'


async def test_strings_are_kept_exactly(store: Store) -> None:
    hook = f"https://example.com/{TRICKY}"
    await store.append(A, [created(A, owner=TRICKY), queued(A, 2, TRICKY, webhook=hook,
                                                            idempotency_key=TRICKY,
                                                            request_hash=TRICKY)])  # fmt: skip
    await store.append(A, [completed(A, 3, TRICKY, status=TRICKY)])
    await store.append(A, [message(A, 4, idempotency_key=f"m{TRICKY}", request_hash=TRICKY)])
    run = await get(store, TRICKY)
    assert (run.owner, run.status, run.queued["webhook"], run.webhook_state) == (
        TRICKY, TRICKY, hook, "pending"
    )  # fmt: skip
    for key, run_id in ((TRICKY, TRICKY), (f"m{TRICKY}", None)):
        found = await store.find_idempotency(TRICKY, key)
        assert found is not None, key
        assert (found.owner, found.key, found.request_hash, found.run_id) == (
            TRICKY, key, TRICKY, run_id
        )  # fmt: skip


async def test_malformed_or_nul_holding_fields_never_fail_an_append(store: Store) -> None:
    """What a durable store cannot hold as text (a NUL character), or what is not there or
    not a string, is taken as absent: no run, no key, no webhook. The events are stored all
    the same, and text elsewhere in them (a message's, a run's) may hold anything."""
    nul = "a\x00b"
    log = [created(A), queued(A, 2, "r", text=nul, webhook=nul, idempotency_key="k1")]
    log += [message(A, 3, content=nul, idempotency_key=nul), message(A, 4, idempotency_key=7)]
    log += [message(A, 5, idempotency_key="k2", request_hash=nul)]
    log += [ev(A, 6, EventType.RUN_QUEUED, text="no id", multitask="reject")]
    log += [ev(A, 7, EventType.RUN_QUEUED, run_id=nul, text="x", multitask="reject")]
    log += [ev(A, 8, EventType.RUN_STARTED), started(A, 9, nul)]
    log += [ev(A, 10, EventType.RUN_COMPLETED, run_id="r"), completed(A, 11, "r", status=nul)]
    await store.append(A, log)
    assert await store.last_seq(A) == 11
    assert (await store.read_events(A, after_seq=2))[0].data["content"] == nul
    run = await get(store, "r")
    assert (run.queued["text"], run.status, run.started_at, run.ended_at) == (
        nul, "queued", None, None
    )  # fmt: skip
    assert [r.run_id for r in await store.list_runs(A)] == ["r"]
    assert (await store.find_idempotency(None, "k1")) is not None
    for key in (nul, "7", "k2"):
        assert await store.find_idempotency(None, key) is None, key
    await store.append(A, [completed(A, 12, "r")])
    assert (await get(store, "r")).webhook_state is None  # its webhook was not one
    assert await store.get_run(nul) is None
    await store.record_webhook(nul, state="delivered", attempts=1, next_at=None, error=None)


async def test_a_webhook_error_holding_nul_is_kept_readable(store: Store) -> None:
    await _ended_with_webhooks(store)
    await store.record_webhook("w1", state="failed", attempts=1, next_at=None, error="x\x00y")
    assert (await get(store, "w1")).webhook_error == "x\ufffdy"


async def test_list_runs_pages_newest_first(store: Store) -> None:
    log = [created(A)]
    for n in range(1, 8):  # runs 1..7 at seqs 2..8; the odd ones end
        log.append(queued(A, n + 1, f"r{n}", n))
    await store.append(A, log)
    await store.append(A, [completed(A, 9 + i, f"r{n}", 10) for i, n in enumerate((1, 3, 5, 7))])
    await store.append(B, [created(B), queued(B, 2, "other")])
    page = await store.list_runs(A, limit=3)
    assert [r.run_id for r in page] == ["r7", "r6", "r5"]
    page = await store.list_runs(A, before_seq=page[-1].seq, limit=3)
    assert [r.run_id for r in page] == ["r4", "r3", "r2"]
    page = await store.list_runs(A, before_seq=page[-1].seq, limit=3)
    assert [r.run_id for r in page] == ["r1"]
    assert [r.run_id for r in await store.list_runs(A, status="queued")] == ["r6", "r4", "r2"]
    done = await store.list_runs(A, status="completed", before_seq=6, limit=5)
    assert [r.run_id for r in done] == ["r3", "r1"]
    assert await store.list_runs(C) == []
    for bad in (0, -1):
        with pytest.raises(ValueError, match="at least 1"):
            await store.list_runs(A, limit=bad)


async def test_unfinished_runs_by_session_and_seq_from_a_cursor(store: Store) -> None:
    await store.append(B, [created(B), queued(B, 2, "b1"), queued(B, 3, "b2"), started(B, 4, "b1")])
    await store.append(A, [created(A), queued(A, 2, "a1"), queued(A, 3, "a2")])
    await store.append(A, [completed(A, 4, "a1", status="cancelled")])
    await store.append(C, [created(C), queued(C, 2, "c1"), started(C, 3, "c1")])
    await store.append(C, [completed(C, 4, "c1", status="interrupted")])
    first = await store.unfinished_runs(limit=2)
    assert [(r.run_id, r.status) for r in first] == [("a2", "queued"), ("b1", "running")]
    rest = await store.unfinished_runs(after=(first[-1].session_id, first[-1].seq))
    assert [r.run_id for r in rest] == ["b2"]
    assert await store.unfinished_runs(after=(B, 3)) == []
    with pytest.raises(ValueError, match="at least 1"):
        await store.unfinished_runs(limit=0)


async def _ended_with_webhooks(store: Store) -> None:
    """w1 ends at 10s, w2 at 5s (both with a webhook), plain at 1s (none)."""
    hook = "https://example.com/hook"
    await store.append(A, [created(A), queued(A, 2, "w1", webhook=hook),
                           queued(A, 3, "w2", webhook=hook), queued(A, 4, "plain")])  # fmt: skip
    await store.append(A, [completed(A, 5, "plain", 1), completed(A, 6, "w2", 5)])
    await store.append(A, [completed(A, 7, "w1", 10)])


async def test_claim_webhooks_takes_due_entries_and_leases_them(store: Store) -> None:
    await _ended_with_webhooks(store)
    w1 = await get(store, "w1")
    assert (w1.webhook_state, w1.webhook_next_at, w1.webhook_attempts) == ("pending", at(10), 0)
    assert (await get(store, "plain")).webhook_state is None
    assert await store.claim_webhooks(at(4), at(100)) == []  # nothing due yet
    claimed = await store.claim_webhooks(at(20), at(50), limit=1)
    assert [(r.run_id, r.webhook_next_at) for r in claimed] == [("w2", at(5))]  # as it was
    assert (await get(store, "w2")).webhook_next_at == at(50)
    claimed = await store.claim_webhooks(at(20), at(60))
    assert [r.run_id for r in claimed] == ["w1"]
    assert await store.claim_webhooks(at(49), at(70)) == []  # both leased
    again = await store.claim_webhooks(at(55), at(80))  # w2's lease has passed
    assert [r.run_id for r in again] == ["w2"]
    with pytest.raises(ValueError, match="at least 1"):
        await store.claim_webhooks(at(0), at(1), limit=0)


async def test_record_webhook_states(store: Store) -> None:
    await _ended_with_webhooks(store)
    await store.record_webhook("w2", state="pending", attempts=1, next_at=at(30), error="HTTP 500")
    w2 = await get(store, "w2")
    assert (w2.webhook_state, w2.webhook_attempts, w2.webhook_next_at, w2.webhook_error) == (
        "pending", 1, at(30), "HTTP 500"
    )  # fmt: skip
    assert [r.run_id for r in await store.claim_webhooks(at(20), at(40))] == ["w1"]
    await store.record_webhook("w1", state="delivered", attempts=1, next_at=None, error=None)
    await store.record_webhook("w2", state="failed", attempts=5, next_at=None, error="gave up")
    w1, w2 = await get(store, "w1"), await get(store, "w2")
    assert (w1.webhook_state, w1.webhook_attempts, w1.webhook_next_at) == ("delivered", 1, None)
    assert (w2.webhook_state, w2.webhook_attempts, w2.webhook_error) == ("failed", 5, "gave up")
    assert w1.status == "completed"  # the run itself is untouched
    assert await store.claim_webhooks(at(1000), at(2000)) == []
    # A run that is gone is ignored.
    await store.record_webhook("gone", state="delivered", attempts=1, next_at=None, error=None)
    assert await store.get_run("gone") is None


async def test_idempotency_keys_first_writer_wins_per_owner(store: Store) -> None:
    first = queued(A, 2, "r1", 1, idempotency_key="k1", request_hash="h1")
    await store.append(A, [created(A, owner="alice"), first])
    first = queued(B, 2, "r2", 2, idempotency_key="k1", request_hash="h2")
    await store.append(B, [created(B, owner="bob"), first])
    # Alice again with the same key (another session of hers): the first record stays.
    first = queued(C, 2, "r3", 3, idempotency_key="k1", request_hash="h3")
    await store.append(C, [created(C, owner="alice"), first])
    alice = await store.find_idempotency("alice", "k1")
    assert alice is not None
    assert (alice.owner, alice.key, alice.request_hash, alice.session_id) == (
        "alice",
        "k1",
        "h1",
        A,
    )
    assert (alice.seq, alice.run_id, alice.created_at) == (2, "r1", at(1))
    bob = await store.find_idempotency("bob", "k1")
    assert bob is not None
    assert (bob.session_id, bob.run_id, bob.request_hash) == (B, "r2", "h2")
    assert await store.find_idempotency(None, "k1") is None
    assert await store.find_idempotency("alice", "k2") is None
    # The conflicting batch was still committed whole.
    assert (await get(store, "r3")).status == "queued"
    assert await store.last_seq(C) == 2


async def test_appends_committed_together_share_keys_first_writer_wins(store: Store) -> None:
    """Several sessions of one owner, created with a run each under the same key, appended at
    once (the writers group them: shared commits, Postgres's group statement): every append
    commits, each run has its owner, and one of them holds the key."""
    sids = [chr(ord("E") + n) * 26 for n in range(6)]
    waiting = [
        store.append_nowait(sid, [created(sid, owner="ann"), queued(sid, 2, f"r{sid[0]}",
                                                                     idempotency_key="same")])
        for sid in sids
    ]  # fmt: skip
    await asyncio.gather(*(w for w in waiting if w is not None))
    for sid in sids:
        assert await store.last_seq(sid) == 2
        assert (await get(store, f"r{sid[0]}")).owner == "ann"
    found = await store.find_idempotency("ann", "same")
    assert found is not None
    assert found.session_id in sids
    assert found.run_id == f"r{found.session_id[0]}"


async def test_messages_record_their_keys(store: Store) -> None:
    await store.append(A, [created(A), message(A, 2, 1, idempotency_key="m1", request_hash="x")])
    await store.append(A, [message(A, 3, 2), message(A, 4, 3, idempotency_key="m1")])
    await store.append(A, [ev(A, 5, EventType.CONVERSATION_ADDED, 4, role="user",
                              content='the text "idempotency_key" is not a key')])  # fmt: skip
    found = await store.find_idempotency(None, "m1")
    assert found is not None
    assert (found.owner, found.session_id, found.seq, found.run_id) == (None, A, 2, None)
    assert (found.request_hash, found.created_at) == ("x", at(1))
    await store.append(B, [created(B, owner="bob"), message(B, 2, 1, idempotency_key="m1")])
    bobs = await store.find_idempotency("bob", "m1")
    assert bobs is not None
    assert (bobs.session_id, bobs.request_hash) == (B, "")


async def test_expire_idempotency_oldest_first_with_a_limit(store: Store) -> None:
    times = (4, 2, 3, 5)  # key kN recorded at N seconds, not in seq order
    await store.append(A, [created(A)] + [
        message(A, seq, when, idempotency_key=f"k{when}") for seq, when in enumerate(times, 2)
    ])  # fmt: skip
    assert await store.expire_idempotency(at(4), limit=1) == 1
    assert await store.find_idempotency(None, "k2") is None
    assert await store.find_idempotency(None, "k3") is not None
    assert await store.expire_idempotency(at(4)) == 1  # k3; k4 and k5 are not older than 4s
    assert await store.expire_idempotency(at(4)) == 0
    assert [await store.find_idempotency(None, f"k{n}") is not None for n in (3, 4, 5)] == [
        False, True, True
    ]  # fmt: skip
    with pytest.raises(ValueError, match="at least 1"):
        await store.expire_idempotency(at(4), limit=0)


async def test_purge_removes_the_session_s_runs_and_keys(store: Store) -> None:
    hook = "https://example.com/hook"
    await store.append(A, [created(A, owner="al"), queued(A, 2, "a1", webhook=hook,
                                                          idempotency_key="ka")])  # fmt: skip
    await store.append(A, [completed(A, 3, "a1"), message(A, 4, idempotency_key="km")])
    await store.append(B, [created(B, owner="al"), queued(B, 2, "b1", idempotency_key="kb")])
    assert await store.purge(A) is True
    assert await store.get_run("a1") is None
    assert await store.list_runs(A) == []
    assert await store.find_idempotency("al", "ka") is None
    assert await store.find_idempotency("al", "km") is None
    assert await store.claim_webhooks(at(100), at(200)) == []
    assert (await get(store, "b1")).status == "queued"
    assert await store.find_idempotency("al", "kb") is not None


async def test_expire_terminated_removes_the_session_s_runs_and_keys(store: Store) -> None:
    await store.append(A, [created(A), queued(A, 2, "a1", idempotency_key="ka")])
    await store.append(A, [completed(A, 3, "a1"), ev(A, 4, EventType.SESSION_TERMINATED, 5,
                                                     reason="requested")])  # fmt: skip
    await store.append(B, [created(B), queued(B, 2, "b1", idempotency_key="kb")])
    ended = await store.expire_terminated(at(3600))
    assert [s.session_id for s in ended] == [A]
    assert await store.get_run("a1") is None
    assert await store.find_idempotency(None, "ka") is None
    assert await store.get_run("b1") is not None
    assert await store.find_idempotency(None, "kb") is not None


async def test_durable_stores_keep_everything_across_a_reopen(opened: Opened) -> None:
    if opened.reopen is None:
        pytest.skip("the memory store is not durable")
    store = opened.store
    await _ended_with_webhooks(store)
    run = queued(B, 2, "b1", 3, idempotency_key="k")
    await store.append(B, [created(B, owner="bo"), run, started(B, 3, "b1", 4)])
    await store.append(B, [message(B, 4, 4, idempotency_key="m")])
    await store.record_webhook("w2", state="pending", attempts=2, next_at=at(40), error="down")
    await store.release(A)  # a durable store's release removes nothing
    before = [await get(store, run_id) for run_id in ("w1", "w2", "plain", "b1")]
    keys = [await store.find_idempotency("bo", key) for key in ("k", "m")]
    store = await opened.reopen()
    assert [await get(store, run_id) for run_id in ("w1", "w2", "plain", "b1")] == before
    assert [await store.find_idempotency("bo", key) for key in ("k", "m")] == keys
    assert [r.run_id for r in await store.unfinished_runs()] == ["b1"]
    assert [r.run_id for r in await store.claim_webhooks(at(45), at(90))] == ["w1", "w2"]


async def test_two_postgres_stores_never_claim_the_same_entry(
    postgres_dsn: str, postgres_schema: str
) -> None:
    """Two nodes on one database claim the outbox at once, again and again: every entry is
    claimed exactly once."""
    stores = [PostgresStore(postgres_dsn, schema=postgres_schema) for _ in range(2)]
    for one in stores:
        await one.open()
    try:
        hook = "https://example.com/hook"
        count = 60
        log = [created(A)] + [queued(A, n + 2, f"r{n:02}", webhook=hook) for n in range(count)]
        log += [completed(A, count + n + 2, f"r{n:02}", n) for n in range(count)]
        await stores[0].append(A, log)
        claimed: list[str] = []
        while True:
            rounds = await asyncio.gather(
                *(one.claim_webhooks(at(1000), at(5000), limit=7) for one in stores for _ in "ab")
            )
            got = [run.run_id for batch in rounds for run in batch]
            if not got:
                break
            claimed += got
        assert sorted(claimed) == [f"r{n:02}" for n in range(count)]
    finally:
        for one in stores:
            await one.aclose()


async def test_memory_store_runs_follow_the_log() -> None:
    """The memory store frees a released session's runs, but keeps one whose webhook is still
    to be delivered until it settles."""
    store = MemoryStore()
    await _ended_with_webhooks(store)
    await store.release(A)
    assert [r.run_id for r in await store.list_runs(A)] == ["w2", "w1"]
    assert await store.get_run("plain") is None
    await store.record_webhook("w1", state="delivered", attempts=1, next_at=None, error=None)
    await store.record_webhook("w2", state="failed", attempts=3, next_at=None, error="no")
    assert await store.list_runs(A) == []
    await store.aclose()
