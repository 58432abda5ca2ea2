"""The prompt of one model call: the session's context, packed into the model's window.

Budget: ``context_window`` minus the answer's reserve (``max_tokens``, default 1024), the tools'
schemas and the instructions. Within it :func:`jidoka.session.context.build_context` packs, in
this order, and drops what does not fit: the working context, the file index (most recently
touched first), then conversation messages and active-file excerpts together, newest first. So
the newest messages are the last to go, the oldest message the first, and the current user
message (the newest) is always in; a file too large for what is left is cut to its head.
The turn's own tool calls and results come after that, unbudgeted: they are what the model needs
to finish the turn, and ``max_iterations`` bounds them.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from ..session.context import CONTEXT_PARTS, ContextBundle, TokenCounter
from .types import ChatMessage, ToolSpec

__all__ = ["DEFAULT_INSTRUCTIONS", "budget_for", "prompt_messages"]

DEFAULT_INSTRUCTIONS: Final = (
    "You are a coding assistant working in the user's project. Use the tools to read the "
    "code before answering questions about it; cite paths and line numbers. Only change files "
    "with the write tools, and only when asked to. Keep answers short and concrete."
)
DEFAULT_CONTEXT_WINDOW: Final = 8192
DEFAULT_ANSWER_TOKENS: Final = 1024
#: What the model is told for each part of the context (headings of the system message).
_HEADINGS: Final = {
    "files": "Active files",
    "file_index": "Files known in this session",
    "working_context": "Working context (notes the session keeps)",
}
INCLUDE: Final = CONTEXT_PARTS


def budget_for(
    llm_config: dict[str, Any], tools: list[ToolSpec], instructions: str, counter: TokenCounter
) -> int:
    """Tokens left for the session's context in one call (at least 256)."""
    window = int(llm_config.get("context_window") or DEFAULT_CONTEXT_WINDOW)
    answer = int(llm_config.get("max_tokens") or DEFAULT_ANSWER_TOKENS)
    schemas = counter(msgspec.json.encode([msgspec.to_builtins(t) for t in tools]).decode())
    return max(256, window - answer - schemas - counter(instructions))


def prompt_messages(bundle: ContextBundle, instructions: str) -> list[ChatMessage]:
    """The system message (instructions and the non-conversation context), then the history."""
    sections = [instructions]
    if bundle.files:
        files = "\n\n".join(
            f"--- {f.path}{' (truncated)' if f.truncated else ''} ---\n{f.content}"
            for f in bundle.files
        )
        sections.append(f"# {_HEADINGS['files']}\n\n{files}")
    if bundle.file_index:
        lines = "\n".join(
            f"- {e.path}" + (f" ({e.language}, {e.line_count} lines)" if e.language else "")
            for e in bundle.file_index
        )
        sections.append(f"# {_HEADINGS['file_index']}\n\n{lines}")
    if bundle.working_context:
        notes = msgspec.json.format(msgspec.json.encode(bundle.working_context)).decode()
        sections.append(f"# {_HEADINGS['working_context']}\n\n{notes}")
    messages = [ChatMessage(role="system", content="\n\n".join(sections))]
    for message in bundle.messages:
        role = message.role if message.role in ("user", "assistant", "system") else "user"
        messages.append(ChatMessage(role=role, content=message.content))  # type: ignore[arg-type]
    return messages
