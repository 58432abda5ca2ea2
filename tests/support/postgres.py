"""The PostgreSQL server the Postgres store's tests run against, and a schema per test.

``JIDOKA_TEST_POSTGRES_DSN`` names the server (default :data:`DEFAULT_DSN`). Whether it answers
is asked once per test process (a connect with a short timeout): if it does not, the tests that
need it are skipped with the reason, except on CI (``CI=true``), where a missing server is a
failure, not a silent skip of the whole backend.

Every test gets its own schema (``jt_<hex>``), dropped with everything in it afterwards, even
when the test failed, so tests never see each other's rows and can run in parallel on one
database. Dropping first ends any connection still holding a lock in the schema (a store a
failed test left open, a SIGKILLed child's backend not yet gone), so teardown cannot hang.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

__all__ = [
    "DEFAULT_DSN",
    "DSN_VARIABLE",
    "address_of",
    "dsn_via",
    "drop_schema",
    "execute_in_schema",
    "schema_contents",
    "new_schema_name",
    "postgres_dsn",
    "redacted",
    "require_postgres",
    "schema",
    "unreachable_reason",
]

DSN_VARIABLE = "JIDOKA_TEST_POSTGRES_DSN"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
#: How long the probe and the fixtures' own connections wait for the server (a bound).
CONNECT_TIMEOUT = 3
#: How long dropping a schema waits for a lock before it ends the sessions that hold one.
DROP_LOCK_TIMEOUT = "5s"


#: Read once, at import: every test's fixtures then remove the ``JIDOKA_*`` variables.
_DSN: str = os.environ.get(DSN_VARIABLE) or DEFAULT_DSN


def postgres_dsn() -> str:
    return _DSN


def address_of(dsn: str) -> tuple[str, int]:
    """The host and port a ``postgresql://`` DSN names (what a proxy forwards to)."""
    parts = urlsplit(dsn)
    return parts.hostname or "127.0.0.1", parts.port or 5432


def dsn_via(dsn: str, port: int) -> str:
    """``dsn`` pointed at ``127.0.0.1:port`` (a proxy) instead of its own server."""
    parts = urlsplit(dsn)
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def redacted(dsn: str) -> str:
    """The DSN without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", dsn)


@functools.cache
def unreachable_reason(dsn: str) -> str | None:
    """``None`` if the server answers, else why not (asked once per process and DSN)."""
    try:
        with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL not reachable at {redacted(dsn)}: {str(exc).strip()}"
    return None


def require_postgres() -> str:
    """The DSN of a server that answers; else skip the test (fail it on CI)."""
    dsn = postgres_dsn()
    reason = unreachable_reason(dsn)
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: the Postgres tests must run)", pytrace=False)
        pytest.skip(reason)
    return dsn


def new_schema_name() -> str:
    """A schema name no other test uses (lower case: no quoting needed anywhere)."""
    return f"jt_{secrets.token_hex(6)}"


def drop_schema(dsn: str, name: str) -> None:
    """Drop ``name`` and everything in it, if it exists. A session that holds a lock in the
    schema past :data:`DROP_LOCK_TIMEOUT` is ended first, so this never waits for ever."""
    with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as conn:
        conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(DROP_LOCK_TIMEOUT)))
        drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
        try:
            conn.execute(drop)
        except psycopg.errors.LockNotAvailable:
            conn.execute(
                "SELECT pg_terminate_backend(l.pid) FROM pg_locks l"
                " JOIN pg_class c ON c.oid = l.relation"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND l.pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute("SET lock_timeout = '30s'")
            conn.execute(drop)


@contextmanager
def schema(dsn: str) -> Iterator[str]:
    """A fresh schema name for the block (nothing is created: the store creates it on open),
    dropped after the block whatever happened in it."""
    name = new_schema_name()
    try:
        yield name
    finally:
        drop_schema(dsn, name)


async def execute_in_schema(dsn: str, name: str, statement: str, params: tuple[object, ...]) -> int:
    """Run one statement (``%s`` placeholders) on the tables of schema ``name``, as a test
    that damages a row on purpose does; the number of rows it touched."""
    async with await psycopg.AsyncConnection.connect(
        dsn, connect_timeout=CONNECT_TIMEOUT, autocommit=True
    ) as conn:
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(name)))
        cursor = await conn.execute(statement.encode(), params)
        return cursor.rowcount


async def schema_contents(dsn: str, name: str) -> str:
    """Every row of every table of schema ``name`` as text (``bytea`` columns in hex), for a
    test that checks something was never written anywhere in the store."""
    async with await psycopg.AsyncConnection.connect(
        dsn, connect_timeout=CONNECT_TIMEOUT, autocommit=True
    ) as conn:
        cursor = await conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename", (name,)
        )
        tables = [row[0] for row in await cursor.fetchall()]
        parts = []
        for table in tables:
            cursor = await conn.execute(
                sql.SQL("SELECT row_to_json(t)::text FROM {}.{} AS t").format(
                    sql.Identifier(name), sql.Identifier(table)
                )
            )
            parts += [f"{table}: {row[0]}" for row in await cursor.fetchall()]
        return "\n".join(parts)
