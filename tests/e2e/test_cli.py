"""The ``jidoka`` command end to end: every verb as a real subprocess against a real server.

The server is ``python -m jidoka serve`` on a free loopback port with a SQLite store; each verb
is ``python -m jidoka ...`` with ``JIDOKA_URL``/``JIDOKA_TOKEN`` in its environment, so these
tests see exactly what a user sees: stdout, stderr and the exit code. Nothing sleeps: the tests
wait for lines of output (with deadlines) and for processes to exit.

A few checks that need no server (usage errors, ``--version``, ``demo``) run in process, through
:func:`jidoka.cli.main` and Typer's ``CliRunner``.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import pty
import queue
import re
import select
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
from typer.testing import CliRunner

import jidoka
import jidoka.server
from jidoka.cli import app, main
from tests.e2e.conftest import ServerProcess, client_environment, exit_code

TOKEN = "cli-e2e-token-0123456789abcdefgh"
WRONG_TOKEN = "not-the-token-0123456789abcdefgh"
START_DEADLINE = 30.0
STEP_DEADLINE = 30.0
#: Without --follow, ``events`` stops after this long without an event: generous, so that a
#: loaded machine cannot end a replay early (the default is 0.5 s).
IDLE = ("--idle", "2")
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def _environment(**extra: str) -> dict[str, str]:
    """The test process's environment without any JIDOKA_* (the autouse fixtures set some)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIDOKA_")}
    env.update(extra)
    return env


