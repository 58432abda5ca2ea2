"""The PostgreSQL side of ``bench_postgres``: where the server is, throw-away schemas, Jidoka's
tables (made by its store), and the raw-driver loops the store is judged by.

Every schema a run makes is named ``<run prefix>_<n>_<what>`` (the prefix random per run), and
:meth:`PgRun.drop_all` drops every schema with the run's prefix, so the schemas child processes
made are cleaned up too; ``bench_postgres`` calls it in a ``finally``.

Drivers: ``psycopg`` (3, async, autocommit, its default prepare threshold, ``%s`` parameters:
text format), ``psycopg-binary`` (the same with ``%b``: parameters sent in binary, as asyncpg
sends them), ``psycopg-pipeline`` (``%b``, and the connection kept in pipeline mode: a call's
statements, with ``BEGIN``/``COMMIT`` around several, go out together and the call waits at one
``sync()``), ``asyncpg`` (its statement cache, binary, ``$n`` parameters). SQL here, like the
store's, is written with ``$n`` placeholders, turned into named ones (``%(pn)s`` or ``%(pn)b``)
for psycopg.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import msgspec

from ._common import clock, quiesce

__all__ = [
    "DEFAULT_DSN",
    "DRIVERS",
    "DSN_VARIABLE",
    "PgRun",
    "dsn_from",
    "server_facts",
    "unavailable",
]

DSN_VARIABLE = "JIDOKA_TEST_POSTGRES_DSN"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"

DRIVERS = ("psycopg", "psycopg-binary", "psycopg-pipeline", "asyncpg")

#: A typical short chat message (64 characters), as in ``bench_durable``.
CONTENT = "Please refactor parse_config() so it also accepts TOML files. Ta"

_encode = msgspec.json.Encoder().encode
#: An event's data as the raw loops write it: a user message, UTF-8 JSON.
DATA = _encode({"role": "user", "content": CONTENT})
EVENT_TYPE = "conversation_added"


def dsn_from(option: str | None) -> str:
    """``--dsn``, else ``JIDOKA_TEST_POSTGRES_DSN``, else the local test database."""
    return option or os.environ.get(DSN_VARIABLE) or DEFAULT_DSN


def unavailable(dsn: str) -> str | None:
    """Why the benchmark cannot run against ``dsn`` (no driver, no server), or ``None``."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"no PostgreSQL at {redact(dsn)} ({type(exc).__name__}: {str(exc).strip()[:160]})"
    return None


def redact(dsn: str) -> str:
    """``dsn`` without a password, for reports."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", dsn)


def server_facts(dsn: str) -> dict[str, Any]:
    """The settings that decide what a commit costs, recorded with the results."""
    import psycopg

    names = (
        "server_version",
        "synchronous_commit",
        "fsync",
        "wal_sync_method",
        "commit_delay",
        "full_page_writes",
        "shared_buffers",
        "max_connections",
    )
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s)", (list(names),)
        ).fetchall()
        host = conn.info.host
    facts: dict[str, Any] = {
        name: f"{setting}{' x ' + unit if unit else ''}" for name, setting, unit in rows
    }
    facts["host"] = host
    return facts


def sql_for(driver: str, sql: str) -> str:
    """``$n`` placeholders for asyncpg; for psycopg ``%(pn)s`` (``%(pn)b`` for binary), so a
    parameter can be used twice, as the store's statements do (:meth:`Conn.call` names them)."""
    if driver == "asyncpg":
        return sql
    kind = "s" if driver == "psycopg" else "b"
    return re.sub(r"\$(\d+)", lambda m: f"%(p{m[1]}){kind}", sql)


def named(params: Sequence[Any]) -> dict[str, Any]:
    """``params`` as psycopg takes them for :func:`sql_for`'s placeholders."""
    return {f"p{i}": value for i, value in enumerate(params, 1)}


# --- schemas ------------------------------------------------------------------------------------


