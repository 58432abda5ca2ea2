"""The ``jidoka`` command: run a server, and drive its sessions from a shell.

Command tree::

    jidoka [--version]
    ├── serve                      run the HTTP/SSE/WebSocket server
    ├── sessions list|create|show|terminate|compact|save|restore|saved|delete
    ├── send SID TEXT              append a message
    ├── events [SID] [--follow]    print an event stream
    ├── chat [SID] [-m TEXT]...    talk to a session's agent (interactive, or scripted)
    └── demo                       in-process quickstart, no server

The client verbs talk to a server (``--url``/``JIDOKA_URL``, ``--token``/``JIDOKA_TOKEN``) through
:class:`jidoka.remote.RemoteClient`. :func:`main` is the one place errors are written: the
commands raise, and it turns every expected failure into one ``jidoka: error: ...`` line and an
exit code (1: the operation failed, 2: the command line was wrong, 130: interrupted), never a
traceback. ``JIDOKA_DEBUG=1`` lets an unexpected exception through with its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Annotated, Final

import typer

from .._version import __version__
from ..errors import JidokaError, Unauthorized
from . import chat, cluster, demo, events, runs, serve, sessions
from .common import CommandFailed
from .help import Command, Group
from .output import error_line

__all__ = ["app", "main"]

_INTERRUPTED: Final = 130

app = typer.Typer(
    name="jidoka",
    help="Jidoka: many isolated AI coding-assistant sessions behind one server.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=Group,
)
app.command(cls=Command)(serve.serve)
app.add_typer(sessions.app)
app.add_typer(runs.app)
app.add_typer(cluster.app)
app.command(cls=Command)(sessions.send)
app.command(cls=Command)(events.events)
app.command(cls=Command)(chat.chat)
app.command(cls=Command)(demo.demo)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"jidoka {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Jidoka: many isolated AI coding-assistant sessions behind one server."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``) and return its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=args, prog_name="jidoka", standalone_mode=False)
    except CommandFailed as exc:
        error_line(exc.message)
        return exc.exit_code
    except Unauthorized as exc:
        error_line(f"unauthorized: {exc} (check --token or JIDOKA_TOKEN)")
        return 1
    except JidokaError as exc:
        error_line(str(exc))
        return 1
    except typer.TyperException as exc:  # click's usage errors, bad parameters
        return _usage_error(exc)
    except typer.Abort:
        error_line("aborted")
        return 1
    except KeyboardInterrupt:
        return _INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return 1
    except Exception as exc:
        if os.environ.get("JIDOKA_DEBUG"):
            raise
        error_line(f"unexpected {type(exc).__name__}: {exc} (JIDOKA_DEBUG=1 shows the traceback)")
        return 1
    return code if isinstance(code, int) else 0


def _usage_error(exc: typer.TyperException) -> int:
    """One line, with where to look: ``jidoka: error: ... (see 'jidoka sessions --help')``.
    A group called without a subcommand shows its help instead."""
    code = getattr(exc, "exit_code", 2)
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError":
        help_text = exc.format_message()  # empty when Rich has printed it already
        if help_text:
            typer.echo(help_text)
        return int(code)
    message = exc.format_message()
    command_path = getattr(ctx, "command_path", None)
    if command_path:
        message = f"{message} (see '{command_path} --help')"
    error_line(message)
    return int(code)


def _silence_stdout() -> None:
    """The reader went away (``jidoka events -f | head``): point stdout at /dev/null so the
    interpreter's final flush does not fail a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
