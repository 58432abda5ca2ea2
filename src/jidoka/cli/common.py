"""What every client verb shares: where the server is, how a call is made, how a failure ends.

Each verb is a synchronous Typer command that runs one coroutine against a
:class:`~jidoka.remote.RemoteClient` under :func:`asyncio.run`. The remote client is imported
only when a verb runs, so ``jidoka --version`` and ``jidoka serve`` do not pay for httpx.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Annotated, Any, Final, TypeVar

import typer

from ..errors import InvalidArgument

if TYPE_CHECKING:
    from ..remote import RemoteClient

__all__ = [
    "DEFAULT_URL",
    "CommandFailed",
    "JsonOption",
    "TokenOption",
    "UrlOption",
    "json_object",
    "run_remote",
]

T = TypeVar("T")

DEFAULT_URL: Final = "http://127.0.0.1:8765"
USAGE: Final = 2
_CONNECTION = "Connection"

UrlOption = Annotated[
    str,
    typer.Option(
        "--url",
        metavar="URL",
        envvar="JIDOKA_URL",
        help="Base URL of the server (`jidoka serve` prints it).",
        rich_help_panel=_CONNECTION,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        metavar="TOKEN",
        envvar="JIDOKA_TOKEN",
        help="Bearer token for the server (`jidoka serve` prints one).",
        show_default=False,
        rich_help_panel=_CONNECTION,
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Machine output: one JSON document (one JSON object per line for event streams).",
    ),
]


class CommandFailed(Exception):
    """Ends a command with one ``jidoka: error:`` line and ``exit_code`` (1: the operation
    failed; 2: the command line was wrong). Raised instead of printing so that ``main`` is the
    one place that writes errors."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def json_object(text: str | None, option: str) -> dict[str, Any] | None:
    """Parse a ``--metadata``-style option; a usage error (exit 2) if it is not a JSON object."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CommandFailed(f"{option} is not valid JSON: {exc}", USAGE) from None
    if not isinstance(value, dict):
        raise CommandFailed(f"{option} must be a JSON object, got {text!r}", USAGE)
    return value


def run_remote(
    url: str, token: str | None, work: Callable[[RemoteClient], Coroutine[Any, Any, T]]
) -> T:
    """Open a client on ``url``, run ``work`` with it and close it. Failures are
    ``JidokaError`` (the server's own, and ``ServerUnavailable`` when it cannot be reached) and
    pass through for ``main`` to print; only a malformed ``--url``/``--token`` is decided here."""
    from ..remote import RemoteClient

    try:
        remote = RemoteClient(url, token)
    except InvalidArgument as exc:  # a malformed --url or --token: the command line is wrong
        raise CommandFailed(exc.message, USAGE) from None

    async def call() -> T:
        async with remote as client:
            return await work(client)

    return asyncio.run(call())