class LineReader:
    """Reads a process's stdout in a thread, so a test can wait for a line with a deadline
    (and the process never blocks on a full pipe)."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = STEP_DEADLINE) -> str:
        """The first new line for which ``predicate(line)`` is true; fails at the deadline."""
        line = self.poll_for(predicate, timeout)
        if line is None:
            pytest.fail(f"no matching line within {timeout}s; got {self.lines!r}")
        return line

    def poll_for(self, predicate: Callable[[str], bool], timeout: float) -> str | None:
        """Like :meth:`wait_for`, but ``None`` at the deadline; fails if the stream ends."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                return None
            if line is None:
                pytest.fail(f"the stream ended without a matching line; got {self.lines!r}")
            self.lines.append(line)
            if predicate(line):
                return line
        return None

    def rest(self, timeout: float = STEP_DEADLINE) -> list[str]:
        """Every remaining line, once the stream has ended."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"
        while not self._queue.empty():
            line = self._queue.get_nowait()
            if line is not None:
                self.lines.append(line)
        return self.lines


@dataclass
class CliServer:
    url: str
    process: subprocess.Popen[str]
    stdout: LineReader
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(
        self, *args: str, env: Mapping[str, str] | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``python -m jidoka *args`` as alice, talking to this server."""
        return subprocess.run(
            [sys.executable, "-m", "jidoka", *args],
            env={**self.env, **(env or {})},
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            text=True,
            timeout=STEP_DEADLINE,
            check=False,
        )

    def ok(self, *args: str) -> str:
        """Run a verb that must succeed; its stdout."""
        done = self.run(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        assert done.stderr == ""
        return done.stdout

    @contextlib.contextmanager
    def follow(self, *args: str) -> Iterator[tuple[subprocess.Popen[str], LineReader]]:
        """``python -m jidoka *args`` left running, its stdout read line by line; killed (if
        still running) and reaped on exit."""
        with subprocess.Popen(
            [sys.executable, "-m", "jidoka", *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as process:
            assert process.stdout is not None
            reader = LineReader(process.stdout)
            try:
                yield process, reader
            finally:
                if process.poll() is None:
                    process.kill()
                process.wait()
                reader.rest()

    def create(self, *args: str) -> str:
        sid = self.ok("sessions", "create", *args).strip()
        assert ULID.match(sid), sid
        return sid


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    """A real ``jidoka serve`` with one token (alice's), until SIGTERM at the end of the module;
    it must then exit 0."""
    root = tmp_path_factory.mktemp("cli-server")
    data_dir = root / "data"
    log = (root / "server.log").open("w", encoding="utf-8")
    command = [sys.executable, "-m", "jidoka", "serve", "--host", "127.0.0.1", "--port", "0"]
    command += ["--data-dir", str(data_dir), "--store", "sqlite"]
    process = subprocess.Popen(
        command,
        env=_environment(JIDOKA_TOKENS=json.dumps({TOKEN: "alice"})),
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert process.stdout is not None
    stdout = LineReader(process.stdout)
    try:
        line = stdout.wait_for(lambda s: s.startswith("export JIDOKA_URL="), START_DEADLINE)
        url = line.partition("=")[2]
        env = client_environment(JIDOKA_URL=url, JIDOKA_TOKEN=TOKEN)
        yield CliServer(url, process, stdout, data_dir, env)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=STEP_DEADLINE) == 0, (root / "server.log").read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stdout.rest()
        process.stdout.close()
        log.close()


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The failed command's stderr: exactly one ``jidoka: error:`` line, never a traceback."""
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("jidoka: error: "), done.stderr
    return lines[0]


def _free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


_ESCAPE = re.compile(r"\x1b(?:\[[0-9;?]*[A-Za-z]|\][^\x07]*\x07)")


def plain(text: str) -> str:
    """Terminal output without its escape sequences."""
    return _ESCAPE.sub("", text)


def run_in_terminal(
    argv: list[str], env: Mapping[str, str], *, columns: int = 100
) -> tuple[int, str, str]:
    """Run ``argv`` with its stdout on a pseudo-terminal ``columns`` wide (stdin /dev/null,
    stderr a pipe): what a person at a terminal sees. Returns the exit code, what the terminal
    received (escapes included, ``\r\n`` as ``\n``) and stderr. Reads until the command
    closes the terminal, with a deadline."""
    master, slave = pty.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
        terminal_env = {**env, "TERM": "xterm-256color", "COLUMNS": str(columns)}
        process = subprocess.Popen(
            argv, env=terminal_env, stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE
        )
    finally:
        os.close(slave)
    received = bytearray()
    deadline = time.monotonic() + STEP_DEADLINE
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([master], [], [], remaining)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the command closed its terminal
                break
            if not chunk:
                break
            received += chunk
    finally:
        os.close(master)
    code = exit_code(process, STEP_DEADLINE)
    assert process.stderr is not None
    stderr = process.stderr.read().decode("utf-8", errors="replace")
    process.stderr.close()
    return code, received.decode("utf-8", errors="replace").replace("\r\n", "\n"), stderr


def jidoka_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "jidoka", *args]


# --- with no server -----------------------------------------------------------------------------


def test_version_subprocess() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jidoka", "--version"],
        env=client_environment(),
        capture_output=True,
        text=True,
        timeout=STEP_DEADLINE,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, f"jidoka {jidoka.__version__}\n", "")


def test_version_with_the_runner() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"jidoka {jidoka.__version__}\n"


def test_usage_errors_with_the_runner() -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["sessions", "list", "--status", "bogus"]).exit_code == 2
    assert runner.invoke(app, ["sessions", "show"]).exit_code == 2
    assert runner.invoke(app, ["send", "only-a-session-id"]).exit_code == 2
    assert runner.invoke(app, ["no-such-command"]).exit_code == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["sessions", "create", "--metadata", "{not json"],
        ["sessions", "create", "--config", "[1, 2]"],
        ["sessions", "list", "--limit", "0"],
        ["send", "SID", "hi", "--role", "robot"],
        ["events", "--after-seq", "3"],
        ["sessions", "list", "--url", "ftp://example.com"],
        ["demo", "--sessions", "0"],
        ["serve", "--port", "70000"],
    ],
)
def test_usage_error_is_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("jidoka: error: ")


def test_no_arguments_print_help_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "sessions" in capsys.readouterr().out


def test_serve_refuses_a_bad_tokens_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"short": "alice"}', encoding="utf-8")
    argv = ["serve", "--port", "0", "--data-dir", str(tmp_path), "--tokens-file", str(tokens)]
    assert main(argv) == 2
    assert "at least 16 characters" in capsys.readouterr().err


