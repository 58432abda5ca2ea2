"""Jidoka's chat types on the Chat Completions wire, and the streamed answer back.

Pure translation, no I/O and no SDK call (the SDK's types are used for checking only), so
:class:`~jidoka.llm.providers.openai.OpenAIProvider` is left with the connection, the stream and
its errors:

- messages and tools become Chat Completions dicts. An assistant message that only calls tools
  is sent with ``content: ""``: every server takes it, while an absent content breaks some chat
  templates and ``null`` is refused by others;
- streamed tool-call fragments are assembled by their ``index`` into complete :class:`ToolCall`,
  as the reference SDKs do: the id and the name are taken once (servers such as
  llama-cpp-python repeat the name in every fragment), only the arguments are concatenated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..types import ChatMessage, ToolCall, ToolSpec

if TYPE_CHECKING:
    from openai.types.chat import (
        ChatCompletionAssistantMessageParam,
        ChatCompletionChunk,
        ChatCompletionMessageParam,
        ChatCompletionToolParam,
    )

__all__ = ["ToolCallFragments", "absorb", "message_param", "tool_choice_param", "tool_param"]


def message_param(message: ChatMessage) -> ChatCompletionMessageParam:
    content = message.content or ""
    if message.role == "system":
        return {"role": "system", "content": content}
    if message.role == "user":
        return {"role": "user", "content": content}
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id or "", "content": content}
    # Always a string, "" when the message only calls tools: llama-cpp-python's chat templates
    # fail on a missing content (after answering 200), and its server refuses null (HTTP 500).
    assistant: ChatCompletionAssistantMessageParam = {"role": "assistant", "content": content}
    if message.tool_calls:
        assistant["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    return assistant


def tool_param(tool: ToolSpec) -> ChatCompletionToolParam:
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        },
    }


def tool_choice_param(choice: str) -> Any:
    """``llm_config.tool_choice`` on the wire: a mode as is, a tool's name as the object that
    names it."""
    if choice in ("auto", "required", "none"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def absorb(chunk: ChatCompletionChunk, calls: ToolCallFragments) -> tuple[str, str | None]:
    """Fold one chunk's first choice into ``calls``; return its text and finish_reason."""
    text = ""
    reason: str | None = None
    for choice in chunk.choices:
        if choice.index != 0:
            continue  # we ask for one choice (n=1)
        delta = choice.delta
        if delta is not None:
            text += delta.content or ""
            for fragment in delta.tool_calls or ():
                function = fragment.function
                calls.add(
                    getattr(fragment, "index", None),
                    fragment.id,
                    function.name if function is not None else None,
                    function.arguments if function is not None else None,
                )
        reason = choice.finish_reason or reason
    return text, reason


class ToolCallFragments:
    """Streamed tool-call fragments, keyed by index, assembled as the reference SDKs do: the id
    and the name are taken from the first fragment that has them (llama-cpp-python repeats the
    name in every fragment, others repeat the id; a repeat is not more name), and only the
    arguments are concatenated."""

    def __init__(self) -> None:
        self._calls: dict[int, tuple[str, str, list[str]]] = {}

    def add(
        self, index: int | None, call_id: str | None, name: str | None, arguments: str | None
    ) -> None:
        if index is None:  # servers that omit the index send each call whole, in order
            index = len(self._calls)
        known_id, known_name, parts = self._calls.setdefault(index, ("", "", []))
        if (call_id and not known_id) or (name and not known_name):
            self._calls[index] = (known_id or call_id or "", known_name or name or "", parts)
        if arguments:
            parts.append(arguments)

    def assemble(self) -> list[ToolCall]:
        return [
            ToolCall(id=call_id or f"call_{index}", name=name, arguments="".join(parts))
            for index, (call_id, name, parts) in sorted(self._calls.items())
        ]
