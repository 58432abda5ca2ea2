"""How ``jidoka chat`` shows a conversation: rendered for a person, or as JSON lines.

Rendered, a turn shows a spinner (``thinking…``, on a terminal only: a pipe gets no escapes)
until its first output, then the answer streams inline as its ``llm_stream_chunk`` events arrive;
each tool call is
one dim line (``⚙ read_file src/app.py ✓``, or ``✗ error: ...`` when it failed); a write waiting
for approval shows its diff; a finished answer ends with a dim usage line (``[tokens: prompt 120
· completion 14]``); an ``error`` event is one red line. Colours only when stdout is a terminal:
Rich writes then, plain ``write`` otherwise, so a pipe gets the same text without escapes.

With ``--json`` every event is one line (:func:`jidoka.events.encode_event`) and each turn's
``ChatResult`` one more; the prompts (``you>``, ``allow?``) then go to stderr, so stdout is
nothing but JSON.
"""

from __future__ import annotations

import contextlib
import sys
from typing import IO, TYPE_CHECKING, Any, Final

import msgspec
from rich.console import Console
from rich.status import Status
from rich.text import Text

from ..events import Event, EventType, encode_event

if TYPE_CHECKING:
    from ..llm.orchestrator import ChatResult

__all__ = ["Transcript", "tool_summary"]

#: Argument shown after a tool's name, by preference: the first one the call has.
_SUMMARY_KEYS: Final = ("path", "pattern", "glob")
_SUMMARY_CHARS: Final = 80
_DIFF_STYLES: Final = (
    ("+++", "bold"),
    ("---", "bold"),
    ("+", "green"),
    ("-", "red"),
    ("@@", "cyan"),
)


def _short(text: str, limit: int = _SUMMARY_CHARS) -> str:
    """The first line of ``text``, cut to ``limit`` characters."""
    lines = text.strip().splitlines()
    line = lines[0] if lines else ""
    if len(line) > limit or len(lines) > 1:
        return line[:limit].rstrip() + "…"
    return line


def tool_summary(name: str, arguments: object) -> str:
    """``read_file src/app.py``: the tool and its most telling argument."""
    value: Any = arguments
    if isinstance(arguments, str):
        try:
            value = msgspec.json.decode(arguments)
        except msgspec.DecodeError:
            return f"{name} {_short(arguments)}".rstrip()
    if isinstance(value, dict):
        for key in _SUMMARY_KEYS:
            if isinstance(value.get(key), str):
                return f"{name} {_short(value[key])}"
        if not value:
            return name
    return f"{name} {_short(msgspec.json.encode(value).decode())}"


