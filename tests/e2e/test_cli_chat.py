"""``jidoka chat`` end to end: a real ``jidoka serve`` and the command as a subprocess, with the
scripted provider (no network, the same answers every run).

``--message`` runs are plain ``subprocess.run``; the interactive runs write to the command's
stdin and wait for what it prints (streamed text has no newline, so output is read as it comes,
not by lines). Nothing sleeps: every wait is for output or an exit, with a deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jidoka.cli import main
from tests.e2e.conftest import ALICE_TOKEN, ServerProcess, client_environment, exit_code
from tests.e2e.test_cli import plain, run_in_terminal

DEADLINE = 30.0
ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
SOURCE = 'print("hello")\n'
USAGE = re.compile(r"\[tokens: prompt [1-9][0-9]* · completion [1-9][0-9]*\]")

#: One turn: a sentence, a read_file call, then the answer.
READ_SCRIPT: list[dict[str, Any]] = [
    {
        "chunks": ["Let me ", "look."],
        "tool_calls": [{"id": "c1", "name": "read_file", "arguments": {"path": "app.py"}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10},
    },
    {"chunks": ["It prints ", "hello."], "usage": {"prompt_tokens": 120, "completion_tokens": 14}},
]
WRITE_SCRIPT: list[dict[str, Any]] = [
    {
        "tool_calls": [
            {
                "id": "w1",
                "name": "write_file",
                "arguments": {"path": "notes.txt", "content": "new\n"},
            }
        ]
    },
    {"text": "Done."},
]


def _llm(script: list[Any]) -> str:
    return json.dumps({"provider": "scripted", "script": script})


def _env(server: ServerProcess) -> dict[str, str]:
    return client_environment(
        JIDOKA_URL=server.url, JIDOKA_TOKEN=ALICE_TOKEN, PYTHONIOENCODING="utf-8"
    )


def jidoka(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m jidoka *args`` as alice; stdin is /dev/null (not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "jidoka", *args],
        env=_env(server),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        encoding="utf-8",
        timeout=DEADLINE,
        check=False,
    )


def show(server: ServerProcess, sid: str) -> dict[str, Any]:
    done = jidoka(server, "sessions", "show", sid, "--json")
    assert done.returncode == 0, done.stderr
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def new_session(server: ServerProcess, *args: str) -> str:
    done = jidoka(server, "sessions", "create", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def created(stdout: str) -> str:
    """The id of the session ``chat`` created: its first line."""
    first = stdout.splitlines()[0]
    match = ULID.fullmatch(first.removeprefix("session "))
    assert match, stdout
    return match.group(0)


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr + done.stdout, done.stderr


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "app.py").write_text(SOURCE, encoding="utf-8")
    (root / "notes.txt").write_text("old\n", encoding="utf-8")
    return root


class Chat:
    """An interactive ``jidoka chat`` whose stdout is collected as it comes."""

    def __init__(self, server: ServerProcess, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jidoka", "chat", *args],
            env=_env(server),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.output = ""
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        data = b""
        while chunk := os.read(fd, 4096):
            data += chunk
            with self._changed:
                self.output = data.decode("utf-8", errors="replace")
                self._changed.notify_all()

    def wait_for(self, text: str, count: int = 1) -> None:
        """Until ``text`` has been printed ``count`` times; fails at the deadline."""
        deadline = time.monotonic() + DEADLINE
        with self._changed:
            while self.output.count(text) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"{text!r} x{count} not printed in {DEADLINE}s: {self.output!r}")
                self._changed.wait(remaining)

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def close_stdin(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()

    def exit_code(self) -> int:
        code = exit_code(self.process, DEADLINE)
        self._reader.join(DEADLINE)
        return code

    def stderr(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read().decode("utf-8", errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(DEADLINE)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def chats(server: ServerProcess) -> Iterator[Any]:
    """Start interactive chats; each is killed (if still running) after the test."""
    started: list[Chat] = []

    def start(*args: str) -> Chat:
        chat = Chat(server, *args)
        started.append(chat)
        return chat

    yield start
    for chat in started:
        chat.kill()


# --- --message ----------------------------------------------------------------------------------


def test_message_mode_streams_the_answer_tools_and_usage(
    server: ServerProcess, project: Path
) -> None:
    args = ["--llm-config", _llm(READ_SCRIPT), "--project-root", str(project)]
    done = jidoka(server, "chat", *args, "-m", "What does app.py do?")
    no_traceback(done)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert done.stderr == ""
    sid = created(done.stdout)
    lines = done.stdout.splitlines()
    assert lines[1:] == [
        "you> What does app.py do?",
        "Let me look.",
        "⚙ read_file app.py ✓",
        "It prints hello.",
        "[tokens: prompt 220 · completion 24]",
    ]
    info = show(server, sid)
    assert info["conversation_count"] == 2
    assert info["usage"] == {"prompt_tokens": 220, "completion_tokens": 24, "total_tokens": 244}
    assert info["project_root"] == str(project)


def test_messages_go_one_after_another_to_an_existing_session(server: ServerProcess) -> None:
    sid = new_session(server, "--llm-config", _llm([{"text": "One."}, {"text": "Two."}]))
    done = jidoka(server, "chat", sid, "-m", "first", "--message", "second")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["you> first", "One."]
    assert lines[3:5] == ["you> second", "Two."]
    assert len(lines) == 6
    assert all(USAGE.fullmatch(lines[n]) for n in (2, 5)), lines
    assert show(server, sid)["conversation_count"] == 4


def test_json_mode_prints_the_events_in_order_then_the_result(
    server: ServerProcess, project: Path
) -> None:
    args = ["--llm-config", _llm(READ_SCRIPT), "--project-root", str(project), "--json"]
    done = jidoka(server, "chat", *args, "-m", "What does app.py do?")
    no_traceback(done)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    first, *events, result = [json.loads(line) for line in done.stdout.splitlines()]
    sid = first["session_id"]
    assert ULID.fullmatch(sid)
    assert all(event["session_id"] == sid for event in events)
    seqs = [event["seq"] for event in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs  # every event, in order
    # A chat is a run: its run_queued and run_started come first (its run_completed follows
    # the turn's last agent_status, once the stream shows it).
    assert [event["type"] for event in events[:2]] == ["run_queued", "run_started"]
    events = [event for event in events if not event["type"].startswith("run_")]
    kinds = [event["type"] for event in events if event["type"] != "file_index_updated"]
    assert kinds == [
        "conversation_added",
        "agent_status",
        "llm_stream_chunk",
        "agent_status",
        "tool_call",
        "tool_result",
        "agent_status",
        "llm_stream_chunk",
        "conversation_added",
        "llm_response",
        "agent_status",
    ]
    assert events[0]["data"] == {"role": "user", "content": "What does app.py do?"}
    assert events[-1]["data"] == {"status": "idle"}
    chunks = "".join(e["data"]["text"] for e in events if e["type"] == "llm_stream_chunk")
    assert chunks == "Let me look.It prints hello."
    call = next(e for e in events if e["type"] == "tool_result")["data"]
    assert call["name"] == "read_file"
    assert not call["is_error"]
    assert "hello" in call["content"]
    assert result["message"]["content"] == "It prints hello."
    assert result["message"]["role"] == "assistant"
    assert result["usage"] == {"prompt_tokens": 220, "completion_tokens": 24, "total_tokens": 244}
    assert result["interrupted"] is False
    assert result["iterations"] == 2


# --- approvals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "content", "shown"),
    [
        ("no", "old\n", "✗ write_file: error: the user denied the write to notes.txt"),
        ("yes", "new\n", "✓ write_file"),
    ],
)
def test_approve_answers_write_requests(
    server: ServerProcess, project: Path, answer: str, content: str, shown: str
) -> None:
    args = ["--llm-config", _llm(WRITE_SCRIPT), "--project-root", str(project)]
    args += ["--config", json.dumps({"allow_write": "ask"}), "--approve", answer]
    done = jidoka(server, "chat", *args, "-m", "Update the notes.")
    no_traceback(done)
    assert done.returncode == 0, done.stderr
    assert (project / "notes.txt").read_text(encoding="utf-8") == content
    lines = done.stdout.splitlines()
    assert "? write_file wants to change notes.txt:" in lines
    assert "-old" in lines
    assert "+new" in lines
    assert f"{'allowed' if answer == 'yes' else 'denied'} (--approve {answer})" in lines
    assert any(line.startswith(shown) for line in lines), lines
    assert "Done." in lines


def test_ask_without_a_terminal_denies(server: ServerProcess, project: Path) -> None:
    args = ["--llm-config", _llm(WRITE_SCRIPT), "--project-root", str(project)]
    args += ["--config", json.dumps({"allow_write": "ask"})]
    done = jidoka(server, "chat", *args, "-m", "Update the notes.")
    assert done.returncode == 0, done.stderr
    assert "denied: no terminal to ask (see --approve)" in done.stdout.splitlines()
    assert (project / "notes.txt").read_text(encoding="utf-8") == "old\n"


def test_interactive_ask_takes_the_answer_from_stdin(
    server: ServerProcess, project: Path, chats: Any
) -> None:
    sid = new_session(
        server,
        "--llm-config",
        _llm(WRITE_SCRIPT),
        "--project-root",
        str(project),
        "--config",
        json.dumps({"allow_write": "ask"}),
    )
    chat = chats(sid)
    chat.send("Update the notes.")
    chat.send("y")  # read by the approval prompt, after the message
    chat.close_stdin()
    assert chat.exit_code() == 0
    assert "allow? [y/N] y\n" in chat.output
    assert "✓ write_file" in chat.output
    assert (project / "notes.txt").read_text(encoding="utf-8") == "new\n"


# --- interactive --------------------------------------------------------------------------------


def test_ctrl_c_cancels_the_turn_and_the_chat_goes_on(server: ServerProcess, chats: Any) -> None:
    script = [{"chunks": ["Thinking..."], "hang": True}, {"text": "Fresh answer."}]
    sid = new_session(server, "--llm-config", _llm(script))
    chat = chats(sid)
    chat.wait_for("you> ")
    chat.send("Take your time.")
    chat.wait_for("Thinking...")
    chat.process.send_signal(signal.SIGINT)
    chat.wait_for("(cancelled)")
    chat.wait_for("you> ", 2)
    assert chat.process.poll() is None
    chat.send("Again.")
    chat.wait_for("Fresh answer.")
    chat.wait_for("[tokens: prompt", 2)
    chat.close_stdin()
    assert chat.exit_code() == 0
    stderr = chat.stderr()
    assert "Traceback" not in stderr
    assert stderr == ""
    after = chat.output.split("Thinking...", 1)[1]
    assert after.index("(cancelled)") < after.index("you> Again.") < after.index("Fresh answer.")
    info = show(server, sid)
    assert info["conversation_count"] == 4  # the cancelled turn kept its partial answer
    history = jidoka(server, "events", sid, "--json", "--idle", "2")
    responses = [
        json.loads(line)["data"] for line in history.stdout.splitlines() if '"llm_response"' in line
    ]
    assert [r["interrupted"] for r in responses] == [True, False]


def test_ctrl_c_in_message_mode_cancels_and_exits_130(server: ServerProcess, chats: Any) -> None:
    script = [{"chunks": ["Thinking..."], "hang": True}, {"text": "Never asked."}]
    sid = new_session(server, "--llm-config", _llm(script))
    chat = chats(sid, "-m", "Take your time.", "-m", "And then?")
    chat.wait_for("Thinking...")
    chat.process.send_signal(signal.SIGINT)
    assert chat.exit_code() == 130
    assert chat.stderr() == ""
    assert "(cancelled)" in chat.output
    assert "And then?" not in chat.output
    assert show(server, sid)["conversation_count"] == 2


def test_ctrl_c_at_the_prompt_ends_the_chat_with_0(server: ServerProcess, chats: Any) -> None:
    sid = new_session(server, "--llm-config", _llm([]))
    chat = chats(sid)
    chat.wait_for("you> ")
    chat.process.send_signal(signal.SIGINT)
    assert chat.exit_code() == 0
    assert chat.stderr() == ""


def test_end_of_input_ends_the_chat_with_0(server: ServerProcess, chats: Any) -> None:
    chat = chats("--llm-config", _llm([{"text": "Hi there."}]))
    chat.send("Hello?")
    chat.close_stdin()
    assert chat.exit_code() == 0
    assert created(chat.output)
    assert "you> Hello?\nHi there.\n[tokens: prompt " in chat.output
    assert chat.output.endswith("you> \n")


# --- errors -------------------------------------------------------------------------------------


def test_unknown_session_is_one_line_and_exit_1(server: ServerProcess) -> None:
    done = jidoka(server, "chat", "01NOSUCHSESSION00000000000", "-m", "hello")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "jidoka: error: session '01NOSUCHSESSION00000000000' not found"
    ]


def test_a_failed_turn_is_exit_1_and_stops_the_messages(server: ServerProcess) -> None:
    script = [{"chunks": ["Partial"], "error": {"message": "model overloaded", "status": 503}}]
    sid = new_session(server, "--llm-config", _llm(script))
    done = jidoka(server, "chat", sid, "-m", "first", "-m", "second")
    no_traceback(done)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[:2] == ["you> first", "Partial"]
    assert len(lines) == 3
    assert lines[2].startswith("error: ")
    assert lines[2].endswith("model overloaded")
    errors = done.stderr.splitlines()
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith("jidoka: error: the turn failed: ")
    assert errors[0].endswith("model overloaded; 1 more message not sent")
    assert show(server, sid)["conversation_count"] == 1  # "second" was not sent


@pytest.mark.parametrize(
    "argv",
    [
        ["chat", "SID", "--llm-config", "{}"],
        ["chat", "SID", "--project-root", "."],
        ["chat", "--config", "[1]"],
        ["chat", "--approve", "maybe"],
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("jidoka: error: ")


# --- first contact ------------------------------------------------------------------------------


def test_no_provider_is_said_once_and_leaves_no_session_behind(server: ServerProcess) -> None:
    """The server has no default provider and none is given: the error is one line on stderr
    (not a second time on stdout), and the session made for the chat is terminated, not left
    active and useless."""
    done = jidoka(server, "chat", "-m", "hello")
    no_traceback(done)
    assert done.returncode == 1
    sid = created(done.stdout)
    assert done.stdout.splitlines()[1:] == ["you> hello"]
    (line,) = done.stderr.splitlines()
    assert line.startswith("jidoka: error: ")
    assert "no model provider configured" in line
    assert line.endswith(f"the session made for this chat ({sid}) was terminated")
    info = show(server, sid)
    assert (info["status"], info["reason"]) == ("terminated", "chat_setup_failed")


def test_a_config_error_leaves_a_given_session_alone(server: ServerProcess, chats: Any) -> None:
    """A session the user named is theirs: told once, left as it is; an interactive chat ends
    (no later message could do better)."""
    sid = new_session(server)
    done = jidoka(server, "chat", sid, "-m", "hello")
    no_traceback(done)
    assert done.returncode == 1
    assert done.stdout.splitlines() == ["you> hello"]
    (line,) = done.stderr.splitlines()
    assert "no model provider configured" in line
    assert "terminated" not in line
    chat = chats(sid)
    chat.send("hello again")
    assert chat.exit_code() == 1
    assert "error:" not in chat.output
    assert len(chat.stderr().splitlines()) == 1
    assert show(server, sid)["status"] in {"active", "idle"}


def test_a_spinner_shows_at_a_terminal_until_the_answer(server: ServerProcess) -> None:
    """On a terminal, ``thinking…`` shows while the turn has printed nothing; it is removed
    before the answer. Through a pipe there is none (the exact lines of the tests above)."""
    args = ["chat", "--llm-config", _llm([{"text": "Hi there."}]), "-m", "hello"]
    code, out, err = run_in_terminal([sys.executable, "-m", "jidoka", *args], _env(server))
    assert (code, err) == (0, "")
    assert "thinking…" in out
    spinner_end, answer = out.rindex("thinking…"), out.index("Hi there.")
    assert spinner_end < answer
    assert "\x1b[2K" in out[spinner_end:answer]  # its line erased before the answer is written
    assert plain(out[answer:]).splitlines()[0] == "Hi there."
    assert plain(out).splitlines()[1] == "you> hello"
