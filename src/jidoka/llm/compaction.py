"""Compaction (issue 17): the session's own model summarises the older conversation.

A long session outgrows its model's window; without compaction the prompt then simply loses
its oldest messages. A compaction asks the session's model for a summary of every message
before the last ``keep_last`` (and of the previous summary, if any) and stores it as one
``context_compacted`` event. From then on the context (``build_context``, the agent's prompt)
carries that summary and the messages after its ``last_seq``; the history window and the log
keep every message, so the full history stays readable, and replay, forks and audits see it.

It never loses anything on failure: the summary is only stored once the model has given a
non-empty one, and a failure (the provider's, a bound's) emits an ``error`` event with
``code: compaction_failed`` and leaves the context as it was.

The transcript to summarise may itself be larger than the model's window (that is why it is
compacted), so it is summarised in chunks that each fit ``context_window - max_tokens``,
each chunk's request carrying the summary so far: a rolling summary. A single message too
large for a chunk is cut to its head (:func:`~.prompt.cut_to_fit`).

The plain functions here build requests and count tokens; :func:`run_compaction` is the one
that talks to the provider and the session, and the agent calls it (manually, through
``compact_session``, or before a turn whose prompt would pass ``auto_compact_at``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, NamedTuple

from ..errors import InvalidArgument, JidokaError, LimitExceeded, LLMError, SessionTerminated
from ..events import Event
from ..payloads import AgentStatusData, ContextCompactedData, ErrorData, event_item
from ..session.context import CONTEXT_PARTS, MESSAGE_OVERHEAD_TOKENS, TokenCounter
from ..session.inputs import DEFAULT_KEEP_LAST
from ..session.session import CompactionConflict, Session
from ..session.state import Compaction, Message, SessionState
from .prompt import (
    DEFAULT_ANSWER_TOKENS,
    DEFAULT_CONTEXT_WINDOW,
    MESSAGE_OVERHEAD,
    cut_to_fit,
    request_limit,
    tools_tokens,
)
from .types import ChatMessage, ChatRequest, Completion, Provider, ToolSpec, Usage
from .usage import usage_data, usage_of

__all__ = [
    "DEFAULT_KEEP_LAST",
    "CompactionConflict",
    "Plan",
    "auto_compact",
    "auto_threshold",
    "compact_now",
    "conversation_tokens",
    "owned",
    "plan_of",
    "run_compaction",
    "summary_requests",
]

#: Tokens a chunk's transcript gets at least, however small the window.
MIN_CHUNK_TOKENS: Final = 64
#: What the summariser is told (the caller's ``instructions`` follow it).
SUMMARY_PROMPT: Final = (
    "You compact the conversation between a user and a coding assistant so the assistant can "
    "carry on without it. Write a concise summary of the transcript below (and of the earlier "
    "summary, if one is given): the user's goals and requests, decisions made, files, paths, "
    "names and facts that matter, what was done and what is still open. Write only the "
    "summary, in plain prose or short bullet points."
)

_EARLIER: Final = "Earlier summary:\n\n{summary}\n\n"
_TRANSCRIPT: Final = "Transcript to summarise:\n\n{transcript}"

Emit = Callable[[str, dict[str, Any]], Awaitable[object]]
#: The agent's provider for an ``llm_config`` (made once, kept while the config holds).
ProviderFor = Callable[[dict[str, Any]], Awaitable[Provider]]

logger = logging.getLogger("jidoka.agent")


class Plan(NamedTuple):
    """What one compaction summarises (``older``: oldest first) and keeps, and what it
    replaces (``previous``: the compaction in force when it was planned)."""

    previous: Compaction | None
    older: list[Message]
    kept: list[Message]

    @property
    def first_seq(self) -> int:
        return self.previous.first_seq if self.previous is not None else self.older[0].seq

    @property
    def last_seq(self) -> int:
        return self.older[-1].seq


def plan_of(state: SessionState, keep_last: int) -> Plan | None:
    """The messages after the latest compaction but the newest ``keep_last``; ``None`` if
    there is none to summarise."""
    previous = state.compaction
    messages = state.messages()
    if previous is not None:
        messages = [m for m in messages if m.seq > previous.last_seq]
    cut = len(messages) - keep_last
    if cut <= 0:
        return None
    return Plan(previous, messages[:cut], messages[cut:])


def conversation_tokens(summary: str | None, messages: list[Message], counter: TokenCounter) -> int:
    """What a conversation (a summary and messages) costs in a context, as ``build_context``
    counts it."""
    cost = sum(counter(m.content) + MESSAGE_OVERHEAD_TOKENS for m in messages)
    if summary is not None:
        cost += counter(summary) + MESSAGE_OVERHEAD_TOKENS
    return cost


def auto_threshold(llm_config: dict[str, Any]) -> int | None:
    """Tokens of a prompt past which a turn compacts first (``auto_compact_at`` of the
    context window), ``None`` if automatic compaction is off (the default)."""
    share = llm_config.get("auto_compact_at")
    if share is None:
        return None
    window = int(llm_config.get("context_window") or DEFAULT_CONTEXT_WINDOW)
    return int(window * float(share))


def _line(message: Message, content: str) -> str:
    return f"[{message.seq}] {message.role}: {content}\n"


def summary_requests(
    plan: Plan,
    summary: str | None,
    *,
    llm_config: dict[str, Any],
    instructions: str | None,
    counter: TokenCounter,
) -> list[tuple[list[ChatMessage], str]]:
    """The older messages as chunks of transcript, each fitting one request next to the
    system prompt and the summary so far (``summary``, the previous compaction's, then each
    chunk's answer: as long as an answer may be): (system message, transcript) pairs; the
    summary so far is put in when each is sent (:func:`_request`)."""
    system = SUMMARY_PROMPT + (f"\n\n{instructions}" if instructions else "")
    head = [ChatMessage(role="system", content=system)]
    answer = int(llm_config.get("max_tokens") or DEFAULT_ANSWER_TOKENS)
    if summary is not None:  # an earlier one, made with another max_tokens perhaps
        answer = max(answer, counter(summary))
    # The summary's framing, and a few tokens for the rounding of the counts of the parts
    # joined, come on top.
    framing = counter(_EARLIER.format(summary="") + _TRANSCRIPT.format(transcript=""))
    fixed = counter(system) + 3 * MESSAGE_OVERHEAD + answer + framing + MESSAGE_OVERHEAD
    room = max(MIN_CHUNK_TOKENS, request_limit(llm_config) - fixed)
    chunks: list[tuple[list[ChatMessage], str]] = []
    lines: list[str] = []
    used = 0
    for message in plan.older:
        line = _line(message, message.content)
        cost = counter(line)
        if cost > room:  # one message larger than a chunk: its head
            overhead = counter(_line(message, ""))
            cut = cut_to_fit(message.content, max(0, room - overhead), counter)
            line = _line(message, cut if cut is not None else message.content)
            cost = counter(line)
        if lines and used + cost > room:
            chunks.append((head, "".join(lines)))
            lines, used = [], 0
        lines.append(line)
        used += cost
    if lines:
        chunks.append((head, "".join(lines)))
    return chunks


def _request(
    head: list[ChatMessage], transcript: str, summary: str | None, llm_config: dict[str, Any]
) -> ChatRequest:
    earlier = _EARLIER.format(summary=summary) if summary else ""
    text = earlier + _TRANSCRIPT.format(transcript=transcript)
    return ChatRequest(
        model=str(llm_config.get("model") or "default"),
        messages=[*head, ChatMessage(role="user", content=text)],
        temperature=llm_config.get("temperature"),
        max_tokens=llm_config.get("max_tokens"),
        summary=True,
    )


async def _complete(provider: Provider, request: ChatRequest) -> Completion:
    """One model call, its stream read to the end (nothing of it goes into the log)."""
    stream = provider.stream(request)
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        async for item in stream:
            if isinstance(item, Completion):
                return item
    raise LLMError(
        "the provider ended the stream without a completion", provider=provider.name
    )  # pragma: no cover - every provider ends with one


async def _summarise(
    provider: Provider,
    plan: Plan,
    *,
    llm_config: dict[str, Any],
    instructions: str | None,
    counter: TokenCounter,
    session_id: str,
) -> tuple[str, Usage]:
    summary = plan.previous.summary if plan.previous is not None else None
    usage = Usage()
    chunks = summary_requests(
        plan, summary, llm_config=llm_config, instructions=instructions, counter=counter
    )
    for head, transcript in chunks:
        request = _request(head, transcript, summary, llm_config)
        completion = await _complete(provider, request)
        usage = usage + usage_of(completion, request, counter)
        text = completion.text.strip()
        if not text:  # never store an empty summary: it would wipe the conversation
            raise LLMError(
                "the model answered the summary request with no text",
                provider=provider.name,
                session_id=session_id,
                retryable=True,
            )
        summary = text
    assert summary is not None
    return summary, usage


def _failure(exc: Exception) -> ErrorData:
    """The ``error`` event of a failed summary (``code: compaction_failed``)."""
    if not isinstance(exc, JidokaError):  # a bug of ours or a provider's: no details here
        message = f"internal error ({type(exc).__name__}); see the server log"
        return ErrorData(code="compaction_failed", message=message)
    if isinstance(exc, LLMError):
        return ErrorData(
            code="compaction_failed",
            message=exc.message,
            provider=exc.provider,
            status=exc.status,
            retryable=exc.retryable,
        )
    if isinstance(exc, LimitExceeded):
        return ErrorData(
            code="compaction_failed", message=exc.message, limit=exc.limit, maximum=exc.maximum
        )
    return ErrorData(code="compaction_failed", message=exc.message)


async def run_compaction(
    session: Session,
    provider_for: ProviderFor,
    plan: Plan,
    *,
    llm_config: dict[str, Any],
    instructions: str | None,
    counter: TokenCounter,
    emit: Emit,
    then: str,
) -> Event:
    """Summarise ``plan`` with the session's provider (``provider_for`` finds it) and store
    the ``context_compacted`` event, between an ``agent_status: compacting`` and an
    ``agent_status`` of ``then`` (committed with it: one commit, one ``fsync``, fewer). A
    failure (making the provider too) emits an ``error`` event (``code: compaction_failed``)
    and the status, and is raised; nothing else changes."""
    sid = session.session_id
    await emit(*event_item(AgentStatusData(status="compacting")))
    try:
        summary, usage = await _summarise(
            await provider_for(llm_config),
            plan,
            llm_config=llm_config,
            instructions=instructions,
            counter=counter,
            session_id=sid,
        )
        previous = plan.previous.summary if plan.previous is not None else None
        data = ContextCompactedData(
            summary=summary,
            first_seq=plan.first_seq,
            last_seq=plan.last_seq,
            tokens_before=conversation_tokens(previous, [*plan.older, *plan.kept], counter),
            tokens_after=conversation_tokens(summary, plan.kept, counter),
            usage=usage_data(usage),
        )
    except Exception as exc:
        if isinstance(exc, LLMError) and exc.session_id is None:
            exc.session_id = sid
        if not isinstance(exc, JidokaError):
            logger.exception("session %s: the compaction failed", sid)
        with contextlib.suppress(SessionTerminated):
            await emit(*event_item(_failure(exc)))
            await emit(*event_item(AgentStatusData(status=then)))
        raise
    try:
        return await session.record_compaction(data, plan.previous, AgentStatusData(status=then))
    except CompactionConflict:
        with contextlib.suppress(SessionTerminated):
            await emit(*event_item(AgentStatusData(status=then)))
        raise


async def compact_now(
    get_session: Callable[[], Awaitable[Session]],
    defaults: dict[str, Any],
    keep_last: int,
    instructions: str | None,
    provider_for: ProviderFor,
    counter: TokenCounter,
    emit: Emit,
) -> Event:
    """A compaction a client asked for: ``InvalidArgument`` (naming ``keep_last``) if there
    is nothing to summarise, else :func:`run_compaction`, the agent ``idle`` after it."""
    session = await get_session()
    plan = plan_of(session.state, keep_last)
    if plan is None:
        raise InvalidArgument(
            "nothing to compact: the conversation since the last compaction has at most "
            f"keep_last={keep_last} messages",
            argument="keep_last",
            session_id=session.session_id,
        )
    return await run_compaction(
        session,
        provider_for,
        plan,
        llm_config={**defaults, **session.state.llm_config},
        instructions=instructions,
        counter=counter,
        emit=emit,
        then="idle",
    )


async def owned(task: asyncio.Task[Event], session_id: str) -> Event:
    """Wait for a compaction the session owns: shielded (a caller that goes away does not
    stop it), and ``SessionTerminated`` if the session ended under it (which cancels it)."""
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if task.cancelled():  # the session's, not this caller's
            raise SessionTerminated(session_id) from None
        raise


async def auto_compact(
    session: Session,
    llm_config: dict[str, Any],
    tools: list[ToolSpec],
    instructions: str,
    provider_for: ProviderFor,
    counter: TokenCounter,
    emit: Emit,
) -> None:
    """Before a turn's first model call: compact if its whole prompt (the tools' schemas, the
    instructions and the whole context) would pass ``auto_compact_at`` of the window, and the
    messages a compaction would summarise (all but the newest :data:`DEFAULT_KEEP_LAST`) are
    worth it: longer than a summary may be, and at least half of what the prompt is over by.
    A failure is in the log (an ``error`` event) and the turn goes on uncompacted; either way
    the agent says ``thinking`` again after its ``compacting``."""
    threshold = auto_threshold(llm_config)
    if threshold is None:
        return
    whole = await session.build_context(CONTEXT_PARTS, None)
    fixed = tools_tokens(tools, counter) + counter(instructions) + 2 * MESSAGE_OVERHEAD
    excess = fixed + whole.token_count - threshold
    if excess <= 0:
        return
    plan = plan_of(session.state, DEFAULT_KEEP_LAST)
    answer = int(llm_config.get("max_tokens") or DEFAULT_ANSWER_TOKENS)
    if plan is None or conversation_tokens(None, plan.older, counter) < max(excess // 2, answer):
        # Too little to summarise to matter: no more than a summary may be long, or less
        # than half of what the prompt is over by (active files make it so, say). Else every
        # turn would spend a model call to change next to nothing.
        return
    # A failure is an error event in the log already (and in the server log if it is a bug).
    with contextlib.suppress(Exception):
        await run_compaction(
            session,
            provider_for,
            plan,
            llm_config=llm_config,
            instructions=None,
            counter=counter,
            emit=emit,
            then="thinking",
        )
