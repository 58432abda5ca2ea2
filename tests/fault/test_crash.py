"""Acknowledged means durable: SIGKILL a process mid-write and check what it acknowledged.

A child process appends to many sessions concurrently and prints each acknowledged
``(session, seq)``; the test kills it with SIGKILL once it has seen a given number of acks,
reopens the store (the same data directory, or the same Postgres schema) and checks that every
acknowledged message is there, in order, exactly once, with no gaps, and that the sessions come
back live. A second test kills a writer ten times over the same sessions, each run writing on
where the killed one stopped.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sys
from pathlib import Path

import pytest

import jidoka

pytestmark = pytest.mark.stores("sqlite", "postgres")

CHILD = Path(__file__).with_name("crash_child.py")
SESSIONS = 12
#: Acknowledgements seen before each of the repeated kills: the first ones early (mid-creation
#: of the first messages), then anywhere in the first few hundred.
KILLS = [1, 5, *random.Random(15).sample(range(10, 600), 8)]

Ack = tuple[str, int, str]  # (session, seq, content)


async def run_and_kill(
    data_dir: Path, acks_before_kill: int, *, run: int = 0, sessions: list[str] | None = None
) -> tuple[list[str], set[Ack]]:
    given = sessions or []
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD), str(data_dir), str(SESSIONS), str(run), *given,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    written: list[str] = []
    acked: set[Ack] = set()
    try:
        async with asyncio.timeout(120):
            while len(acked) < acks_before_kill:
                line = await process.stdout.readline()
                if not line:
                    stderr = await process.stderr.read() if process.stderr else b""
                    raise AssertionError(f"child exited early: {stderr.decode()[-2000:]}")
                kind, *fields = line.decode().split()
                if kind == "S":
                    written.append(fields[0])
                else:
                    acked.add((fields[0], int(fields[1]), fields[2]))
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    assert process.returncode == -signal.SIGKILL
    return written, acked


async def check_logs(rt: jidoka.Runtime, sessions: list[str], acked: set[Ack]) -> None:
    """Every session's log: seqs 1..n without a gap; its messages each run's ``0, 1, 2...`` in
    order, once each, runs in order; everything acknowledged among them."""
    for sid in sessions:
        events = await rt.read_events(sid)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))  # no gap, no dup
        messages = [(e.seq, e.data["content"]) for e in events if e.type == "conversation_added"]
        runs: dict[int, list[int]] = {}
        for _, content in messages:
            run, n = map(int, content.split(":"))
            assert not runs or run >= max(runs), f"{sid}: run {run} after a later one"
            runs.setdefault(run, []).append(n)
        for run, counted in runs.items():
            assert counted == list(range(len(counted))), f"{sid} run {run}: {counted[:20]}"
        stored = {(sid, seq, content) for seq, content in messages}
        mine = {ack for ack in acked if ack[0] == sid}
        assert mine <= stored, f"acknowledged but lost: {sorted(mine - stored)[:5]}"
        info = await rt.client.get_session_info(sid)
        assert info.status is jidoka.Status.IDLE


@pytest.mark.parametrize("acks_before_kill", [1, 40, 333, random.Random(7).randrange(500, 1500)])
async def test_every_acknowledged_message_survives_sigkill(
    tmp_path: Path, acks_before_kill: int
) -> None:
    data_dir = tmp_path / "data"
    created, acked = await run_and_kill(data_dir, acks_before_kill)
    assert len(created) == SESSIONS
    async with jidoka.Runtime(data_dir) as rt:  # the store the environment names
        assert rt.manager.live_ids() == frozenset()  # nothing read at start-up
        listed = await rt.client.list_sessions()  # all came back (listing loads them)
        assert [i.session_id for i in listed] == sorted(created)
        await check_logs(rt, created, acked)
        # Still a working runtime after the crash.
        message = await rt.client.send_message(created[0], "user", "after the crash")
        assert message.content == "after the crash"


@pytest.mark.stores("postgres")
async def test_acknowledged_messages_survive_ten_kills_of_the_writer(tmp_path: Path) -> None:
    """Ten SIGKILLs at different moments, each run writing on to the sessions the killed one
    was writing to: whatever any run acknowledged is there at the end, and every log is whole
    (a run after a kill finds each head where the log really ends, even when the kill came
    between the commit and the acknowledgement)."""
    data_dir = tmp_path / "data"
    sessions: list[str] = []
    acked: set[Ack] = set()
    for run, acks_before_kill in enumerate(KILLS):
        written, acks = await run_and_kill(data_dir, acks_before_kill, run=run, sessions=sessions)
        assert written[: len(sessions)] == sessions
        sessions = written
        acked |= acks
    assert len(sessions) == SESSIONS
    async with jidoka.Runtime(data_dir) as rt:
        await check_logs(rt, sessions, acked)
