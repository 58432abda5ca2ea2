"""Stream tickets of a cluster live in the store: issued by one node, spent once by any.

Two stores on one schema stand for two nodes (each with its own pool, as two processes would
have); the tickets are the server's ``SharedTickets`` over each node's ``PgCluster``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from jidoka.errors import LimitExceeded, Unauthorized
from jidoka.server.tickets import SharedTickets
from jidoka.store.postgres import PostgresStore
from jidoka.store.postgres_cluster import PgCluster

pytestmark = pytest.mark.stores("postgres")

PATH = "/v1/sessions/01M97X3H7CEBZ577D3RK07SDB8/events"


@pytest.fixture
async def nodes(postgres_dsn: str, postgres_schema: str) -> AsyncIterator[list[PgCluster]]:
    stores = [
        PostgresStore(postgres_dsn, schema=postgres_schema, pool_size=2, node_id=name)
        for name in ("t1", "t2")
    ]
    try:
        for store in stores:
            await store.open()
        yield [PgCluster(store, str(store.node_id), "http://127.0.0.1:1") for store in stores]
    finally:
        for store in stores:
            await store.aclose()


async def test_a_ticket_issued_on_one_node_is_spent_once_on_another(
    nodes: list[PgCluster],
) -> None:
    one, two = (SharedTickets(node, ttl=30) for node in nodes)
    ticket = await one.issue("alice", path=PATH)
    assert await two.redeem(ticket, PATH) == "alice"
    for book in (one, two):  # spent everywhere
        with pytest.raises(Unauthorized, match="unknown, used or expired"):
            await book.redeem(ticket, PATH)


async def test_a_ticket_opens_its_own_stream_only_and_anonymous_ones_work(
    nodes: list[PgCluster],
) -> None:
    one, two = (SharedTickets(node, ttl=30) for node in nodes)
    ticket = await one.issue("alice", path=PATH)
    with pytest.raises(Unauthorized, match="another event stream"):
        await two.redeem(ticket, "/v1/events")
    anyone = await one.issue(None)
    assert await two.redeem(anyone, "/v1/events") is None
    for bad in ("", "x" * 500, "not-a-ticket"):
        with pytest.raises(Unauthorized):
            await two.redeem(bad, PATH)


async def test_an_expired_ticket_is_refused(nodes: list[PgCluster]) -> None:
    book = SharedTickets(nodes[0], ttl=0.05)
    ticket = await book.issue("alice")
    # Expiry is the database's clock: wait until it says the ticket is past (no fixed sleep).
    store = nodes[0].store
    query = f'SELECT count(*) FROM "{store.schema}".stream_tickets WHERE expires_at > now()'
    async with asyncio.timeout(10):
        while True:
            if not (await store.fetchrow(None, query))[0]:
                break
            await asyncio.sleep(0.02)
    with pytest.raises(Unauthorized, match="unknown, used or expired"):
        await SharedTickets(nodes[1], ttl=30).redeem(ticket, "/v1/events")


async def test_the_bounds_hold_across_nodes(nodes: list[PgCluster]) -> None:
    one, two = (SharedTickets(node, ttl=30, max_per_principal=2, max_total=3) for node in nodes)
    await one.issue("alice")
    await two.issue("alice")
    with pytest.raises(LimitExceeded) as per_principal:
        await one.issue("alice")
    assert per_principal.value.limit == "max_stream_tickets_per_principal"
    await two.issue("bob")
    with pytest.raises(LimitExceeded) as total:
        await one.issue("carol")
    assert total.value.limit == "max_stream_tickets"
