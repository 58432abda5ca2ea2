"""Who is calling: bearer tokens to principals, and how much each principal may do at once.

Tokens are compared with :func:`hmac.compare_digest` against every configured token, with no
early exit, so the time taken does not depend on how much of a token an attacker guessed. The
principal then scopes everything: a session belongs to the principal that created it, and
another principal is answered 404 for it, as if it did not exist. The middlewares put the
principal in the request's scope (:class:`~jidoka.server.middleware.BearerPrincipal`, or a
stream ticket on an event stream) and bound its requests in flight
(:class:`~jidoka.server.middleware.InflightBound`, with :class:`InflightLimiter`).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Final

from ..errors import LimitExceeded, Unauthorized

__all__ = ["ANONYMOUS", "Authenticator", "InflightLimiter", "PrincipalCounter"]

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


class PrincipalCounter:
    """How many of one kind of thing each principal holds, at most ``limit`` (``None``: no
    limit); the next one is :class:`~jidoka.LimitExceeded` naming ``limit_name`` (429).

    A concurrency bound rather than a rate: it caps what one principal can make the server hold
    (tasks, buffers, open streams) without a clock, and a well-behaved client never meets it.
    Every successful :meth:`acquire` is matched by one :meth:`release`.
    """

    __slots__ = ("_counts", "limit", "limit_name")

    def __init__(self, limit_name: str, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"{limit_name} must be at least 1, got {limit}")
        self.limit_name = limit_name
        self.limit = limit
        self._counts: dict[str | None, int] = {}

    def acquire(self, principal: str | None) -> None:
        count = self._counts.get(principal, 0)
        limit = self.limit
        if limit is not None and count >= limit:
            raise LimitExceeded(self.limit_name, limit, actual=count + 1)
        self._counts[principal] = count + 1

    def release(self, principal: str | None) -> None:
        count = self._counts.get(principal, 0) - 1
        if count > 0:
            self._counts[principal] = count
        else:
            self._counts.pop(principal, None)

    def count(self, principal: str | None) -> int:
        """What ``principal`` holds now."""
        return self._counts.get(principal, 0)


class InflightLimiter(PrincipalCounter):
    """At most ``limit`` requests in flight per principal; the next one gets 429. Streams do
    not count (they are long by design; :class:`~.streams.StreamRegistry` bounds them)."""

    __slots__ = ()

    def __init__(self, limit: int) -> None:
        super().__init__("max_inflight_requests", limit)

    def inflight(self, principal: str | None) -> int:
        return self.count(principal)
