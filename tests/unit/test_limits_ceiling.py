"""Ceilings on what a client may ask for: session limits (``Settings.session_ceilings``) and
queued agent turns (``SessionConfig.max_queued_turns``, ``Settings.max_queued_turns_total``).

Every limit a session's config sets is a number a client chooses; without a ceiling one
``create_session`` could let the session hold gigabytes (``max_file_bytes=2**40`` made the
file read itself raise ``MemoryError``). Each test here fails on a runtime without ceilings.
"""

from __future__ import annotations

import asyncio
import json
import typing
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import jidoka
from jidoka.bus.base import Subscription
from jidoka.config import SessionCeilings, SessionConfig, Settings
from jidoka.errors import InvalidConfig, LimitExceeded
from jidoka.events import Event, EventType
from jidoka.server.streams import CHUNK_BYTES, EventStream, StreamRegistry
from jidoka.store.sqlite import SqliteStore

from ..helpers import until

CEILINGS = SessionCeilings()
FIELDS = list(SessionCeilings.__struct_fields__)


def above(name: str, ceiling: SessionCeilings = CEILINGS) -> Any:
    """The smallest config value past ``name``'s ceiling."""
    limit = getattr(ceiling, name)
    if name == "features":
        return {f"flag{i}": True for i in range(limit + 1)}
    return limit + 1 if isinstance(limit, int) else limit * 2


def at(name: str, ceiling: SessionCeilings = CEILINGS) -> Any:
    limit = getattr(ceiling, name)
    if name == "features":
        return {f"flag{i}": True for i in range(limit)}
    return limit


def test_every_numeric_session_limit_has_a_ceiling() -> None:
    """A new numeric SessionConfig field without a ceiling fails here, not in production."""
    hints = typing.get_type_hints(SessionConfig, include_extras=True)
    numeric = {
        name
        for name, hint in hints.items()
        if typing.get_origin(hint) is typing.Annotated and typing.get_args(hint)[0] in (int, float)
    }
    assert numeric, "SessionConfig has numeric limits"
    assert numeric | {"features"} == set(FIELDS)


def test_the_defaults_are_within_the_ceilings() -> None:
    assert CEILINGS.check(SessionConfig()) == SessionConfig()
    assert Settings().session_config(None) == SessionConfig()


@pytest.mark.parametrize("name", FIELDS)
def test_a_value_past_its_ceiling_is_refused_naming_field_value_and_ceiling(name: str) -> None:
    config = SessionConfig.from_dict({name: above(name)})
    with pytest.raises(InvalidConfig) as caught:
        CEILINGS.check(config, session_id="s-1")
    error = caught.value
    assert error.field == name
    assert error.session_id == "s-1"
    assert name in error.message
    assert str(getattr(CEILINGS, name)) in error.message
    if name != "features":
        assert repr(above(name)) in error.message
    with pytest.raises(InvalidConfig) as caught:
        Settings().session_config({name: above(name)})
    assert caught.value.field == name


@pytest.mark.parametrize("name", FIELDS)
def test_a_value_at_its_ceiling_is_accepted(name: str) -> None:
    config = Settings().session_config({name: at(name)})
    assert getattr(config, name) == at(name)


@pytest.mark.parametrize(
    ("name", "value"),
    [("max_file_bytes", 1 << 30), ("max_file_bytes", 2**40), ("max_history", 10**30),
     ("idle_after_seconds", 1e30), ("approval_timeout_seconds", float("inf")),
     ("max_iterations", 10**9), ("max_queued_turns", 10**6)],
)  # fmt: skip
def test_the_attackers_values_are_refused(name: str, value: Any) -> None:
    with pytest.raises(InvalidConfig) as caught:
        Settings().session_config({name: value})
    assert caught.value.field == name


def test_timeout_never_stays_allowed() -> None:
    """``timeout_minutes`` 0 is the documented "never"; idle sessions are bounded by
    ``max_sessions``, so the ceiling does not forbid it."""
    assert Settings().session_config({"timeout_minutes": 0}).timeout_minutes == 0
    with pytest.raises(InvalidConfig):
        Settings().session_config({"timeout_minutes": 10_081})


def test_none_lifts_a_ceiling_and_the_operator_sets_them() -> None:
    lifted = Settings(session_ceilings=SessionCeilings(max_file_bytes=None))
    assert lifted.session_config({"max_file_bytes": 1 << 30}).max_file_bytes == 1 << 30
    tight = Settings.build(
        {"session_ceilings": {"max_history": 10}, "session_defaults": {"max_history": 10}}
    )
    assert tight.session_ceilings.max_history == 10
    assert tight.session_ceilings.max_files == CEILINGS.max_files  # the rest stays default
    tight.session_config({"max_history": 10})
    with pytest.raises(InvalidConfig) as caught:
        tight.session_config({"max_history": 11})
    assert caught.value.field == "max_history"


