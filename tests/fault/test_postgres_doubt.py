"""A session whose commit was cut off mid-flight, through the whole runtime on Postgres.

The database stops answering after it received a message's commit (the proxy mutes its replies):
the caller is told, in bounded time, that the outcome is unknown (503 over HTTP, never "failed");
every later command on that session fails at once too instead of waiting for the database;
once the database answers again, the runtime learns the message was stored, applies and
publishes it once, and the session serves on.
"""

from __future__ import annotations

import asyncio

import pytest

import jidoka
from jidoka.store.base import CommitOutcomeUnknown, StoreUnavailable
from jidoka.store.postgres import PostgresStore
from tests.helpers import until
from tests.support.postgres import address_of, dsn_via
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.stores("postgres")

#: A bound on each step (never asserted as a duration).
STEP = 30.0


async def test_a_message_cut_off_mid_commit_is_answered_then_applied_once(
    store_backend: str, postgres_dsn: str, postgres_schema: str
) -> None:
    async with TcpProxy(*address_of(postgres_dsn)) as proxy:
        store = PostgresStore(
            dsn_via(postgres_dsn, proxy.port),
            schema=postgres_schema,
            connect_timeout=1.0,
            command_timeout=1.0,
        )
        await store.open()
        try:
            async with jidoka.Runtime(store=store) as rt:
                client = rt.client
                sid = await client.create_session()
                await client.send_message(sid, "user", "before")
                async with client.subscribe_to_session(sid) as events:
                    proxy.mute()  # the commit reaches the database; its answer never comes back
                    with pytest.raises(CommitOutcomeUnknown):
                        await asyncio.wait_for(client.send_message(sid, "user", "cut off"), STEP)
                    # Commands that need the session settled fail at once, not after the outage.
                    with pytest.raises(StoreUnavailable):
                        await asyncio.wait_for(client.put_working_context(sid, "k", 1), STEP)
                    with pytest.raises(StoreUnavailable):
                        await asyncio.wait_for(client.send_message(sid, "user", "next"), STEP)
                    await proxy.restore()
                    # The store reads the log back: the message was stored, so it is applied
                    # and published, once.
                    event = await asyncio.wait_for(until(events, "conversation_added"), STEP)
                    assert event.data["content"] == "cut off"
                history = [m.content for m in await client.get_conversation_history(sid)]
                assert history == ["before", "cut off"]
                await client.put_working_context(sid, "k", 2)  # and it serves on
                stored = [e.data.get("content") for e in await rt.read_events(sid)]
                assert stored.count("cut off") == 1
                assert "next" not in stored
        finally:
            await proxy.restore()
            await store.aclose()
