"""Child process for the crash test: appends to many sessions at once and reports every ack.

Usage: ``python crash_child.py DATA_DIR SESSIONS``. Prints ``S <id>`` per created session and
``A <id> <seq> <n>`` after each acknowledged message (its content is ``<n>``), flushing every
line, and runs until it is killed.
"""

from __future__ import annotations

import asyncio
import sys

import jidoka


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def writer(client: jidoka.Client, sid: str) -> None:
    n = 0
    while True:
        message = await client.send_message(sid, "user", str(n))
        say(f"A {sid} {message.seq} {n}")
        n += 1


async def main(data_dir: str, sessions: int) -> None:
    async with jidoka.Runtime(data_dir, store="sqlite") as rt:
        ids = []
        for _ in range(sessions):
            sid = await rt.client.create_session()
            ids.append(sid)
            say(f"S {sid}")
        async with asyncio.TaskGroup() as group:  # one process, killed as a whole
            for sid in ids:
                group.create_task(writer(rt.client, sid))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
