"""Nothing that runs after a commit may turn the command into an error (issue 10, item 10).

Once a command's events are in the store the command has happened: a caller told otherwise
retries and writes it twice. Each test here makes one step that runs after the commit fail (the
projection's apply, the bus, a subscriber, the command's follow-up, the idle timer, a snapshot,
a telemetry span or metric, the end of the streams, the workers' stop) during one command (send
a message, add a file, set a working-context value, terminate) and checks that the caller sees
success once, the store holds the command's event once, the failure is logged with the session
id, and what it broke is repaired (the projection rebuilt, the idle timer re-armed).

The same, with the original defect (an idle session without a time-out, woken by a message),
runs against a real ``jidoka serve``: once as it is, once with faults planted in the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

import jidoka
from jidoka import FakeClock, Status
from jidoka.bus.base import Subscription
from jidoka.events import Event, EventType
from jidoka.session import postcommit
from jidoka.session import session as session_module
from jidoka.session.lifecycle import Lifecycle
from jidoka.session.manager import SessionManager
from jidoka.session.recovery import Recovery
from tests.e2e.conftest import ALICE_TOKEN, ServerProcess, SSEFrame, http_client, sse_frames
from tests.helpers import next_event, quiesce, settle, take, until

IDLE_AFTER = 10.0
CONFIG = {"idle_after_seconds": IDLE_AFTER, "timeout_minutes": 0}


class InjectedFault(RuntimeError):
    """The failure planted after the commit."""


# --- the commands -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    run: Callable[[jidoka.Client, str], Awaitable[Any]]
    event_type: str
    span: str  # the telemetry operation it runs in


async def _send(client: jidoka.Client, sid: str) -> Any:
    message = await client.send_message(sid, "user", "hello")
    assert (message.role, message.content) == ("user", "hello")
    return message


async def _add_file(client: jidoka.Client, sid: str) -> Any:
    active = await client.add_file(sid, "src/app.py")
    assert active.path == "src/app.py"
    return active


async def _put(client: jidoka.Client, sid: str) -> Any:
    await client.put_working_context(sid, "plan", {"step": 1})


async def _terminate(client: jidoka.Client, sid: str) -> Any:
    info = await client.terminate_session(sid)
    assert info.status is Status.TERMINATED
    return info


COMMANDS = {
    "send_message": Command(_send, EventType.CONVERSATION_ADDED, "send_message"),
    "add_file": Command(_add_file, EventType.FILE_ADDED, "add_file"),
    "put_working_context": Command(_put, EventType.WORKING_CONTEXT_UPDATED, "put_working_context"),
    "terminate": Command(_terminate, EventType.SESSION_TERMINATED, "terminate_session"),
}


async def _took_effect(client: jidoka.Client, sid: str, command: str) -> None:
    """The projection shows the command (after any repair)."""
    if command == "send_message":
        assert [m.content for m in await client.get_conversation_history(sid)] == ["hello"]
    elif command == "add_file":
        assert [f.path for f in await client.get_active_files(sid)] == ["src/app.py"]
    elif command == "put_working_context":
        assert await client.get_working_context(sid, "plan") == {"step": 1}
    else:
        assert (await client.get_session_info(sid)).status is Status.TERMINATED


# --- the faults ---------------------------------------------------------------------------------


@dataclass
class Plant:
    """What a fault needs to plant itself, and how often it fired."""

    runtime: jidoka.Runtime
    monkeypatch: pytest.MonkeyPatch
    sid: str
    command: Command
    fired: int = 0

    def once(self) -> bool:
        """True the first time (the fault fires once; the repair must then hold)."""
        self.fired += 1
        return self.fired == 1

    def fail(self) -> None:
        if self.once():
            raise InjectedFault(f"planted after the commit of {self.command.event_type}")

    def hits(self, event: Event) -> bool:
        return event.session_id == self.sid and event.type == self.command.event_type


def _apply(plant: Plant) -> None:
    # Patched where postcommit looks it up; postcommit imports it without re-exporting it.
    real = postcommit.apply  # type: ignore[attr-defined]

    def apply(state: Any, event: Event) -> None:
        if plant.hits(event):
            plant.fail()
        real(state, event)

    plant.monkeypatch.setattr(postcommit, "apply", apply)


def _publish(plant: Plant) -> None:
    services = plant.runtime.manager.services
    real = services.publish_nowait

    def publish(event: Event) -> None:
        if plant.hits(event):
            plant.fail()
        real(event)

    plant.monkeypatch.setattr(services, "publish_nowait", publish)


def _subscriber(plant: Plant) -> None:
    real = Subscription.offer

    def offer(self: Subscription, event: Event) -> None:
        if plant.hits(event):
            plant.fail()
        real(self, event)

    plant.monkeypatch.setattr(Subscription, "offer", offer)


def _follow_up(plant: Plant) -> None:
    if plant.command.event_type == EventType.FILE_ADDED:
        cache = plant.runtime.manager.services.cache
        real = cache.put

        def put(*args: Any) -> bool:
            plant.fail()
            return real(*args)

        plant.monkeypatch.setattr(cache, "put", put)
    else:
        real_count = session_module.Session._count_message

        def count(self: session_module.Session) -> None:
            plant.fail()
            real_count(self)

        plant.monkeypatch.setattr(session_module.Session, "_count_message", count)


def _idle_timer(plant: Plant) -> None:
    real = SessionManager.touch

    def touch(self: SessionManager, session: session_module.Session) -> None:
        plant.fail()
        real(self, session)

    plant.monkeypatch.setattr(SessionManager, "touch", touch)


def _snapshot(plant: Plant) -> None:
    def snapshot(self: Recovery, session: session_module.Session) -> None:
        plant.fail()

    plant.monkeypatch.setattr(Recovery, "snapshot", snapshot)
    plant.runtime.manager.get(plant.sid).snapshot_seq = -(10**6)  # a snapshot is due


class _FailingSpanEnd(SpanProcessor):
    """A span processor that raises when the command's span ends (an exporter's bug)."""

    def __init__(self, plant: Plant) -> None:
        self.plant = plant

    def on_end(self, span: ReadableSpan) -> None:
        if span.name == f"jidoka.{self.plant.command.span}":
            self.plant.fail()


def _span(plant: Plant) -> None:
    provider = TracerProvider()
    provider.add_span_processor(_FailingSpanEnd(plant))
    telemetry = plant.runtime.manager.telemetry
    plant.monkeypatch.setattr(telemetry, "tracer", provider.get_tracer("test"))
    plant.monkeypatch.setattr(telemetry, "_tracing", True)


def _metric(plant: Plant) -> None:
    class Counter:
        def add(self, amount: int, attributes: Any = None) -> None:
            plant.fail()

    plant.monkeypatch.setattr(plant.runtime.manager.telemetry, "sessions_terminated", Counter())


def _streams(plant: Plant) -> None:
    bus = plant.runtime.manager.services.bus
    real = bus.close_session

    async def close_session(session_id: str) -> None:
        plant.fail()
        await real(session_id)

    plant.monkeypatch.setattr(bus, "close_session", close_session)


def _workers(plant: Plant) -> None:
    real = Lifecycle.release

    async def release(self: Lifecycle, session: session_module.Session) -> None:
        plant.fail()
        await real(self, session)

    plant.monkeypatch.setattr(Lifecycle, "release", release)


FAULTS: dict[str, Callable[[Plant], None]] = {
    "apply": _apply,
    "publish": _publish,
    "subscriber": _subscriber,
    "follow-up": _follow_up,
    "idle-timer": _idle_timer,
    "snapshot": _snapshot,
    "span": _span,
    "metric": _metric,
    "streams": _streams,
    "workers": _workers,
}

_EVERY = ("apply", "publish", "subscriber", "span")
CASES = [
    *[(command, fault) for command in COMMANDS for fault in _EVERY],
    *[
        (command, fault)
        for command in ("send_message", "add_file", "put_working_context")
        for fault in ("idle-timer", "snapshot")
    ],
    ("send_message", "follow-up"),
    ("add_file", "follow-up"),
    *[("terminate", fault) for fault in ("metric", "streams", "workers")],
]


def _fault_records(caplog: pytest.LogCaptureFixture, sid: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and getattr(r, "session_id", None) == sid
    ]


async def _keep_log(session_id: str) -> None:
    """Stands in for ``store.release``: the memory store would free a terminated session's
    log, and the test wants to count what it holds."""


@pytest.mark.parametrize(("command", "fault"), CASES, ids=[f"{c}-{f}" for c, f in CASES])
async def test_a_failure_after_the_commit_does_not_fail_the_command(
    runtime: jidoka.Runtime,
    clock: FakeClock,
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    command: str,
    fault: str,
) -> None:
    client = runtime.client
    sid = await client.create_session(config=CONFIG, project_root=str(project))
    monkeypatch.setattr(runtime.store, "release", _keep_log)
    plant = Plant(runtime, monkeypatch, sid, COMMANDS[command])
    FAULTS[fault](plant)
    async with contextlib.AsyncExitStack() as stack:
        if fault == "subscriber":
            await stack.enter_async_context(client.subscribe_to_session(sid))
        with caplog.at_level(logging.ERROR):
            await COMMANDS[command].run(client, sid)  # success: it returns, once
            await quiesce(runtime)  # the repairs run in the background

    assert plant.fired == 1, "the fault was not on the command's path"
    stored = await runtime.store.read_events(sid)
    assert [e.type.value for e in stored].count(COMMANDS[command].event_type) == 1
    assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
    records = _fault_records(caplog, sid)
    assert records, caplog.text
    assert sid in records[0].getMessage()
    assert any(isinstance(r.exc_info and r.exc_info[1], InjectedFault) for r in records)
    await _took_effect(client, sid, command)
    if command == "terminate":
        return
    # Not broken: the next command works, and the session goes idle on time.
    async with client.subscribe_to_all_sessions() as lifecycle:
        await client.send_message(sid, "user", "after")
        clock.advance(IDLE_AFTER)
        idle = await until(lifecycle, "session_status", status="idle")
    assert idle.session_id == sid
    assert len(await runtime.store.read_events(sid)) == len(stored) + 2


async def test_a_projection_that_cannot_be_rebuilt_ends_its_session(
    runtime: jidoka.Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An apply that fails on a stored event every time (a bug, not a fluke): replaying the log
    fails too, so the session is terminated with the error; the command itself stood."""
    client = runtime.client
    sid = await client.create_session(config=CONFIG)

    def apply_fails(state: Any, event: Event) -> None:
        raise InjectedFault("this event cannot be applied")

    # Patched where postcommit looks it up; postcommit imports it without re-exporting it.
    real = postcommit.apply  # type: ignore[attr-defined]

    def apply(state: Any, event: Event) -> None:
        (apply_fails if event.type == EventType.CONVERSATION_ADDED else real)(state, event)

    monkeypatch.setattr(postcommit, "apply", apply)
    monkeypatch.setattr("jidoka.session.projection.apply", apply)  # loading folds through it
    async with client.subscribe_to_session(sid) as events:
        with caplog.at_level(logging.ERROR):
            message = await client.send_message(sid, "user", "poison")
            await quiesce(runtime)
        seen = [event async for event in events]
    assert message.content == "poison"
    info = await client.get_session_info(sid)
    assert (info.status, info.reason) == (Status.TERMINATED, "error")
    assert info.error is not None
    assert "replaying" in info.error
    assert [e.type for e in seen].count(EventType.CONVERSATION_ADDED) == 1
    assert seen[-1].type == EventType.SESSION_TERMINATED
    assert "could not be rebuilt" in caplog.text


