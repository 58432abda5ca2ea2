"""The prompt of one model call: the session's context, packed into the model's window.

No request of a turn may be larger than ``context_window`` minus the answer's reserve
(``max_tokens``, default 1024): a server answers a larger one with HTTP 400 and the turn is lost.
Tokens are counted with the runtime's token counter (about four characters a token by default:
set ``context_window`` below the server's own window for a model whose tokenizer is denser).

Of that limit the tools' schemas and the instructions come first; three quarters of the rest go
to the session's context and one quarter is kept for the turn's own tool calls and results.
Within its share :func:`jidoka.session.context.build_context` packs, in this order, and drops
what does not fit: the working context, the file index (most recently touched first), then
conversation messages and active-file excerpts together, newest first. So the newest messages
are the last to go, the oldest message the first, and the current user message (the newest) is
always in; a file too large for what is left is cut to its head.

A tool result is cut to the room left in the window when it comes in (:func:`cut_to_fit`), with
a note telling the model how to read the rest (a line range, a search); the event log keeps the
whole result. If a later request still does not fit, the turn's older tool results are cut
further, then the oldest conversation messages are left out; a request that cannot be made to
fit ends the turn with ``LimitExceeded`` instead of being sent.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from ..session.context import CONTEXT_PARTS, ContextBundle, TokenCounter
from .types import ChatMessage, ToolSpec

__all__ = [
    "DEFAULT_INSTRUCTIONS",
    "budget_for",
    "cut_to_fit",
    "message_tokens",
    "prompt_messages",
    "request_limit",
    "tools_tokens",
]

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
    "summary": "Summary of the earlier conversation (its messages are not repeated below)",
}
INCLUDE: Final = CONTEXT_PARTS
#: Tokens a chat template adds around each message (role, separators), and around a tool call.
MESSAGE_OVERHEAD: Final = 4
#: The share of the room after schemas and instructions kept for the turn's own tool exchange.
TURN_SHARE: Final = 4
_NUMBERED_LINE: Final = re.compile(r"\s*(\d+)\| ")


def request_limit(llm_config: dict[str, Any]) -> int:
    """The most tokens one request of a turn may hold: ``context_window - max_tokens``."""
    window = int(llm_config.get("context_window") or DEFAULT_CONTEXT_WINDOW)
    answer = int(llm_config.get("max_tokens") or DEFAULT_ANSWER_TOKENS)
    return window - answer


def tools_tokens(tools: list[ToolSpec], counter: TokenCounter) -> int:
    """What the tools' schemas cost in a request."""
    if not tools:
        return 0
    return counter(msgspec.json.encode([msgspec.to_builtins(t) for t in tools]).decode())


def message_tokens(message: ChatMessage, counter: TokenCounter) -> int:
    """What one message costs in a request: its text, its tool calls, the template's framing."""
    cost = MESSAGE_OVERHEAD + counter(message.content or "")
    for call in message.tool_calls or ():
        cost += MESSAGE_OVERHEAD + counter(call.id) + counter(call.name) + counter(call.arguments)
    return cost


def budget_for(
    llm_config: dict[str, Any], tools: list[ToolSpec], instructions: str, counter: TokenCounter
) -> int:
    """Tokens for the session's context in one call (at least 256): three quarters of what the
    request limit leaves after the schemas and the instructions; the rest is the turn's."""
    fixed = tools_tokens(tools, counter) + counter(instructions) + 2 * MESSAGE_OVERHEAD
    room = request_limit(llm_config) - fixed
    return max(256, room - room // TURN_SHARE)


def cut_to_fit(content: str, room: int, counter: TokenCounter) -> str | None:
    """``content`` cut to its first lines so that it costs at most ``room`` tokens, ending with
    a note that says what was left out and how to read it; ``None`` if it fits as it is.

    The note names the next line when the content is numbered lines (``read_file``'s output),
    so the model can read on with a range instead of asking for the whole file again.
    """
    if counter(content) <= room:
        return None
    total = content.count("\n") + 1
    kept: list[str] = []
    cost = 0
    note = _cut_note(total, total, None)
    allowance = room - counter(note) - 1
    for line in content.splitlines(keepends=True):
        line_cost = counter(line)
        if cost + line_cost > allowance:
            break
        kept.append(line)
        cost += line_cost
    if not kept and allowance > 0:  # one long line: its start, cut by characters
        first = content.split("\n", 1)[0]
        low, high = 0, len(first)
        while low < high:
            middle = (low + high + 1) // 2
            if counter(first[:middle]) <= allowance:
                low = middle
            else:
                high = middle - 1
        return f"{first[:low]}\n" + _cut_note(0, total, None)
    next_line = None
    if kept:
        shown = _NUMBERED_LINE.match(kept[-1])
        if shown is not None:
            next_line = int(shown.group(1)) + 1
    head = "".join(kept)
    return f"{head}{'' if not head or head.endswith(chr(10)) else chr(10)}" + _cut_note(
        len(kept), total, next_line
    )


def _cut_note(shown: int, total: int, next_line: int | None) -> str:
    where = (
        f"read_file with start_line={next_line} and an end_line"
        if next_line is not None
        else "read_file with start_line/end_line for a smaller range"
    )
    what = f"{shown} of {total} lines" if shown else f"only the start of line 1 (of {total})"
    return (
        f"[cut to fit the context window: {what} of this result shown. "
        f"To see more, call {where}, or search_code for what you need.]"
    )


def prompt_messages(bundle: ContextBundle, instructions: str) -> list[ChatMessage]:
    """The system message (instructions, the non-conversation context, and the summary of a
    compacted conversation, last: in the system message, not a second one, which some chat
    templates refuse), then the history."""
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
    if bundle.summary is not None:
        sections.append(f"# {_HEADINGS['summary']}\n\n{bundle.summary}")
    messages = [ChatMessage(role="system", content="\n\n".join(sections))]
    for message in bundle.messages:
        role = message.role if message.role in ("user", "assistant", "system") else "user"
        messages.append(ChatMessage(role=role, content=message.content))  # type: ignore[arg-type]
    return messages