def test_ceilings_from_the_environment() -> None:
    env = {"JIDOKA_SESSION_CEILINGS": json.dumps({"max_file_bytes": 2_000_000})}
    settings = Settings.from_env(env)
    assert settings.session_ceilings.max_file_bytes == 2_000_000
    with pytest.raises(InvalidConfig) as caught:
        Settings.from_env({"JIDOKA_SESSION_CEILINGS": '{"max_file_bytes": 0}'})
    assert caught.value.field == "session_ceilings.max_file_bytes"
    assert "JIDOKA_SESSION_CEILINGS" in caught.value.message
    with pytest.raises(InvalidConfig) as caught:
        Settings.from_env({"JIDOKA_SESSION_CEILINGS": '{"max_bogus": 1}'})
    assert caught.value.field == "session_ceilings.max_bogus"
    with pytest.raises(InvalidConfig) as caught:
        Settings.from_env({"JIDOKA_SESSION_CEILINGS": "[1]"})
    assert caught.value.field == "session_ceilings"


@pytest.mark.parametrize("name", FIELDS)
def test_session_defaults_above_the_ceilings_are_refused_at_start(name: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        Settings.build({"session_defaults": {name: above(name)}})
    assert caught.value.field == f"session_defaults.{name}"
    assert "JIDOKA_SESSION_CEILINGS" in caught.value.message
    env = {"JIDOKA_SESSION_DEFAULTS": json.dumps({name: above(name)})}
    with pytest.raises(InvalidConfig) as caught:
        Settings.from_env(env)
    assert caught.value.field == f"session_defaults.{name}"
    # Lowered ceilings under the default defaults: refused too.
    if name != "features":
        default = getattr(SessionConfig(), name)
        lower = type(default)(default / 2) if default > 1 else None
        if lower is not None:
            with pytest.raises(InvalidConfig) as caught:
                Settings.build({"session_ceilings": {name: lower}})
            assert caught.value.field == f"session_defaults.{name}"


def test_a_runtime_refuses_session_defaults_above_its_ceilings(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig) as caught:
        jidoka.Runtime(tmp_path, store="memory", session_defaults={"max_file_bytes": 1 << 30})
    assert caught.value.field == "session_defaults.max_file_bytes"


# --- through the runtime -----------------------------------------------------------------------


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[jidoka.Runtime]:
    async with jidoka.Runtime(tmp_path / "data", store="memory") as rt:
        yield rt


@pytest.mark.parametrize("name", FIELDS)
async def test_create_session_refuses_a_config_past_a_ceiling(
    runtime: jidoka.Runtime, name: str
) -> None:
    before = runtime.manager.live_count()
    with pytest.raises(InvalidConfig) as caught:
        await runtime.client.create_session(config={name: above(name)})
    assert caught.value.field == name
    assert runtime.manager.live_count() == before  # nothing was made


async def test_a_huge_max_file_bytes_never_reaches_the_file(
    runtime: jidoka.Runtime, tmp_path: Path
) -> None:
    """The attacker's case: a session allowed 1 TiB per file made ``add_file`` allocate it."""
    project = tmp_path / "project"
    project.mkdir()
    with (project / "big.bin").open("wb") as handle:
        handle.truncate(400 << 20)  # sparse: 400 MiB on paper, nothing on disk
    with pytest.raises(InvalidConfig) as caught:
        await runtime.client.create_session(
            config={"max_file_bytes": 2**40}, project_root=str(project)
        )
    assert caught.value.field == "max_file_bytes"
    sid = await runtime.client.create_session(
        config={"max_file_bytes": CEILINGS.max_file_bytes}, project_root=str(project)
    )
    with pytest.raises(LimitExceeded) as limit:
        await runtime.client.add_file(sid, "big.bin")
    assert (limit.value.limit, limit.value.maximum) == ("max_file_bytes", CEILINGS.max_file_bytes)


# --- queued turns --------------------------------------------------------------------------------


def hanging() -> dict[str, Any]:
    """A model whose first answer never ends: the first turn runs until cancelled."""
    return {"provider": "scripted", "script": [{"chunks": ["..."], "hang": True}]}


async def start_hanging_turn(runtime: jidoka.Runtime, sid: str) -> asyncio.Future[Any]:
    async with runtime.client.subscribe_to_session(sid, after_seq=0) as events:
        turn = await runtime.client.submit_chat(sid, "go")
        await until(events, "llm_stream_chunk")
    return turn


async def test_a_session_queues_at_most_max_queued_turns(runtime: jidoka.Runtime) -> None:
    sid = await runtime.client.create_session(config={"max_queued_turns": 3}, llm_config=hanging())
    running = await start_hanging_turn(runtime, sid)
    waiting = [await runtime.client.submit_chat(sid, f"turn {i}") for i in range(3)]
    for _ in range(20):  # a client that does not wait for answers
        with pytest.raises(LimitExceeded) as caught:
            await runtime.client.submit_chat(sid, "x" * 200_000)
        error = caught.value
        assert (error.limit, error.maximum, error.actual, error.session_id) == (
            "max_queued_turns",
            3,
            4,
            sid,
        )
    with pytest.raises(LimitExceeded):
        await runtime.client.chat(sid, "and the waiting kind")
    history = await runtime.client.get_conversation_history(sid)
    assert [m.content for m in history] == ["go"]  # refused turns left nothing behind
    await runtime.client.terminate_session(sid)
    for turn in (running, *waiting):
        with pytest.raises(jidoka.SessionTerminated):
            await turn


async def test_the_runtime_queues_at_most_max_queued_turns_total(tmp_path: Path) -> None:
    async with jidoka.Runtime(tmp_path, store="memory", max_queued_turns_total=3) as runtime:
        first = await runtime.client.create_session(
            config={"max_queued_turns": 2}, llm_config=hanging()
        )
        second = await runtime.client.create_session(
            config={"max_queued_turns": 2}, llm_config=hanging()
        )
        turns = [await start_hanging_turn(runtime, sid) for sid in (first, second)]
        turns += [await runtime.client.submit_chat(first, "a") for _ in range(2)]
        turns.append(await runtime.client.submit_chat(second, "b"))
        with pytest.raises(LimitExceeded) as caught:
            await runtime.client.submit_chat(second, "c")
        assert (caught.value.limit, caught.value.maximum) == ("max_queued_turns_total", 3)
        # A session that ends gives its waiting turns' places back.
        await runtime.client.terminate_session(first)
        turns.append(await runtime.client.submit_chat(second, "c"))
        third = await runtime.client.create_session(llm_config=hanging())
        turns.append(await start_hanging_turn(runtime, third))
        turns.append(await runtime.client.submit_chat(third, "d"))
        with pytest.raises(LimitExceeded):
            await runtime.client.submit_chat(third, "e")
        for sid in (second, third):
            await runtime.client.terminate_session(sid)
        for turn in turns:
            with pytest.raises(jidoka.SessionTerminated):
                await turn


# --- event streams -------------------------------------------------------------------------------


class Stalled:
    """An ASGI ``send`` to a client that stopped reading: body messages go into the buffer
    until the server waits for it to drain (the empty message), which never happens."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.waiting = asyncio.Event()
        self.gone = asyncio.Event()

    async def send(self, message: Any) -> None:
        if message["type"] != "http.response.body":
            return
        if message["body"]:
            self.chunks.append(message["body"])
        else:
            self.waiting.set()
            await asyncio.Event().wait()

    async def receive(self) -> Any:
        await self.gone.wait()
        return {"type": "http.disconnect"}


async def test_a_stalled_stream_reads_one_page_and_writes_one_chunk(tmp_path: Path) -> None:
    """40 events of 100 KB replayed to a client that does not read: the stream takes one
    store page (``max_bytes``) and writes one bounded chunk, then waits; it used to read the
    whole log and write it as one 4 MB chunk."""
    sid, size, page = "A" * 26, 100_000, 256 * 1024
    store = SqliteStore(tmp_path / "events.sqlite3")
    await store.open()
    try:
        when = datetime.now(UTC)
        await store.append(
            sid,
            [Event(EventType.CONVERSATION_ADDED, sid, seq, when, {"content": "x" * size})
             for seq in range(1, 41)],
        )  # fmt: skip
        reads: list[int] = []

        async def reader(session_id: str, after: int, limit: int) -> list[Event]:
            events = await store.read_events(
                session_id, after_seq=after, limit=limit, max_bytes=page
            )
            reads.append(len(events))
            return events

        @asynccontextmanager
        async def subscribe() -> AsyncIterator[Subscription]:
            yield Subscription(sid, queue_size=1_000, reader=reader, now=lambda: 0.0, after_seq=0)

        registry = StreamRegistry(max_per_principal=1)
        stream = EventStream(
            subscribe(), registry=registry, heartbeat=60.0, by_seq=True, principal="p"
        )
        await stream.open()
        assert registry.streams("p") == 1
        client = Stalled()
        task = asyncio.create_task(stream({"type": "http"}, client.receive, client.send))
        async with asyncio.timeout(10):
            await client.waiting.wait()
        assert reads == [3]  # one page: the third event reaches 256 KiB
        written = sum(len(chunk) for chunk in client.chunks)
        assert written <= CHUNK_BYTES + 2 * size
        # A second stream of the same principal is refused before it subscribes.
        second = EventStream(
            subscribe(), registry=registry, heartbeat=60.0, by_seq=True, principal="p"
        )
        with pytest.raises(LimitExceeded) as caught:
            await second.open()
        assert (caught.value.limit, caught.value.maximum) == ("max_streams_per_principal", 1)
        client.gone.set()  # the client goes away: the stream ends and gives its place back
        async with asyncio.timeout(10):
            await task
        assert registry.streams("p") == 0
    finally:
        await store.aclose()
