"""``jidoka runs start|show|list|join|cancel``: background runs on a server, one remote call
each (``join`` waits, as long as ``--timeout`` says).

Human output is the run's id (``start``), its fields (``show``, ``join``, ``cancel``) or a table
(``list``); ``--json`` is the server's answer itself (``RunInfo``, ``RunPage``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from .common import DEFAULT_URL, JsonOption, TokenOption, UrlOption, json_object, run_remote
from .help import Command, Group
from .output import Output, compact, timestamp

if TYPE_CHECKING:
    from ..remote import RemoteClient
    from ..runs.info import RunInfo, RunPage

__all__ = ["app"]

app = typer.Typer(
    name="runs",
    help="Start agent turns in the background, and watch, join or cancel them.",
    no_args_is_help=True,
    cls=Group,
)

SessionId = Annotated[
    str, typer.Argument(metavar="SESSION_ID", help="The session's id.", show_default=False)
]
RunId = Annotated[str, typer.Argument(metavar="RUN_ID", help="The run's id.", show_default=False)]


class Multitask(StrEnum):
    REJECT = "reject"
    ENQUEUE = "enqueue"
    INTERRUPT = "interrupt"


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


def _show(out: Output, run: RunInfo) -> None:
    if out.json:
        out.document(run)
        return
    pairs = [
        ("run", run.run_id),
        ("session", run.session_id),
        ("status", run.status + (f" ({run.reason})" if run.reason else "")),
        ("created", timestamp(run.created_at)),
    ]
    if run.started_at is not None:
        pairs.append(("started", timestamp(run.started_at)))
    if run.ended_at is not None:
        pairs.append(("ended", timestamp(run.ended_at)))
    if run.usage is not None:
        pairs.append(("tokens", str(run.usage.total_tokens)))
    if run.error:
        pairs.append(("error", run.error))
    if run.webhook is not None:
        hook = run.webhook
        state = hook.state or "waits for the run's end"
        pairs.append(("webhook", f"{hook.url} ({state}, {hook.attempts} attempts)"))
    if run.metadata:
        pairs.append(("metadata", compact(run.metadata)))
    out.fields(pairs)
    if run.message is not None:
        out.line(run.message.content)


@app.command(cls=Command)
def start(
    session_id: SessionId,
    text: Annotated[str, typer.Argument(help="What the agent is asked.", show_default=False)],
    multitask: Annotated[
        Multitask,
        typer.Option(help="If a run is under way: refuse, wait in line, or stop it."),
    ] = Multitask.REJECT,
    webhook: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="POSTed the run, signed, when it ends (the server's allow-list must admit it).",
            show_default=False,
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            metavar="KEY",
            help="A retry with the same key answers the first run instead of starting another.",
            show_default=False,
        ),
    ] = None,
    metadata: Annotated[
        str | None,
        typer.Option(metavar="JSON", help="The run's metadata (an object).", show_default=False),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json: JsonOption = False,
) -> None:
    """Start an agent turn in the background and print the run's id at once."""
    meta = json_object(metadata, "--metadata")

    async def work(client: RemoteClient) -> RunInfo:
        return await client.start_run(
            session_id,
            text,
            multitask=multitask.value,
            webhook=webhook,
            idempotency_key=idempotency_key,
            metadata=meta,
        )

    run = run_remote(url, token, work)
    out = Output(json=json)
    if out.json:
        out.document(run)
    else:
        out.line(run.run_id)


@app.command(cls=Command)
def show(
    session_id: SessionId,
    run_id: RunId,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json: JsonOption = False,
) -> None:
    """A run as it is now (its answer once it ended)."""

    async def work(client: RemoteClient) -> RunInfo:
        return await client.get_run(session_id, run_id)

    _show(Output(json=json), run_remote(url, token, work))


@app.command("list", cls=Command)
def list_(
    session_id: SessionId,
    status: Annotated[
        RunStatus | None, typer.Option(help="Only runs with this status.", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 100,
    cursor: Annotated[
        str | None,
        typer.Option(help="The next cursor a previous page printed.", show_default=False),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json: JsonOption = False,
) -> None:
    """The session's runs, newest first."""

    async def work(client: RemoteClient) -> RunPage:
        return await client.list_runs(
            session_id,
            status=status.value if status is not None else None,
            limit=limit,
            cursor=cursor,
        )

    page = run_remote(url, token, work)
    out = Output(json=json)
    if out.json:
        out.document(page)
        return
    rows = (
        [run.run_id, run.status, timestamp(run.created_at), run.text[:40].replace("\n", " ")]
        for run in page.runs
    )
    out.table(["RUN", "STATUS", "CREATED", "TEXT"], rows, empty="no runs")
    if page.next_cursor is not None:
        out.line(f"more: --cursor {page.next_cursor}")


@app.command(cls=Command)
def join(
    session_id: SessionId,
    run_id: RunId,
    timeout: Annotated[
        float,
        typer.Option(min=0, max=3600, help="Seconds to wait at most (then: the run as it is)."),
    ] = 300.0,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json: JsonOption = False,
) -> None:
    """Wait for a run to end and print it (its answer last)."""

    async def work(client: RemoteClient) -> RunInfo:
        return await client.join_run(session_id, run_id, timeout=timeout)

    _show(Output(json=json), run_remote(url, token, work))


@app.command(cls=Command)
def cancel(
    session_id: SessionId,
    run_id: RunId,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json: JsonOption = False,
) -> None:
    """Cancel a run: a queued one never starts, a running one stops."""

    async def work(client: RemoteClient) -> RunInfo:
        return await client.cancel_run(session_id, run_id)

    _show(Output(json=json), run_remote(url, token, work))
