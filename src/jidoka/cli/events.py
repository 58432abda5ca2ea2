"""``jidoka events``: print a session's event stream, or the lifecycle stream of all sessions.

When does a non-following ``events SID`` stop? The stream does not say "that was the last stored
event", and the session's last seq is not in ``SessionInfo``, so the command stops when the
stream has been **idle** for ``--idle`` seconds (0.5 by default) or the stream ends because the
session has ended. Stored events are replayed back to back, so a short idle time loses none of
them; an event that happens to arrive during that window is printed too.

``--follow`` stops only when the stream ends: a session's stream when the session has ended and
the server says so (``event: end``), the global stream never. A server that shuts down or
restarts does **not** end it: the stream resumes once the server is back, a session's stream
where it left off (nothing missed, nothing repeated), the global stream live (missing what
happened meanwhile). Ctrl-C ends it with exit code 0, since stopping is the normal way out of
``tail -f``-like output. A restored session's log holds the ``session_terminated`` of its earlier
life: the stream goes on past it.

A session that has already terminated replays what the server still stores of it, then ends.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import (
    DEFAULT_URL,
    USAGE,
    CommandFailed,
    JsonOption,
    TokenOption,
    UrlOption,
    run_remote,
)
from .output import Output

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ..events import Event
    from ..remote import RemoteClient

__all__ = ["events"]

#: Exit code of ``--follow`` stopped by Ctrl-C: not an error.
_STOPPED = 0
_INTERRUPTED = 130


def events(
    session_id: Annotated[
        str | None,
        typer.Argument(
            help="The session whose events to print; without it, the lifecycle events "
            "(created, status, terminated) of every session you can see.",
            show_default=False,
        ),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events as they happen.")
    ] = False,
    after_seq: Annotated[
        int,
        typer.Option(
            min=0, help="Replay the session's stored events after this seq (0: all of them)."
        ),
    ] = 0,
    idle: Annotated[
        float,
        typer.Option(
            min=0.01,
            help="Without --follow: stop after this many seconds without an event.",
        ),
    ] = 0.5,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json: JsonOption = False,
) -> None:
    """Print events, one per line: time, seq, type, data (--json: one event object per line).

    At a terminal the data is summed up in a few words; piped, it is printed whole as JSON.
    Without --follow, a session's stored events are printed and the command ends once the
    stream has been idle for --idle seconds or the session has ended. The global stream
    (no SESSION_ID) has no stored events: it shows what happens meanwhile.
    """
    if session_id is None and after_seq:
        raise CommandFailed(
            "--after-seq needs a SESSION_ID (the global stream is live only)", USAGE
        )
    out = Output(json=json)

    async def work(client: RemoteClient) -> None:
        stream: AbstractAsyncContextManager[Any]
        if session_id is None:
            stream = client.subscribe_to_all_sessions()
        else:
            stream = client.subscribe_to_session(session_id, after_seq=after_seq)
        async with stream as subscription:
            if follow:
                await _print_all(subscription, out, with_session=session_id is None)
            else:
                await _print_until_idle(subscription, out, idle, with_session=session_id is None)

    try:
        run_remote(url, token, work)
    except KeyboardInterrupt:
        raise typer.Exit(_STOPPED if follow else _INTERRUPTED) from None


async def _print_all(
    subscription: AsyncIterator[Event], out: Output, *, with_session: bool
) -> None:
    async for event in subscription:
        out.event(event, with_session=with_session)


async def _print_until_idle(
    subscription: AsyncIterator[Event], out: Output, idle: float, *, with_session: bool
) -> None:
    """Print events until none has come for ``idle`` seconds, or the stream ends."""
    loop = asyncio.get_running_loop()
    deadline = asyncio.timeout(idle)
    try:
        async with deadline:
            async for event in subscription:
                out.event(event, with_session=with_session)
                deadline.reschedule(loop.time() + idle)
    except TimeoutError:
        if not deadline.expired():
            raise  # not ours: a timeout inside the client
