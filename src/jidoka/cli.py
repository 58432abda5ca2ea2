"""The ``jidoka`` command.

Until the server arrives, it offers ``jidoka demo``: a quickstart that runs a few sessions in
process, sends messages, adds a file and prints every event as JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ._version import __version__

__all__ = ["main"]


async def _demo(sessions: int, messages: int) -> int:
    from . import Runtime, encode_event

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
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jidoka", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"jidoka {__version__}")
    commands = parser.add_subparsers(dest="command")
    demo = commands.add_parser("demo", help="run a few in-process sessions and print events")
    demo.add_argument("--sessions", type=int, default=3)
    demo.add_argument("--messages", type=int, default=2)
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.sessions < 1 or args.messages < 0:
            parser.error("--sessions must be at least 1 and --messages not negative")
        return asyncio.run(_demo(args.sessions, args.messages))
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
