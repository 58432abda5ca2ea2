"""The peers of ``bench_postgres`` on the same PostgreSQL, each through its own natural API and
with its own defaults, in a schema of its own (``search_path``).

- **LangGraph** (``langgraph-checkpoint-postgres``): ``AsyncPostgresSaver`` on an
  ``AsyncConnectionPool`` set up as its documentation shows (``max_size=20``, ``autocommit``,
  ``prepare_threshold=0``, ``dict_row``), one thread per session. Appending a message is what
  one step of a graph with the default ``MessagesState`` channel saves: ``aput_writes`` of the
  task's write (the new ``HumanMessage``) against the thread's current checkpoint, then
  ``aput`` of the next checkpoint, whose ``messages`` channel holds the whole list as a new
  blob version (so the cost of an append grows with the thread; a ``DeltaChannel`` would
  change that, but it is not the default and needs the graph runtime, which is not installed).
  Loading a thread is ``aget_tuple`` of its latest checkpoint.
- **Google ADK** ``DatabaseSessionService`` on ``postgresql+asyncpg://`` (SQLAlchemy's async
  engine with its default pool): ``create_session``, then ``append_event`` of an ``Event``
  with user content per message (it reads and locks the session row, checks staleness, inserts
  the event, commits). Loading is ``get_session`` (every event).

A session's or thread's first write (the ADK's ``create_session``, LangGraph's first
checkpoint) happens before the clock starts, as Jidoka's ``create_session`` does.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._common import clock, quiesce
from ._pg import CONTENT, connect, sql_for

__all__ = ["ADK", "LANGGRAPH", "PEERS", "missing", "version"]

LANGGRAPH = "langgraph-checkpoint-postgres"
ADK = "google-adk"
PEERS = (LANGGRAPH, ADK)

TITLES = {
    LANGGRAPH: "LangGraph AsyncPostgresSaver (psycopg pool)",
    ADK: "Google ADK DatabaseSessionService (postgresql+asyncpg)",
}

_REQUIRES: dict[str, tuple[tuple[str, ...], str]] = {
    LANGGRAPH: (
        ("langgraph.checkpoint.postgres.aio", "psycopg_pool", "langchain_core.messages"),
        "pip install langgraph-checkpoint-postgres",
    ),
    ADK: (
        ("google.adk.sessions.database_session_service", "sqlalchemy.ext.asyncio", "asyncpg"),
        "pip install 'google-adk[db]' asyncpg",
    ),
}

#: LangGraph's documented pool size for its Postgres saver.
LANGGRAPH_POOL = 20


def missing(peer: str) -> str | None:
    """Why ``peer`` cannot be measured (a module does not import), or ``None``."""
    modules, how = _REQUIRES[peer]
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return f"not installed ({exc.name or module} missing; {how})"
    return None


def version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


async def _make_schema(dsn: str, schema: str) -> None:
    async with connect("psycopg", dsn, "public") as conn:
        await conn.call([(f'CREATE SCHEMA "{schema}"', ())])


async def _timed_tasks(calls: Sequence[Callable[[], Awaitable[None]]]) -> float:
    quiesce()
    start = clock()
    async with asyncio.TaskGroup() as tg:
        for call in calls:
            tg.create_task(call())  # type: ignore[arg-type]
    return clock() - start


# --- LangGraph ----------------------------------------------------------------------------------


@dataclass
class _Thread:
    """One LangGraph thread as a graph would carry it between steps."""

    thread_id: str
    config: dict[str, Any] = field(default_factory=dict)
    messages: list[Any] = field(default_factory=list)
    version: str | None = None
    step: int = -1


class _LangGraph:
    def __init__(self, saver: Any) -> None:
        from langchain_core.messages import HumanMessage
        from langgraph.checkpoint.base import empty_checkpoint

        self.saver = saver
        self._message = HumanMessage
        self._empty = empty_checkpoint

    def _checkpoint(self, thread: _Thread) -> dict[str, Any]:
        checkpoint: dict[str, Any] = dict(self._empty())
        checkpoint["channel_values"] = {"messages": thread.messages}
        checkpoint["channel_versions"] = {"messages": thread.version}
        checkpoint["updated_channels"] = ["messages"]
        return checkpoint

    async def _put(self, thread: _Thread) -> None:
        thread.version = self.saver.get_next_version(thread.version, None)
        thread.step += 1
        metadata = {"source": "loop", "step": thread.step, "parents": {}}
        thread.config = await self.saver.aput(
            thread.config, self._checkpoint(thread), metadata, {"messages": thread.version}
        )

    async def start(self, thread_id: str, messages: Sequence[Any] = ()) -> _Thread:
        """The thread's first checkpoint (its input), holding ``messages``."""
        thread = _Thread(thread_id, {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}})
        thread.messages = list(messages)
        await self._put(thread)
        return thread

    def message(self) -> Any:
        return self._message(content=CONTENT, id=str(uuid.uuid4()))

    async def append(self, thread: _Thread) -> None:
        """One graph step adding one message: the task's write, then the new checkpoint."""
        message = self.message()
        await self.saver.aput_writes(thread.config, [("messages", [message])], str(uuid.uuid4()))
        thread.messages = [*thread.messages, message]  # add_messages returns a new list
        await self._put(thread)

    async def load(self, thread_id: str) -> int:
        config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        got = await self.saver.aget_tuple(config)
        if got is None:
            raise RuntimeError(f"LangGraph thread {thread_id} not found")
        return len(got.checkpoint["channel_values"]["messages"])


