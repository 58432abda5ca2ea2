"""The token usage of a turn's model calls: the endpoint's where it reports it, else estimated.

An endpoint may send no usage (some servers leave it out of a stream), and a call a cancel or a
failure stopped never gets to report one, yet the server did the work: such a call is counted
with the session's token counter (the request's messages and tool schemas, and what streamed of
the answer) and marked ``estimated``, in ``llm_response``/``error`` events and in
``SessionInfo.usage``. A call the endpoint refused with an HTTP error counts nothing (the
caller decides that). These are plain functions of counts, apart from the turn loop in
:mod:`.orchestrator`, so that every place a usage is shown reads it the same way.
"""

from __future__ import annotations

from typing import Any

from ..session.context import TokenCounter
from ..session.info import TokenUsage
from .prompt import message_tokens, tools_tokens
from .types import ChatRequest, Completion, Usage

__all__ = ["estimate", "token_usage", "usage_data", "usage_of"]


def usage_of(completion: Completion, request: ChatRequest, counter: TokenCounter) -> Usage:
    """The endpoint's usage of one call, or an estimate when it sent none."""
    if completion.usage is not None:
        return completion.usage
    answer = completion.text + "".join(c.name + c.arguments for c in completion.tool_calls)
    return estimate(request, answer, counter)


def estimate(request: ChatRequest, answer: str, counter: TokenCounter) -> Usage:
    """The estimated usage of ``request`` answered with ``answer`` (so far)."""
    prompt = tools_tokens(request.tools, counter) + sum(
        message_tokens(m, counter) for m in request.messages
    )
    completion = counter(answer) if answer else 0
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        estimated=True,
    )


def token_usage(usage: Usage) -> TokenUsage:
    """A usage as a turn's result carries it (``ChatResult.usage``)."""
    if usage.estimated:
        return TokenUsage(
            usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, estimated=True
        )
    return TokenUsage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)


def usage_data(usage: Usage) -> dict[str, Any]:
    """A usage in an event: the three counts, and ``estimated: true`` when it is one."""
    data: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.estimated:
        data["estimated"] = True
    return data
