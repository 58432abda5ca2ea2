"""How the ``jidoka`` command writes: Rich for a person at a terminal, plain text for a pipe,
JSON for a program.

Rich is used only when stdout is a terminal: piped through Rich, tables get box characters and
lines wrap at 80 columns, which breaks ``grep`` and ``cut``. Plain mode writes aligned columns
with ``print`` instead, and ``--json`` always writes bare JSON (one document, or one object per
line for event streams) so ``jq`` can read it whatever the terminal. What a person reads may say
more than what a script parses: ``send`` says what it stored where a pipe gets the bare seq, and
an event is one short line (a summary of its data) where a pipe gets its data whole.

Every write is flushed: ``jidoka events --follow | consumer`` must see each event as it comes,
not when a pipe buffer fills.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..events import Event, EventType, encode_event
from .transcript import tool_summary

__all__ = ["Output", "compact", "error_line", "event_summary", "timestamp"]

_STATUS_STYLES: Final = {
    "initializing": "yellow",
    "active": "green",
    "idle": "cyan",
    "terminating": "yellow",
    "terminated": "dim",
}
#: Characters a summary keeps even on a narrow terminal (the line is then cut at its edge).
_MIN_SUMMARY: Final = 20
_EVENT_STYLES: Final = {
    "session_created": "green",
    "session_status": "cyan",
    "session_terminated": "red",
    "error": "bold red",
    "events_dropped": "bold yellow",
}


def _cut(text: str, limit: int) -> str:
    """``text`` on one line, at most ``limit`` characters (an ellipsis says it was cut)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: max(limit - 1, 0)].rstrip() + "…"


def _summarise(event: Event) -> str:
    data = event.data
    kind = event.type
    if kind == EventType.SESSION_CREATED:
        nested = data.get("state")
        state: dict[str, Any] = nested if isinstance(nested, dict) else data
        parts = ["restored"] if "restored_from" in data else []
        if state.get("owner"):
            parts.append(f"owner {state['owner']}")
        if state.get("metadata"):
            parts.append(f"metadata {compact(state['metadata'])}")
        return " · ".join(parts)
    if kind == EventType.SESSION_STATUS:
        previous, status = data.get("previous"), data.get("status")
        return f"{previous} → {status}" if previous else str(status)
    if kind == EventType.SESSION_TERMINATED:
        error = f": {data['error']}" if data.get("error") else ""
        return f"reason {data.get('reason')}{error}"
    if kind == EventType.CONVERSATION_ADDED:
        return f"{data.get('role')}: {data.get('content')}"
    if kind == EventType.CONVERSATION_CLEARED:
        return f"{data.get('count')} messages"
    if kind in (EventType.FILE_ADDED, EventType.FILE_REMOVED, EventType.FILE_INDEX_UPDATED):
        return str(data.get("path"))
    if kind == EventType.WORKING_CONTEXT_UPDATED:
        if data.get("deleted"):
            return f"{data.get('key')} deleted"
        return f"{data.get('key')} = {compact(data.get('value'))}"
    if kind == EventType.LLM_STREAM_CHUNK:
        return str(data.get("text"))
    if kind == EventType.LLM_RESPONSE:
        return str(data.get("content") or "")
    if kind == EventType.TOOL_CALL:
        return tool_summary(str(data.get("name")), data.get("arguments"))
    if kind == EventType.TOOL_RESULT:
        if data.get("is_error"):
            return f"✗ {data.get('name')}: {data.get('content')}"
        return f"✓ {data.get('name')}"
    if kind == EventType.AGENT_STATUS:
        return str(data.get("status"))
    if kind == EventType.APPROVAL_REQUESTED:
        return f"{data.get('tool')} {data.get('path')}"
    if kind == EventType.APPROVAL_DECIDED:
        word = "allowed" if data.get("allow") else "denied"
        return f"{word} ({data['reason']})" if data.get("reason") else word
    if kind == EventType.ERROR:
        return str(data.get("message") or data.get("code"))
    if kind == EventType.CONTEXT_COMPACTED:
        return (
            f"messages {data['first_seq']}-{data['last_seq']} summarised "
            f"({data['tokens_before']} → {data['tokens_after']} tokens)"
        )
    # The one type left (Event.type is an EventType): a stream's loss marker.
    return f"{data.get('count', 'some')} events could not be delivered"


def event_summary(event: Event, limit: int = 80) -> str:
    """What an event says, for a person: a few words from its data (``user: why does...``,
    ``active → idle``, ``read_file src/app.py``), on one line of at most ``limit`` characters.
    Data of an unexpected shape falls back to its JSON, never to an error."""
    try:
        text = _summarise(event)
    except (AttributeError, KeyError, TypeError, ValueError):
        text = compact(event.data)
    return _cut(text, limit)