async def _langgraph(dsn: str, schema: str, body: Callable[[_LangGraph], Awaitable[Any]]) -> Any:
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    async with AsyncConnectionPool(
        dsn,
        max_size=LANGGRAPH_POOL,
        kwargs={
            "autocommit": True,
            "prepare_threshold": 0,
            "row_factory": dict_row,
            "options": f"-c search_path={schema}",
        },
        open=False,
    ) as pool:
        saver = AsyncPostgresSaver(pool)
        return await body(_LangGraph(saver))


async def langgraph_setup(dsn: str, schema: str) -> None:
    await _make_schema(dsn, schema)

    async def setup(lg: _LangGraph) -> None:
        await lg.saver.setup()

    await _langgraph(dsn, schema, setup)


async def langgraph_appends(
    dsn: str, schema: str, sessions: int, per_session: int
) -> tuple[float, dict[str, Any]]:
    """Messages/s: one thread per session, each appending ``per_session`` messages in a task
    of its own (``sessions=1``: one thread, each append awaited)."""

    async def body(lg: _LangGraph) -> tuple[float, dict[str, Any]]:
        warm = await lg.start(f"warm-{uuid.uuid4()}")
        for _ in range(5):
            await lg.append(warm)
        threads = [await lg.start(str(uuid.uuid4())) for _ in range(sessions)]

        def task(thread: _Thread) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                for _ in range(per_session):
                    await lg.append(thread)

            return run

        elapsed = await _timed_tasks([task(t) for t in threads])
        stored = await lg.load(threads[0].thread_id)
        if stored != per_session:
            raise RuntimeError(f"LangGraph thread holds {stored} messages, not {per_session}")
        return sessions * per_session / elapsed, {"pool_max_size": LANGGRAPH_POOL}

    result: tuple[float, dict[str, Any]] = await _langgraph(dsn, schema, body)
    return result


async def langgraph_fill(dsn: str, schema: str, n: int) -> str:
    """A thread whose latest checkpoint holds ``n`` messages (one ``aput``), and a small one
    for warming up; returns the long thread's id."""

    async def body(lg: _LangGraph) -> str:
        await lg.start("warm", [lg.message()])
        thread = await lg.start(str(uuid.uuid4()), [lg.message() for _ in range(n)])
        return thread.thread_id

    thread_id: str = await _langgraph(dsn, schema, body)
    return thread_id


async def langgraph_load(dsn: str, schema: str, thread_id: str, n: int) -> float:
    """Seconds: ``aget_tuple`` of the long thread on a fresh pool (warmed on another thread)."""

    async def body(lg: _LangGraph) -> float:
        await lg.load("warm")
        quiesce()
        start = clock()
        got = await lg.load(thread_id)
        elapsed = clock() - start
        if got != n:
            raise RuntimeError(f"LangGraph loaded {got} messages, not {n}")
        return elapsed

    seconds: float = await _langgraph(dsn, schema, body)
    return seconds


# --- Google ADK ---------------------------------------------------------------------------------


def _adk_url(dsn: str) -> str:
    scheme, _, rest = dsn.partition("://")
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a postgresql:// DSN: {scheme}://...")
    return f"postgresql+asyncpg://{rest}"


def _adk_event() -> Any:
    from google.adk.events import Event
    from google.genai import types

    return Event(
        author="user",
        invocation_id="bench",
        content=types.Content(role="user", parts=[types.Part(text=CONTENT)]),
    )


async def _adk(dsn: str, schema: str, body: Callable[[Any], Awaitable[Any]]) -> Any:
    from google.adk.sessions import DatabaseSessionService

    service = DatabaseSessionService(
        db_url=_adk_url(dsn), connect_args={"server_settings": {"search_path": schema}}
    )
    try:
        return await body(service)
    finally:
        await service.close()


