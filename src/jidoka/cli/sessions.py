"""``jidoka sessions ...`` and ``jidoka send``: the session verbs, one remote call each.

Human output is what a person checks at a glance (an id, a table, a status); ``--json`` is the
server's answer itself (``SessionInfo``, ``SavedSession``, ``Message``), encoded as the HTTP API
encodes it, so a script can move between the command and the API without translating.
"""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from ..session.inputs import DEFAULT_KEEP_LAST, MAX_INSTRUCTIONS, MAX_KEEP_LAST
from ..session.state import Status
from .common import DEFAULT_URL, JsonOption, TokenOption, UrlOption, json_object, run_remote
from .help import Command, Group
from .output import Output, compact, timestamp

if TYPE_CHECKING:
    from ..remote import RemoteClient
    from ..session.branching import Rewound
    from ..session.info import SessionInfo
    from ..session.state import Message
    from ..store.base import SavedSession
    from ..wire import Compacted

__all__ = ["app", "send"]

app = typer.Typer(
    name="sessions",
    help="Create, list, inspect, fork, rewind, compact, terminate, purge, save and restore"
    " sessions on a server.",
    no_args_is_help=True,
    cls=Group,
)

SessionId = Annotated[
    str, typer.Argument(metavar="SESSION_ID", help="The session's id.", show_default=False)
]


class Role(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"


def _info_row(info: SessionInfo) -> list[str]:
    return [
        info.session_id,
        str(info.status),
        timestamp(info.created_at),
        str(info.conversation_count),
        compact(info.metadata) if info.metadata else "",
    ]


def _id_or_session(out: Output, result: SessionInfo | str) -> None:
    """A new session's id, or (``--json``) the whole session."""
    if isinstance(result, str):
        out.line(result)
    else:
        out.document(result)


@app.command("list", cls=Command)
def list_(
    status: Annotated[
        Status | None, typer.Option(help="Only sessions with this status.", show_default=False)
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="At most this many.", show_default=False)
    ] = None,
    after: Annotated[
        str | None,
        typer.Option(help="Start after this session id (paging).", show_default=False),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json: JsonOption = False,
) -> None:
    """List sessions in creation order (yours only, if the server has tokens)."""

    async def work(client: RemoteClient) -> list[SessionInfo]:
        return await client.list_sessions(status, limit=limit, after=after)

    sessions = run_remote(url, token, work)
    out = Output(json=json)
    if out.json:
        out.document(sessions)
        return
    headers = ["ID", "STATUS", "CREATED", "MESSAGES", "METADATA"]
    out.table(headers, (_info_row(info) for info in sessions), empty="no sessions")


@app.command(cls=Command)
def create(
    metadata: Annotated[
        str | None,
        typer.Option(
            metavar="JSON", help="A JSON object kept with the session.", show_default=False
        ),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(
            metavar="JSON", help="JSON object: session config overrides.", show_default=False
        ),
    ] = None,
    llm_config: Annotated[
        str | None,
        typer.Option(
            metavar="JSON", help="JSON object: the LLM configuration.", show_default=False
        ),
    ] = None,
    project_root: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            help="The directory the session's files live in (made absolute here).",
            show_default=False,
        ),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json: JsonOption = False,
) -> None:
    """Create a session and print its id (with --json, the whole session)."""
    meta = json_object(metadata, "--metadata")
    overrides = json_object(config, "--config")
    llm = json_object(llm_config, "--llm-config")
    root = os.path.abspath(project_root) if project_root is not None else None

    async def work(client: RemoteClient) -> SessionInfo | str:
        sid = await client.create_session(
            metadata=meta, config=overrides, llm_config=llm, project_root=root
        )
        return await client.get_session_info(sid) if json else sid

    _id_or_session(Output(json=json), run_remote(url, token, work))