class PgRun:
    """The schemas of one run: :meth:`schema` names a fresh one (created on demand by whoever
    uses it), :meth:`drop_all` drops every schema whose name starts with the run's prefix."""

    def __init__(self, dsn: str, prefix: str | None = None) -> None:
        self.dsn = dsn
        self.prefix = prefix or f"jbench_{secrets.token_hex(4)}"
        self._count = 0

    def schema(self, what: str) -> str:
        self._count += 1
        return f"{self.prefix}_{self._count}_{re.sub(r'[^a-z0-9]', '', what.lower())[:20]}"

    def drop_all(self) -> list[str]:
        """Drop the run's schemas (synchronous: called outside any event loop, also on the way
        out of a failed run). Returns their names."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            names = [
                row[0]
                for row in conn.execute(
                    "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)",
                    (self.prefix + "_",),
                )
            ]
            for name in names:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        return names


async def make_tables(dsn: str, schema: str) -> None:
    """Jidoka's tables and indexes in ``schema``, made by its own store: the raw loops write
    the very tables the store writes."""
    from jidoka.store.postgres import PostgresStore

    store = PostgresStore(dsn, schema=schema, pool_size=1)
    await store.open()
    await store.aclose()


# --- connections, one interface for the three drivers --------------------------------------------


class Conn:
    """One connection of one driver; :meth:`call` runs one awaited call's statements (each a
    ``(sql, params)`` pair), all in one transaction when there are several, and returns after
    the commit."""

    def __init__(self, driver: str, raw: Any, pipeline: Any = None) -> None:
        self.driver = driver
        self.raw = raw
        self.pipeline = pipeline

    async def call(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        if self.driver == "asyncpg":
            if len(statements) == 1:
                await self.raw.execute(statements[0][0], *statements[0][1])
                return
            async with self.raw.transaction():
                for sql, params in statements:
                    await self.raw.execute(sql, *params)
            return
        if self.pipeline is not None:  # everything goes out at once; one wait, at the sync
            several = len(statements) > 1
            if several:
                await self.raw.execute("BEGIN")
            for sql, params in statements:
                await self.raw.execute(sql, named(params))
            if several:
                await self.raw.execute("COMMIT")
            await self.pipeline.sync()
        elif len(statements) == 1:
            await self.raw.execute(statements[0][0], named(statements[0][1]))
        else:
            async with self.raw.transaction():
                for sql, params in statements:
                    await self.raw.execute(sql, named(params))


@contextlib.asynccontextmanager
async def connect(driver: str, dsn: str, schema: str) -> AsyncIterator[Conn]:
    """A connection of ``driver`` whose ``search_path`` is ``schema``, in autocommit."""
    if driver == "asyncpg":
        import asyncpg

        raw = await asyncpg.connect(dsn, server_settings={"search_path": schema})
        try:
            yield Conn(driver, raw)
        finally:
            await raw.close()
        return
    import psycopg

    async with await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, options=f"-c search_path={schema}"
    ) as raw:
        if driver == "psycopg-pipeline":
            async with raw.pipeline() as pipeline:
                yield Conn(driver, raw, pipeline)
        else:
            yield Conn(driver, raw)


# --- statements ---------------------------------------------------------------------------------

INSERT_EVENT = "INSERT INTO events (session_id, seq, type, time, data) VALUES ($1, $2, $3, $4, $5)"


def store_call(schema: str, heads: Sequence[tuple[str, int]]) -> tuple[str, Sequence[Any]]:
    """The statement and parameters Jidoka's store sends for one event appended to each of
    the sessions ``heads`` ((session id, last seq stored), fence 1), built by the store's own
    code (``jidoka.store.postgres_sql``): its one-event form for a single session, its group
    form (arrays, ``unnest``) for several."""
    from jidoka.store import postgres_sql as q
    from jidoka.store.heads import BatchHead
    from jidoka.store.postgres_append import PgAppend

    quoted = f'"{schema}"'
    stamp = now()

    def append(sid: str, last: int) -> Any:
        head = BatchHead(status=None, status_at=None, created=False, owner=None)
        future: Any = None  # never settled: only its parameters are built
        return PgAppend(sid, last + 1, [EVENT_TYPE], [stamp], [DATA], head, None, future)

    appends = [(sid, 1, [append(sid, last)]) for sid, last in heads]
    if len(appends) == 1:
        sid, fence, [append] = appends[0]
        return q.append_one(quoted), q.one_params(sid, fence, append)
    return q.group_statement(quoted, creates=False, ends=False), q.group_params(appends)


#: The same group as two statements in one transaction (what pipeline mode sends at once).
GROUP_HEADS = """
UPDATE sessions AS h SET last_seq = b.last_seq, updated_at = now()
  FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])
       AS b(session_id, expected, fence, last_seq)
 WHERE h.session_id = b.session_id AND h.last_seq = b.expected AND h.fence = b.fence
