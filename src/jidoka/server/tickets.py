"""Stream tickets: how a browser page authenticates an event stream without a token in the URL.

A page's ``EventSource`` cannot send an ``Authorization`` header, and a long-lived bearer token
in a URL ends up in places it should not (proxy logs, the browser's devtools, a screenshot). So
the page asks ``POST /v1/stream-tickets`` (with its bearer token, as for any route) for a
ticket and opens ``GET .../events?ticket=...``. A ticket is:

- **short-lived**: ``ttl`` seconds (at most :data:`MAX_TTL`), so a leaked one is soon worthless;
- **single-use**: redeeming it removes it, whether the stream then opens or not; a reused,
  expired or unknown ticket is :class:`~jidoka.Unauthorized` (401);
- **one principal's**: it stands for the principal that asked for it (``None`` when the server
  runs without auth), and for nothing more;
- **for event streams only**: the middleware reads ``?ticket=`` on the routes the router marks
  as streams and nowhere else; a ticket asked for with a ``session_id`` opens that session's
  stream only.

Single use breaks ``EventSource``'s own reconnect (it reuses the URL, and so the spent ticket,
and gets a 401 that closes it). That is deliberate: a page must handle a reconnect after the
ticket's lifetime anyway, so it has one way to do it -- fetch a new ticket and open a new
``EventSource`` with ``?after_seq=<last id>`` -- and a ticket copied out of a URL cannot be
replayed once used. ``docs/http-api.md`` ("Browsers") shows the pattern.

On a node of a cluster the book is the store's (:class:`SharedTickets`): a page may get its ticket
from one node and open its stream on another behind the same balancer, so the digests live in
the PostgreSQL store and spending one is a single ``DELETE … RETURNING``, once across every
node. The server uses either through :class:`StreamTickets`.

Only a SHA-256 digest of each ticket is kept and looked up, so neither a lookup's timing nor a
dump of the server's memory gives a usable ticket. The book is bounded: at most
``max_per_principal`` outstanding tickets per principal and ``max_total`` in all (the next is
:class:`~jidoka.LimitExceeded`, 429); expired tickets are purged as the book is used. Tickets
live in this process's memory only: a restart forgets them, which costs a page one new ticket.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from ..store.postgres_cluster import PgCluster

from ..errors import LimitExceeded, Unauthorized
from ..wire import StreamTicket, StreamTicketRequest

__all__ = [
    "MAX_TTL",
    "LocalTickets",
    "SharedTickets",
    "StreamTicket",
    "StreamTicketRequest",
    "StreamTickets",
    "TicketBook",
]

#: The longest a ticket may live (seconds): long enough to open a stream, short enough to be
#: worthless soon after.
MAX_TTL: Final = 60.0
#: Random bytes per ticket: 256 bits.
_TICKET_BYTES: Final = 32
#: A longer ``?ticket=`` cannot be one of ours; refused before it is even hashed.
_MAX_TICKET_CHARS: Final = 128
_REFUSED: Final = (
    "unknown, used or expired stream ticket (ask POST /v1/stream-tickets for a new one)"
)


@dataclass(slots=True, frozen=True)
class _Entry:
    principal: str | None
    #: The one stream path it opens (``/v1/sessions/{id}/events``), or ``None`` for any.
    path: str | None
    expires: float


class TicketBook:
    """The outstanding stream tickets of one server (see the module docstring)."""

    def __init__(
        self,
        *,
        ttl: float = 30.0,
        max_per_principal: int = 32,
        max_total: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < ttl <= MAX_TTL:
            raise ValueError(f"ttl must be more than 0 and at most {MAX_TTL} seconds, got {ttl}")
        if max_per_principal < 1 or max_total < 1:
            raise ValueError("max_per_principal and max_total must be at least 1")
        self.ttl = ttl
        self.max_per_principal = max_per_principal
        self.max_total = max_total
        self._clock = clock
        # digest -> entry. The ttl is fixed and the clock monotonic, so insertion order is
        # expiry order: purging looks at the oldest entries only.
        self._tickets: dict[bytes, _Entry] = {}
        self._per_principal: dict[str | None, int] = {}

    def __len__(self) -> int:
        return len(self._tickets)

    def outstanding(self, principal: str | None) -> int:
        """Tickets issued to ``principal`` that are neither used nor expired (yet purged)."""
        return self._per_principal.get(principal, 0)

    def issue(self, principal: str | None, *, path: str | None = None) -> str:
        """A new ticket for ``principal`` (good for the stream at ``path`` only, if given);
        :class:`LimitExceeded` when ``principal``, or everyone together, has too many."""
        self._purge(self._clock())
        count = self.outstanding(principal)
        if count >= self.max_per_principal:
            raise LimitExceeded(
                "max_stream_tickets_per_principal", self.max_per_principal, actual=count + 1
            )
        if len(self._tickets) >= self.max_total:
            raise LimitExceeded("max_stream_tickets", self.max_total, actual=len(self) + 1)
        ticket = secrets.token_urlsafe(_TICKET_BYTES)
        self._tickets[_digest(ticket)] = _Entry(principal, path, self._clock() + self.ttl)
        self._per_principal[principal] = count + 1
        return ticket

    def redeem(self, ticket: str, path: str) -> str | None:
        """The principal ``ticket`` stands for, spending it; :class:`Unauthorized` if it is
        unknown, used, expired, or for another stream than ``path``. The message never
        repeats the ticket."""
        now = self._clock()
        self._purge(now)
        if not ticket or len(ticket) > _MAX_TICKET_CHARS:
            raise Unauthorized(_REFUSED)
        entry = self._tickets.pop(_digest(ticket), None)
        if entry is None:
            raise Unauthorized(_REFUSED)
        self._forget(entry)
        if entry.expires <= now:
            raise Unauthorized(_REFUSED)
        if entry.path is not None and entry.path != path:
            raise Unauthorized("this stream ticket is for another event stream")
        return entry.principal

    def _purge(self, now: float) -> None:
        while self._tickets:
            oldest = next(iter(self._tickets))
            entry = self._tickets[oldest]
            if entry.expires > now:
                return
            del self._tickets[oldest]
            self._forget(entry)

    def _forget(self, entry: _Entry) -> None:
        count = self._per_principal.get(entry.principal, 0) - 1
        if count > 0:
            self._per_principal[entry.principal] = count
        else:
            self._per_principal.pop(entry.principal, None)


def _digest(ticket: str) -> bytes:
    return hashlib.sha256(ticket.encode("utf-8", "surrogateescape")).digest()


class StreamTickets(Protocol):
    """What the server issues and redeems stream tickets through."""

    @property
    def ttl(self) -> float: ...

    async def issue(self, principal: str | None, *, path: str | None = None) -> str: ...

    async def redeem(self, ticket: str, path: str) -> str | None: ...


class LocalTickets:
    """:class:`StreamTickets` over this process's :class:`TicketBook` (one node)."""

    __slots__ = ("book",)

    def __init__(self, book: TicketBook) -> None:
        self.book = book

    @property
    def ttl(self) -> float:
        return self.book.ttl

    async def issue(self, principal: str | None, *, path: str | None = None) -> str:
        return self.book.issue(principal, path=path)

    async def redeem(self, ticket: str, path: str) -> str | None:
        return self.book.redeem(ticket, path)


