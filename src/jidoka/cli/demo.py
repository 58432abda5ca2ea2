"""``jidoka demo``: a quickstart that needs no server.

It runs a few sessions in process, sends messages, adds a file and prints every event as JSON
lines, so a new user sees the event contract before configuring anything.

Its store lives in a temporary directory of its own (or ``--data-dir``), never in the server's
``./.jidoka``: a data directory has one owner at a time, and the demo is what a newcomer runs
next to ``./scripts/run``.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["demo"]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def demo(
    sessions: Annotated[int, typer.Option(min=1, help="How many sessions to run.")] = 3,
    messages: Annotated[int, typer.Option(min=0, help="Messages to send to each.")] = 2,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            file_okay=False,
            help="Keep the demo's store here (default: a temporary directory, removed at the "
            "end; never the server's ./.jidoka).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run a few in-process sessions and print their events as JSON lines."""
    asyncio.run(_demo(sessions, messages, data_dir))


async def _demo(sessions: int, messages: int, data_dir: Path | None) -> None:
    from .. import Runtime, encode_event

    with tempfile.TemporaryDirectory(prefix="jidoka-demo-") as scratch:
        root = os.path.join(scratch, "project")
        sample = "def main():\n    print('hello')\n"
        await asyncio.to_thread(_write, Path(root, "app.py"), sample)
        store = Path(scratch, "data") if data_dir is None else data_dir
        async with Runtime(data_dir=store) as rt:
            client = rt.client
            async with client.subscribe_to_all_sessions() as lifecycle:
                ids = [
                    await client.create_session(metadata={"name": f"demo-{n}"}, project_root=root)
                    for n in range(sessions)
                ]
                printers = []
                for sid in ids:
                    async with client.subscribe_to_session(sid, after_seq=0) as events:
                        await client.add_file(sid, "app.py")
                        for n in range(messages):
                            await client.send_message(sid, "user", f"message {n} to {sid}")
                        await client.put_working_context(sid, "task", {"step": messages})
                        await client.terminate_session(sid)
                        printers.extend([encode_event(event).decode() async for event in events])
                print("\n".join(printers))
                print(f"# lifecycle events seen on the global stream: {lifecycle.statistics()[0]}")
                for sid in ids:
                    info = await client.get_session_info(sid)
                    print(f"# {sid}: {info.status} ({info.reason})")
