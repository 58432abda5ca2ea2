"""What a model sees of a session: :func:`build_context` packs its projection into a token budget.

It reads a :class:`~jidoka.session.state.SessionState` and changes nothing; the token counter is
passed in, so a real tokenizer can replace the estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import msgspec

from .state import FileIndexEntry, Message, SessionState

__all__ = [
    "CONTEXT_PARTS",
    "ContextBundle",
    "FileExcerpt",
    "TokenCounter",
    "build_context",
    "estimate_tokens",
]

CONTEXT_PARTS: Final = ("conversation", "files", "file_index", "working_context")
#: Tokens charged per message on top of its content (role and separators), as chat APIs do.
MESSAGE_OVERHEAD_TOKENS: Final = 4
#: A file excerpt shorter than this many tokens is not worth including.
MIN_EXCERPT_TOKENS: Final = 16

TokenCounter = Callable[[str], int]


def estimate_tokens(text: str) -> int:
    """The default token counter: about four characters per token, rounded up.

    That is the usual rule of thumb for English text and code with BPE tokenizers; it over-counts
    dense code a little, which errs on the side of fitting the model's window. Pass a real
    tokenizer (``Runtime(token_counter=...)``) when exact counts matter.
    """
    return (len(text) + 3) // 4


class FileExcerpt(msgspec.Struct, frozen=True):
    """A file's text as packed into the context; ``truncated`` if only its head fitted."""

    path: str
    language: str | None
    content: str
    truncated: bool = False


class ContextBundle(msgspec.Struct, frozen=True):
    """What :func:`build_context` packed, and how many tokens it counts."""

    messages: list[Message] = []
    files: list[FileExcerpt] = []
    file_index: list[FileIndexEntry] = []
    working_context: dict[str, Any] = {}
    token_count: int = 0
    max_tokens: int | None = None
    #: Something was left out (or cut short) to stay within ``max_tokens``.
    truncated: bool = False
    #: Messages of the history that did not fit.
    omitted_messages: int = 0
    #: The summary of the conversation before ``messages`` (the session's latest compaction,
    #: issue 17), packed with the conversation; ``None`` if it was never compacted.
    summary: str | None = None


def build_context(
    state: SessionState,
    *,
    include: Iterable[str] = CONTEXT_PARTS,
    max_tokens: int | None = None,
    file_texts: Mapping[str, str] | None = None,
    counter: TokenCounter = estimate_tokens,
) -> ContextBundle:
    """Pack the session's context into at most ``max_tokens`` tokens (no bound if ``None``).

    Order of packing, each part only if it is in ``include``:

    1. working context, key by key in insertion order, while it fits;
    2. file index entries, most recently touched first, while they fit;
    3. the summary of a compacted conversation, if it fits (it stands for the messages up to
       the compaction's ``last_seq``, which are not packed);
    4. conversation messages and file excerpts together, **newest first** by the seq of the event
       that added them. The conversation stops at the first message that does not fit (no gaps);
       a file that does not fit is cut to its first lines if at least ``MIN_EXCERPT_TOKENS``
       remain, otherwise skipped.

    ``file_texts`` maps active-file paths to their current text (files missing from it, e.g.
    deleted since they were added, are skipped). Messages come back oldest first.
    """
    parts = frozenset(include)
    budget = max_tokens if max_tokens is not None else float("inf")
    used = 0
    truncated = False

    working: dict[str, Any] = {}
    if "working_context" in parts and state.working_context:
        for key, value in state.working_context.items():
            cost = counter(key) + counter(msgspec.json.encode(value).decode())
            if used + cost > budget:
                truncated = True
                continue
            working[key] = value
            used += cost

    index: list[FileIndexEntry] = []
    if "file_index" in parts and state.index:
        for entry in reversed(state.index.values()):
            cost = counter(_index_line(entry))
            if used + cost > budget:
                truncated = True
                break
            index.append(entry)
            used += cost

    want_messages = "conversation" in parts and state.history
    want_files = "files" in parts and state.files and file_texts is not None
    messages: list[Message] = []
    excerpts: list[tuple[int, FileExcerpt]] = []
    history = state.messages() if want_messages else []
    summary: str | None = None
    compaction = state.compaction if "conversation" in parts else None
    if compaction is not None:
        history = [m for m in history if m.seq > compaction.last_seq]
        cost = counter(compaction.summary) + MESSAGE_OVERHEAD_TOKENS
        if used + cost <= budget:
            summary = compaction.summary
            used += cost
        else:
            truncated = True
    files = sorted((state.files or {}).values(), key=lambda f: f.seq) if want_files else []
    texts = file_texts or {}
    mi, fi = len(history) - 1, len(files) - 1
    while mi >= 0 or fi >= 0:
        if mi >= 0 and (fi < 0 or history[mi].seq > files[fi].seq):
            message = history[mi]
            mi -= 1
            cost = counter(message.content) + MESSAGE_OVERHEAD_TOKENS
            if used + cost > budget:
                truncated = True
                mi = -1  # the conversation stops here: a context never has gaps in it
                continue
            messages.append(message)
            used += cost
            continue
        active = files[fi]
        fi -= 1
        text = texts.get(active.path)
        if text is None:
            continue
        indexed = state.index.get(active.path) if state.index else None
        language = indexed.language if indexed is not None else None
        cost = counter(text)
        if used + cost <= budget:
            excerpts.append((active.seq, FileExcerpt(active.path, language, text)))
            used += cost
            continue
        truncated = True
        room = budget - used
        if room >= MIN_EXCERPT_TOKENS:
            head, head_cost = _head(text, int(room), counter)
            if head:
                excerpts.append((active.seq, FileExcerpt(active.path, language, head, True)))
                used += head_cost

    omitted = len(history) - len(messages) if want_messages else 0
    messages.reverse()
    excerpts.sort(key=lambda pair: pair[0])
    return ContextBundle(
        messages=messages,
        files=[excerpt for _, excerpt in excerpts],
        file_index=index,
        working_context=working,
        token_count=used,
        max_tokens=max_tokens,
        truncated=truncated or omitted > 0,
        omitted_messages=omitted,
        summary=summary,
    )


def _index_line(entry: FileIndexEntry) -> str:
    return f"{entry.path} {entry.language or ''} {entry.line_count or 0} lines {entry.size or 0} B"


def _head(text: str, room: int, counter: TokenCounter) -> tuple[str, int]:
    """The longest run of whole first lines of ``text`` costing at most ``room`` tokens."""
    taken: list[str] = []
    cost = 0
    for line in text.splitlines(keepends=True):
        line_cost = counter(line)
        if cost + line_cost > room:
            break
        taken.append(line)
        cost += line_cost
    head = "".join(taken)
    return head, counter(head) if head else 0
