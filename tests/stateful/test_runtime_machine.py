"""A hypothesis state machine over the whole runtime: lifecycle, time and projection.

A plain-Python model predicts every session's status, history window and working context while
hypothesis drives random commands and fake-clock jumps. After every step, each live session's
projection must also equal a fresh replay of its stored log. The model remembers the history
and working context after each command with the seq it ended at, which is what a rewind to
that seq, or a fork at it, must give back.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule

import jidoka
from jidoka.session.persistence import load_state
from jidoka.session.projection import replay
from tests.helpers import quiesce

IDLE_AFTER = 10.0
TIMEOUT_MINUTES = 1.0


@dataclass
class Model:
    max_history: int
    status: str = "active"
    history: list[tuple[str, str]] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)
    last_activity: float = 0.0
    idle_since: float = 0.0
    reason: str | None = None
    #: (seq, history, context) after each command: what a rewind or fork there gives.
    checkpoints: list[tuple[int, list[tuple[str, str]], dict[str, Any]]] = field(
        default_factory=list
    )

    def touch(self, now: float) -> None:
        self.last_activity = now
        if self.status == "idle":
            self.status = "active"


class RuntimeMachine(RuleBasedStateMachine):
    sessions = Bundle("sessions")

    store = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.clock = jidoka.FakeClock()
        self.data_dir = tempfile.TemporaryDirectory(prefix="jidoka-stateful-")
        self.rt = jidoka.Runtime(
            self.data_dir.name, store=self.store, clock=self.clock, snapshot_interval=3
        )
        self.run(self.rt.start())
        self.client = self.rt.client
        self.models: dict[str, Model] = {}

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    def teardown(self) -> None:
        self.run(self.rt.aclose())
        self.runner.close()
        self.data_dir.cleanup()

    @property
    def now(self) -> float:
        return self.clock.monotonic()

    @rule(target=sessions, max_history=st.integers(1, 4))
    def create(self, max_history: int) -> str:
        config = {
            "max_history": max_history,
            "idle_after_seconds": IDLE_AFTER,
            "timeout_minutes": TIMEOUT_MINUTES,
        }
        sid = self.run(self.client.create_session(config=config))
        self.models[sid] = Model(max_history, last_activity=self.now)
        self.checkpoint(sid)
        return str(sid)

    def checkpoint(self, sid: str) -> None:
        model = self.models[sid]
        seq = self.run(self.rt.store.last_seq(sid))
        model.checkpoints.append((seq, list(model.history), dict(model.context)))

    @rule(
        sid=sessions,
        role=st.sampled_from(["user", "assistant", "system", "tool", ""]),
        content=st.text(max_size=20),
    )
    def send(self, sid: str, role: str, content: str) -> None:
        model = self.models[sid]
        try:
            self.run(self.client.send_message(sid, role, content))
        except jidoka.InvalidRole:
            assert role not in ("user", "assistant", "system")
            return
        except jidoka.SessionTerminated:
            assert model.status == "terminated"
            return
        assert model.status != "terminated"
        model.touch(self.now)
        model.history = [*model.history, (role, content)][-model.max_history :]
        self.checkpoint(sid)

    @rule(sid=sessions)
    def clear(self, sid: str) -> None:
        model = self.models[sid]
        try:
            count = self.run(self.client.clear_conversation(sid))
        except jidoka.SessionTerminated:
            assert model.status == "terminated"
            return
        assert count == len(model.history)
        model.touch(self.now)
        model.history = []
        self.checkpoint(sid)

    @rule(sid=sessions, key=st.sampled_from("abc"), value=st.integers() | st.none() | st.text())
    def put(self, sid: str, key: str, value: Any) -> None:
        model = self.models[sid]
        try:
            self.run(self.client.put_working_context(sid, key, value))
        except jidoka.SessionTerminated:
            assert model.status == "terminated"
            return
        model.touch(self.now)
        model.context[key] = value
        self.checkpoint(sid)

    @rule(sid=sessions, where=st.floats(0, 1))
    def rewind(self, sid: str, where: float) -> None:
        model = self.models[sid]
        seq, history, context = model.checkpoints[round(where * (len(model.checkpoints) - 1))]
        try:
            rewound = self.run(self.client.rewind_session(sid, to_seq=seq))
        except jidoka.SessionTerminated:
            assert model.status == "terminated"
            return
        assert rewound.to_seq == seq
        model.touch(self.now)
        model.history, model.context = list(history), dict(context)
        self.checkpoint(sid)

    @rule(target=sessions, sid=sessions, where=st.floats(0, 1))
    def fork(self, sid: str, where: float) -> str:
        source = self.models[sid]
        seq, history, context = source.checkpoints[round(where * (len(source.checkpoints) - 1))]
        try:
            fork = self.run(self.client.fork_session(sid, at_seq=seq))
        except jidoka.SessionTerminated:
            # The memory store lets a terminated session's log go: nothing to fork from.
            assert source.status == "terminated"
            assert self.store == "memory"
            return sid
        self.models[fork] = Model(
            source.max_history, history=list(history), context=dict(context), last_activity=self.now
        )
        self.checkpoint(fork)
        return str(fork)

    @rule(sid=sessions)
    def terminate(self, sid: str) -> None:
        model = self.models[sid]
        try:
            info = self.run(self.client.terminate_session(sid))
        except jidoka.InvalidTransition as exc:
            assert model.status == "terminated"
            assert (exc.from_status, exc.to_status) == ("terminated", "terminating")
            return
        assert info.status == "terminated"
        model.status, model.reason = "terminated", "requested"

    @rule(seconds=st.sampled_from([1.0, 5.0, 9.0, 10.0, 30.0, 59.0, 60.0, 120.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        now = self.now
        for model in self.models.values():
            if model.status == "active" and now >= model.last_activity + IDLE_AFTER:
                model.status, model.idle_since = "idle", now
        self.run(quiesce(self.rt))
        for model in self.models.values():
            if model.status == "idle" and now >= model.idle_since + TIMEOUT_MINUTES * 60:
                model.status, model.reason = "terminated", "timeout"
        # Time-outs terminate in the background: let them finish before comparing.
        self.run(quiesce(self.rt))

    @precondition(lambda self: bool(self.models))
    @invariant()
    def matches_model(self) -> None:
        for sid, model in self.models.items():
            info = self.run(self.client.get_session_info(sid))
            assert info.status == model.status, (sid, info.status, model.status)
            assert info.reason == model.reason
            if model.status == "terminated":
                continue
            history = self.run(self.client.get_conversation_history(sid))
            assert [(m.role, m.content) for m in history] == model.history
            assert self.run(self.client.get_working_context(sid)) == model.context

    @precondition(lambda self: bool(self.models))
    @invariant()
    def live_projection_equals_replay(self) -> None:
        manager = self.rt.manager
        for sid in manager.live_ids():
            live = manager.get(sid).state
            logged = self.run(self.rt.read_events(sid))
            assert [e.seq for e in logged] == list(range(1, len(logged) + 1))
            assert replay(sid, logged).snapshot() == live.snapshot()

    @precondition(lambda self: bool(self.models))
    @invariant()
    def snapshot_plus_tail_equals_live(self) -> None:
        manager = self.rt.manager
        self.run(manager.wait_background())  # snapshots are written in the background
        for sid in manager.live_ids():
            loaded, _ = self.run(load_state(self.rt.store, sid))
            assert loaded.snapshot() == manager.get(sid).state.snapshot()


class SqliteRuntimeMachine(RuntimeMachine):
    store = "sqlite"


_settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
RuntimeMachine.TestCase.settings = _settings
SqliteRuntimeMachine.TestCase.settings = settings(_settings, max_examples=25)
TestMemoryRuntime = RuntimeMachine.TestCase
TestSqliteRuntime = SqliteRuntimeMachine.TestCase
