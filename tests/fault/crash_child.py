"""Child process for the crash tests: appends to many sessions at once and reports every ack.

Usage: ``python crash_child.py DATA_DIR SESSIONS [RUN [SESSION_ID...]]``. The store is the one
the environment names (``JIDOKA_STORE``, ``JIDOKA_POSTGRES_SCHEMA``: the test's). Creates
``SESSIONS`` sessions, or, given their ids, writes on to sessions an earlier (killed) run
created. Prints ``S <id>`` per session it writes to and ``A <id> <seq> <RUN>:<n>`` after each
acknowledged message (whose content is ``<RUN>:<n>``, ``n`` counting from 0 in each run),
flushing every line, and runs until it is killed.
"""

from __future__ import annotations

import asyncio
import sys

import jidoka


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def writer(client: jidoka.Client, sid: str, run: int) -> None:
    n = 0
    while True:
        content = f"{run}:{n}"
        message = await client.send_message(sid, "user", content)
        say(f"A {sid} {message.seq} {content}")
        n += 1


async def main(data_dir: str, sessions: int, run: int, given: list[str]) -> None:
    async with jidoka.Runtime(data_dir) as rt:
        ids = list(given)
        while len(ids) < sessions:
            ids.append(await rt.client.create_session())
        for sid in ids:
            say(f"S {sid}")
        async with asyncio.TaskGroup() as group:  # one process, killed as a whole
            for sid in ids:
                group.create_task(writer(rt.client, sid, run))


if __name__ == "__main__":
    run = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), run, sys.argv[4:]))
