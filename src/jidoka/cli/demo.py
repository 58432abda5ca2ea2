"""``jidoka demo``: a quickstart that needs no server.

It runs a few sessions in process, sends messages, adds a file and prints every event as JSON
lines, so a new user sees the event contract before configuring anything.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["demo"]


def demo(
    sessions: Annotated[int, typer.Option(min=1, help="How many sessions to run.")] = 3,
    messages: Annotated[int, typer.Option(min=0, help="Messages to send to each.")] = 2,
) -> None:
    """Run a few in-process sessions and print their events as JSON lines."""
    asyncio.run(_demo(sessions, messages))


async def _demo(sessions: int, messages: int) -> None:
    from .. import Runtime, encode_event

    with tempfile.TemporaryDirectory(prefix="jidoka-demo-") as root:
        sample = "def main():\n    print('hello')\n"
        await asyncio.to_thread(Path(root, "app.py").write_text, sample, encoding="utf-8")
        async with Runtime() as rt:
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
