"""The Postgres store through outages: the server cut off, unreachable, or its sessions killed.

The store talks to the server through a :class:`~tests.support.tcp_proxy.TcpProxy`. Writers
append to many sessions at once (batches of one to three events) and keep what was
acknowledged. Then:

- **cut**: every connection is reset and new ones are refused;
- **stall**: nothing is forwarded any more and nobody says so (only a timeout tells);
- **terminate**: ``pg_terminate_backend`` ends every backend of the store (found by the ports
  of the proxy's connections in ``pg_stat_activity``), the server staying up.

What must hold: during an outage every call fails with
:class:`~jidoka.store.base.StoreUnavailable` within a bounded time (never hangs): an append whose
commit was in flight when the connection broke with :class:`CommitOutcomeUnknown`, and its
``on_done`` later says what the log holds; afterwards the
same store serves again without being reopened; each failed append stored nothing (writing the
same seqs again succeeds), each acknowledged one is stored, and every log is exactly its
acknowledged appends, gap-free, each batch whole.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from jidoka.errors import StoreError
from jidoka.events import Event, EventType
from jidoka.store.base import CommitOutcomeUnknown, StoreUnavailable
from jidoka.store.postgres import PostgresStore
from tests.support.postgres import address_of, dsn_via
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.stores("postgres")

SESSIONS = 8
CONNECT_TIMEOUT = 1.0
COMMAND_TIMEOUT = 2.0
#: The bound on a call failing during an outage: a connect and a statement timing out, twice
#: (a read is tried once more on a fresh connection), with room for a loaded CI machine.
FAIL_WITHIN = 2 * (CONNECT_TIMEOUT + COMMAND_TIMEOUT) + 10.0
#: The bound on anything that must happen while the server is reachable.
PROMPTLY = 30.0
#: Acknowledged appends each session makes between two steps of a test.
PROGRESS = 3
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def batch(session_id: str, first: int, count: int) -> list[Event]:
    return [
        Event(
            EventType.CONVERSATION_ADDED,
            session_id,
            seq,
            T0,
            {"role": "user", "content": f"{first}+{seq - first}/{count}"},
        )
        for seq in range(first, first + count)
    ]


@dataclass
class Writer:
    session_id: str
    next_seq: int = 1
    acked: list[tuple[int, int]] = field(default_factory=list)  # (first seq, count)
    failures: list[StoreError] = field(default_factory=list)
    #: Appends answered CommitOutcomeUnknown that the store then found stored.
    unknown_then_stored: int = 0
    wrong: list[str] = field(default_factory=list)


class Load:
    """A writer task per session: append; after a StoreUnavailable wait until the test says
    the server is back (``resume``), check the failed append stored nothing (the log's head is
    where it was), then write the same seqs again."""

    def __init__(self, store: PostgresStore, sessions: int) -> None:
        self.store = store
        self.writers = [Writer(f"S{n:025d}") for n in range(sessions)]
        self.resume = asyncio.Event()
        self.resume.set()
        self.changed = asyncio.Condition()
        self.stopped = False
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Load:
        rng = random.Random(15)
        self._tasks = [
            asyncio.create_task(self._write(w, random.Random(rng.random()))) for w in self.writers
        ]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.stopped = True
        self.resume.set()
        if exc_type is not None:  # the test failed: do not wait for appends that may never end
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            return
        try:
            async with asyncio.timeout(PROMPTLY):
                await asyncio.gather(*self._tasks)
        except TimeoutError:
            raise AssertionError(
                f"appends still waiting {PROMPTLY}s after the writers were told to stop"
            ) from None

    async def _write(self, writer: Writer, rng: random.Random) -> None:
        sid = writer.session_id
        loop = asyncio.get_running_loop()
        while not self.stopped:
            first, count = writer.next_seq, rng.randint(1, 3)
            outcome: asyncio.Future[BaseException | None] = loop.create_future()
            try:
                waiting = self.store.append_nowait(
                    sid, batch(sid, first, count), outcome.set_result
                )
                if waiting is not None:
                    await waiting
            except CommitOutcomeUnknown as exc:
                # Answered in bounded time, truthfully: nobody knows yet. The store finds out
                # once the server is back, and tells on_done: stored (an ack) or not (nothing).
                writer.failures.append(exc)
                await self._notify()
                error = await outcome
                if error is None:
                    writer.unknown_then_stored += 1
                    self._ack(writer, first, count)
                    await self._notify()
                    continue
                await self.resume.wait()
                if not await self._stored_nothing(writer, first, count, error):
                    return
                continue
            except StoreUnavailable as exc:
                writer.failures.append(exc)
                await self._notify()
                await self.resume.wait()
                if not await self._stored_nothing(writer, first, count, exc):
                    return
                continue
            self._ack(writer, first, count)
            await self._notify()

    @staticmethod
    def _ack(writer: Writer, first: int, count: int) -> None:
        writer.acked.append((first, count))
        writer.next_seq = first + count

    async def _stored_nothing(
        self, writer: Writer, first: int, count: int, exc: BaseException
    ) -> bool:
        """A failed append stored nothing: the log's head is where it was (else noted)."""
        head = await self._head(writer.session_id)
        if head == first - 1:
            return True
        writer.wrong.append(f"append {first}..{first + count - 1} failed ({exc}), "
                            f"yet the head is at {head}")  # fmt: skip
        await self._notify()
        return False

    async def _head(self, sid: str) -> int:
        async with asyncio.timeout(PROMPTLY):
            while True:
                try:
                    return await self.store.last_seq(sid)
                except StoreUnavailable:
                    continue

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def acks(self) -> list[int]:
        return [len(w.acked) for w in self.writers]

    def failures(self) -> list[int]:
        return [len(w.failures) for w in self.writers]

    async def _wait(self, done: Callable[[], bool], bound: float) -> bool:
        try:
            async with asyncio.timeout(bound), self.changed:
                await self.changed.wait_for(lambda: done() or self._wrong())
        except TimeoutError:
            return False
        assert not self._wrong(), [w.wrong for w in self.writers if w.wrong]
        return True

    def _wrong(self) -> bool:
        return any(w.wrong for w in self.writers)

    async def progress(self, what: str) -> None:
        """Wait until every session has made PROGRESS more acknowledged appends."""
        target = [n + PROGRESS for n in self.acks()]

        def done() -> bool:
            return all(n >= t for n, t in zip(self.acks(), target, strict=True))

        if not await self._wait(done, PROMPTLY):
            raise AssertionError(f"no progress {what}: acks {self.acks()}, wanted {target}")

    async def every_writer_fails(self, before: list[int]) -> None:
        """Wait until every writer has had an append fail since ``before`` (its failures
        then): none may be left waiting, whatever its append was doing when the outage began."""

        def done() -> bool:
            return all(n > b for n, b in zip(self.failures(), before, strict=True))

        if not await self._wait(done, FAIL_WITHIN):
            waiting = [w.session_id for w, b in zip(self.writers, before, strict=True)
                       if len(w.failures) == b]  # fmt: skip
            raise AssertionError(
                f"{len(waiting)} of {len(self.writers)} writers' appends neither committed nor "
                f"failed {FAIL_WITHIN}s into the outage: {waiting}"
            )