class Transcript:
    """Where one chat is written; ``json`` selects JSON lines."""

    def __init__(self, *, json: bool) -> None:
        self.json = json
        if not json:  # a terminal that cannot show ⚙ or ✓ gets "?", not an error
            with contextlib.suppress(AttributeError, ValueError, OSError):
                sys.stdout.reconfigure(errors="replace")  # type: ignore[union-attr]
        self._console = (
            Console(highlight=False, soft_wrap=True) if not json and sys.stdout.isatty() else None
        )
        self._at_line_start = True
        self._prompt_open = False  # a prompt on stderr (JSON mode) waits for its answer
        self._open_tool: str | None = None  # the call whose line waits for its ✓ or ✗
        self._streamed: set[int] = set()  # iterations whose text was shown
        self._spinner: Status | None = None  # shown while a turn has printed nothing yet

    # --- writing --------------------------------------------------------------------------------

    def waiting(self) -> None:
        """A turn has started: a spinner until its first output (a terminal only). Rich draws
        it from a thread of its own, and removes it without a trace (transient)."""
        if self._console is not None and self._spinner is None and self._at_line_start:
            self._spinner = self._console.status("thinking…", spinner="dots")
            self._spinner.start()

    def done_waiting(self) -> None:
        """Remove the spinner (before any output, and when the turn ends)."""
        spinner, self._spinner = self._spinner, None
        if spinner is not None:
            spinner.stop()

    def _write(self, text: str, style: str = "") -> None:
        if not text:
            return
        self.done_waiting()
        if self._console is not None:
            self._console.print(Text(text, style=style), end="")
        else:
            sys.stdout.write(text)
        sys.stdout.flush()
        self._at_line_start = text.endswith("\n")
        self._open_tool = None

    def newline(self) -> None:
        """End the current line, if something is on it (streamed text, a prompt)."""
        if not self._at_line_start:
            self._write("\n")

    def line(self, text: str, style: str = "") -> None:
        """``text`` on a line of its own."""
        self.newline()
        self._write(text, style)
        self._write("\n")

    def _json_line(self, data: bytes) -> None:
        self.done_waiting()
        sys.stdout.write(data.decode() + "\n")
        sys.stdout.flush()

    @property
    def _prompt_stream(self) -> IO[str]:
        return sys.stderr if self.json else sys.stdout

    # --- what the chat says ---------------------------------------------------------------------

    def session(self, session_id: str) -> None:
        """The id of the session just created (the first line of the output)."""
        if self.json:
            self._json_line(msgspec.json.encode({"session_id": session_id}))
        else:
            self.line(f"session {session_id}", "dim")

    def prompt(self, text: str) -> None:
        """A prompt (``you> ``), left open for the answer; on stderr in JSON mode."""
        if self.json:
            sys.stderr.write(text)
            sys.stderr.flush()
            self._prompt_open = True
            return
        self.newline()
        self._write(text, "bold")

    def answered(self, echo: str | None) -> None:
        """The prompt was answered. A terminal has echoed the line and its newline (``echo``
        ``None``); for a pipe, ``echo`` is written after the prompt, so the output reads
        like the conversation."""
        if self.json:
            if echo is not None and self._prompt_open:
                sys.stderr.write(echo + "\n")
                sys.stderr.flush()
            self._prompt_open = False
        elif echo is not None:
            self._write(echo + "\n")
        else:
            self._at_line_start = True

    def close_prompt(self) -> None:
        """End the line of a prompt left unanswered (end of input, Ctrl-C), or of any text."""
        if self.json:
            if self._prompt_open:
                sys.stderr.write("\n")
                sys.stderr.flush()
            self._prompt_open = False
        else:
            self.newline()

    def note(self, text: str, style: str = "dim") -> None:
        """A remark about the chat (not an event): on stderr in JSON mode."""
        if self.json:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
        else:
            self.line(text, style)

    def error(self, message: str) -> None:
        """An error as one line (red on a terminal)."""
        text = " ".join(message.split())
        if self.json:
            sys.stderr.write(f"error: {text}\n")
            sys.stderr.flush()
        else:
            self.line(f"error: {text}", "bold red")

    def result(self, result: ChatResult) -> None:
        """A turn's ``ChatResult``: its JSON line in JSON mode (rendered mode showed it already)."""
        if self.json:
            self._json_line(msgspec.json.encode(result))

    def event(self, event: Event) -> None:
        """One event of the session, as JSON or rendered (events a reader of the chat does not
        need, like ``conversation_added``, are not rendered)."""
        if self.json:
            self._json_line(encode_event(event))
            return
        data = event.data
        kind = event.type
        if kind == EventType.LLM_STREAM_CHUNK:
            self._chunk(data)
        elif kind == EventType.TOOL_CALL:
            self.newline()
            self._write(f"⚙ {tool_summary(str(data.get('name')), data.get('arguments'))}", "dim")
            self._open_tool = str(data.get("call_id"))
        elif kind == EventType.TOOL_RESULT:
            self._tool_result(data)
        elif kind == EventType.APPROVAL_REQUESTED:
            self._approval(data)
        elif kind == EventType.APPROVAL_DECIDED and data.get("reason") == "timeout":
            self.line("(not approved in time: the write was not made)", "yellow")
        elif kind == EventType.LLM_RESPONSE:
            self._response(data)
        elif kind == EventType.ERROR and data.get("code") == "compaction_failed":
            self.line(
                f"(compacting failed, the context is unchanged: {data.get('message')})", "yellow"
            )
        elif kind == EventType.ERROR:
            self.error(str(data.get("message") or data.get("code") or "the turn failed"))
        elif kind == EventType.CONTEXT_COMPACTED:
            self.note(
                f"(the conversation was compacted: messages {data.get('first_seq')}-"
                f"{data.get('last_seq')} summarised)"
            )
        elif kind == EventType.SESSION_TERMINATED:
            self.line("(the session was terminated)", "yellow")
        elif kind == EventType.EVENTS_DROPPED:
            self.line(f"({data.get('count', 'some')} events could not be shown)", "yellow")

    def _chunk(self, data: dict[str, Any]) -> None:
        text = str(data.get("text") or "")
        if text:
            iteration = data.get("iteration")
            if isinstance(iteration, int):
                self._streamed.add(iteration)
            self._write(text)

    def _tool_result(self, data: dict[str, Any]) -> None:
        failed = bool(data.get("is_error"))
        why = _short(str(data.get("content") or "error")) if failed else ""
        style = "red" if failed else "green"
        if self._open_tool is not None and self._open_tool == data.get("call_id"):
            self._write(" ")
            self._write(f"✗ {why}" if failed else "✓", style)
            self._write("\n")
        else:  # not on its call's line (an approval came between): named again
            name = data.get("name")
            self.line(f"✗ {name}: {why}" if failed else f"✓ {name}", style)

    def _approval(self, data: dict[str, Any]) -> None:
        # The server's summary quotes an odd file name (a newline, edge spaces); the raw path
        # is shown only as a repr, so it cannot disguise itself either.
        what = data.get("summary") or f"{data.get('tool')} wants to change {data.get('path')!r}"
        self.line(f"? {what}:", "bold yellow")
        for row in str(data.get("diff") or "").splitlines():
            style = next((s for prefix, s in _DIFF_STYLES if row.startswith(prefix)), "")
            self._write(row + "\n", style)

    def _response(self, data: dict[str, Any]) -> None:
        content = str(data.get("content") or "")
        if content and data.get("iterations") not in self._streamed:
            self.newline()
            self._write(content)  # a provider that did not stream: the answer at once
        self._streamed.clear()
        if data.get("interrupted"):
            self.line("(cancelled)", "yellow")
        usage = data.get("usage")
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
            self.line(f"[tokens: prompt {prompt} · completion {completion}]", "dim")
        else:
            self.newline()
