"""Session ids: 26-character Crockford base32 ULIDs, monotonic within one generator."""

from __future__ import annotations

import itertools

import pytest

import jidoka
from jidoka.ids import SESSION_ID_PATTERN, IdGenerator, is_session_id

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _decode(value: str) -> int:
    number = 0
    for char in value:
        number = number * 32 + CROCKFORD.index(char)
    return number


def _millis(value: str) -> int:
    return _decode(value) >> 80


class SteppingClock:
    """A wall clock that returns the given times in turn (it may go backwards)."""

    def __init__(self, times: list[float]) -> None:
        self._times = iter(times)

    def monotonic(self) -> float:
        return 0.0

    def time(self) -> float:
        return next(self._times)

    async def sleep_until(self, deadline: float) -> None:  # pragma: no cover - unused
        return None


def test_shape(clock: jidoka.FakeClock) -> None:
    value = IdGenerator(clock).new()
    assert isinstance(value, str)
    assert len(value) == 26
    assert set(value) <= set(CROCKFORD)
    assert is_session_id(value)
    assert SESSION_ID_PATTERN.fullmatch(value)
    assert "-" not in value  # event ids are "<session_id>-<seq>"


def test_timestamp_prefix_is_wall_clock_millis(clock: jidoka.FakeClock) -> None:
    generator = IdGenerator(clock)
    assert _millis(generator.new()) == int(clock.time() * 1000)
    clock.advance(3600)
    assert _millis(generator.new()) == int(clock.time() * 1000)


def test_real_clock_timestamp() -> None:
    system = jidoka.SystemClock()
    before = int(system.time() * 1000)
    value = IdGenerator(system).new()
    after = int(system.time() * 1000)
    assert before <= _millis(value) <= after


def test_monotonic_within_one_millisecond(clock: jidoka.FakeClock) -> None:
    generator = IdGenerator(clock)
    ids = [generator.new() for _ in range(10_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert {_millis(i) for i in ids} == {int(clock.time() * 1000)}
    # Each id is the previous one plus one.
    numbers = [_decode(i) for i in ids]
    assert all(b - a == 1 for a, b in itertools.pairwise(numbers))


def test_monotonic_across_milliseconds(clock: jidoka.FakeClock) -> None:
    generator = IdGenerator(clock)
    ids = []
    for n in range(2_000):
        ids.append(generator.new())
        if n % 7 == 0:
            clock.advance(0.25)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    millis = [_millis(i) for i in ids]
    assert millis == sorted(millis)
    assert len(set(millis)) > 100


def test_later_millisecond_sorts_after_any_earlier_id(clock: jidoka.FakeClock) -> None:
    generator = IdGenerator(clock)
    burst = [generator.new() for _ in range(1_000)]
    clock.advance(1.0)
    later = generator.new()
    assert later > max(burst)
    assert _millis(later) == _millis(burst[0]) + 1000


def test_monotonic_when_wall_clock_steps_back() -> None:
    generator = IdGenerator(SteppingClock([2000.0, 1000.0, 1000.0, 2000.0, 2000.001]))
    ids = [generator.new() for _ in range(5)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5
    assert _millis(ids[1]) == 2_000_000  # held at the latest time seen, not moved back


def test_two_generators_do_not_collide(clock: jidoka.FakeClock) -> None:
    first = [IdGenerator(clock).new() for _ in range(1_000)]
    assert len(set(first)) == 1_000


def test_hundred_thousand_unique_fake_clock(clock: jidoka.FakeClock) -> None:
    generator = IdGenerator(clock)
    ids = [generator.new() for _ in range(100_000)]
    assert len(set(ids)) == 100_000
    assert ids == sorted(ids)


def test_hundred_thousand_unique_system_clock() -> None:
    generator = IdGenerator(jidoka.SystemClock())
    ids = [generator.new() for _ in range(100_000)]
    assert len(set(ids)) == 100_000
    assert ids == sorted(ids)


@pytest.mark.parametrize(
    "value",
    [
        "01KDVDNA002TGFDYKMPAK7J69H",
        "00000000000000000000000000",
        "7ZZZZZZZZZZZZZZZZZZZZZZZZZ",
        "ZZZZZZZZZZZZZZZZZZZZZZZZZZ",
    ],
)
def test_is_session_id_true(value: str) -> None:
    assert is_session_id(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "01KDVDNA002TGFDYKMPAK7J69",  # 25
        "01KDVDNA002TGFDYKMPAK7J69HX",  # 27
        "01kdvdna002tgfdykmpak7j69h",  # lower case
        "01KDVDNA002TGFDYKMPAK7J69I",  # I is not Crockford
        "01KDVDNA002TGFDYKMPAK7J69L",  # L
        "01KDVDNA002TGFDYKMPAK7J69O",  # O
        "01KDVDNA002TGFDYKMPAK7J69U",  # U
        "01KDVDNA002TGFDYKMPAK7J6-H",
        "01KDVDNA002TGFDYKMPAK7J69H\n",
        " 01KDVDNA002TGFDYKMPAK7J69H",
        "../../etc/passwd",
        None,
        42,
        b"01KDVDNA002TGFDYKMPAK7J69H",
    ],
)
def test_is_session_id_false(value: object) -> None:
    assert not is_session_id(value)
