"""FileCache: per-session and total LRU byte budgets, (session, path) keys, stamp validation."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jidoka
from jidoka.cache import CacheStatistics, FileCache

A, B, C = "SESSIONA", "SESSIONB", "SESSIONC"


def test_exported_from_package() -> None:
    assert jidoka.FileCache is FileCache


@pytest.mark.parametrize(
    ("max_bytes", "max_session_bytes"), [(0, 10), (10, 0), (-1, 10), (10, -5), (0, 0)]
)
def test_budgets_must_be_positive(max_bytes: int, max_session_bytes: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        FileCache(max_bytes=max_bytes, max_session_bytes=max_session_bytes)


def test_session_budget_never_exceeds_total() -> None:
    cache = FileCache(max_bytes=10, max_session_bytes=100)
    assert cache.max_session_bytes == 10
    assert cache.put(A, "a", "x" * 10, 10, 1)
    assert not cache.put(A, "b", "x" * 11, 11, 1)


def test_empty_cache() -> None:
    cache = FileCache()
    assert len(cache) == 0
    assert cache.sessions() == frozenset()
    assert cache.session_bytes(A) == 0
    assert cache.statistics() == CacheStatistics(0, 0, 0, 0, 0, 0)


def test_put_then_get_is_a_hit() -> None:
    cache = FileCache(max_bytes=100, max_session_bytes=50)
    assert cache.put(A, "src/app.py", "hello", 5, 123) is True
    assert cache.get(A, "src/app.py", 5, 123) == "hello"
    stats = cache.statistics()
    assert (stats.hits, stats.misses, stats.entries, stats.bytes, stats.sessions) == (1, 0, 1, 5, 1)


def test_unknown_key_is_a_miss() -> None:
    cache = FileCache()
    assert cache.get(A, "nope", 1, 1) is None
    cache.put(A, "x", "text", 4, 1)
    assert cache.get(A, "other", 4, 1) is None
    assert cache.get(B, "x", 4, 1) is None
    assert cache.statistics().misses == 3
    assert cache.statistics().hits == 0


def test_same_path_in_two_sessions_is_two_entries() -> None:
    cache = FileCache()
    cache.put(A, "src/app.py", "version A", 9, 1)
    cache.put(B, "src/app.py", "version B!", 10, 2)
    assert len(cache) == 2
    assert cache.sessions() == {A, B}
    assert cache.get(A, "src/app.py", 9, 1) == "version A"
    assert cache.get(B, "src/app.py", 10, 2) == "version B!"
    assert cache.session_bytes(A) == 9
    assert cache.session_bytes(B) == 10


def test_invalidate_touches_only_one_session() -> None:
    cache = FileCache()
    cache.put(A, "f", "aaa", 3, 1)
    cache.put(B, "f", "bbb", 3, 1)
    cache.invalidate(A, "f")
    assert cache.get(A, "f", 3, 1) is None
    assert cache.get(B, "f", 3, 1) == "bbb"
    assert cache.sessions() == {B}
    assert cache.session_bytes(A) == 0


def test_invalidate_unknown_is_a_no_op() -> None:
    cache = FileCache()
    cache.invalidate(A, "nothing")
    cache.put(A, "f", "x", 1, 1)
    cache.invalidate(A, "other")
    cache.invalidate(B, "f")
    assert len(cache) == 1
    assert cache.statistics().evictions == 0


def test_invalidate_one_of_several() -> None:
    cache = FileCache()
    cache.put(A, "f", "123", 3, 1)
    cache.put(A, "g", "45", 2, 1)
    cache.invalidate(A, "f")
    assert cache.session_bytes(A) == 2
    assert cache.sessions() == {A}
    assert cache.get(A, "g", 2, 1) == "45"


@pytest.mark.parametrize(("size", "mtime_ns"), [(6, 1), (5, 2), (6, 2), (0, 0)])
def test_stale_entry_is_a_miss_and_is_dropped(size: int, mtime_ns: int) -> None:
    cache = FileCache()
    cache.put(A, "f", "hello", 5, 1)
    cache.put(B, "f", "hello", 5, 1)
    assert cache.get(A, "f", size, mtime_ns) is None
    assert len(cache) == 1  # A's entry is gone, B's stays
    assert cache.session_bytes(A) == 0
    assert A not in cache.sessions()
    # Dropped, not merely skipped: even the original stamps miss now.
    assert cache.get(A, "f", 5, 1) is None
    assert cache.get(B, "f", 5, 1) == "hello"
    stats = cache.statistics()
    assert (stats.hits, stats.misses, stats.evictions) == (1, 2, 0)


def test_put_replaces_an_entry_without_double_counting() -> None:
    cache = FileCache()
    cache.put(A, "f", "old text", 8, 1)
    cache.put(A, "f", "new", 3, 2)
    assert len(cache) == 1
    assert cache.session_bytes(A) == 3
    assert cache.statistics().bytes == 3
    assert cache.get(A, "f", 8, 1) is None
    cache.put(A, "f", "new", 3, 2)
    assert cache.get(A, "f", 3, 2) == "new"


def test_session_budget_evicts_least_recently_used() -> None:
    cache = FileCache(max_bytes=1000, max_session_bytes=10)
    cache.put(A, "a", "aaaa", 4, 1)
    cache.put(A, "b", "bbbb", 4, 1)
    assert cache.get(A, "a", 4, 1) == "aaaa"  # a is now more recent than b
    assert cache.put(A, "c", "cccc", 4, 1)
    assert cache.get(A, "b", 4, 1) is None
    assert cache.get(A, "a", 4, 1) == "aaaa"
    assert cache.get(A, "c", 4, 1) == "cccc"
    assert cache.session_bytes(A) == 8
    assert cache.statistics().evictions == 1


def test_session_budget_can_evict_several_entries() -> None:
    cache = FileCache(max_bytes=1000, max_session_bytes=10)
    for name in "abcde":
        cache.put(A, name, "xx", 2, 1)
    assert cache.session_bytes(A) == 10
    cache.put(A, "big", "y" * 9, 9, 1)
    assert len(cache) == 1
    assert cache.session_bytes(A) == 9
    assert cache.statistics().evictions == 5


def test_session_budget_never_evicts_another_session() -> None:
    cache = FileCache(max_bytes=1000, max_session_bytes=10)
    cache.put(B, "old", "bbbbbbbbbb", 10, 1)  # B's entry is the globally oldest
    for n in range(20):
        cache.put(A, f"f{n}", "aaaa", 4, 1)
        assert cache.session_bytes(A) <= 10
    assert cache.get(B, "old", 10, 1) == "bbbbbbbbbb"
    assert cache.session_bytes(B) == 10


def test_total_budget_evicts_globally_least_recently_used() -> None:
    cache = FileCache(max_bytes=10, max_session_bytes=8)
    cache.put(A, "a", "aaaa", 4, 1)
    cache.put(B, "b", "bbbb", 4, 1)
    assert cache.get(A, "a", 4, 1) == "aaaa"  # B's entry becomes the oldest
    cache.put(C, "c", "cccc", 4, 1)
    assert cache.sessions() == {A, C}
    assert cache.get(B, "b", 4, 1) is None
    assert cache.get(A, "a", 4, 1) == "aaaa"
    assert cache.get(C, "c", 4, 1) == "cccc"
    assert cache.statistics().bytes == 8
    assert cache.statistics().evictions == 1


def test_total_budget_holds_whatever_the_session_count() -> None:
    cache = FileCache(max_bytes=100, max_session_bytes=30)
    for n in range(500):
        cache.put(f"S{n}", "f", "z" * 7, 7, 1)
        assert cache.statistics().bytes <= 100
    assert len(cache) == 14
    assert cache.statistics().evictions == 500 - 14
    # The survivors are the most recently put.
    assert cache.sessions() == {f"S{n}" for n in range(486, 500)}


def test_entry_bigger_than_session_budget_is_not_cached() -> None:
    cache = FileCache(max_bytes=1000, max_session_bytes=10)
    cache.put(A, "small", "s", 1, 1)
    assert cache.put(A, "huge", "h" * 11, 11, 1) is False
    assert cache.get(A, "huge", 11, 1) is None
    assert cache.get(A, "small", 1, 1) == "s"  # nothing else was evicted to make room
    assert cache.session_bytes(A) == 1
    assert cache.statistics().evictions == 0


def test_entry_exactly_the_session_budget_is_cached() -> None:
    cache = FileCache(max_bytes=1000, max_session_bytes=10)
    assert cache.put(A, "f", "x" * 10, 10, 1) is True
    assert cache.get(A, "f", 10, 1) == "x" * 10


def test_empty_text_is_cached() -> None:
    cache = FileCache(max_bytes=1, max_session_bytes=1)
    assert cache.put(A, "empty", "", 0, 1)
    assert cache.get(A, "empty", 0, 1) == ""
    assert cache.statistics().bytes == 0
    assert len(cache) == 1
    assert cache.sessions() == {A}


@pytest.mark.parametrize(
    ("text", "cost"),
    [("ascii", 5), ("é", 2), ("ééé", 6), ("€", 3), ("😀", 4), ("aé€😀", 10), ("日本語", 9)],
)
def test_cost_is_utf8_bytes(text: str, cost: int) -> None:
    cache = FileCache()
    cache.put(A, "f", text, cost, 1)
    assert cache.session_bytes(A) == cost
    assert cache.statistics().bytes == cost


def test_non_ascii_text_that_fits_in_characters_but_not_bytes_is_refused() -> None:
    cache = FileCache(max_bytes=100, max_session_bytes=10)
    text = "€" * 4  # 4 characters, 12 bytes
    assert cache.put(A, "f", text, 12, 1) is False
    assert len(cache) == 0
    assert cache.put(A, "g", "€" * 3, 9, 1) is True


def test_evict_session_empties_only_that_session() -> None:
    cache = FileCache()
    for name in ("a", "b", "c"):
        cache.put(A, name, name * 3, 3, 1)
    cache.put(B, "a", "bbb", 3, 1)
    assert cache.evict_session(A) == 3
    assert len(cache) == 1
    assert cache.sessions() == {B}
    assert cache.session_bytes(A) == 0
    assert cache.statistics().bytes == 3
    assert cache.get(B, "a", 3, 1) == "bbb"
    assert cache.evict_session(A) == 0
    assert cache.evict_session("UNKNOWN") == 0


def test_statistics_counts_everything() -> None:
    cache = FileCache(max_bytes=10, max_session_bytes=6)
    cache.put(A, "a", "aaa", 3, 1)
    cache.put(A, "b", "bbb", 3, 1)
    cache.put(A, "c", "ccc", 3, 1)  # evicts a (session budget)
    cache.put(B, "a", "xxxx", 4, 1)  # total 10, fits
    cache.put(C, "a", "y", 1, 1)  # total 11 -> evicts A's b
    assert cache.get(A, "c", 3, 1) == "ccc"
    assert cache.get(A, "a", 3, 1) is None
    assert cache.get(B, "a", 4, 2) is None  # stale, dropped
    stats = cache.statistics()
    assert isinstance(stats, CacheStatistics)
    assert stats == CacheStatistics(hits=1, misses=2, evictions=2, entries=2, bytes=4, sessions=2)
    assert stats._fields == ("hits", "misses", "evictions", "entries", "bytes", "sessions")
    assert (cache.hits, cache.misses, cache.evictions) == (1, 2, 2)


# --- property test against a reference model -----------------------------------------------------


class _Model:
    """A plain reference model of the documented behaviour (two-level LRU over one order)."""

    def __init__(self, max_bytes: int, max_session_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_session_bytes = min(max_bytes, max_session_bytes)
        self.entries: OrderedDict[tuple[str, str], tuple[str, int, int, int]] = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    def session_bytes(self, session: str) -> int:
        return sum(e[3] for (s, _), e in self.entries.items() if s == session)

    def total(self) -> int:
        return sum(e[3] for e in self.entries.values())

    def get(self, session: str, path: str, size: int, mtime: int) -> str | None:
        entry = self.entries.get((session, path))
        if entry is None or entry[1:3] != (size, mtime):
            self.entries.pop((session, path), None)
            self.misses += 1
            return None
        self.hits += 1
        self.entries.move_to_end((session, path))
        return entry[0]

    def put(self, session: str, path: str, text: str, size: int, mtime: int) -> bool:
        cost = len(text.encode("utf-8"))
        self.entries.pop((session, path), None)
        if cost > self.max_session_bytes:
            return False
        self.entries[(session, path)] = (text, size, mtime, cost)
        while self.session_bytes(session) > self.max_session_bytes:
            oldest = next(k for k in self.entries if k[0] == session)
            del self.entries[oldest]
            self.evictions += 1
        while self.total() > self.max_bytes:
            del self.entries[next(iter(self.entries))]
            self.evictions += 1
        return True

    def invalidate(self, session: str, path: str) -> None:
        self.entries.pop((session, path), None)

    def evict_session(self, session: str) -> int:
        keys = [k for k in self.entries if k[0] == session]
        for key in keys:
            del self.entries[key]
        return len(keys)


_SESSIONS = st.sampled_from([A, B, C])
_PATHS = st.sampled_from(["p", "q", "r", "s"])
_STAMP = st.integers(0, 2)
_TEXT = st.text(alphabet="aé€😀", max_size=8)
_OPS = st.one_of(
    st.tuples(st.just("put"), _SESSIONS, _PATHS, _TEXT, _STAMP, _STAMP),
    st.tuples(st.just("get"), _SESSIONS, _PATHS, _STAMP, _STAMP),
    st.tuples(st.just("invalidate"), _SESSIONS, _PATHS),
    st.tuples(st.just("evict_session"), _SESSIONS),
)


@settings(max_examples=300, deadline=None)
@given(
    max_bytes=st.integers(1, 40),
    max_session_bytes=st.integers(1, 40),
    ops=st.lists(_OPS, max_size=60),
)
def test_random_operations_keep_invariants(
    max_bytes: int, max_session_bytes: int, ops: list[tuple[object, ...]]
) -> None:
    cache = FileCache(max_bytes=max_bytes, max_session_bytes=max_session_bytes)
    model = _Model(max_bytes, max_session_bytes)
    for op in ops:
        name, args = op[0], op[1:]
        assert getattr(cache, str(name))(*args) == getattr(model, str(name))(*args), op
        stats = cache.statistics()
        sessions = {s for s, _ in model.entries}
        # The invariants.
        assert stats.bytes <= max_bytes
        for session in (A, B, C):
            assert cache.session_bytes(session) <= cache.max_session_bytes
        assert stats.bytes == sum(cache.session_bytes(s) for s in (A, B, C))
        assert stats.entries == len(cache)
        assert stats.sessions == len(cache.sessions())
        # And the cache agrees with the model exactly.
        assert stats.bytes == model.total()
        assert stats.entries == len(model.entries)
        assert cache.sessions() == sessions
        for session in (A, B, C):
            assert cache.session_bytes(session) == model.session_bytes(session)
        assert (stats.hits, stats.misses, stats.evictions) == (
            model.hits,
            model.misses,
            model.evictions,
        )
