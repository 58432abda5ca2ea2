"""``jidoka chat``: talk to a session's agent from a terminal, or from a script.

The command subscribes to the session's event stream (live, before anything is sent, so nothing
is missed), then for each message runs one turn (``RemoteClient.chat``) while the events render
as they arrive (:mod:`jidoka.cli.transcript`). A turn is over when its ``chat`` call has answered
and its last ``agent_status`` (``idle``, ``cancelled`` or ``failed``) has been shown.

Input is read from stdin without blocking the event loop (:mod:`jidoka.cli.terminal`).

Ctrl-C is the loop's own signal handler: during a turn it asks the server to cancel the turn
(``RemoteClient.cancel``); at the prompt, or a second time during a turn, it ends the chat.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Collection, Coroutine
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer

from ..errors import (
    InvalidConfig,
    JidokaError,
    LimitExceeded,
    LLMError,
    SessionNotFound,
    SessionTerminated,
    Unauthorized,
)
from ..events import EventType
from .common import (
    DEFAULT_URL,
    USAGE,
    CommandFailed,
    JsonOption,
    TokenOption,
    UrlOption,
    json_object,
    run_remote,
)
from .terminal import StdinLines, handle_sigint
from .transcript import Transcript

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ..events import Event
    from ..remote import RemoteClient

__all__ = ["Approve", "chat"]

_PROMPT: Final = "you> "
_ENDS: Final = frozenset({"idle", "cancelled", "failed"})
#: How long the last events of a turn may trail its ``chat`` answer (they normally come first).
_GRACE: Final = 10.0
_INTERRUPTED: Final = 130
_NEW_SESSION = "New session (without SESSION_ID)"
#: The termination reason of a session ``chat`` made whose first turn could not start.
_SETUP_FAILED: Final = "chat_setup_failed"


class Approve(StrEnum):
    ASK = "ask"
    YES = "yes"
    NO = "no"


def chat(
    session_id: Annotated[
        str | None,
        typer.Argument(
            metavar="SESSION_ID",
            help="The session to talk to; without it a new one is made (see --llm-config) "
            "and its id printed first.",
            show_default=False,
        ),
    ] = None,
    message: Annotated[
        list[str] | None,
        typer.Option(
            "--message",
            "-m",
            help="Send this message, print the answer, and exit without reading the terminal; "
            "repeatable (sent one after another).",
            show_default=False,
        ),
    ] = None,
    approve: Annotated[
        Approve,
        typer.Option(
            help="How to answer the agent's requests to write files: ask on the terminal "
            "(denied when there is none), always yes, always no."
        ),
    ] = Approve.ASK,
    llm_config: Annotated[
        str | None,
        typer.Option(
            metavar="JSON",
            help="JSON object: the LLM configuration.",
            show_default=False,
            rich_help_panel=_NEW_SESSION,
        ),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(
            metavar="JSON",
            help='JSON object: session config overrides, e.g. {"allow_write": "ask"}.',
            show_default=False,
            rich_help_panel=_NEW_SESSION,
        ),
    ] = None,
    project_root: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            help="The directory the session's files live in (made absolute here).",
            show_default=False,
            rich_help_panel=_NEW_SESSION,
        ),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json: JsonOption = False,
) -> None:
    """Chat with a session's agent: the answer streams in, tool calls and write approvals show.

    Interactive (no --message): type a message at the `you>` prompt. Ctrl-C during a turn
    cancels it; Ctrl-C at the prompt, a second Ctrl-C during a turn, or Ctrl-D ends the chat
    with exit code 0.

    With --message: exit code 0 when every turn completed; 1 when one failed or was cancelled
    elsewhere (the messages after it are not sent); 130 on Ctrl-C (the running turn is
    cancelled first).

    --json prints each event as a JSON line and each turn's result as one more; prompts then
    go to stderr.
    """
    fresh = {"--llm-config": llm_config, "--config": config, "--project-root": project_root}
    if session_id is not None and (given := [name for name, v in fresh.items() if v]):
        what = ", ".join(given)
        raise CommandFailed(f"{what}: only for a new session (not with a SESSION_ID)", USAGE)
    llm = json_object(llm_config, "--llm-config")
    overrides = json_object(config, "--config")
    root = os.path.abspath(project_root) if project_root is not None else None
    view = Transcript(json=json)
    stdin = StdinLines.open()
    if message and not (stdin is not None and stdin.isatty()):
        stdin = None  # a script: stdin is not the user's, so nothing is asked

    async def work(client: RemoteClient) -> int:
        sid = session_id
        if sid is None:
            sid = await client.create_session(config=overrides, llm_config=llm, project_root=root)
            view.session(sid)
        session = _Chat(client, sid, view, approve, stdin)
        try:
            async with client.subscribe_to_session(sid) as subscription:
                return await session.run(subscription, message or None)
        except InvalidConfig as exc:
            if session_id is not None or session.completed:
                raise
            # The session was made for this chat and can never answer (no provider, a bad
            # model config): do not leave it behind, active and useless.
            with contextlib.suppress(JidokaError):
                await client.terminate_session(sid, reason=_SETUP_FAILED)
            raise CommandFailed(
                f"{exc.message}; the session made for this chat ({sid}) was terminated"
            ) from None

    code = run_remote(url, token, work)
    if code:
        raise typer.Exit(code)


def _config_error(event: Event) -> bool:
    """A turn's ``error`` event for a configuration it could not start with."""
    return event.type == EventType.ERROR and event.data.get("code") == "invalid_config"