def test_serve_flags_and_variables_reach_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flags win over JIDOKA_* variables, which win over the defaults; the server's exit code
    is the command's. ``run_server`` is replaced: this is about the mapping, not the server."""
    server = importlib.import_module("jidoka.server.serve")  # the package's `serve` is a function
    seen: dict[str, object] = {}

    def run_server(config: object, settings: object, *, log_level: str) -> int:
        seen.update(config=config, settings=settings, log_level=log_level)
        return 3

    monkeypatch.setattr(server, "run_server", run_server)
    monkeypatch.setenv("JIDOKA_MAX_INFLIGHT", "7")
    monkeypatch.setenv("JIDOKA_PORT", "9999")
    monkeypatch.setenv("JIDOKA_TOKENS", json.dumps({"from-the-environment-0123": "env"}))
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({TOKEN: "alice"}), encoding="utf-8")
    argv = ["serve", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path / "d")]
    argv += ["--tokens-file", str(tokens), "--cors-origin", "https://a.example"]
    argv += ["--cors-origin", "https://b.example", "--max-body-bytes", "2048"]
    argv += ["--heartbeat", "2.5", "--shutdown-timeout", "4", "--log-level", "debug"]
    assert main(argv) == 3

    config, settings = seen["config"], seen["settings"]
    assert isinstance(config, jidoka.server.ServerConfig)
    assert isinstance(settings, jidoka.Settings)
    assert (config.host, config.port, config.tokens) == ("0.0.0.0", 0, {TOKEN: "alice"})
    assert config.cors_origins == ("https://a.example", "https://b.example")
    assert (config.max_body_bytes, config.max_inflight) == (2048, 7)
    assert (config.heartbeat_seconds, config.shutdown_timeout) == (2.5, 4.0)
    assert not config.insecure_no_auth
    assert (settings.data_dir, settings.store) == (str(tmp_path / "d"), "memory")  # JIDOKA_STORE
    assert seen["log_level"] == "debug"

    assert main(["serve", "--store", "sqlite", "--insecure-no-auth"]) == 3
    config, settings = seen["config"], seen["settings"]
    assert isinstance(config, jidoka.server.ServerConfig)
    assert isinstance(settings, jidoka.Settings)
    assert (config.port, config.insecure_no_auth, settings.store) == (9999, True, "sqlite")