async def adk_setup(dsn: str, schema: str) -> None:
    await _make_schema(dsn, schema)

    async def setup(service: Any) -> None:
        await service.create_session(app_name="bench", user_id="warm")

    await _adk(dsn, schema, setup)


async def adk_appends(
    dsn: str, schema: str, sessions: int, per_session: int
) -> tuple[float, dict[str, Any]]:
    """Events/s: ``sessions`` sessions, each appending ``per_session`` events in a task of its
    own (``sessions=1``: each append awaited)."""

    async def body(service: Any) -> tuple[float, dict[str, Any]]:
        warm = await service.create_session(app_name="bench", user_id="warm")
        for _ in range(5):
            await service.append_event(warm, _adk_event())
        handles = [
            await service.create_session(app_name="bench", user_id=f"user-{i}")
            for i in range(sessions)
        ]

        def task(handle: Any) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                for _ in range(per_session):
                    await service.append_event(handle, _adk_event())

            return run

        elapsed = await _timed_tasks([task(h) for h in handles])
        first = handles[0]
        stored = await service.get_session(
            app_name="bench", user_id=first.user_id, session_id=first.id
        )
        count = len(stored.events) if stored else 0
        if count != per_session:
            raise RuntimeError(f"the ADK session holds {count} events, not {per_session}")
        pool = service.db_engine.pool
        return sessions * per_session / elapsed, {"pool": f"{type(pool).__name__} {pool.status()}"}

    result: tuple[float, dict[str, Any]] = await _adk(dsn, schema, body)
    return result


#: Events of the ADK's long session appended through its API; the rest are copies made in SQL.
ADK_API_EVENTS = 100


async def adk_fill(dsn: str, schema: str, n: int) -> tuple[str, str]:
    """A session of ``n`` events: the first :data:`ADK_API_EVENTS` through ``append_event``
    (one after another: the service refuses a stale session object, so one session's appends
    cannot overlap), then copies of those rows made in SQL, each with a new id and a later
    timestamp (in its columns and in its ``event_data``), until there are ``n``. Appending all
    of them through the API takes 35-100 s here. Returns (user id, session id)."""

    appended = min(ADK_API_EVENTS, -(-n // 4))  # a quarter at tiny sizes, so copies are made

    async def body(service: Any) -> tuple[str, str]:
        handle = await service.create_session(app_name="bench", user_id="long")
        for _ in range(appended):
            await service.append_event(handle, _adk_event())
        return handle.user_id, handle.id

    user_id, session_id = await _adk(dsn, schema, body)
    copies = -(-n // appended) - 1  # ceil(n / appended) - 1
    if copies > 0:
        async with connect("psycopg", dsn, schema) as conn:
            await conn.call([(sql_for("psycopg", _ADK_COPY), (copies, session_id, n))])
    return user_id, session_id


#: Copy every event of a session ``copies`` times, keeping at most ``n`` events in all.
_ADK_COPY = """
INSERT INTO events (id, app_name, user_id, session_id, invocation_id, timestamp, event_data)
SELECT c.id, c.app_name, c.user_id, c.session_id, c.invocation_id, c.ts,
       jsonb_set(jsonb_set(c.event_data::jsonb, '{id}', to_jsonb(c.id)),
                 '{timestamp}', to_jsonb(extract(epoch FROM c.ts)))
FROM (
    SELECT e.id || '-' || g AS id, e.app_name, e.user_id, e.session_id, e.invocation_id,
           e.timestamp + g * interval '1 second' AS ts, e.event_data,
           row_number() OVER () AS k
    FROM events AS e, generate_series(1, $1) AS g
    WHERE e.session_id = $2
) AS c
WHERE c.k <= $3 - (SELECT count(*) FROM events WHERE session_id = c.session_id)
"""


async def adk_load(dsn: str, schema: str, user_id: str, session_id: str, n: int) -> float:
    """Seconds: ``get_session`` of the long session on a fresh service (warmed on another)."""

    async def body(service: Any) -> float:
        warm = await service.list_sessions(app_name="bench", user_id="warm")
        del warm
        quiesce()
        start = clock()
        got = await service.get_session(app_name="bench", user_id=user_id, session_id=session_id)
        elapsed = clock() - start
        if got is None or len(got.events) != n:
            raise RuntimeError(f"the ADK loaded {len(got.events) if got else 0} events, not {n}")
        return elapsed

    seconds: float = await _adk(dsn, schema, body)
    return seconds