class _Chat:
    """One chat on one session: the turns, the event consumer, approvals and Ctrl-C."""

    def __init__(
        self,
        client: RemoteClient,
        session_id: str,
        view: Transcript,
        approve: Approve,
        stdin: StdinLines | None,
    ) -> None:
        self._client = client
        self._sid = session_id
        self._view = view
        self._approve = approve
        self._stdin = stdin
        prompts = sys.stderr if view.json else sys.stdout
        # A terminal echoes what is typed; for anything else the answer is written after it.
        self._echo = not (stdin is not None and stdin.isatty() and prompts.isatty())
        self._last_seq = 0
        self._ends: list[tuple[int, str]] = []  # (seq, status) of turn-ending agent_status
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()  # approvals and cancel requests
        self._main: asyncio.Task[Any] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._in_turn = False
        self._cancelling = False
        self._interrupted = False  # a turn was cancelled by our Ctrl-C
        self._stop: str | None = None  # why the chat ends early: quit, ended, failed
        self._quit_code = 0
        self.completed = 0  # turns that ran to their end (failed ones included)

    # --- the whole chat -------------------------------------------------------------------------

    async def run(self, subscription: AsyncIterator[Event], messages: list[str] | None) -> int:
        loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        self._quit_code = 0 if messages is None else _INTERRUPTED
        self._consumer = loop.create_task(self._consume(subscription))
        self._consumer.add_done_callback(self._consumer_done)
        handled = handle_sigint(loop, self._sigint)
        code = 0
        try:
            try:
                code = await (self._interactive() if messages is None else self._batch(messages))
            finally:
                self._main = None
                if handled:
                    loop.remove_signal_handler(signal.SIGINT)
                await self._cleanup()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._stop is None or task is None:
                raise
            task.uncancel()
        if self._stop == "quit":
            self._view.close_prompt()
            return self._quit_code
        if self._stop == "ended":
            raise CommandFailed(f"session {self._sid!r} was terminated")
        if self._stop == "failed" and self._consumer is not None:
            exc = self._consumer.exception()
            if exc is not None:
                raise exc
        return code

    async def _cleanup(self) -> None:
        tasks = [*self._tasks, *([self._consumer] if self._consumer else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def _end(self, reason: str) -> None:
        """End the chat now: the main task is cancelled and ``run`` says why."""
        if self._stop is None and self._main is not None:
            self._stop = reason
            self._main.cancel()

    def _sigint(self) -> None:
        if self._in_turn and not self._cancelling:
            self._cancelling = True
            self._interrupted = True
            self._drop_approvals()
            self._spawn(self._cancel_turn())
        else:
            self._end("quit")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _drop_approvals(self) -> None:
        for task in self._tasks:
            if task.get_name().startswith("approval"):
                task.cancel()

    async def _cancel_turn(self) -> None:
        try:
            await self._client.cancel(self._sid)
        except JidokaError as exc:
            self._view.error(f"could not cancel the turn: {exc}")

    # --- events ---------------------------------------------------------------------------------

    async def _consume(self, subscription: AsyncIterator[Event]) -> None:
        async for event in subscription:
            self._last_seq = max(self._last_seq, event.seq)
            if not (self._in_turn and _config_error(event) and not self._view.json):
                self._view.event(event)  # (our own turn's config error: the command says it)
            if event.type == EventType.AGENT_STATUS and event.data.get("status") in _ENDS:
                self._ends.append((event.seq, str(event.data["status"])))
                self._changed.set()
            elif event.type == EventType.APPROVAL_REQUESTED and self._in_turn:
                # Only while our own turn runs: between turns it is another client's to answer.
                call_id = event.data.get("call_id")
                if isinstance(call_id, str):
                    task = asyncio.get_running_loop().create_task(
                        self._decide(call_id), name=f"approval {call_id}"
                    )
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    def _consumer_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            self._end("failed" if task.exception() is not None else "ended")

    async def _settle(self, after: int, statuses: Collection[str]) -> bool:
        """Wait (a little) for the ``agent_status`` that ends a turn: one of ``statuses`` after
        seq ``after``. ``False`` if it did not come."""
        try:
            async with asyncio.timeout(_GRACE):
                while True:
                    if any(seq > after and status in statuses for seq, status in self._ends):
                        self._ends = [(s, t) for s, t in self._ends if s > after]
                        return True
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False

    # --- approvals ------------------------------------------------------------------------------

    async def _decide(self, call_id: str) -> None:
        if self._approve is Approve.ASK:
            allow = await self._ask()
        else:
            allow = self._approve is Approve.YES
            word = "allowed" if allow else "denied"
            self._view.note(f"{word} (--approve {self._approve})")
        try:
            await self._client.approve(self._sid, call_id, allow)
        except JidokaError as exc:
            self._view.error(f"the answer was not taken: {exc}")

    async def _ask(self) -> bool:
        if self._stdin is None:
            self._view.note("denied: no terminal to ask (see --approve)", "yellow")
            return False
        self._stdin.discard_typeahead()
        answer = await self._prompt("allow? [y/N] ")
        return answer is not None and answer.strip().lower() in {"y", "yes"}

    async def _prompt(self, text: str) -> str | None:
        assert self._stdin is not None
        self._view.prompt(text)
        line = await self._stdin.readline()  # Ctrl-C cancels it: the prompt's line stays open
        if line is None:
            self._view.close_prompt()
        else:
            self._view.answered(line if self._echo else None)
        return line

    # --- turns ----------------------------------------------------------------------------------

    async def _interactive(self) -> int:
        while self._stdin is not None:
            line = await self._prompt(_PROMPT)
            if line is None:
                break
            if not line.strip():
                continue
            try:
                await self._turn(line)
            except (SessionNotFound, SessionTerminated, Unauthorized, InvalidConfig):
                raise  # no later turn could do better: the chat ends
            except JidokaError as exc:  # busy, unreachable, refused: the chat goes on
                self._view.error(str(exc))
        return 0

    async def _batch(self, messages: list[str]) -> int:
        for number, text in enumerate(messages, 1):
            if not self._view.json:
                self._view.line(f"{_PROMPT}{text}", "bold")
            failure = await self._turn(text)
            if self._interrupted:
                return _INTERRUPTED
            if failure is not None:
                rest = len(messages) - number
                later = f"; {rest} more message{'s' * (rest > 1)} not sent" if rest else ""
                raise CommandFailed(f"{failure}{later}")
        return 0

    async def _turn(self, text: str) -> str | None:
        """Run one turn; ``None`` if it completed, else what went wrong (already shown)."""
        start = self._last_seq
        self._in_turn, self._cancelling = True, False
        self._view.waiting()
        try:
            try:
                result = await self._client.chat(self._sid, text)
            except InvalidConfig:
                # Its error event is not shown (the command says it once, on stderr): wait for
                # it to pass while this is still our turn.
                await self._settle(start, {"failed"})
                raise
            except (LLMError, LimitExceeded) as exc:
                if isinstance(exc, LimitExceeded) and exc.limit != "max_iterations":
                    raise  # refused before the turn started
                self.completed += 1
                if not await self._settle(start, {"failed"}):
                    self._view.error(exc.message)  # its error event did not come: say it here
                return f"the turn failed: {exc.message}"
            self.completed += 1
            await self._settle(result.message.seq, _ENDS)
            self._view.result(result)
            if result.interrupted and not self._interrupted:
                return "the turn was cancelled"
            return None
        finally:
            self._in_turn = False
            self._view.done_waiting()
            self._drop_approvals()
