"""The one per-principal bound behind the in-flight limit and the event-stream limit."""

from __future__ import annotations

import pytest

from jidoka import LimitExceeded
from jidoka.server.auth import InflightLimiter, PrincipalCounter
from jidoka.server.streams import StreamRegistry


def test_each_principal_is_bounded_on_its_own_and_release_frees_a_place() -> None:
    counter = PrincipalCounter("max_things", 2)
    counter.acquire("alice")
    counter.acquire("alice")
    counter.acquire("bob")
    with pytest.raises(LimitExceeded) as refused:
        counter.acquire("alice")
    assert (refused.value.limit, refused.value.maximum) == ("max_things", 2)
    assert counter.count("alice") == 2  # the refusal took nothing
    counter.release("alice")
    counter.acquire("alice")
    for _ in range(2):
        counter.release("alice")
    counter.release("bob")
    assert (counter.count("alice"), counter.count("bob")) == (0, 0)


def test_no_limit_counts_without_refusing() -> None:
    counter = PrincipalCounter("max_things", None)
    for _ in range(1000):
        counter.acquire(None)
    assert counter.count(None) == 1000


def test_a_limit_below_one_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="max_things"):
        PrincipalCounter("max_things", 0)


def test_the_two_server_limits_name_themselves() -> None:
    limiter = InflightLimiter(1)
    limiter.acquire("alice")
    with pytest.raises(LimitExceeded) as inflight:
        limiter.acquire("alice")
    assert inflight.value.limit == "max_inflight_requests"
    registry = StreamRegistry(max_per_principal=1)
    registry.reserve("alice")
    with pytest.raises(LimitExceeded) as streams:
        registry.reserve("alice")
    assert streams.value.limit == "max_streams_per_principal"
    registry.release("alice")
    assert registry.streams("alice") == 0
