"""A Postgres schema written at version 1 opens in this version, its sessions load and go on.

tests/fixtures/postgres_v1.sql is that schema as the store wrote it (made by
tests/fixtures/make_postgres_v1.py, kept as it is once the schema version moves on); it is
loaded into the test's own schema, then a runtime opens it. While the store is still at version
1 this checks that the dump is what the store reads; after a bump, that the migration from 1
keeps every session. (Newer versions refused, and schemas created by stores opening at once:
tests/unit/test_store_postgres.py.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

import jidoka
from jidoka import FakeClock, Status
from jidoka.store.postgres_schema import SCHEMA_VERSION
from tests.fixtures.make_postgres_v1 import OWNED, PLACEHOLDER
from tests.fixtures.make_v1_database import ENDED, LIVE

pytestmark = pytest.mark.stores("postgres")

FIXTURE = Path(__file__).parent.parent / "fixtures" / "postgres_v1.sql"


async def load_v1(dsn: str, schema: str) -> None:
    script = await asyncio.to_thread(FIXTURE.read_text, encoding="utf-8")
    assert script.count(PLACEHOLDER) > 10
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(script.replace(PLACEHOLDER, schema).encode())


async def test_a_version_1_schema_opens_and_its_sessions_go_on(
    postgres_dsn: str, postgres_schema: str, clock: FakeClock
) -> None:
    await load_v1(postgres_dsn, postgres_schema)
    async with jidoka.Runtime(clock=clock) as rt:  # the store the environment names: that schema
        client = rt.client
        assert [i.session_id for i in await client.list_sessions()] == [LIVE, OWNED]
        assert [i.session_id for i in await client.list_sessions(owner="alice")] == [OWNED]
        history = await client.get_conversation_history(LIVE)
        assert [(m.role, m.content) for m in history] == [
            ("user", "written by version 1"),
            ("assistant", "and migrated"),
        ]
        assert await client.get_working_context(LIVE, "plan") == ["migrate"]
        info = await client.get_session_info(LIVE)
        assert info.metadata == {"origin": "v1"}
        assert str(info.created_at) == "2026-01-01 00:00:01+00:00"
        ended = await client.get_session_info(ENDED)
        assert (ended.status, ended.reason) == (Status.TERMINATED, "requested")
        # They go on: a new message lands after what version 1 wrote, in both live sessions.
        message = await client.send_message(LIVE, "user", "written by this version")
        assert message.seq > 5
        owned = await client.send_message(OWNED, "user", "and alice's too")
        assert owned.seq > 3
        logged = [e.seq for e in await rt.read_events(LIVE)]
        assert logged == list(range(1, len(logged) + 1))
        assert [m.content for m in await client.get_conversation_history(OWNED)] == [
            "alice's, from v1",
            "and alice's too",
        ]
    async with await psycopg.AsyncConnection.connect(postgres_dsn) as conn:
        cursor = await conn.execute(
            sql.SQL("SELECT value FROM {}.jidoka_meta WHERE key = 'schema_version'").format(
                sql.Identifier(postgres_schema)
            )
        )
        assert await cursor.fetchone() == (str(SCHEMA_VERSION),)
        # Version 3: snapshots are keyed by session and seq (every snapshot is kept).
        cursor = await conn.execute(
            "SELECT array_agg(a.attname ORDER BY k.n) FROM pg_index i"
            " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
            " WHERE i.indisprimary AND i.indrelid = %s::regclass",
            (f'"{postgres_schema}".snapshots',),
        )
        assert await cursor.fetchone() == (["session_id", "seq"],)