@app.command(cls=Command)
def show(
    session_id: SessionId,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json: JsonOption = False,
) -> None:
    """Show one session (a terminated one too, while the server remembers it)."""

    async def work(client: RemoteClient) -> SessionInfo:
        return await client.get_session_info(session_id)

    info = run_remote(url, token, work)
    out = Output(json=json)
    if out.json:
        out.document(info)
        return
    pairs = [
        ("id", info.session_id),
        ("status", str(info.status)),
        ("reason", info.reason or ""),
        ("error", info.error or ""),
        ("created", timestamp(info.created_at)),
        ("updated", timestamp(info.updated_at)),
        ("messages", str(info.conversation_count)),
        ("owner", info.owner or ""),
        ("project root", info.project_root or ""),
        ("metadata", compact(info.metadata)),
        ("llm config", compact(info.llm_config)),
        ("config", compact(info.config)),
    ]
    out.fields([(name, value) for name, value in pairs if value])


@app.command(cls=Command)
def terminate(
    session_id: SessionId,
    reason: Annotated[str, typer.Option(help="Why, as recorded in the session.")] = "requested",
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json: JsonOption = False,
) -> None:
    """Terminate a session: it stops, its event streams end, a tombstone remains."""

    async def work(client: RemoteClient) -> SessionInfo:
        return await client.terminate_session(session_id, reason=reason)

    info = run_remote(url, token, work)
    out = Output(json=json)
    if out.json:
        out.document(info)
    else:
        out.line(f"{info.session_id} {info.status} (reason: {info.reason or reason})")


