"""The projection: apply() over events, and build_context() packing."""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime
from typing import Any

import pytest

from jidoka.config import SessionConfig
from jidoka.events import Event, EventType
from jidoka.session.context import MESSAGE_OVERHEAD_TOKENS, build_context, estimate_tokens
from jidoka.session.projection import apply, replay
from jidoka.session.snapshot import decode_state, encode_state
from jidoka.session.state import SHORT_HISTORY, Message, SessionState, Status

SID = "01KDVDNA002TGFDYKMPAK7J69H"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Log:
    """Builds a well-formed event log for one session."""

    def __init__(self, **config: Any) -> None:
        self.events: list[Event] = []
        self.add(
            EventType.SESSION_CREATED,
            status="initializing",
            metadata={"m": 1},
            config=SessionConfig.from_dict(config).to_dict(),
            llm_config={},
            project_root="/p",
        )
        self.add(EventType.SESSION_STATUS, status="active", previous="initializing")

    def add(self, type_: str, **data: Any) -> Event:
        event = Event(EventType(type_), SID, len(self.events) + 1, T0, data)
        self.events.append(event)
        return event

    def message(self, content: str, role: str = "user") -> Event:
        return self.add(EventType.CONVERSATION_ADDED, role=role, content=content)

    def state(self) -> SessionState:
        return replay(SID, self.events)


def test_created_and_status() -> None:
    state = Log(max_history=7).state()
    assert state.status is Status.ACTIVE
    assert state.seq == 2
    assert state.metadata == {"m": 1}
    assert state.config.max_history == 7
    assert state.project_root == "/p"
    assert state.history is None  # no container until first use


def test_history_keeps_newest_max_history() -> None:
    log = Log(max_history=3)
    for n in range(5):
        log.message(f"m{n}")
    state = log.state()
    assert [m.content for m in state.messages()] == ["m2", "m3", "m4"]
    assert [m.seq for m in state.messages()] == [5, 6, 7]
    assert state.conversation_count == 3
    assert state.messages()[0].id == f"{SID}-5"


@pytest.mark.parametrize("max_history", [1, 3, SHORT_HISTORY, SHORT_HISTORY + 1, 40])
def test_history_window_across_its_list_and_deque_forms(max_history: int) -> None:
    """Read now and then while it fills: the same newest messages whatever the window's form,
    a tuple of one, a list while it can stay short (at most SHORT_HISTORY), a deque only past
    that."""
    log = Log(max_history=max_history)
    state = log.state()
    sent: list[str] = []
    for n in range(45):
        apply(state, log.message(f"m{n}"))
        sent.append(f"m{n}")
        if n % 7 == 0:
            assert [m.content for m in state.messages()] == sent[-max_history:]
    messages = state.messages()
    assert [m.content for m in messages] == sent[-max_history:]
    assert [m.seq for m in messages] == list(range(48 - len(messages), 48))  # seqs 3..47
    assert state.conversation_count == min(45, max_history)
    kind = tuple if max_history == 1 else list if max_history <= SHORT_HISTORY else deque
    assert type(state.history) is kind
    assert state.snapshot() == log.state().snapshot()  # read or not, the same projection


def test_the_window_holds_the_log_s_events_until_read() -> None:
    log = Log()
    first, second = log.message("a"), log.message("b", role="assistant")
    state = log.state()
    assert state.history is not None
    assert [id(e) for e in state.history] == [id(first), id(second)]  # shared, not copied
    expected = [
        Message(f"{SID}-3", "user", "a", T0, 3),
        Message(f"{SID}-4", "assistant", "b", T0, 4),
    ]
    assert state.messages() == expected
    assert all(type(m) is Message for m in state.history)  # turned once, kept
    turned = state.history[0]
    apply(state, third := log.message("c"))
    assert state.history[-1] is third
    assert state.messages()[2] == Message(f"{SID}-5", "user", "c", T0, 5)
    assert state.history[0] is turned  # only the new one was turned


@pytest.mark.parametrize("count", [0, 1, 2, SHORT_HISTORY + 4])
def test_a_snapshot_restores_the_window_in_the_same_form(count: int) -> None:
    log = Log(max_history=SHORT_HISTORY + 2)
    for n in range(count):
        log.message(f"m{n}")
    state = log.state()
    restored = decode_state(encode_state(state), session_id=SID)
    assert restored.messages() == state.messages()
    assert type(restored.history) is type(state.history)
    apply(restored, log.message("next"))  # and it goes on like the original
    apply(state, log.events[-1])
    assert restored.messages() == state.messages()


