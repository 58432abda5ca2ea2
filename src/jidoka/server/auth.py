"""Who is calling: bearer tokens to principals, and how much each principal may do at once.

Tokens are compared with :func:`hmac.compare_digest` against every configured token, with no
early exit, so the time taken does not depend on how much of a token an attacker guessed. The
principal then scopes everything: a session belongs to the principal that created it, and the
routes answer 404 for anyone else's (see :mod:`jidoka.server.access`).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Final

from ..errors import LimitExceeded, Unauthorized

__all__ = ["ANONYMOUS", "Authenticator", "InflightLimiter"]

#: The principal of every caller when auth is off (``--insecure-no-auth``): it sees everything.
ANONYMOUS: Final = None


class Authenticator:
    """Maps ``Authorization: Bearer <token>`` to a principal (or refuses)."""

    __slots__ = ("_enabled", "_tokens")

    def __init__(self, tokens: Mapping[str, str], *, enabled: bool = True) -> None:
        self._tokens = tuple((t.encode(), p) for t, p in tokens.items())
        self._enabled = enabled

    @property
    def enabled(self) -> bool:
        return self._enabled

    def principal(self, authorization: str | None) -> str | None:
        """The caller's principal; ``None`` when auth is off. Raises :class:`Unauthorized`."""
        if not self._enabled:
            return ANONYMOUS
        if authorization is None:
            raise Unauthorized("missing Authorization header (expected 'Bearer <token>')")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        return self.check_token(credentials.strip())

    def check_token(self, token: str) -> str | None:
        """The principal of ``token``, compared in constant time; :class:`Unauthorized` if none."""
        if not self._enabled:
            return ANONYMOUS
        given = token.encode("utf-8", "surrogateescape")
        found: str | None = None
        for known, principal in self._tokens:
            if hmac.compare_digest(given, known) and found is None:
                found = principal
        if found is None:
            raise Unauthorized("unknown or revoked token")
        return found


class InflightLimiter:
    """At most ``limit`` requests in flight per principal; the next one gets 429.

    A concurrency bound rather than a rate: it caps what one principal can make the server hold
    (tasks, buffers, store commits) without a clock, and a well-behaved client that awaits its
    answers never meets it. Streams do not count (they are long by design).
    """

    __slots__ = ("_inflight", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._inflight: dict[str | None, int] = {}

    def acquire(self, principal: str | None) -> None:
        count = self._inflight.get(principal, 0)
        if count >= self.limit:
            raise LimitExceeded("max_inflight_requests", self.limit, actual=count + 1)
        self._inflight[principal] = count + 1

    def release(self, principal: str | None) -> None:
        count = self._inflight.get(principal, 0) - 1
        if count > 0:
            self._inflight[principal] = count
        else:
            self._inflight.pop(principal, None)

    def inflight(self, principal: str | None) -> int:
        return self._inflight.get(principal, 0)
