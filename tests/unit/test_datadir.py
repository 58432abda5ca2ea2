"""The data-directory lock says who holds the directory and what to do about it."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

import jidoka
from jidoka.datadir import LOCK_NAME, DataDirLock

#: A bound on a child starting up and answering; not a sleep.
DEADLINE = 60.0

_HOLDER = (
    "import sys\n"
    "from jidoka.datadir import DataDirLock\n"
    "lock = DataDirLock(sys.argv[1])\n"
    "lock.acquire()\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"  # until the test closes our stdin
)


def test_the_refusal_names_the_holding_process_and_the_way_out(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(data)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdout is not None
        assert holder.stdin is not None
        try:
            assert holder.stdout.readline() == "held\n"
            assert (data / LOCK_NAME).read_text() == f"{holder.pid}\n"
            with pytest.raises(jidoka.DataDirLocked) as refused:
                DataDirLock(str(data)).acquire()
        finally:
            holder.stdin.close()
            holder.wait(DEADLINE)
    message = str(refused.value)
    assert refused.value.data_dir == str(data)
    assert f"pid {holder.pid}" in message
    assert "--data-dir" in message
    assert "JIDOKA_DATA_DIR" in message
    lock = DataDirLock(str(data))  # the holder is gone: the OS released its lock
    lock.acquire()
    try:
        assert (data / LOCK_NAME).read_text() == f"{os.getpid()}\n"  # no trace of the old pid
    finally:
        lock.release()


def test_a_second_runtime_of_the_same_process_is_told_so(tmp_path: Path) -> None:
    first = DataDirLock(str(tmp_path))
    first.acquire()
    try:
        with pytest.raises(jidoka.DataDirLocked) as refused:
            DataDirLock(str(tmp_path)).acquire()
    finally:
        first.release()
    assert f"in this very process, pid {os.getpid()}" in str(refused.value)


@pytest.mark.parametrize("content", [b"", b"not a pid\n", b"9" * 40, b"\xff\xfe-1\n"])
def test_a_lock_file_without_a_usable_pid_is_not_trusted(tmp_path: Path, content: bytes) -> None:
    """A holder that has not written its pid yet, or a file someone else wrote: no pid is
    made up, and nothing beyond a few bytes is read."""
    path = tmp_path / LOCK_NAME
    path.write_bytes(content)
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(jidoka.DataDirLocked) as refused:
            DataDirLock(str(tmp_path)).acquire()
    finally:
        os.close(fd)
    message = str(refused.value)
    assert "pid is not recorded" in message
    assert "--data-dir" in message
