"""A file-content cache shared by all sessions, but scoped and bounded per session.

Keys are ``(session_id, path)``: two sessions that read the same file hold separate entries, so
evicting, invalidating or terminating one session never touches another's. Two byte budgets
apply, each with least-recently-used eviction: one per session (a session that reads a lot evicts
its own entries first) and one in total (the process stays bounded whatever the session count).

An entry is valid only for the ``(size, mtime_ns)`` it was read at; the caller passes the file's
current stamps (from a ``stat`` done off the event loop) and a changed file is a miss. The cache
itself never touches the disk, so every method is safe to call on the event loop.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

__all__ = ["CacheStatistics", "FileCache"]


class _Entry(NamedTuple):
    text: str
    size: int
    mtime_ns: int
    cost: int


class CacheStatistics(NamedTuple):
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    sessions: int


class FileCache:
    """LRU file cache bounded in bytes per session and in total."""

    def __init__(
        self, *, max_bytes: int = 64 * 1024 * 1024, max_session_bytes: int = 8 * 1024 * 1024
    ) -> None:
        if max_bytes < 1 or max_session_bytes < 1:
            raise ValueError("cache budgets must be positive")
        self.max_bytes = max_bytes
        self.max_session_bytes = min(max_session_bytes, max_bytes)
        self._lru: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._by_session: dict[str, OrderedDict[str, int]] = {}
        self._session_bytes: dict[str, int] = {}
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, session_id: str, path: str, size: int, mtime_ns: int) -> str | None:
        """The cached text if it was read at exactly these stamps; a stale entry is dropped."""
        key = (session_id, path)
        entry = self._lru.get(key)
        if entry is None:
            self.misses += 1
            return None
        if entry.size != size or entry.mtime_ns != mtime_ns:
            self._remove(key)
            self.misses += 1
            return None
        self.hits += 1
        self._lru.move_to_end(key)
        self._by_session[session_id].move_to_end(path)
        return entry.text

    def put(self, session_id: str, path: str, text: str, size: int, mtime_ns: int) -> bool:
        """Cache ``text``; returns ``False`` (and caches nothing) if it alone exceeds a budget."""
        cost = len(text.encode("utf-8", "surrogatepass")) if not text.isascii() else len(text)
        key = (session_id, path)
        if key in self._lru:
            self._remove(key)
        if cost > self.max_session_bytes:
            return False
        self._lru[key] = _Entry(text, size, mtime_ns, cost)
        self._by_session.setdefault(session_id, OrderedDict())[path] = cost
        self._session_bytes[session_id] = self._session_bytes.get(session_id, 0) + cost
        self._bytes += cost
        paths = self._by_session[session_id]
        while self._session_bytes[session_id] > self.max_session_bytes:
            self._remove((session_id, next(iter(paths))))
            self.evictions += 1
        while self._bytes > self.max_bytes:
            self._remove(next(iter(self._lru)))
            self.evictions += 1
        return True

    def invalidate(self, session_id: str, path: str) -> None:
        """Forget one file of one session (e.g. removed from its active files)."""
        if (session_id, path) in self._lru:
            self._remove((session_id, path))

    def evict_session(self, session_id: str) -> int:
        """Forget everything of a session (on terminate); returns the entries dropped."""
        paths = self._by_session.get(session_id)
        if not paths:
            return 0
        count = len(paths)
        for path in list(paths):
            self._remove((session_id, path))
        return count

    def session_bytes(self, session_id: str) -> int:
        return self._session_bytes.get(session_id, 0)

    def sessions(self) -> frozenset[str]:
        """Sessions that have at least one entry."""
        return frozenset(self._by_session)

    def __len__(self) -> int:
        return len(self._lru)

    def statistics(self) -> CacheStatistics:
        return CacheStatistics(
            self.hits, self.misses, self.evictions, len(self._lru), self._bytes,
            len(self._by_session),
        )  # fmt: skip

    def _remove(self, key: tuple[str, str]) -> None:
        entry = self._lru.pop(key)
        session_id, path = key
        paths = self._by_session[session_id]
        del paths[path]
        self._bytes -= entry.cost
        remaining = self._session_bytes[session_id] - entry.cost
        if paths:
            self._session_bytes[session_id] = remaining
        else:
            del self._by_session[session_id]
            del self._session_bytes[session_id]