def compact(value: Any) -> str:
    """One-line JSON, for metadata and event data in human output."""
    return msgspec.json.encode(value).decode()


def timestamp(value: datetime) -> str:
    """RFC 3339 in UTC to the millisecond: the same instant whatever the reader's time zone."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error_line(message: str) -> None:
    """``jidoka: error: ...`` on stderr: one line, red when stderr is a terminal."""
    text = " ".join(message.split())  # one line, whatever the message held
    if sys.stderr.isatty():
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            Text.assemble("jidoka: ", ("error", "bold red"), ": ", text)
        )
    else:
        sys.stderr.write(f"jidoka: error: {text}\n")
        sys.stderr.flush()


class Output:
    """Where one command writes its result; ``json`` selects machine output."""

    __slots__ = ("_console", "json")

    def __init__(self, *, json: bool) -> None:
        self.json = json
        self._console = (
            Console(highlight=False, soft_wrap=True) if not json and sys.stdout.isatty() else None
        )

    @property
    def rich(self) -> bool:
        return self._console is not None

    def document(self, value: Any) -> None:
        """One JSON document (a msgspec struct, list or plain value) on one line."""
        self._write(msgspec.json.encode(value).decode())

    def line(self, text: str, style: str | None = None) -> None:
        if self._console is not None:
            self._console.print(Text(text, style=style or ""))
            sys.stdout.flush()
        else:
            self._write(text)

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> None:
        """Rows under headers; ``empty`` is said instead when there are none. The first column
        is an id (never truncated) and a ``STATUS`` column is coloured."""
        rows = list(rows)
        if not rows:
            self.line(empty, style="dim")
            return
        if self._console is not None:
            # Every column but the last keeps its full width (an id cut short is useless);
            # the last (free-form metadata) is the one cut to fit the terminal.
            table = Table(box=None, header_style="bold", pad_edge=False)
            for n, header in enumerate(headers):
                if n < len(headers) - 1:
                    width = max(len(header), *(len(row[n]) for row in rows))
                    table.add_column(header, no_wrap=True, min_width=width)
                else:
                    table.add_column(header, no_wrap=True, overflow="ellipsis")
            status = headers.index("STATUS") if "STATUS" in headers else -1
            for row in rows:
                cells = [
                    Text(cell, style=_STATUS_STYLES.get(cell, "") if n == status else "")
                    for n, cell in enumerate(row)
                ]
                table.add_row(*cells)
            self._console.print(table)
            sys.stdout.flush()
            return
        widths = [max(len(h), *(len(r[n]) for r in rows)) for n, h in enumerate(headers)]
        for row in [headers, *rows]:
            self._write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())

    def fields(self, pairs: Sequence[tuple[str, str]]) -> None:
        """A record as ``name: value`` lines (``sessions show``)."""
        if self._console is not None:
            table = Table(box=None, show_header=False, pad_edge=False)
            table.add_column(style="bold", no_wrap=True)
            table.add_column(overflow="fold")
            for name, value in pairs:
                style = _STATUS_STYLES.get(value, "") if name == "status" else ""
                table.add_row(name, Text(value, style=style))
            self._console.print(table)
            sys.stdout.flush()
            return
        width = max(len(name) for name, _ in pairs)
        for name, value in pairs:
            self._write(f"{name + ':':<{width + 1}} {value}")

    def event(self, event: Event, *, with_session: bool) -> None:
        """One event per line: time, (session,) seq, type, then its data. ``with_session`` for
        the global stream, which mixes sessions.

        A person at a terminal gets a short summary of the data (:func:`event_summary`), cut to
        the line; a pipe gets the data whole, as compact JSON (what scripts read); ``--json``
        the event itself."""
        if self.json:
            self._write(encode_event(event).decode())
            return
        head = [timestamp(event.time)]
        if with_session:
            head.append(event.session_id or "-")
        head.append(str(event.seq))
        if self._console is not None:
            lead = " ".join(head) + " "
            room = max(self._console.width - len(lead) - len(event.type) - 1, _MIN_SUMMARY)
            summary = event_summary(event, room)
            text = Text.assemble(
                (lead, "dim"),
                (event.type, _EVENT_STYLES.get(event.type, "bold")),
                " " + summary if summary else "",
            )
            self._console.print(text, no_wrap=True, overflow="ellipsis")
            sys.stdout.flush()
        else:
            data = compact(event.data) if event.data else ""
            self._write(" ".join([*head, event.type, data]).rstrip())

    @staticmethod
    def _write(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