"""
GROUP_EVENTS = """
INSERT INTO events (session_id, seq, type, time, data)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::timestamptz[], $5::bytea[])
"""


def session_id() -> str:
    return uuid.uuid4().hex[:26].upper()


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def event_row(sid: str, seq: int) -> tuple[str, int, str, dt.datetime, bytes]:
    return (sid, seq, EVENT_TYPE, now(), DATA)


def events_params(sid: str, last: int, per: int) -> list[Any]:
    """:data:`GROUP_EVENTS`' arrays: ``per`` events of one session after seq ``last``."""
    stamp = now()
    return [[sid] * per, list(range(last + 1, last + per + 1)), [EVENT_TYPE] * per,
            [stamp] * per, [DATA] * per]  # fmt: skip


def split_params(heads: Sequence[tuple[str, int]]) -> tuple[list[Any], list[Any]]:
    """:data:`GROUP_HEADS`' and :data:`GROUP_EVENTS`' arrays: one event after each head."""
    ids = [sid for sid, _ in heads]
    lasts = [last for _, last in heads]
    stamp = now()
    k = len(ids)
    return (
        [ids, lasts, [1] * k, [last + 1 for last in lasts]],
        [ids, [last + 1 for last in lasts], [EVENT_TYPE] * k, [stamp] * k, [DATA] * k],
    )


async def seed_sessions(conn: Conn, ids: Sequence[str]) -> None:
    """A head row for each session (last seq 1, fence 1), as a newly created session has."""
    sql = sql_for(
        conn.driver,
        "INSERT INTO sessions (session_id, last_seq, status, owner, fence, created_at, updated_at)"
        " SELECT id, 1, 'active', NULL, 1, now(), now() FROM unnest($1::text[]) AS id",
    )
    await conn.call([(sql, [list(ids)])])


# --- the raw loops ------------------------------------------------------------------------------


#: What a raw loop returns: rows per second, and the client's CPU seconds per row.
Rate = tuple[float, dict[str, float]]


async def _timed(body: Callable[[], Awaitable[None]], rows: int) -> Rate:
    """Run ``body`` on the clock: rows per second, and this process's CPU time per row (the
    driver's own cost, which a busy machine disturbs less than the wall clock)."""
    quiesce()
    cpu = time.process_time()
    start = clock()
    await body()
    elapsed = clock() - start
    return rows / elapsed, {"cpu_s_per_row": (time.process_time() - cpu) / rows}


async def per_commit(driver: str, dsn: str, schema: str, n: int) -> Rate:
    """Rows/s: one session's ``n`` inserts, each its own statement and commit, awaited one
    after another on one connection (the per-commit limit of one writer)."""
    async with connect(driver, dsn, schema) as conn:
        sql = sql_for(driver, INSERT_EVENT)
        warm = session_id()
        for seq in range(1, 21):  # warm-up: prepared statements, first pages
            await conn.call([(sql, event_row(warm, seq))])
        sid = session_id()

        async def body() -> None:
            for seq in range(1, n + 1):
                await conn.call([(sql, event_row(sid, seq))])

        return await _timed(body, n)


