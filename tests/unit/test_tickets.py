"""The stream ticket book on a fake clock: single use, expiry to the instant, the stream a
ticket is for, the ceilings, and nothing in a refusal that repeats the ticket."""

from __future__ import annotations

import pytest

from jidoka.clock import FakeClock
from jidoka.errors import LimitExceeded, Unauthorized
from jidoka.server.tickets import MAX_TTL, TicketBook

STREAM = "/v1/sessions/S1/events"


def book(clock: FakeClock, **kwargs: int) -> TicketBook:
    return TicketBook(ttl=10.0, clock=clock.monotonic, **kwargs)


def test_a_ticket_is_good_once() -> None:
    clock = FakeClock()
    tickets = book(clock)
    ticket = tickets.issue("alice")
    assert len(ticket) == 43  # 32 random bytes, URL-safe base64
    assert tickets.outstanding("alice") == 1
    assert tickets.redeem(ticket, STREAM) == "alice"
    assert tickets.outstanding("alice") == 0
    with pytest.raises(Unauthorized) as refused:
        tickets.redeem(ticket, STREAM)
    assert ticket not in str(refused.value)


def test_a_ticket_expires_at_its_ttl() -> None:
    clock = FakeClock()
    tickets = book(clock)
    early, late = tickets.issue("alice"), tickets.issue("alice")
    clock.advance(9.999)
    assert tickets.redeem(early, STREAM) == "alice"
    clock.advance(0.001)
    with pytest.raises(Unauthorized):
        tickets.redeem(late, STREAM)
    assert len(tickets) == 0


def test_expired_tickets_are_purged_and_free_the_ceiling() -> None:
    clock = FakeClock()
    tickets = book(clock, max_per_principal=2)
    tickets.issue("alice")
    clock.advance(5)
    tickets.issue("alice")
    with pytest.raises(LimitExceeded) as full:
        tickets.issue("alice")
    assert (full.value.limit, full.value.maximum) == ("max_stream_tickets_per_principal", 2)
    clock.advance(5)  # the first expires: room for one
    tickets.issue("alice")
    assert tickets.outstanding("alice") == 2
    with pytest.raises(LimitExceeded):
        tickets.issue("alice")


def test_the_total_ceiling_holds_across_principals() -> None:
    clock = FakeClock()
    tickets = book(clock, max_per_principal=2, max_total=3)
    tickets.issue("alice")
    tickets.issue("bob")
    tickets.issue(None)  # the server without auth: no principal
    with pytest.raises(LimitExceeded) as full:
        tickets.issue("carol")
    assert full.value.limit == "max_stream_tickets"
    assert len(tickets) == 3


def test_a_ticket_for_one_stream_opens_no_other_and_is_spent_trying() -> None:
    clock = FakeClock()
    tickets = book(clock)
    ticket = tickets.issue("alice", path=STREAM)
    with pytest.raises(Unauthorized, match="another event stream"):
        tickets.redeem(ticket, "/v1/events")
    with pytest.raises(Unauthorized):
        tickets.redeem(ticket, STREAM)
    assert tickets.redeem(tickets.issue("alice", path=STREAM), STREAM) == "alice"


@pytest.mark.parametrize("given", ["", "x" * 43, "y" * 100_000])
def test_unknown_tickets_are_refused(given: str) -> None:
    tickets = book(FakeClock())
    tickets.issue("alice")
    with pytest.raises(Unauthorized) as refused:
        tickets.redeem(given, STREAM)
    if given:
        assert given[:10] not in str(refused.value)
    assert tickets.outstanding("alice") == 1


@pytest.mark.parametrize("ttl", [0.0, -1.0, MAX_TTL + 0.001, float("nan")])
def test_the_lifetime_is_bounded(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        TicketBook(ttl=ttl)
