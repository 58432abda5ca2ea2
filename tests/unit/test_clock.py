"""FakeClock and SystemClock."""

from __future__ import annotations

import asyncio
import time

import pytest

import jidoka
from jidoka.clock import Clock, FakeClock, SystemClock


async def _settle(turns: int = 5) -> None:
    """Let ready callbacks run (a yield to the loop, not a sleep)."""
    for _ in range(turns):
        await asyncio.sleep(0)


def test_exported() -> None:
    assert jidoka.FakeClock is FakeClock
    assert jidoka.SystemClock is SystemClock
    assert jidoka.Clock is Clock


def test_both_satisfy_the_protocol() -> None:
    assert isinstance(FakeClock(), Clock)
    assert isinstance(SystemClock(), Clock)


# --- FakeClock -----------------------------------------------------------------------------------


def test_starting_values() -> None:
    clock = FakeClock(monotonic=10.0, wall=1_000.0)
    assert clock.monotonic() == 10.0
    assert clock.time() == 1_000.0
    assert FakeClock().monotonic() == 0.0
    assert FakeClock().time() == 1_767_225_600.0


def test_time_moves_with_monotonic() -> None:
    clock = FakeClock(monotonic=3.0, wall=1_000.0)
    clock.advance(2.5)
    assert clock.monotonic() == 5.5
    assert clock.time() == 1_002.5
    clock.advance(3600)
    assert clock.time() - clock.monotonic() == 1_000.0 - 3.0


def test_advance_zero_is_allowed() -> None:
    clock = FakeClock()
    clock.advance(0)
    assert clock.monotonic() == 0.0


@pytest.mark.parametrize("seconds", [-1, -0.001, -1e9])
def test_advance_refuses_negative(seconds: float) -> None:
    clock = FakeClock(monotonic=5.0)
    with pytest.raises(ValueError, match="back"):
        clock.advance(seconds)
    assert clock.monotonic() == 5.0


def test_repr() -> None:
    assert "FakeClock" in repr(FakeClock(monotonic=2.0))
    assert "2.0" in repr(FakeClock(monotonic=2.0))


async def test_sleep_until_past_or_now_returns_at_once(clock: FakeClock) -> None:
    clock.advance(10)
    await clock.sleep_until(10)
    await clock.sleep_until(3)
    await clock.sleep_until(-1)
    assert clock.sleepers == 0


async def test_advance_wakes_only_due_sleepers(clock: FakeClock) -> None:
    woke: list[float] = []

    async def sleeper(deadline: float) -> None:
        await clock.sleep_until(deadline)
        woke.append(deadline)

    tasks = [asyncio.create_task(sleeper(d)) for d in (5, 10, 15)]
    await _settle()
    assert clock.sleepers == 3
    assert woke == []

    clock.advance(4.999)
    await _settle()
    assert woke == []
    assert clock.sleepers == 3

    clock.advance(0.001)  # exactly at the first deadline
    await tasks[0]
    await _settle()
    assert woke == [5]
    assert clock.sleepers == 2
    assert not tasks[1].done()
    assert not tasks[2].done()

    clock.advance(100)
    await asyncio.gather(*tasks[1:])
    assert woke == [5, 10, 15]
    assert clock.sleepers == 0


async def test_one_big_advance_wakes_in_deadline_order(clock: FakeClock) -> None:
    woke: list[float] = []

    async def sleeper(deadline: float) -> None:
        await clock.sleep_until(deadline)
        woke.append(deadline)

    deadlines = [30, 10, 20, 10, 40]
    tasks = [asyncio.create_task(sleeper(d)) for d in deadlines]
    await _settle()
    clock.advance(35)
    await asyncio.gather(*tasks[:4])
    assert woke == [10, 10, 20, 30]
    assert not tasks[4].done()
    clock.advance(5)
    await tasks[4]


async def test_equal_deadlines_wake_in_arrival_order(clock: FakeClock) -> None:
    woke: list[int] = []

    async def sleeper(n: int) -> None:
        await clock.sleep_until(7)
        woke.append(n)

    tasks = [asyncio.create_task(sleeper(n)) for n in range(10)]
    await _settle()
    clock.advance(7)
    await asyncio.gather(*tasks)
    assert woke == list(range(10))


async def test_cancelled_sleeper_is_harmless(clock: FakeClock) -> None:
    async def sleeper(deadline: float) -> None:
        await clock.sleep_until(deadline)

    doomed = asyncio.create_task(sleeper(5))
    survivor = asyncio.create_task(sleeper(5))
    await _settle()
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert clock.sleepers == 1
    clock.advance(5)
    await survivor
    assert clock.sleepers == 0


async def test_sleepers_created_after_advance_use_the_new_time(clock: FakeClock) -> None:
    clock.advance(100)
    task = asyncio.create_task(clock.sleep_until(101))
    await _settle()
    assert not task.done()
    clock.advance(1)
    await task


# --- SystemClock ---------------------------------------------------------------------------------


def test_system_clock_reads_the_machine_clocks() -> None:
    clock = SystemClock()
    assert abs(clock.time() - time.time()) < 5
    first = clock.monotonic()
    assert clock.monotonic() >= first
    assert repr(clock) == "SystemClock()"


async def test_system_clock_is_the_event_loop_clock() -> None:
    assert abs(SystemClock().monotonic() - asyncio.get_running_loop().time()) < 1


async def test_system_clock_sleep_until_returns() -> None:
    clock = SystemClock()
    await clock.sleep_until(clock.monotonic() - 1)
    await clock.sleep_until(clock.monotonic())
    await clock.sleep_until(0)