def _rare(state: SessionState) -> dict[str, Any] | None:
    """``state.rare``, read through a call (the setters of other fields change it)."""
    return state.rare


def test_rare_fields_take_room_only_while_set() -> None:
    state = SessionState(SID)
    assert _rare(state) is None
    assert (state.files, state.usage, state.usage_estimated) == (None, None, False)
    state.files = {}
    state.usage_estimated = True
    assert state.files == {}
    assert state.usage_estimated is True
    assert _rare(state) == {"files": {}, "usage_estimated": True}
    state.files = None
    state.usage_estimated = False
    assert _rare(state) is None  # back to every default: nothing kept
    log = Log()
    log.add(EventType.WORKING_CONTEXT_UPDATED, key="k", value=1)
    restored = decode_state(encode_state(log.state()), session_id=SID)
    assert restored.working_context == {"k": 1}
    assert _rare(restored) == {"working_context": {"k": 1}, "wc_sizes": {"k": 2}}  # "k", 1


def test_clear_conversation() -> None:
    log = Log()
    log.message("a")
    log.add(EventType.CONVERSATION_CLEARED, count=1)
    log.message("b")
    assert [m.content for m in log.state().messages()] == ["b"]


def test_files_and_index() -> None:
    log = Log()
    log.add(EventType.FILE_ADDED, path="a.py", size=3, mtime=1.0, line_count=1, language="python")
    log.add(EventType.FILE_ADDED, path="b.py", size=4, mtime=2.0, line_count=2, language="python")
    log.add(EventType.FILE_REMOVED, path="a.py")
    entry = {"path": "b.py", "language": "python", "line_count": 9, "extra": {"tag": "x"}}
    log.add(EventType.FILE_INDEX_UPDATED, path="b.py", entry=entry)
    state = log.state()
    assert list(state.files or {}) == ["b.py"]
    assert set(state.index or {}) == {"a.py", "b.py"}  # the index outlives removal
    assert (state.index or {})["b.py"].line_count == 9
    assert (state.index or {})["b.py"].extra == {"tag": "x"}


def test_working_context_set_and_delete() -> None:
    log = Log()
    log.add(EventType.WORKING_CONTEXT_UPDATED, key="k", value=[1, 2])
    log.add(EventType.WORKING_CONTEXT_UPDATED, key="j", value={"a": None})
    log.add(EventType.WORKING_CONTEXT_UPDATED, key="k", value=None, deleted=True)
    state = log.state()
    assert state.working_context == {"j": {"a": None}}
    assert state.working_context_bytes == len("j") + len(b'{"a":null}')


def test_terminated() -> None:
    log = Log()
    log.add(EventType.SESSION_STATUS, status="terminating", previous="active")
    log.add(EventType.SESSION_STATUS, status="terminated", previous="terminating", error="boom")
    log.add(EventType.SESSION_TERMINATED, reason="error", error="boom")
    state = log.state()
    assert state.status is Status.TERMINATED
    assert (state.reason, state.error) == ("error", "boom")


def test_uninterpreted_events_advance_seq_only() -> None:
    log = Log()
    log.add(EventType.LLM_STREAM_CHUNK, text="hi")
    before = Log().state().snapshot()
    after = log.state().snapshot()
    assert after["seq"] == before["seq"] + 1
    assert {k: v for k, v in after.items() if k != "seq"} == {
        k: v for k, v in before.items() if k != "seq"
    }


@pytest.mark.parametrize("seq", [1, 2, 4])
def test_apply_refuses_out_of_order(seq: int) -> None:
    state = Log().state()
    snapshot = state.snapshot()
    event = Event(EventType.CONVERSATION_ADDED, SID, seq, T0, {"role": "user", "content": "x"})
    with pytest.raises(ValueError, match="does not follow"):
        apply(state, event)
    assert state.snapshot() == snapshot


def test_apply_refuses_other_session() -> None:
    state = Log().state()
    with pytest.raises(ValueError, match="does not follow"):
        apply(state, Event(EventType.ERROR, "X" * 26, 3, T0, {}))


# --- build_context --------------------------------------------------------------------------


def test_estimate_tokens() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2