async def check_logs(store: PostgresStore, load: Load) -> None:
    """Each log is exactly its writer's acknowledged batches: whole, in order, nothing else."""
    for writer in load.writers:
        stored = [(e.seq, e.data["content"]) for e in await store.read_events(writer.session_id)]
        expected = [
            (first + n, f"{first}+{n}/{count}") for first, count in writer.acked
            for n in range(count)
        ]  # fmt: skip
        assert stored == expected, f"{writer.session_id}: {stored[-5:]} vs {expected[-5:]}"
        assert await store.last_seq(writer.session_id) == writer.next_seq - 1


@pytest.fixture
async def proxy(postgres_dsn: str) -> AsyncIterator[TcpProxy]:
    async with TcpProxy(*address_of(postgres_dsn)) as running:
        yield running


@pytest.fixture
async def store(
    proxy: TcpProxy, postgres_dsn: str, postgres_schema: str
) -> AsyncIterator[PostgresStore]:
    opened = PostgresStore(
        dsn_via(postgres_dsn, proxy.port),
        schema=postgres_schema,
        pool_size=3,
        connect_timeout=CONNECT_TIMEOUT,
        command_timeout=COMMAND_TIMEOUT,
    )
    await opened.open()
    try:
        yield opened
    finally:
        await proxy.restore()  # a failed test must not leave aclose waiting on a dead link
        await opened.aclose()


async def fails_promptly(call: Callable[[], Awaitable[object]], what: str) -> StoreError:
    try:
        async with asyncio.timeout(FAIL_WITHIN):
            await call()
    except StoreUnavailable as exc:
        assert isinstance(exc, StoreError)
        return exc
    except TimeoutError:
        raise AssertionError(f"{what} still waiting {FAIL_WITHIN}s into the outage") from None
    raise AssertionError(f"{what} succeeded during the outage")


