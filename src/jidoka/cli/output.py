"""How the ``jidoka`` command writes: Rich for a person at a terminal, plain text for a pipe,
JSON for a program.

Rich is used only when stdout is a terminal: piped through Rich, tables get box characters and
lines wrap at 80 columns, which breaks ``grep`` and ``cut``. Plain mode writes aligned columns
with ``print`` instead, and ``--json`` always writes bare JSON (one document, or one object per
line for event streams) so ``jq`` can read it whatever the terminal.

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

from ..events import Event, encode_event

__all__ = ["Output", "compact", "error_line", "timestamp"]

_STATUS_STYLES: Final = {
    "initializing": "yellow",
    "active": "green",
    "idle": "cyan",
    "terminating": "yellow",
    "terminated": "dim",
}
_EVENT_STYLES: Final = {
    "session_created": "green",
    "session_status": "cyan",
    "session_terminated": "red",
    "error": "bold red",
    "events_dropped": "bold yellow",
}


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
        """One event per line: time, (session,) seq, type, data. ``with_session`` for the
        global stream, which mixes sessions."""
        if self.json:
            self._write(encode_event(event).decode())
            return
        head = [timestamp(event.time)]
        if with_session:
            head.append(event.session_id or "-")
        head.append(str(event.seq))
        data = compact(event.data) if event.data else ""
        if self._console is not None:
            text = Text.assemble(
                (" ".join(head) + " ", "dim"),
                (event.type, _EVENT_STYLES.get(event.type, "bold")),
                " " + data if data else "",
            )
            self._console.print(text)
            sys.stdout.flush()
        else:
            self._write(" ".join([*head, event.type, data]).rstrip())

    @staticmethod
    def _write(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
