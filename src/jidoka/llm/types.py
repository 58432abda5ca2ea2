"""What the turn loop, providers and tools exchange: chat messages, tool calls, stream items.

Provider-neutral on purpose: a provider translates these to and from its wire format (the
OpenAI-compatible Chat Completions one, a script, ...), and nothing above the provider layer sees
an SDK type. Messages follow the Chat Completions shape because every compatible server speaks it.
The two shapes the tools share (:class:`ToolCall`, :class:`ToolSpec`) are defined in
:mod:`jidoka.tools.spec`, which imports nothing of this package, and are re-exported here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal, Protocol, runtime_checkable

import msgspec

from ..tools.spec import ToolCall, ToolSpec

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "Completion",
    "Provider",
    "TextDelta",
    "ToolCall",
    "ToolSpec",
    "Usage",
]


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A message of the prompt. ``tool`` messages answer one call (``tool_call_id``)."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens of one or more model calls. ``estimated``: some of them were counted here with the
    session's token counter because the endpoint did not say (no usage in its stream, a
    cancelled or failed call), so they are an approximation, not the server's count."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    estimated: bool = False

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            estimated=self.estimated or other.estimated,
        )


class ChatRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One model call: the prompt, the tools on offer and the sampling settings."""

    model: str
    messages: list[ChatMessage]
    tools: list[ToolSpec] = []
    temperature: float | None = None
    max_tokens: int | None = None
    #: ``auto``, ``required``, ``none`` or a tool's name; ``None``: not sent (the server's default).
    tool_choice: str | None = None
    #: It asks for a summary of the conversation (a compaction), not for a turn's answer:
    #: nothing of it goes on the wire, but an offline provider can answer it in kind.
    summary: bool = False


class TextDelta(msgspec.Struct, frozen=True):
    """A piece of the answer's text, as it streams."""

    text: str


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    """The end of one model call: the whole text, the tool calls (assembled), the usage.

    ``finish_reason`` is the provider's (``stop``, ``tool_calls``, ``length`` ...). ``usage`` is
    ``None`` when the endpoint did not report it (many local servers ignore
    ``stream_options.include_usage``): the turn loop then estimates it, and says so, rather than
    counting zero.
    """

    text: str
    tool_calls: list[ToolCall] = []
    usage: Usage | None = Usage()
    finish_reason: str | None = None


StreamItem = TextDelta | Completion


@runtime_checkable
class Provider(Protocol):
    """A model endpoint. ``stream`` yields :class:`TextDelta` items, then exactly one
    :class:`Completion`; it raises :class:`~jidoka.LLMError` (never an SDK exception) on
    failure. Cancelling the iteration must close the underlying request promptly."""

    name: str

    def stream(self, request: ChatRequest) -> AsyncIterator[TextDelta | Completion]: ...

    async def aclose(self) -> None: ...
