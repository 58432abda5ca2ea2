"""Acknowledged means durable: SIGKILL a process mid-write and check what it acknowledged.

A child process appends to many sessions concurrently and prints each acknowledged
``(session, seq)``; the test kills it with SIGKILL once it has seen a given number of acks,
reopens the data directory and checks that every acknowledged message is there, in order,
exactly once, with no gaps, and that the sessions come back live.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sys
from pathlib import Path

import pytest

import jidoka

pytestmark = pytest.mark.stores("sqlite")

CHILD = Path(__file__).with_name("crash_child.py")
SESSIONS = 12


async def run_and_kill(
    data_dir: Path, acks_before_kill: int
) -> tuple[list[str], set[tuple[str, int, int]]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD), str(data_dir), str(SESSIONS),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    created: list[str] = []
    acked: set[tuple[str, int, int]] = set()
    try:
        async with asyncio.timeout(120):
            while len(acked) < acks_before_kill:
                line = await process.stdout.readline()
                if not line:
                    stderr = await process.stderr.read() if process.stderr else b""
                    raise AssertionError(f"child exited early: {stderr.decode()[-2000:]}")
                kind, *fields = line.decode().split()
                if kind == "S":
                    created.append(fields[0])
                else:
                    acked.add((fields[0], int(fields[1]), int(fields[2])))
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    assert process.returncode == -signal.SIGKILL
    return created, acked


@pytest.mark.parametrize("acks_before_kill", [1, 40, 333, random.Random(7).randrange(500, 1500)])
async def test_every_acknowledged_message_survives_sigkill(
    tmp_path: Path, acks_before_kill: int
) -> None:
    data_dir = tmp_path / "data"
    created, acked = await run_and_kill(data_dir, acks_before_kill)
    assert len(created) == SESSIONS
    async with jidoka.Runtime(data_dir, store="sqlite") as rt:
        assert rt.manager.live_ids() == frozenset()  # nothing read at start-up
        listed = await rt.client.list_sessions()  # all came back (listing loads them)
        assert [i.session_id for i in listed] == sorted(created)
        for sid in created:
            events = await rt.read_events(sid)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))  # no gap, no dup
            messages = [
                (e.seq, int(e.data["content"])) for e in events if e.type == "conversation_added"
            ]
            assert [n for _, n in messages] == list(range(len(messages)))  # in order, once each
            stored = {(sid, seq, n) for seq, n in messages}
            mine = {ack for ack in acked if ack[0] == sid}
            assert mine <= stored, f"acknowledged but lost: {sorted(mine - stored)[:5]}"
            info = await rt.client.get_session_info(sid)
            assert info.status is jidoka.Status.IDLE
        # Still a working runtime after the crash.
        message = await rt.client.send_message(created[0], "user", "after the crash")
        assert message.content == "after the crash"