@app.command("compact", cls=Command)
def compact_session(
    session_id: SessionId,
    keep_last: Annotated[
        int,
        typer.Option(
            min=0, max=MAX_KEEP_LAST, help="Keep this many of the newest messages as they are."
        ),
    ] = DEFAULT_KEEP_LAST,
    instructions: Annotated[
        str | None,
        typer.Option(
            metavar="TEXT",
            help=f"What the summary should keep (at most {MAX_INSTRUCTIONS} characters).",
            show_default=False,
        ),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json: JsonOption = False,
) -> None:
    """Summarise the older conversation with the session's own model (the log keeps it all)."""

    async def work(client: RemoteClient) -> Compacted:
        return await client.compact_session(
            session_id, instructions=instructions, keep_last=keep_last
        )

    done = run_remote(url, token, work)
    out = Output(json=json)
    if out.json:
        out.document(done)
    else:
        out.line(
            f"{session_id} compacted: messages {done.first_seq}-{done.last_seq} summarised, "
            f"{done.tokens_before} -> {done.tokens_after} tokens (event {done.seq})"
        )


@app.command(cls=Command)
def fork(
    session_id: SessionId,
    at: Annotated[
        int | None,
        typer.Option(
            "--at",
            metavar="SEQ",
            min=1,
            help="Fork the state at this seq of the source's log (default: its last).",
            show_default=False,
        ),
    ] = None,
    metadata: Annotated[
        str | None,
        typer.Option(
            metavar="JSON", help="The fork's metadata (default: the source's).", show_default=False
        ),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json: JsonOption = False,
) -> None:
    """Make a new session from a session's state at a seq and print its id (the source is not
    changed)."""
    meta = json_object(metadata, "--metadata")

    async def work(client: RemoteClient) -> SessionInfo | str:
        sid = await client.fork_session(session_id, at_seq=at, metadata=meta)
        return await client.get_session_info(sid) if json else sid

    _id_or_session(Output(json=json), run_remote(url, token, work))


@app.command(cls=Command)
def rewind(
    session_id: SessionId,
    to: Annotated[
        int,
        typer.Option(
            "--to",
            metavar="SEQ",
            min=1,
            help="The seq whose state the session goes back to.",
            show_default=False,
        ),
    ],
    cancel: Annotated[
        bool, typer.Option("--cancel", help="Stop a running turn first (else: refused).")
    ] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json: JsonOption = False,
) -> None:
    """Take a session's state (conversation, files, index, working context) back to a seq;
    the log keeps every event. Files on disk are not changed: the paths the rewound turns
    wrote are listed."""

    async def work(client: RemoteClient) -> Rewound:
        return await client.rewind_session(session_id, to_seq=to, cancel=cancel)

    rewound = run_remote(url, token, work)
    out = Output(json=json)
    if out.json:
        out.document(rewound)
        return
    out.line(f"{rewound.session_id} rewound to seq {rewound.to_seq} (event {rewound.seq})")
    for path in rewound.touched_paths:
        out.line(f"  unchanged on disk: {path}")


@app.command(cls=Command)
def purge(
    session_id: SessionId,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json: JsonOption = False,
) -> None:
    """Purge a session: terminate it if live, then delete everything stored for it (log,
    snapshots, saved copy). It cannot be undone: afterwards the session is not found."""

    async def work(client: RemoteClient) -> None:
        await client.purge_session(session_id)

    run_remote(url, token, work)
    out = Output(json=json)
    if out.json:
        out.document({"session_id": session_id, "purged": True})
    else:
        out.line(f"{session_id} purged")


@app.command(cls=Command)
def save(
    session_id: SessionId,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json: JsonOption = False,
) -> None:
    """Save a copy of a session that outlives its termination."""

    async def work(client: RemoteClient) -> SavedSession:
        return await client.save_session(session_id)

    saved = run_remote(url, token, work)
    out = Output(json=json)
    if out.json:
        out.document(saved)
    else:
        plural = "" if saved.message_count == 1 else "s"
        out.line(f"{saved.session_id} saved ({saved.message_count} message{plural})")


@app.command(cls=Command)
def restore(
    session_id: SessionId,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json: JsonOption = False,
) -> None:
    """Bring a saved session back as a live session with the same id."""

    async def work(client: RemoteClient) -> SessionInfo:
        return await client.restore_session(session_id)

    info = run_remote(url, token, work)
    out = Output(json=json)
    if out.json:
        out.document(info)
    else:
        out.line(f"{info.session_id} restored ({info.status})")


@app.command(cls=Command)
def saved(
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json: JsonOption = False,
) -> None:
    """List saved sessions."""

    async def work(client: RemoteClient) -> list[SavedSession]:
        return await client.list_saved_sessions()

    copies = run_remote(url, token, work)
    out = Output(json=json)
    if out.json:
        out.document(copies)
        return
    rows = (
        [
            s.session_id,
            timestamp(s.saved_at),
            str(s.message_count),
            compact(s.metadata) if s.metadata else "",
        ]
        for s in copies
    )
    out.table(["ID", "SAVED", "MESSAGES", "METADATA"], rows, empty="no saved sessions")


@app.command(cls=Command)
def delete(
    session_id: SessionId,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json: JsonOption = False,
) -> None:
    """Delete the saved copy of a session (a live session is not touched)."""

    async def work(client: RemoteClient) -> None:
        await client.delete_saved_session(session_id)

    run_remote(url, token, work)
    out = Output(json=json)
    if out.json:
        out.document({"session_id": session_id, "deleted": True})
    else:
        out.line(f"{session_id} saved copy deleted")


def send(
    session_id: SessionId,
    text: Annotated[str, typer.Argument(help="The message; '-' reads it from stdin.")],
    role: Annotated[Role, typer.Option(help="Who says it.")] = Role.USER,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json: JsonOption = False,
) -> None:
    """Append a message to a session's conversation and print its seq.

    This stores the message; it does not run the agent (`jidoka chat` does). At a terminal the
    command says so; for a pipe it prints the bare seq, with --json the stored message.
    """
    content = sys.stdin.read() if text == "-" else text

    async def work(client: RemoteClient) -> Message:
        return await client.send_message(session_id, str(role), content)

    message = run_remote(url, token, work)
    out = Output(json=json)
    if out.json:
        out.document(message)
    elif out.rich:
        out.line(
            f"stored message {message.seq} in {session_id}; "
            f"`jidoka chat {session_id}` runs the agent"
        )
    else:
        out.line(str(message.seq))
