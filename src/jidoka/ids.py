"""Session ids: unique, URL-safe, and sortable by creation time (ULIDs).

An id is 26 characters of Crockford base32: 48 bits of milliseconds since the epoch, then 80 bits
of randomness. Ids made by one generator in the same millisecond increase by one in the random
part, so ids from one runtime sort in creation order — the order ``list_sessions`` and cursor
pagination use — and two runtimes still cannot collide in practice.
"""

from __future__ import annotations

import os
import re
from typing import Final

from .clock import Clock

__all__ = ["SESSION_ID_PATTERN", "IdGenerator", "is_session_id"]

_ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS: Final = 80
_RANDOM_MAX: Final = (1 << _RANDOM_BITS) - 1

#: What a session id looks like; anything else cannot name a session.
SESSION_ID_PATTERN: Final = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")


def is_session_id(value: object) -> bool:
    """True if ``value`` has the shape of a session id (it may still name no session)."""
    return isinstance(value, str) and SESSION_ID_PATTERN.fullmatch(value) is not None


def _encode(value: int) -> str:
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


class IdGenerator:
    """Makes monotonically increasing ULIDs from a :class:`~jidoka.clock.Clock`'s wall time."""

    __slots__ = ("_clock", "_last_ms", "_last_random")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._last_ms = -1
        self._last_random = 0

    def new(self) -> str:
        ms = int(self._clock.time() * 1000)
        if ms <= self._last_ms:
            # Same millisecond (or the wall clock stepped back): stay monotonic.
            ms = self._last_ms
            random = self._last_random + 1
            if random > _RANDOM_MAX:
                ms += 1
                random = int.from_bytes(os.urandom(10), "big") >> 1
        else:
            # Keep the top bit clear so a burst in one millisecond cannot overflow.
            random = int.from_bytes(os.urandom(10), "big") >> 1
        self._last_ms, self._last_random = ms, random
        return _encode((ms << _RANDOM_BITS) | random)
