"""FifoLock: mutual exclusion, FIFO hand-over, and cancellation safety; CommitLock: the same, aware
of the commits in flight."""

from __future__ import annotations

import asyncio

import pytest

from jidoka._sync import CommitLock, FifoLock


async def _settle(turns: int = 10) -> None:
    """Let ready callbacks run (a yield to the loop, not a sleep)."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def _finished(*tasks: asyncio.Task[object]) -> None:
    """Fail fast (rather than hang) if the tasks cannot finish within a few loop turns."""
    await _settle(1000)
    assert all(task.done() for task in tasks), "lock hand-over stalled"
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled():
            assert task.exception() is None


async def _acquired_soon(lock: FifoLock) -> bool:
    """Try to take the lock in a task; report whether it got it within a few loop turns."""
    task = asyncio.create_task(lock.acquire())
    await _settle()
    if task.done():
        return True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return False


async def test_acquire_and_release() -> None:
    lock = FifoLock()
    assert not lock.locked()
    await lock.acquire()
    assert lock.locked()
    lock.release()
    assert not lock.locked()


async def test_context_manager() -> None:
    lock = FifoLock()
    async with lock:
        assert lock.locked()
    assert not lock.locked()


async def test_context_manager_releases_on_error() -> None:
    lock = FifoLock()
    with pytest.raises(RuntimeError):
        async with lock:
            raise RuntimeError("boom")
    assert not lock.locked()
    assert await _acquired_soon(lock)


async def test_second_acquire_waits() -> None:
    lock = FifoLock()
    await lock.acquire()
    waiter = asyncio.create_task(lock.acquire())
    await _settle()
    assert not waiter.done()
    lock.release()
    await waiter
    assert lock.locked()
    lock.release()
    assert not lock.locked()


async def test_mutual_exclusion() -> None:
    lock = FifoLock()
    inside = 0
    peak = 0
    done = 0

    async def worker() -> None:
        nonlocal inside, peak, done
        for _ in range(5):
            async with lock:
                inside += 1
                peak = max(peak, inside)
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                inside -= 1
                done += 1

    await asyncio.gather(*(worker() for _ in range(30)))
    assert peak == 1
    assert done == 150
    assert not lock.locked()


async def test_waiters_get_the_lock_in_arrival_order() -> None:
    lock = FifoLock()
    order: list[int] = []

    async def worker(n: int) -> None:
        async with lock:
            order.append(n)
            await asyncio.sleep(0)

    await lock.acquire()
    tasks = []
    for n in range(20):
        tasks.append(asyncio.create_task(worker(n)))
        await asyncio.sleep(0)  # each one is queued before the next arrives
    lock.release()
    await _finished(*tasks)
    assert order == list(range(20))
    assert not lock.locked()


async def test_newcomer_does_not_barge_past_a_handed_over_waiter() -> None:
    lock = FifoLock()
    order: list[str] = []

    async def worker(name: str) -> None:
        async with lock:
            order.append(name)

    await lock.acquire()
    first = asyncio.create_task(worker("first"))
    await _settle()
    lock.release()  # handed to "first", which has not run yet
    assert lock.locked()
    late = asyncio.create_task(worker("late"))
    await _finished(first, late)
    assert order == ["first", "late"]
    assert not lock.locked()


async def test_cancelled_waiter_is_skipped() -> None:
    lock = FifoLock()
    order: list[str] = []

    async def worker(name: str) -> None:
        async with lock:
            order.append(name)

    await lock.acquire()
    a, b, c = (asyncio.create_task(worker(n)) for n in "abc")
    await _settle()
    b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b
    lock.release()
    await _finished(a, c)
    assert order == ["a", "c"]
    assert not lock.locked()
    assert await _acquired_soon(lock)


async def test_all_waiters_cancelled_then_release_unlocks() -> None:
    lock = FifoLock()
    await lock.acquire()
    waiters = [asyncio.create_task(lock.acquire()) for _ in range(3)]
    await _settle()
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert lock.locked()  # still held by us
    lock.release()
    assert not lock.locked()
    assert await _acquired_soon(lock)


async def test_waiter_cancelled_just_after_hand_over_passes_the_lock_on() -> None:
    lock = FifoLock()
    order: list[str] = []

    async def worker(name: str) -> None:
        async with lock:
            order.append(name)

    await lock.acquire()
    a = asyncio.create_task(worker("a"))
    b = asyncio.create_task(worker("b"))
    await _settle()
    lock.release()  # ownership moves to a...
    a.cancel()  # ...which is cancelled before it gets to run
    await _finished(a, b)
    assert a.cancelled()
    assert order == ["b"]
    assert not lock.locked()
    assert await _acquired_soon(lock)


async def test_last_waiter_cancelled_after_hand_over_unlocks() -> None:
    lock = FifoLock()
    await lock.acquire()
    only = asyncio.create_task(lock.acquire())
    await _settle()
    lock.release()
    only.cancel()
    await _finished(only)
    assert only.cancelled()
    assert not lock.locked()
    assert await _acquired_soon(lock)


async def test_lock_survives_many_cancellations() -> None:
    lock = FifoLock()
    got: list[int] = []

    async def worker(n: int) -> None:
        async with lock:
            got.append(n)
            await asyncio.sleep(0)

    await lock.acquire()
    tasks = [asyncio.create_task(worker(n)) for n in range(40)]
    await _settle()
    for n, task in enumerate(tasks):
        if n % 3 == 0:
            task.cancel()
    lock.release()
    tasks[1].cancel()  # handed to 1 (0 was cancelled earlier), cancelled on arrival
    await _finished(*tasks)
    expected = [n for n in range(40) if n % 3 != 0 and n != 1]
    assert got == expected
    assert not lock.locked()
    assert await _acquired_soon(lock)


# --- CommitLock: the lock that knows about commits in flight ------------------------------------


async def test_exclusive_acquire_waits_for_the_commits_in_flight() -> None:
    lock = CommitLock()
    lock.begin()
    lock.begin()
    holder = asyncio.create_task(lock.acquire())
    await _settle()
    assert lock.locked()  # held, but not handed back: two commits are still in flight
    assert not holder.done()
    lock.end()
    await _settle()
    assert not holder.done()
    lock.end()
    await holder
    assert lock.pending == 0
    lock.release()
    assert not lock.locked()


async def test_acquire_to_append_does_not_wait_for_commits_in_flight() -> None:
    lock = CommitLock()
    lock.begin()
    await asyncio.wait_for(lock.acquire_to_append(), 1.0)
    assert lock.locked()
    lock.release()
    lock.end()


async def test_an_exclusive_waiter_cancelled_while_commits_settle_lets_the_lock_go() -> None:
    lock = CommitLock()
    lock.begin()
    first = asyncio.create_task(lock.acquire())
    second = asyncio.create_task(lock.acquire())
    await _settle()
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    lock.end()
    await second  # the lock went on to the next waiter, and nothing is in flight
    assert lock.locked()
    lock.release()
    assert not lock.locked()


async def test_settled_returns_at_once_when_nothing_is_in_flight() -> None:
    lock = CommitLock()
    await asyncio.wait_for(lock.settled(), 1.0)
    lock.begin()
    waiters = [asyncio.create_task(lock.settled()) for _ in range(3)]
    await _settle()
    waiters[0].cancel()  # one waiter's cancellation leaves the others waiting
    await _settle()
    assert not any(w.done() for w in waiters[1:])
    lock.end()
    await asyncio.gather(*waiters[1:])


async def test_a_doubt_fails_whoever_waits_for_the_commits_then_clears() -> None:
    """A commit whose outcome nobody knows (the store lost its connection mid-commit): an
    exclusive holder-to-be fails at once instead of waiting for the store to come back; once
    the commit settles, the lock works as before."""
    from jidoka.store.base import CommitOutcomeUnknown

    lock = CommitLock()
    lock.begin()
    waiter = asyncio.ensure_future(lock.acquire())
    await asyncio.sleep(0)  # it holds the FIFO lock and waits for the commit
    assert not waiter.done()
    unknown = CommitOutcomeUnknown("session 'S': outcome unknown", session_id="S")
    lock.doubt(unknown)
    with pytest.raises(CommitOutcomeUnknown):
        await waiter
    assert not lock.locked()  # the failed waiter let the lock go
    with pytest.raises(CommitOutcomeUnknown):  # a newcomer fails at once too
        await lock.acquire()
    lock.end()  # the store found out: settled
    await asyncio.wait_for(lock.acquire(), 5)
    lock.release()
    lock.doubt(unknown)  # nothing in flight: nothing to doubt
    await asyncio.wait_for(lock.acquire(), 5)
    lock.release()
