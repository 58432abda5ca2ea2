"""Property: a compaction followed by a restart (a new runtime on the same SQLite file) keeps
the summary and the full log.

Hypothesis draws a conversation (any text, some of it long), compactions between its messages
(any ``keep_last``) and a snapshot interval, so the restarted runtime loads the session from a
snapshot plus the log's tail or from the log alone. After the restart the compacted history,
the context's summary and the projection are what they were, and ``read_events`` returns
every event byte for byte (then the restart's own move to ``idle``), every message among them,
and the ``context_compacted`` events.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import jidoka
from jidoka.events import Event, EventType, encode_event

pytestmark = pytest.mark.stores("sqlite")

_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=300)
_STEP = st.one_of(
    st.tuples(st.just("send"), st.sampled_from(["user", "assistant", "system"]), _TEXT),
    st.tuples(st.just("compact"), st.integers(0, 4), st.none()),
)


async def _log(client: jidoka.Client, sid: str) -> list[Event]:
    events: list[Event] = []
    while page := await client.read_events(sid, after_seq=events[-1].seq if events else 0):
        events.extend(page)
    return events


def _comparable(state: dict[str, Any]) -> dict[str, Any]:
    """A projection without what a restart changes (its status, its last seq and time)."""
    return {k: v for k, v in state.items() if k not in ("seq", "status", "updated_at")}


async def _scenario(data: Path, steps: list[tuple[str, Any, Any]], interval: int) -> None:
    sent: list[str] = []
    async with jidoka.Runtime(data, store="sqlite", snapshot_interval=interval) as runtime:
        client = runtime.client
        sid = await client.create_session(llm_config={"provider": "scripted"})
        compactions = 0
        for kind, first, second in steps:
            if kind == "send":
                await client.send_message(sid, first, second)
                sent.append(second)
                continue
            try:
                await client.compact_session(sid, keep_last=first)
            except jidoka.InvalidArgument as exc:  # nothing to compact: nothing changes
                assert exc.argument == "keep_last"
            else:
                compactions += 1
        event(f"compactions: {min(compactions, 2)}")
        before_log = [encode_event(e) for e in await _log(client, sid)]
        before_history = await client.get_conversation_history(sid, "compacted")
        before_full = await client.get_conversation_history(sid)
        before_context = await client.build_context(sid)
        before_state = _comparable(runtime.manager.get(sid).state.snapshot())
    async with jidoka.Runtime(data, store="sqlite") as runtime:
        client = runtime.client
        log = await _log(client, sid)
        assert [encode_event(e) for e in log[: len(before_log)]] == before_log
        # What the restart itself adds: the session comes back idle.
        assert {e.type for e in log[len(before_log) :]} <= {EventType.SESSION_STATUS}
        added = [e.data["content"] for e in log if e.type == EventType.CONVERSATION_ADDED]
        assert added == sent  # every message, byte for byte
        assert len([e for e in log if e.type == EventType.CONTEXT_COMPACTED]) == compactions
        assert await client.get_conversation_history(sid, "compacted") == before_history
        assert await client.get_conversation_history(sid) == before_full
        assert await client.build_context(sid) == before_context
        assert _comparable(runtime.manager.get(sid).state.snapshot()) == before_state


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(_STEP, max_size=14), interval=st.sampled_from([1, 3, 1000]))
@example(  # two compactions for sure, the second over the first, loaded from a snapshot
    steps=[*(("send", "user", f"m{i} ü\n{'x' * i}") for i in range(5)), ("compact", 1, None),
           ("send", "assistant", ""), ("compact", 0, None), ("send", "user", "after")],
    interval=3,
)  # fmt: skip
def test_a_compaction_survives_a_restart(
    store_backend: str, steps: list[tuple[str, Any, Any]], interval: int
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(_scenario(Path(directory) / "data", steps, interval))