class SharedTickets:
    """:class:`StreamTickets` kept in a cluster's store, the same rules as :class:`TicketBook`
    (short-lived, single-use, one principal's, bounded per principal and in all)."""

    def __init__(
        self,
        cluster: PgCluster,
        *,
        ttl: float = 30.0,
        max_per_principal: int = 32,
        max_total: int = 4096,
    ) -> None:
        if not 0 < ttl <= MAX_TTL:
            raise ValueError(f"ttl must be more than 0 and at most {MAX_TTL} seconds, got {ttl}")
        self._cluster = cluster
        self.ttl = ttl
        self.max_per_principal = max_per_principal
        self.max_total = max_total

    async def issue(self, principal: str | None, *, path: str | None = None) -> str:
        ticket = secrets.token_urlsafe(_TICKET_BYTES)
        mine, total, kept = await self._cluster.issue_ticket(
            _digest(ticket),
            principal,
            path,
            ttl=self.ttl,
            max_per_principal=self.max_per_principal,
            max_total=self.max_total,
        )
        if kept:
            return ticket
        if mine >= self.max_per_principal:
            raise LimitExceeded(
                "max_stream_tickets_per_principal", self.max_per_principal, actual=mine + 1
            )
        raise LimitExceeded("max_stream_tickets", self.max_total, actual=total + 1)

    async def redeem(self, ticket: str, path: str) -> str | None:
        if not ticket or len(ticket) > _MAX_TICKET_CHARS:
            raise Unauthorized(_REFUSED)
        found = await self._cluster.redeem_ticket(_digest(ticket))
        if found is None:
            raise Unauthorized(_REFUSED)
        principal, ticket_path, valid = found
        if not valid:
            raise Unauthorized(_REFUSED)
        if ticket_path is not None and ticket_path != path:
            raise Unauthorized("this stream ticket is for another event stream")
        return principal