async def per_commit_pool(
    driver: str, dsn: str, schema: str, sessions: int, per_session: int, pool_size: int
) -> Rate:
    """Rows/s: ``sessions`` tasks at once, each inserting its session's ``per_session`` rows
    one commit each, over a pool of ``pool_size`` connections (a connection per call)."""
    ids = [session_id() for _ in range(sessions)]
    if driver == "asyncpg":
        import asyncpg

        async def no_reset(conn: Any) -> None:
            """asyncpg resets a connection it takes back with a query of its own (another round
            trip per call); an autocommit INSERT leaves nothing to reset."""

        pool = await asyncpg.create_pool(
            dsn,
            min_size=pool_size,
            max_size=pool_size,
            reset=no_reset,
            server_settings={"search_path": schema},
        )
        sql = INSERT_EVENT

        async def one(sid: str) -> None:
            for seq in range(1, per_session + 1):
                async with pool.acquire() as conn:
                    await conn.execute(sql, *event_row(sid, seq))

        try:
            await asyncio.gather(*(one(session_id()) for _ in range(pool_size)))  # warm-up
            rate = await _timed(lambda: _gather(one, ids), sessions * per_session)
        finally:
            await pool.close()
        return rate
    from psycopg_pool import AsyncConnectionPool

    sql = sql_for(driver, INSERT_EVENT)
    async with AsyncConnectionPool(
        dsn,
        min_size=pool_size,
        max_size=pool_size,
        kwargs={"autocommit": True, "options": f"-c search_path={schema}"},
        open=False,
    ) as ppool:
        await ppool.wait()

        async def one_p(sid: str) -> None:
            for seq in range(1, per_session + 1):
                async with ppool.connection() as conn:
                    await conn.execute(sql, named(event_row(sid, seq)))

        await asyncio.gather(*(one_p(session_id()) for _ in range(pool_size)))  # warm-up
        return await _timed(lambda: _gather(one_p, ids), sessions * per_session)


async def _gather(one: Callable[[str], Awaitable[None]], ids: Sequence[str]) -> None:
    async with asyncio.TaskGroup() as tg:
        for sid in ids:
            tg.create_task(one(sid))  # type: ignore[arg-type]


async def group_statements(
    driver: str, dsn: str, schema: str, sessions: int, rounds: int, *, split: bool = False
) -> Rate:
    """Rows/s: ``rounds`` groups one after another, each one row for each of ``sessions``
    sessions in the group commit's single statement (``split``: as two statements, heads then
    events, in one transaction). ``sessions=1`` is one session awaiting each append."""
    async with connect(driver, dsn, schema) as conn:
        ids = [session_id() for _ in range(sessions)]
        warm = [session_id() for _ in range(sessions)]
        await seed_sessions(conn, ids + warm)
        heads_sql, events_sql = sql_for(driver, GROUP_HEADS), sql_for(driver, GROUP_EVENTS)
        store_sql = sql_for(driver, store_call(schema, [(ids[0], 1)] * sessions)[0])

        async def one(batch: Sequence[str], last: int) -> None:
            if split:
                heads, events = split_params([(sid, last) for sid in batch])
                await conn.call([(heads_sql, heads), (events_sql, events)])
            else:
                await conn.call(
                    [(store_sql, store_call(schema, [(sid, last) for sid in batch])[1])]
                )

        for last in range(1, 11):  # warm-up: prepared statements, first pages
            await one(warm, last)

        async def body() -> None:
            for last in range(1, rounds + 1):
                await one(ids, last)

        rate = await _timed(body, sessions * rounds)
        check = sql_for(driver, "SELECT sum(last_seq) FROM sessions WHERE session_id = ANY($1)")
        if driver == "asyncpg":
            total = await conn.raw.fetchval(check, ids)
        else:
            async with conn.raw.cursor() as cur:
                await cur.execute(check, named([ids]))
                if conn.pipeline is not None:
                    await conn.pipeline.sync()
                total = (await cur.fetchone())[0]
        if int(total) != sessions * (rounds + 1):
            raise RuntimeError(f"the groups moved the heads to {total}, not {sessions * rounds}")
    return rate


async def batched(driver: str, dsn: str, schema: str, rows: int) -> Rate:
    """Rows/s: ``rows`` rows of one session in one statement (unnest arrays) and one commit."""
    async with connect(driver, dsn, schema) as conn:
        sql = sql_for(driver, GROUP_EVENTS)
        await conn.call([(sql, events_params(session_id(), 0, 10))])  # warm-up
        params = events_params(session_id(), 0, rows)

        async def body() -> None:
            await conn.call([(sql, params)])

        return await _timed(body, rows)
