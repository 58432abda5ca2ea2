"""Compaction's pure parts: the projection of ``context_compacted``, snapshots that carry it
(and older ones that do not), ``build_context`` and the prompt with a summary, and the
summariser's requests (chunks that each fit the window, a message too large for one cut)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from jidoka._remote_verbs import request_for
from jidoka.cli.output import event_summary
from jidoka.events import Event, EventType
from jidoka.llm.compaction import SUMMARY_PROMPT, auto_threshold, plan_of, summary_requests
from jidoka.llm.prompt import message_tokens, prompt_messages, request_limit
from jidoka.session.context import build_context, estimate_tokens
from jidoka.session.projection import replay
from jidoka.session.snapshot import decode_state, encode_state
from jidoka.session.state import Compaction
from jidoka.verbs import by_name

SID = "01KDVDNA002TGFDYKMPAK7J69H"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def log(*items: tuple[EventType, dict[str, Any]]) -> list[Event]:
    head = [
        (EventType.SESSION_CREATED, {"status": "initializing"}),
        (EventType.SESSION_STATUS, {"status": "active", "previous": "initializing"}),
    ]
    return [
        Event(kind, SID, seq, T0 + timedelta(seconds=seq), data)
        for seq, (kind, data) in enumerate([*head, *items], start=1)
    ]


def said(*texts: str) -> list[tuple[EventType, dict[str, Any]]]:
    return [(EventType.CONVERSATION_ADDED, {"role": "user", "content": t}) for t in texts]


def compacted(summary: str, first: int, last: int, **extra: Any) -> tuple[EventType, dict]:
    data = {"summary": summary, "first_seq": first, "last_seq": last, "tokens_before": 9,
            "tokens_after": 3, **extra}  # fmt: skip
    return (EventType.CONTEXT_COMPACTED, data)


def test_the_projection_keeps_the_compaction_and_every_message() -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
    state = replay(SID, log(*said("a", "b", "c"), compacted("S", 3, 4, usage=usage)))
    assert state.compaction == Compaction("S", 3, 4, 6, T0 + timedelta(seconds=6))
    assert [m.content for m in state.messages()] == ["a", "b", "c"]
    assert [(m.role, m.content, m.seq) for m in state.compacted_messages()] == [
        ("system", "S", 6),
        ("user", "c", 5),
    ]
    assert state.compacted_messages()[0].id == f"{SID}-6"
    assert state.usage == (10, 2, 12)  # the summariser's tokens count
    assert state.snapshot()["compaction"] == state.compaction


def test_clearing_drops_the_compaction_and_a_new_one_replaces_it() -> None:
    events = log(
        *said("a", "b"), compacted("S", 3, 3), (EventType.CONVERSATION_CLEARED, {"count": 2})
    )
    assert replay(SID, events).compaction is None
    again = log(*said("a", "b", "c"), compacted("S1", 3, 3), compacted("S2", 3, 4))
    assert replay(SID, again).compaction == Compaction("S2", 3, 4, 7, T0 + timedelta(seconds=7))


def test_snapshots_carry_it_and_older_snapshots_still_decode() -> None:
    state = replay(SID, log(*said("a", "b"), compacted("S", 3, 3)))
    decoded = decode_state(encode_state(state), session_id=SID)
    assert decoded.compaction == state.compaction
    assert decoded.compacted_messages() == state.compacted_messages()
    old = msgspec.json.decode(encode_state(replay(SID, log(*said("a")))))
    del old["compaction"]  # what a snapshot written before issue 17 holds
    assert decode_state(msgspec.json.encode(old), session_id=SID).compaction is None


def test_build_context_packs_the_summary_instead_of_the_older_messages() -> None:
    state = replay(SID, log(*said("a" * 40, "b" * 40, "c" * 40), compacted("short", 3, 4)))
    bundle = build_context(state)
    assert bundle.summary == "short"
    assert [m.content for m in bundle.messages] == ["c" * 40]
    assert bundle.token_count == (estimate_tokens("short") + 4) + (10 + 4)
    assert not bundle.truncated
    squeezed = build_context(state, max_tokens=5)  # not even the summary fits
    assert squeezed.summary is None
    assert squeezed.truncated
    assert build_context(state, include=["working_context"]).summary is None
    prompt = prompt_messages(bundle, "be brief")
    assert [m.role for m in prompt] == ["system", "user"]
    assert prompt[0].content is not None
    assert prompt[0].content.startswith("be brief")
    assert prompt[0].content.endswith("\n\nshort")


def test_the_summary_requests_fit_the_window_and_cut_a_message_too_large() -> None:
    texts = ["x" * 2000, "y" * 2000, "z" * 40_000, "w" * 100]
    state = replay(SID, log(*said(*texts, "kept")))
    plan = plan_of(state, 1)
    assert plan is not None
    assert [m.content for m in plan.kept] == ["kept"]
    assert (plan.first_seq, plan.last_seq) == (3, 6)
    llm_config = {"context_window": 2048, "max_tokens": 256}
    chunks = summary_requests(
        plan, None, llm_config=llm_config, instructions="keep names", counter=estimate_tokens
    )
    assert len(chunks) >= 3
    limit = request_limit(llm_config)
    summary = "s" * (256 * 4)  # as long as an answer may be
    for head, transcript in chunks:
        assert head[0].content == f"{SUMMARY_PROMPT}\n\nkeep names"
        carried = f"Earlier summary:\n\n{summary}\n\nTranscript to summarise:\n\n{transcript}"
        cost = message_tokens(head[0], estimate_tokens) + estimate_tokens(carried) + 4
        assert cost <= limit
    joined = "".join(transcript for _, transcript in chunks)
    assert "[3] user: " + "x" * 2000 in joined
    assert "[6] user: " + "w" * 100 in joined
    assert "cut to fit the context window" in joined  # the 40,000-character one
    # An earlier summary longer than an answer (another max_tokens made it) still fits.
    earlier = "e" * 4000
    for head, transcript in summary_requests(
        plan, earlier, llm_config=llm_config, instructions=None, counter=estimate_tokens
    ):
        carried = f"Earlier summary:\n\n{earlier}\n\nTranscript to summarise:\n\n{transcript}"
        cost = message_tokens(head[0], estimate_tokens) + estimate_tokens(carried) + 4
        assert cost <= limit
    assert plan_of(state, 5) is None
    assert plan_of(state, 4) is not None


def test_auto_threshold_is_a_share_of_the_window_and_off_by_default() -> None:
    assert auto_threshold({}) is None
    assert auto_threshold({"auto_compact_at": None}) is None
    assert auto_threshold({"auto_compact_at": 0.8}) == int(8192 * 0.8)
    assert auto_threshold({"auto_compact_at": 0.5, "context_window": 1000}) == 500


def test_the_cli_says_what_a_compaction_did() -> None:
    event = log(*said("a", "b"), compacted("S", 3, 3))[-1]
    assert event_summary(event) == "messages 3-3 summarised (9 → 3 tokens)"


def test_compact_session_requests_wait_as_long_as_the_model() -> None:
    """Its answer waits on the summariser: RemoteClient (and a node forwarding it) sends it
    without a read timeout, as it does a turn it waits on."""
    verb = by_name("compact_session")
    assert verb is not None
    assert verb.long_running
    request = request_for(verb, {"session_id": SID, "keep_last": 2, "instructions": None})
    assert request.long_lived
    assert (request.method, request.path) == ("POST", f"/v1/sessions/{SID}/compact")
    assert msgspec.json.decode(request.body or b"") == {"instructions": None, "keep_last": 2}
    history = by_name("get_conversation_history")
    assert history is not None
    assert not request_for(history, {"session_id": SID, "view": "compacted"}).long_lived