# --- cancellation -------------------------------------------------------------------------------


@pytest.mark.stores("sqlite", "postgres")  # stores that commit off the caller's turn
async def test_a_caller_cancelled_after_the_commit_still_gets_its_effects(
    runtime: jidoka.Runtime, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The message that wakes an idle session is committed while its caller is cancelled: it
    is applied, published and re-arms the idle timer all the same (the timer was re-armed after
    the call returned, so a cancelled caller left the session active for ever)."""
    client = runtime.client
    services = runtime.manager.services
    real = services.append_nowait
    commits: list[Awaitable[None]] = []
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def append_nowait(*args: Any) -> Awaitable[None]:
        waiting = real(*args)  # the store commits, and calls back, as usual
        assert waiting is not None
        commits.append(waiting)
        return gate  # but the caller waits here, until cancelled

    async with client.subscribe_to_all_sessions() as lifecycle:
        sid = await client.create_session(config=CONFIG)
        await take(lifecycle, 2)
        clock.advance(IDLE_AFTER)
        await until(lifecycle, "session_status", status="idle")
        async with client.subscribe_to_session(sid) as events:
            monkeypatch.setattr(services, "append_nowait", append_nowait)
            caller = asyncio.create_task(client.send_message(sid, "user", "hello"))
            await settle()
            assert len(commits) == 1
            assert not caller.done()
            caller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await caller
            await asyncio.wait_for(commits[0], 10.0)
            monkeypatch.setattr(services, "append_nowait", real)
            woke = await next_event(events)
            added = await next_event(events)
        assert woke.data["status"] == "active"
        assert added.data == {"role": "user", "content": "hello"}
        assert [m.content for m in await client.get_conversation_history(sid)] == ["hello"]
        clock.advance(IDLE_AFTER)
        idle = await until(lifecycle, "session_status", status="idle")
    assert (idle.session_id, idle.seq) == (sid, added.seq + 1)


async def test_a_termination_whose_caller_is_cancelled_still_ends_the_session(
    runtime: jidoka.Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while the session's workers stop (before anything is committed), the
    termination carries on: ``terminating``, ``terminated`` and ``session_terminated`` are
    committed and published, once."""
    client = runtime.client
    monkeypatch.setattr(runtime.store, "release", _keep_log)
    sid = await client.create_session()
    started, stopping, let_go = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow_to_stop() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopping.set()
            await let_go.wait()  # its clean-up takes a while (within the grace period)

    runtime.start_worker(sid, "slow", slow_to_stop)
    await started.wait()
    async with client.subscribe_to_session(sid) as events:
        caller = asyncio.create_task(client.terminate_session(sid))
        await stopping.wait()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        let_go.set()
        rest = [event async for event in events]
    assert [(e.type, e.data.get("status") or e.data.get("reason")) for e in rest] == [
        (EventType.SESSION_STATUS, "terminating"),
        (EventType.SESSION_STATUS, "terminated"),
        (EventType.SESSION_TERMINATED, "requested"),
    ]
    info = await client.get_session_info(sid)
    assert (info.status, info.reason) == (Status.TERMINATED, "requested")
    stored = await runtime.store.read_events(sid)
    assert [e.type for e in stored].count(EventType.SESSION_TERMINATED) == 1


# --- over HTTP, against a real server -----------------------------------------------------------

#: Faults planted in a server: the idle timer can never be re-armed after a command, and
#: ending a terminated session's streams fails. Then ``jidoka serve`` runs as usual.
_FAULTY_SERVER = """\
import sys
from jidoka.bus.memory import MemoryBus
from jidoka.session.manager import SessionManager

def touch(self, session):
    raise RuntimeError("planted: the idle timer cannot be re-armed")

async def close_session(self, session_id):
    raise RuntimeError("planted: the streams cannot be ended")

SessionManager.touch = touch
MemoryBus.close_session = close_session
from jidoka.cli import main
sys.exit(main())
"""


class FaultyServer(ServerProcess):
    """``jidoka serve`` with the faults of :data:`_FAULTY_SERVER` planted."""

    def command(self) -> list[str]:
        return [
            sys.executable, "-c", _FAULTY_SERVER, "serve", "--host", "127.0.0.1", "--port", "0",
            "--data-dir", str(self.data_dir), "--store", "sqlite",
        ]  # fmt: skip


def _statuses(frames: Iterator[SSEFrame]) -> Iterator[str]:
    """The statuses of the ``session_status`` frames, as they come."""
    for frame in frames:
        if frame.event == "session_status":
            yield frame.json()["data"]["status"]


def _wake_an_idle_session(alice: httpx.Client) -> str:
    """Issue 10's case over HTTP: a session without a time-out goes idle, a message wakes it.
    The POST is a 201, the message is stored once, and the session goes idle again."""
    response = alice.post(
        "/v1/sessions", json={"config": {"idle_after_seconds": 0.2, "timeout_minutes": 0}}
    )
    assert response.status_code == 201, response.text
    sid: str = response.json()["session_id"]
    with alice.stream("GET", f"/v1/sessions/{sid}/events", params={"after_seq": 0}) as stream:
        assert stream.status_code == 200
        statuses = _statuses(sse_frames(stream))
        assert next(s for s in statuses if s != "active") == "idle"
        posted = alice.post(f"/v1/sessions/{sid}/messages", json={"role": "user", "content": "x"})
        assert posted.status_code == 201, posted.text
        assert next(statuses) == "active"
        assert next(statuses) == "idle"  # the idle timer was re-armed
    history = alice.get(f"/v1/sessions/{sid}/messages")
    assert [m["content"] for m in history.json()["messages"]] == ["x"]
    return sid


@pytest.mark.stores("sqlite")
def test_over_http_a_message_to_an_idle_session_is_answered_once(tmp_path: Path) -> None:
    with (
        ServerProcess(tmp_path / "data", log_dir=tmp_path) as server,
        http_client(server.url, ALICE_TOKEN) as alice,
    ):
        _wake_an_idle_session(alice)
        assert "Traceback" not in server.stderr_text()


@pytest.mark.stores("sqlite")
def test_over_http_faults_after_the_commit_are_logged_not_answered(tmp_path: Path) -> None:
    with (
        FaultyServer(tmp_path / "data", log_dir=tmp_path) as server,
        http_client(server.url, ALICE_TOKEN) as alice,
    ):
        sid = _wake_an_idle_session(alice)
        ended = alice.delete(f"/v1/sessions/{sid}")
        assert ended.status_code == 200, ended.text
        assert ended.json()["status"] == "terminated"
        with alice.stream("GET", f"/v1/sessions/{sid}/events", params={"after_seq": 0}) as stream:
            types = [f.event for f in sse_frames(stream) if f.comment is None]
        assert types.count("conversation_added") == 1
        assert types.count("session_terminated") == 1
        assert types[-1] == "end"
        stderr = server.stderr_text(tail=200_000)
    assert f"session {sid}: re-arming the idle timer failed after" in stderr
    assert f"session {sid}: ending the event streams failed after" in stderr


async def test_a_failing_span_end_does_not_fail_a_save_that_was_written(
    runtime: jidoka.Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``save`` writes its copy inside its span: an exporter failing as the span ends must not
    report the written copy as a failed save (a client would save it again)."""
    client = runtime.client
    sid = await client.create_session(config=CONFIG)
    await client.send_message(sid, "user", "keep me")
    plant = Plant(runtime, monkeypatch, sid, Command(_send, "", "save_session"))
    _span(plant)
    with caplog.at_level(logging.ERROR):
        saved = await client.save_session(sid)
    assert plant.fired == 1, "the span did not end through the failing processor"
    assert saved.session_id == sid
    assert [s.session_id for s in await client.list_saved_sessions()] == [sid]
    assert _fault_records(caplog, sid) or sid in caplog.text