async def serves_again(store: PostgresStore) -> None:
    """Poll ``ping`` (each poll a round trip, not a sleep) until the store answers."""
    async with asyncio.timeout(PROMPTLY):
        while True:
            try:
                await store.ping()
            except StoreUnavailable:
                continue
            return


async def begin(outage: str, proxy: TcpProxy) -> None:
    if outage == "cut":
        await proxy.cut()
    else:
        proxy.stall()


@pytest.mark.parametrize("outage", ["cut", "stall"])
async def test_calls_fail_promptly_in_an_outage_and_nothing_is_lost(
    store: PostgresStore, proxy: TcpProxy, outage: str
) -> None:
    """Under load, the server goes: reads, pings and new appends fail promptly with
    StoreUnavailable; once it is back the same store serves, and every log is exactly what was
    acknowledged (the appends in flight when it went were resolved, not guessed)."""
    async with Load(store, SESSIONS) as load:
        await load.progress("before the outage")
        load.resume.clear()
        await begin(outage, proxy)
        newcomer = "N" * 26
        failures = await asyncio.gather(
            fails_promptly(store.ping, "ping"),
            fails_promptly(lambda: store.read_events(load.writers[0].session_id), "a read"),
            fails_promptly(lambda: store.last_seq(load.writers[1].session_id), "last_seq"),
            fails_promptly(lambda: store.find_session(load.writers[2].session_id), "a lookup"),
            fails_promptly(store.list_saved, "list_saved"),
            fails_promptly(lambda: store.append(newcomer, batch(newcomer, 1, 2)), "an append"),
        )
        assert failures[-1].session_id == newcomer
        await proxy.restore()
        await serves_again(store)
        load.resume.set()
        await load.progress("after the outage")
    assert await store.find_session(newcomer) is None  # its failed append stored nothing
    await store.append(newcomer, batch(newcomer, 1, 2))
    await check_logs(store, load)


@pytest.mark.parametrize("outage", ["cut", "stall"])
async def test_appends_in_flight_when_the_server_goes_fail_promptly(
    store: PostgresStore, proxy: TcpProxy, outage: str
) -> None:
    """Every writer's append, whatever it was doing when the server went (queued, or sent and
    its outcome unknown), is answered within the bound: a caller (an HTTP request, a session's
    command) never waits for the outage to end. What it stored is then told by the log."""
    async with Load(store, SESSIONS) as load:
        await load.progress("before the outage")
        load.resume.clear()
        before = load.failures()
        await begin(outage, proxy)
        await load.every_writer_fails(before)
        await proxy.restore()
        await serves_again(store)
        load.resume.set()
        await load.progress("after the outage")
    await check_logs(store, load)


async def store_backends(admin: psycopg.AsyncConnection[Any], ports: list[int]) -> list[int]:
    """The server's processes serving the proxy's connections (the store's, and only its)."""
    cursor = await admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%s) AND pid <> pg_backend_pid()",
        (ports,),
    )
    return [int(row[0]) for row in await cursor.fetchall()]


async def test_terminated_backends_lose_nothing(
    store: PostgresStore, proxy: TcpProxy, postgres_dsn: str
) -> None:
    """Three times under load, every backend of the store is terminated: appends in flight
    are resolved (stored once or failed having stored nothing), reads go on, the store
    reconnects by itself."""
    reads: list[int] = []

    async def reader(load: Load) -> None:
        sid = load.writers[0].session_id
        while not load.stopped:
            try:
                reads.append(len(await store.read_events(sid)))
            except StoreUnavailable:
                reads.append(-1)

    admin = await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True)
    async with admin, Load(store, SESSIONS) as load:
        reading = asyncio.create_task(reader(load))
        for round_ in range(3):
            await load.progress(f"before termination {round_}")
            pids = await store_backends(admin, proxy.server_side_ports())
            assert len(pids) >= 2, pids  # the writer's and at least one reader's
            cursor = await admin.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))"
                " FROM unnest(%s::int[]) AS t(pid)",
                (pids,),
            )
            assert await cursor.fetchone() == (len(pids),)
        since = len(reads)
        await load.progress("after the last termination")
        load.stopped = True
        await reading
    assert any(n >= 0 for n in reads[since:]), "no read succeeded after the terminations"
    await check_logs(store, load)