def test_unbounded_includes_everything_in_order() -> None:
    log = Log()
    log.message("first")
    log.add(EventType.FILE_ADDED, path="a.py", size=3, mtime=1.0, line_count=1, language="python")
    log.message("second", role="assistant")
    log.add(EventType.WORKING_CONTEXT_UPDATED, key="plan", value="fix it")
    bundle = build_context(log.state(), file_texts={"a.py": "x=1\n"})
    assert [m.content for m in bundle.messages] == ["first", "second"]
    assert [(f.path, f.content, f.language) for f in bundle.files] == [("a.py", "x=1\n", "python")]
    assert [e.path for e in bundle.file_index] == ["a.py"]
    assert bundle.working_context == {"plan": "fix it"}
    assert not bundle.truncated
    assert bundle.omitted_messages == 0


def test_newest_messages_win_and_no_gaps() -> None:
    log = Log()
    for content in ["a" * 400, "b" * 4, "c" * 400, "d" * 4]:
        log.message(content)
    per = MESSAGE_OVERHEAD_TOKENS
    # Walking newest first: d (1+4), c (100+4) and b (1+4) fit; a (100+4) does not.
    bundle = build_context(
        log.state(), include=["conversation"], max_tokens=1 + per + 100 + per + 1 + per
    )
    assert [m.content[0] for m in bundle.messages] == ["b", "c", "d"]
    assert bundle.omitted_messages == 1
    assert bundle.truncated
    assert bundle.token_count <= bundle.max_tokens  # type: ignore[operator]


def test_conversation_stops_at_first_message_that_does_not_fit() -> None:
    log = Log()
    for content in ["x", "y" * 400, "z"]:
        log.message(content)
    bundle = build_context(log.state(), include=["conversation"], max_tokens=20)
    # "z" fits, the long one does not, so "x" (older than the gap) is left out too.
    assert [m.content for m in bundle.messages] == ["z"]
    assert bundle.omitted_messages == 2


def test_file_excerpt_is_cut_to_whole_lines() -> None:
    log = Log()
    log.add(
        EventType.FILE_ADDED, path="big.py", size=0, mtime=0.0, line_count=100, language="python"
    )
    text = "".join(f"line {n:04d}\n" for n in range(100))
    bundle = build_context(
        log.state(), include=["files"], file_texts={"big.py": text}, max_tokens=30
    )
    (excerpt,) = bundle.files
    assert excerpt.truncated
    assert text.startswith(excerpt.content)
    assert excerpt.content.endswith("\n")
    assert bundle.token_count <= 30


def test_tiny_room_skips_file() -> None:
    log = Log()
    log.add(EventType.FILE_ADDED, path="big.py", size=0, mtime=0.0, line_count=1, language=None)
    bundle = build_context(
        log.state(), include=["files"], file_texts={"big.py": "x" * 1000}, max_tokens=5
    )
    assert bundle.files == []
    assert bundle.truncated


def test_missing_file_text_is_skipped() -> None:
    log = Log()
    log.add(EventType.FILE_ADDED, path="gone.py", size=0, mtime=0.0, line_count=1, language=None)
    assert build_context(log.state(), file_texts={}).files == []


def test_include_selects_parts() -> None:
    log = Log()
    log.message("hi")
    log.add(EventType.WORKING_CONTEXT_UPDATED, key="k", value=1)
    bundle = build_context(log.state(), include=["working_context"])
    assert bundle.messages == []
    assert bundle.working_context == {"k": 1}


def test_custom_counter() -> None:
    log = Log()
    for n in range(10):
        log.message(f"word{n}")
    words = lambda text: len(text.split())  # noqa: E731
    bundle = build_context(log.state(), include=["conversation"], max_tokens=3 * 5, counter=words)
    assert len(bundle.messages) == 3  # 1 word + 4 overhead each


def test_turn_events_turns_only_the_newest_events_in_place() -> None:
    log = Log()
    state = log.state()
    apply(state, log.message("a"))
    state.messages()  # "a" turned
    apply(state, log.message("b"))
    apply(state, log.message("c"))
    window = state.history
    assert window is not None
    first = window[0]
    assert state.turn_events() is window  # a list: turned where it is
    assert window[0] is first
    assert [type(m) for m in window] == [Message, Message, Message]
    assert [m.content for m in window] == ["a", "b", "c"]  # type: ignore[union-attr]