def test_serve_without_the_server_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m.startswith("jidoka.server")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if it were not installed
    assert main(["serve"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "jidoka: error: jidoka serve needs the server extra: pip install 'jidoka-core[server]'"
    )
    assert len(err.splitlines()) == 1


def test_demo_runs_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--sessions", "2", "--messages", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    events = [jidoka.decode_event(line) for line in lines if not line.startswith("#")]
    assert {e.type for e in events} >= {"session_created", "conversation_added"}
    assert len({e.session_id for e in events}) == 2
    summaries = [line for line in lines if ULID.match(line[2:28])]
    assert len(summaries) == 2
    assert all(line.endswith(": terminated (requested)") for line in summaries)


#: Every command's help, by its path.
_COMMANDS = [
    [],
    ["serve"],
    ["sessions"],
    *[["sessions", verb] for verb in ("list", "create", "show", "terminate", "save")],
    *[["sessions", verb] for verb in ("restore", "saved", "delete", "purge")],
    ["send"],
    ["events"],
    ["chat"],
    ["demo"],
]
#: What Typer writes for a value by default: its Python type.
_PYTHON_TYPES = re.compile(r"<(?:str|bool|int|float|path|Path|list\[[^>]*\])(?: range)?>")


@pytest.mark.parametrize("command", _COMMANDS, ids=lambda c: " ".join(c) or "jidoka")
def test_help_names_values_one_way(command: list[str]) -> None:
    """TEXT, INTEGER, PATH, JSON..., nothing for a flag (``--help`` included), an optional
    argument as ``[SESSION_ID]`` in every verb: never a Python type."""
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    help_text = result.output
    assert not _PYTHON_TYPES.search(help_text), _PYTHON_TYPES.findall(help_text)
    assert "[[" not in help_text
    assert "{" not in help_text.split("Usage:")[1].splitlines()[0]  # no Typer braces
    if command in (["events"], ["chat"]):
        assert f"jidoka {command[0]} [OPTIONS] [SESSION_ID]" in help_text
    if command == ["send"]:
        assert "jidoka send [OPTIONS] SESSION_ID TEXT" in help_text


def _serve_once(serve: list[str]) -> subprocess.CompletedProcess[str]:
    """``jidoka serve ...`` expected to fail at start: run to its end, output captured."""
    return subprocess.run(
        jidoka_command(*serve),
        env=client_environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=STEP_DEADLINE,
        check=False,
    )


def test_a_port_in_use_is_named_before_the_data_directory_is_opened(tmp_path: Path) -> None:
    """The port is bound before the runtime opens (and recovers sessions): a busy one is said at
    once, with the way out, and the data directory is not even created."""
    data = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        serve = ["serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data)]
        done = _serve_once(serve)
    assert done.returncode == 1, done.stderr
    assert _one_error_line(done) == (
        f"jidoka: error: port {port} on 127.0.0.1 is already in use (another jidoka serve?): "
        "stop that server, or pick another port (--port 0 picks a free one)"
    )
    assert not data.exists()


def test_a_data_directory_in_use_fails_the_lifespan_startup_in_one_line(tmp_path: Path) -> None:
    """The runtime opens in the app's lifespan: when it cannot (another server holds the data
    directory), uvicorn's startup fails, and the command says why in one error line -- no
    traceback -- and exits 1."""
    data = tmp_path / "data"
    with ServerProcess(data, log_dir=tmp_path) as server:
        assert server.process is not None
        serve = ["serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data)]
        done = _serve_once(serve)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr
        assert "ERROR" not in done.stderr  # uvicorn's own report of the failure is left out
        errors = [line for line in done.stderr.splitlines() if line.startswith("jidoka: ")]
        assert len(errors) == 1, done.stderr
        assert errors[0].startswith("jidoka: error: the data directory")
        assert f"pid {server.process.pid}" in errors[0]
        assert done.stdout == ""  # never announced as serving


def _readme_example() -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    (example,) = [block for block in blocks if "jidoka.Runtime(" in block]
    return example


def test_the_demo_and_the_readme_example_run_beside_a_server(tmp_path: Path) -> None:
    """``./scripts/run`` keeps its store in ./.jidoka: the demo and the README's example, run
    from the same directory meanwhile, use directories of their own. Pointed at the server's,
    the demo says who holds it, in one line."""
    shutil.copy(Path(__file__).resolve().parents[2] / "README.md", tmp_path / "README.md")
    with ServerProcess(tmp_path / ".jidoka", log_dir=tmp_path) as server:
        assert server.process is not None

        def run(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, *argv],
                cwd=tmp_path,
                env=client_environment(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=STEP_DEADLINE,
                check=False,
            )

        demo = run("-m", "jidoka", "demo", "--sessions", "1", "--messages", "1")
        assert demo.returncode == 0, demo.stderr
        assert demo.stdout.splitlines()[-1].endswith(": terminated (requested)")
        example = run("-c", _readme_example())
        assert example.returncode == 0, example.stderr
        assert "conversation_added" in example.stdout
        locked = run("-m", "jidoka", "demo", "--data-dir", str(tmp_path / ".jidoka"))
        assert locked.returncode == 1
        line = _one_error_line(locked)
        assert f"pid {server.process.pid}" in line, line
        assert "--data-dir" in line
    assert (tmp_path / ".jidoka-example").is_dir()  # the example's own directory


# --- against the server -------------------------------------------------------------------------


def test_session_verbs_human_output(cli_server: CliServer) -> None:
    sid = cli_server.create("--metadata", '{"name": "human"}')

    listing = cli_server.ok("sessions", "list").splitlines()
    assert listing[0].split() == ["ID", "STATUS", "CREATED", "MESSAGES", "METADATA"]
    row = next(line for line in listing if line.startswith(sid))
    assert row.split()[1] in {"initializing", "active", "idle"}
    assert '{"name":"human"}' in row

    assert cli_server.ok("send", sid, "hello there").strip() == "3"

    shown = dict(line.split(":", 1) for line in cli_server.ok("sessions", "show", sid).splitlines())
    shown = {k.strip(): v.strip() for k, v in shown.items()}
    assert shown["id"] == sid
    assert shown["owner"] == "alice"
    assert shown["metadata"] == '{"name":"human"}'

    done = cli_server.ok("sessions", "terminate", sid, "--reason", "finished")
    assert done.strip() == f"{sid} terminated (reason: finished)"
    assert "terminated" in cli_server.ok("sessions", "show", sid)


def test_send_reads_stdin_and_takes_a_role(cli_server: CliServer) -> None:
    sid = cli_server.create()
    done = cli_server.run("send", sid, "-", "--role", "assistant", "--json", input="from stdin")
    assert done.returncode == 0, done.stderr
    message = json.loads(done.stdout)
    assert (message["role"], message["content"], message["seq"]) == ("assistant", "from stdin", 3)


def test_session_verbs_json_output(cli_server: CliServer) -> None:
    created = json.loads(
        cli_server.ok(
            "sessions",
            "create",
            "--json",
            "--metadata",
            '{"n": 1}',
            "--llm-config",
            '{"model": "x"}',
        )
    )
    sid = created["session_id"]
    assert created["metadata"] == {"n": 1}
    assert created["llm_config"] == {"model": "x"}
    assert created["owner"] == "alice"

    listed = json.loads(cli_server.ok("sessions", "list", "--json"))
    assert sid in [s["session_id"] for s in listed]
    only_terminated = json.loads(
        cli_server.ok("sessions", "list", "--status", "terminated", "--json")
    )
    assert sid not in [s["session_id"] for s in only_terminated]
    assert len(json.loads(cli_server.ok("sessions", "list", "--limit", "1", "--json"))) == 1

    message = json.loads(cli_server.ok("send", sid, "hi", "--json"))
    assert (message["role"], message["content"], message["seq"]) == ("user", "hi", 3)

    shown = json.loads(cli_server.ok("sessions", "show", sid, "--json"))
    assert shown["conversation_count"] == 1

    ended = json.loads(cli_server.ok("sessions", "terminate", sid, "--json"))
    assert (ended["status"], ended["reason"]) == ("terminated", "requested")


def test_save_restore_saved_delete(cli_server: CliServer) -> None:
    sid = cli_server.create("--metadata", '{"keep": true}')
    cli_server.ok("send", sid, "remember me")

    assert cli_server.ok("sessions", "save", sid).strip() == f"{sid} saved (1 message)"
    saved_rows = cli_server.ok("sessions", "saved").splitlines()
    assert saved_rows[0].split() == ["ID", "SAVED", "MESSAGES", "METADATA"]
    assert any(line.startswith(sid) for line in saved_rows[1:])
    saved = json.loads(cli_server.ok("sessions", "saved", "--json"))
    assert {"session_id": sid, "message_count": 1, "metadata": {"keep": True}}.items() <= next(
        s for s in saved if s["session_id"] == sid
    ).items()
    again = json.loads(cli_server.ok("sessions", "save", sid, "--json"))
    assert again["session_id"] == sid

    cli_server.ok("sessions", "terminate", sid)
    assert cli_server.ok("sessions", "restore", sid).strip() == f"{sid} restored (active)"
    restored = json.loads(cli_server.ok("sessions", "show", sid, "--json"))
    assert (restored["status"], restored["conversation_count"]) == ("active", 1)
    cli_server.ok("sessions", "terminate", sid)
    assert json.loads(cli_server.ok("sessions", "restore", sid, "--json"))["session_id"] == sid

    assert cli_server.ok("sessions", "delete", sid).strip() == f"{sid} saved copy deleted"
    assert sid not in [
        s["session_id"] for s in json.loads(cli_server.ok("sessions", "saved", "--json"))
    ]
    missing = cli_server.run("sessions", "delete", sid, "--json")
    assert missing.returncode == 1
    assert "not found" in _one_error_line(missing)


def _rows_of(data_dir: Path, sid: str) -> dict[str, int]:
    """Rows of ``sid`` in every table of the server's SQLite file that has a ``session_id``."""
    conn = sqlite3.connect(data_dir / "jidoka.sqlite3")
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        counts = {}
        for table in tables:
            if "session_id" in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}:
                query = f"SELECT count(*) FROM {table} WHERE session_id = ?"
                counts[table] = conn.execute(query, (sid,)).fetchone()[0]
        return counts
    finally:
        conn.close()


def test_purge(cli_server: CliServer) -> None:
    """``jidoka sessions purge`` terminates a live session and removes every stored row of it;
    afterwards the session is not found, and a second purge says so."""
    sid = cli_server.create()
    cli_server.ok("send", sid, "forget me")
    cli_server.ok("sessions", "save", sid)
    assert sum(_rows_of(cli_server.data_dir, sid).values()) > 0
    assert cli_server.ok("sessions", "purge", sid).strip() == f"{sid} purged"
    counts = _rows_of(cli_server.data_dir, sid)
    assert set(counts) >= {"events", "sessions", "snapshots", "saved_sessions"}
    assert not any(counts.values()), counts
    gone = cli_server.run("sessions", "show", sid)
    assert gone.returncode == 1
    assert "not found" in _one_error_line(gone)
    again = cli_server.run("sessions", "purge", sid)
    assert again.returncode == 1
    assert "not found" in _one_error_line(again)
    other = cli_server.create()
    cli_server.ok("sessions", "terminate", other)
    assert json.loads(cli_server.ok("sessions", "purge", other, "--json")) == {
        "session_id": other,
        "purged": True,
    }


def test_events_prints_stored_events_and_exits(cli_server: CliServer) -> None:
    sid = cli_server.create()
    cli_server.ok("send", sid, "one")
    cli_server.ok("send", sid, "two")

    # A live session: the command ends once the stream has gone quiet.
    human = cli_server.ok("events", sid, *IDLE).splitlines()
    assert [line.split()[1:3] for line in human] == [
        ["1", "session_created"],
        ["2", "session_status"],
        ["3", "conversation_added"],
        ["4", "conversation_added"],
    ]
    assert human[2].endswith('{"role":"user","content":"one"}')

    events = [
        jidoka.decode_event(line)
        for line in cli_server.ok("events", sid, "--json", *IDLE).splitlines()
    ]
    assert [(e.seq, e.session_id) for e in events] == [(n, sid) for n in range(1, 5)]
    after = cli_server.ok("events", sid, "--json", "--after-seq", "2", *IDLE).splitlines()
    assert [jidoka.decode_event(line).seq for line in after] == [3, 4]

    # A terminated session's stream replays what the store holds and ends by itself.
    cli_server.ok("sessions", "terminate", sid)
    done = cli_server.ok("events", sid).splitlines()
    assert [line.split()[2] for line in done][-1] == "session_terminated"
    assert [line.split()[1] for line in done] == [str(n) for n in range(1, len(done) + 1)]


def test_events_follow_until_the_session_terminates(cli_server: CliServer) -> None:
    sid = cli_server.create()
    with cli_server.follow("events", sid, "--follow") as (follower, lines):
        # Replayed from seq 0, so the subscription is live once the first events are printed.
        lines.wait_for(lambda s: " session_status " in s)
        cli_server.ok("send", sid, "while following")
        seen = lines.wait_for(lambda s: " conversation_added " in s)
        assert seen.endswith('"content":"while following"}')
        cli_server.ok("sessions", "terminate", sid)
        assert exit_code(follower, STEP_DEADLINE) == 0
        printed = lines.rest()
        assert follower.stderr is not None
        assert follower.stderr.read() == ""
    assert [line.split()[2] for line in printed][-1] == "session_terminated"
    assert [int(line.split()[1]) for line in printed] == list(range(1, len(printed) + 1))


def test_events_follow_the_global_stream_until_ctrl_c(cli_server: CliServer) -> None:
    with cli_server.follow("events", "--follow", "--json") as (follower, lines):
        # The global stream is live only: create sessions until one is seen, which proves the
        # subscription is established (each wait is bounded, and one attempt normally does).
        for _attempt in range(10):
            sid = cli_server.create()

            def shows(line: str, sid: str = sid) -> bool:
                return sid in line

            line = lines.poll_for(shows, timeout=3)
            if line is not None:
                break
        else:
            pytest.fail("the global stream never showed a created session")
        event = jidoka.decode_event(line)
        assert (event.type, event.session_id) == ("session_created", sid)
        cli_server.ok("sessions", "terminate", sid)
        lines.wait_for(lambda s: sid in s and "session_terminated" in s)

        follower.send_signal(signal.SIGINT)
        assert exit_code(follower, STEP_DEADLINE) == 0
        assert follower.stderr is not None
        assert "Traceback" not in follower.stderr.read()


def test_ctrl_c_is_exit_130_without_a_traceback(cli_server: CliServer) -> None:
    sid = cli_server.create()
    # Without --follow, an interrupt is not the normal way out: 130, as a shell expects.
    with cli_server.follow("events", sid, "--idle", "600") as (waiting, lines):
        lines.wait_for(lambda s: " session_status " in s)
        waiting.send_signal(signal.SIGINT)
        assert exit_code(waiting, STEP_DEADLINE) == 130
        assert waiting.stderr is not None
        assert "Traceback" not in waiting.stderr.read()


def test_unknown_session_is_exit_1_and_one_line(cli_server: CliServer) -> None:
    unknown = "01ZZZZZZZZZZZZZZZZZZZZZZZZ"
    for argv in (
        ["sessions", "show", unknown],
        ["sessions", "terminate", unknown],
        ["send", unknown, "hello"],
        ["events", unknown],
        ["sessions", "restore", unknown],
    ):
        done = cli_server.run(*argv)
        assert done.returncode == 1, (argv, done.stderr)
        assert done.stdout == ""
        assert _one_error_line(done) == f"jidoka: error: session {unknown!r} not found"


def test_terminated_session_refuses_a_message(cli_server: CliServer) -> None:
    sid = cli_server.create()
    cli_server.ok("sessions", "terminate", sid)
    done = cli_server.run("send", sid, "too late")
    assert done.returncode == 1
    assert "terminated" in _one_error_line(done)


def test_wrong_token_is_unauthorized(cli_server: CliServer) -> None:
    for argv in (["sessions", "list"], ["events", "--follow"]):
        done = cli_server.run(*argv, env={"JIDOKA_TOKEN": WRONG_TOKEN})
        assert done.returncode == 1
        assert "unauthorized" in _one_error_line(done)
    flag = cli_server.run("sessions", "list", "--token", WRONG_TOKEN)
    assert flag.returncode == 1
    assert "unauthorized" in _one_error_line(flag)


def test_unreachable_server_is_exit_1_and_one_line(cli_server: CliServer) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    for argv in (["sessions", "list"], ["events", "--follow"]):
        done = cli_server.run(*argv, "--url", url)
        assert done.returncode == 1
        line = _one_error_line(done)
        assert line == (
            f"jidoka: error: cannot reach a jidoka server at {url}: is `jidoka serve` running? "
            "(connection refused)"
        )


def test_bad_metadata_json_is_a_usage_error(cli_server: CliServer) -> None:
    done = cli_server.run("sessions", "create", "--metadata", "{oops")
    assert done.returncode == 2
    assert "--metadata is not valid JSON" in _one_error_line(done)


def test_server_rejection_of_a_config_is_exit_1(cli_server: CliServer) -> None:
    done = cli_server.run("sessions", "create", "--config", '{"max_history": 0}')
    assert done.returncode == 1
    assert "max_history" in _one_error_line(done)


def test_send_at_a_terminal_says_what_it_stored(cli_server: CliServer) -> None:
    """A person is told the message was stored and what runs the agent; a pipe still gets the
    bare seq (``test_session_verbs_human_output``), --json the message."""
    sid = cli_server.create()
    code, out, err = run_in_terminal(jidoka_command("send", sid, "hello"), cli_server.env)
    assert (code, err) == (0, "")
    assert plain(out) == f"stored message 3 in {sid}; `jidoka chat {sid}` runs the agent\n"
    code, out, err = run_in_terminal(jidoka_command("send", sid, "hi", "--json"), cli_server.env)
    assert (code, err) == (0, "")
    assert json.loads(plain(out))["seq"] == 4


def test_events_at_a_terminal_are_one_short_line_each(cli_server: CliServer) -> None:
    """A person gets time, seq, type and a few words per event, cut to the terminal's width;
    --json (and a pipe: ``test_events_prints_stored_events_and_exits``) keep the data whole."""
    sid = cli_server.create("--metadata", json.dumps({"note": "n" * 300}))
    long = "why does test_login fail? " * 30
    cli_server.ok("send", sid, long)
    code, out, err = run_in_terminal(jidoka_command("events", sid, *IDLE), cli_server.env)
    assert (code, err) == (0, "")
    lines = plain(out).splitlines()
    assert [line.split()[1:3] for line in lines] == [
        ["1", "session_created"],
        ["2", "session_status"],
        ["3", "conversation_added"],
    ]
    assert all(len(line) <= 100 for line in lines), [len(line) for line in lines]
    assert "initializing → active" in lines[1]
    assert " conversation_added user: why does test_login fail? why" in lines[2]
    assert lines[2].endswith("…")
    code, out, err = run_in_terminal(jidoka_command("events", sid, "--json", *IDLE), cli_server.env)
    assert (code, err) == (0, "")
    events = [jidoka.decode_event(line) for line in plain(out).splitlines()]
    assert events[-1].data["content"] == long


def test_events_of_a_restored_session_go_past_its_first_life(cli_server: CliServer) -> None:
    """The log of a restored session holds its first termination; ``events`` goes past it to
    what came after the restore."""
    sid = cli_server.create()
    cli_server.ok("send", sid, "first life")
    cli_server.ok("sessions", "save", sid)
    cli_server.ok("sessions", "terminate", sid)
    cli_server.ok("sessions", "restore", sid)
    cli_server.ok("send", sid, "second life")
    events = [
        jidoka.decode_event(line)
        for line in cli_server.ok("events", sid, "--json", *IDLE).splitlines()
    ]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    kinds = [e.type for e in events]
    assert "session_terminated" in kinds
    assert events[-1].data["content"] == "second life"


def test_fork_and_rewind(cli_server: CliServer) -> None:
    sid = cli_server.create("--metadata", '{"n": 1}')
    for word in ("one", "two", "three"):
        cli_server.ok("send", sid, word)  # seqs 3, 4, 5

    fork = cli_server.ok("sessions", "fork", sid, "--at", "4").strip()
    forked = json.loads(cli_server.ok("sessions", "show", fork, "--json"))
    assert (forked["conversation_count"], forked["owner"], forked["metadata"]) == (
        2,
        "alice",
        {"n": 1},
    )
    as_json = json.loads(cli_server.ok("sessions", "fork", sid, "--json", "--metadata", '{"n": 2}'))
    assert (as_json["conversation_count"], as_json["metadata"]) == (3, {"n": 2})

    rewound = cli_server.ok("sessions", "rewind", sid, "--to", "3").strip()
    assert rewound == f"{sid} rewound to seq 3 (event 6)"
    assert json.loads(cli_server.ok("sessions", "show", sid, "--json"))["conversation_count"] == 1
    again = json.loads(cli_server.ok("sessions", "rewind", sid, "--to", "5", "--json"))
    assert (again["to_seq"], again["from_seq"], again["touched_paths"]) == (5, 6, [])

    out_of_range = cli_server.run("sessions", "rewind", sid, "--to", "99")
    assert out_of_range.returncode != 0
    assert "to_seq" in out_of_range.stderr


def test_sessions_compact(cli_server: CliServer) -> None:
    sid = cli_server.create("--llm-config", '{"provider": "scripted"}')
    for text in ("one", "two", "three"):
        cli_server.ok("send", sid, text)
    said = cli_server.ok("sessions", "compact", sid, "--keep-last", "1").strip()
    assert said.startswith(f"{sid} compacted: messages 3-4 summarised, ")
    done = json.loads(
        cli_server.ok(
            "sessions", "compact", sid, "--keep-last", "0", "--instructions", "x", "--json"
        )
    )
    assert (done["first_seq"], done["last_seq"]) == (3, 5)
    refused = cli_server.run("sessions", "compact", sid, "--keep-last", "-1")
    assert refused.returncode == 2, refused.stderr


def test_runs_start_show_list_join_cancel(cli_server: CliServer) -> None:
    script = {"provider": "scripted", "script": [{"chunks": ["first ", "answer"]}]}
    sid = cli_server.create("--llm-config", json.dumps(script))
    run_id = cli_server.ok("runs", "start", sid, "go", "--metadata", '{"job": 1}').strip()
    assert run_id.startswith("run_")
    joined = json.loads(cli_server.ok("runs", "join", sid, run_id, "--json"))
    assert (joined["status"], joined["message"]["content"]) == ("completed", "first answer")
    assert joined["metadata"] == {"job": 1}
    shown = cli_server.ok("runs", "show", sid, run_id)
    assert "completed" in shown
    assert shown.rstrip().endswith("first answer")
    listed = cli_server.ok("runs", "list", sid)
    assert run_id in listed
    assert "completed" in listed
    page = json.loads(cli_server.ok("runs", "list", sid, "--status", "completed", "--json"))
    assert [r["run_id"] for r in page["runs"]] == [run_id]
    # The same key again: the same run, not a second one.
    keyed = cli_server.ok("runs", "start", sid, "again", "--idempotency-key", "k1").strip()
    again = cli_server.ok("runs", "start", sid, "again", "--idempotency-key", "k1").strip()
    assert keyed == again
    # Cancelling an ended run answers it as it is.
    cli_server.ok("runs", "join", sid, keyed)
    cancelled = json.loads(cli_server.ok("runs", "cancel", sid, keyed, "--json"))
    assert cancelled["run_id"] == keyed
    missing = cli_server.run("runs", "show", sid, "run_nope")
    assert missing.returncode != 0
    assert "run_nope" in missing.stderr
    refused = cli_server.run("runs", "start", sid, "x", "--webhook", "http://127.0.0.1:9/h")
    assert refused.returncode != 0
    assert "webhook" in refused.stderr
