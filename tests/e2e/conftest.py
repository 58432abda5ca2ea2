"""End-to-end fixtures: a real ``jidoka serve`` subprocess on a free loopback port.

:class:`ServerProcess` starts the server (``python -m jidoka serve`` when that command exists,
else a small script that calls :func:`jidoka.server.serve.run_server`), reads its stdout in a
thread until the ``export JIDOKA_URL=...`` line appears, and stops it with SIGTERM (returning the
exit code), SIGKILL or a restart on the same data directory. The server's stderr goes to a file;
when a test fails, the tail of every running server's stderr is attached to its report.

Nothing here sleeps: starting waits for a line of output with a deadline, stopping waits for the
process to exit with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, NamedTuple, Self, cast

import httpx
import pytest

from tests.support import postgres

__all__ = [
    "ALICE_TOKEN",
    "BOB_TOKEN",
    "CAROL_TOKEN",
    "TOKENS",
    "ServerProcess",
    "bearer",
    "problem_of",
    "store_under_test",
]

ALICE_TOKEN = "alice-e2e-token-0123456789abcdef"
BOB_TOKEN = "bob-e2e-token-0123456789abcdefgh"
#: A principal for tests that need to know every session it has (pagination).
CAROL_TOKEN = "carol-e2e-token-0123456789abcdef"
TOKENS: Mapping[str, str] = {ALICE_TOKEN: "alice", BOB_TOKEN: "bob", CAROL_TOKEN: "carol"}
START_DEADLINE = 30.0
STOP_DEADLINE = 30.0
CLOSE_DEADLINE = 10.0
#: Per-request bound for the test clients (a deadline, not a sleep).
HTTP_TIMEOUT = 30.0
PROBLEM_BASE = "https://jidoka.dev/problems/"
_URL_LINE = re.compile(r"^export JIDOKA_URL=(\S+)\s*$")

#: Server options by their flag name (without ``--``) -> the ServerConfig field the fallback sets.
_OPTIONS = {
    "insecure-no-auth": "insecure_no_auth",
    "cors-origin": "cors_origins",
    "allowed-host": "allowed_hosts",
    "heartbeat": "heartbeat_seconds",
    "shutdown-timeout": "shutdown_timeout",
    "max-body-bytes": "max_body_bytes",
    "max-inflight": "max_inflight",
    "max-header-bytes": "max_header_bytes",
    "header-timeout": "header_timeout",
    "body-timeout": "body_timeout",
    "idle-timeout": "idle_timeout",
    "max-connections": "max_connections",
}
_FALLBACK = (
    "import json, sys\n"
    "from jidoka.server.config import ServerConfig\n"
    "from jidoka.config import Settings\n"
    "from jidoka.server.serve import run_server\n"
    "sys.exit(run_server(ServerConfig.from_env(port=0, **json.loads(sys.argv[2])),\n"
    "                    Settings.from_env(data_dir=sys.argv[1], store=sys.argv[3])))\n"
)

#: Servers started and not yet closed: their stderr goes into the report of a failing test.
_ACTIVE: list[ServerProcess] = []


def _environment(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without JIDOKA_* (tests/conftest.py sets some), plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIDOKA_")}
    env.update(extra)
    return env


def store_under_test() -> tuple[str, dict[str, str]]:
    """The store a fault test's ``store_backend`` chose (``JIDOKA_STORE``), and the variables a
    server needs beside ``--store`` for it (a Postgres schema): what the environment of this
    process names, which :func:`_environment` does not pass on by itself."""
    store = os.environ["JIDOKA_STORE"]
    env = {k: os.environ[k] for k in ("JIDOKA_POSTGRES_SCHEMA",) if k in os.environ}
    return store, env


def client_environment(**extra: str) -> dict[str, str]:
    """The environment for a ``jidoka`` client command: no JIDOKA_*, no asyncio debug mode
    (its slow-callback warnings would land on the stderr the tests expect empty; servers keep
    it), and faulthandler on, so that :func:`exit_code` can show where a stuck one hangs."""
    env = _environment(extra)
    env.pop("PYTHONASYNCIODEBUG", None)
    env["PYTHONFAULTHANDLER"] = "1"
    return env


def exit_code(process: subprocess.Popen[Any], timeout: float) -> int:
    """``process``'s exit status once it ends; if it has not ended within ``timeout``, abort it
    (faulthandler prints every thread's stack) and fail with what it printed on stderr."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        process.wait()
        raw = process.stderr.read() if process.stderr is not None else "(not captured)"
        stderr = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
        pytest.fail(f"{process.args!r} still running after {timeout} s; its stacks:\n{stderr}")


@functools.cache
def serve_command_available() -> bool:
    """Whether ``python -m jidoka serve`` exists with the flags these tests use (asked once)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "jidoka", "serve", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env=_environment({"NO_COLOR": "1", "COLUMNS": "200"}),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    needed = ("--data-dir", "--store", "--port", *(f"--{name}" for name in _OPTIONS))
    return done.returncode == 0 and all(flag in done.stdout for flag in needed)


class ServerProcess:
    """One ``jidoka serve`` subprocess that can be stopped, killed, restarted.

    ``options`` are server flags by name without ``--`` (``{"heartbeat": 0.2}``; ``True`` for a
    switch, a list for a repeatable flag); ``env`` adds variables (``JIDOKA_MAX_BODY_BYTES``...);
    ``tokens`` become ``JIDOKA_TOKENS``. ``store`` is the ``--store`` (SQLite in the data
    directory unless said otherwise; a Postgres DSN takes its schema from ``env``'s
    ``JIDOKA_POSTGRES_SCHEMA``, see :func:`store_under_test`).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        log_dir: Path,
        options: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        tokens: Mapping[str, str] = TOKENS,
        name: str = "server",
        store: str = "sqlite",
    ) -> None:
        unknown = set(options or {}) - set(_OPTIONS)
        if unknown:
            raise ValueError(f"unknown server options {sorted(unknown)}")
        self.data_dir = data_dir
        self.options = dict(options or {})
        self.extra_env = dict(env or {})
        self.tokens = dict(tokens)
        self.store = store
        self.stderr_path = log_dir / f"{name}.stderr"
        self.stdout_lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self._url: str | None = None
        self._reader: threading.Thread | None = None
        self._found = threading.Event()
        self.starts = 0

    # --- what it runs -------------------------------------------------------------------------

    def command(self) -> list[str]:
        if serve_command_available():
            command = [sys.executable, "-m", "jidoka", "serve", "--host", "127.0.0.1"]
            command += ["--port", "0", "--data-dir", str(self.data_dir), "--store", self.store]
            for name, value in self.options.items():
                if value is True:  # a switch (insecure-no-auth)
                    command.append(f"--{name}")
                elif isinstance(value, list | tuple):  # a repeatable flag (cors-origin)
                    for item in value:
                        command += [f"--{name}", str(item)]
                else:
                    command += [f"--{name}", str(value)]
            return command
        overrides = {_OPTIONS[name]: value for name, value in self.options.items()}
        return [
            sys.executable, "-c", _FALLBACK, str(self.data_dir), json.dumps(overrides), self.store
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        env = {"JIDOKA_TOKENS": json.dumps(self.tokens), "PYTHONUNBUFFERED": "1"}
        return _environment({**env, **self.extra_env})

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._url is None or not self.running:
            raise RuntimeError("the server is not running")
        return self._url

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http") + "/v1/ws"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> str:
        """Start the server and wait for its URL line; raises with its stderr if it dies."""
        if self.process is not None:
            raise RuntimeError("already started; stop() or kill() it first")
        if self not in _ACTIVE:
            _ACTIVE.append(self)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._url = None
        self._found = threading.Event()
        self.starts += 1
        with self.stderr_path.open("ab") as stderr:
            stderr.write(f"--- start #{self.starts}: {' '.join(self.command())}\n".encode())
            stderr.flush()
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                bufsize=1,
                env=self.environment(),
            )
        assert self.process.stdout is not None
        self._reader = threading.Thread(
            target=self._read_stdout, args=(self.process.stdout, self._found), daemon=True
        )
        self._reader.start()
        in_time = self._found.wait(START_DEADLINE)
        # Set by the reader thread while we waited (mypy would keep the None assigned above).
        url = cast("str | None", self._url)
        if not in_time or url is None:
            code = self._reap(signal.SIGKILL) if not in_time else self._reap(None)
            what = "ended its output" if in_time else f"printed no URL in {START_DEADLINE}s"
            raise RuntimeError(
                f"jidoka serve {what} (code {code}); stdout: {self.stdout_lines!r}\n"
                f"stderr:\n{self.stderr_text()}"
            )
        return url

    def _read_stdout(self, stream: IO[str], found: threading.Event) -> None:
        try:
            for line in stream:
                line = line.rstrip("\n")
                self.stdout_lines.append(line)
                match = _URL_LINE.match(line)
                if match and not found.is_set():
                    self._url = match.group(1)
                    found.set()
        finally:
            found.set()  # end of output: start() stops waiting (and sees no URL if none came)

    def stop(self, timeout: float = STOP_DEADLINE) -> int:
        """SIGTERM, wait (at most ``timeout`` s) and return the exit code."""
        return self._reap(signal.SIGTERM, timeout)

    def kill(self) -> int:
        """SIGKILL and return the exit code (``-SIGKILL``)."""
        return self._reap(signal.SIGKILL)

    def restart(self) -> str:
        """Stop (if running) and start again on the same data directory."""
        if self.process is not None:
            self.stop()
        return self.start()

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` without waiting (see :meth:`wait`)."""
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit (raises ``subprocess.TimeoutExpired``), then reap it."""
        assert self.process is not None
        self.process.wait(timeout)
        return self._reap(None)

    def _reap(self, sig: int | None, timeout: float = STOP_DEADLINE) -> int:
        process = self.process
        if process is None:
            raise RuntimeError("not started")
        try:
            if process.poll() is None and sig is not None:
                process.send_signal(sig)
            try:
                code = process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_DEADLINE)
                raise
        finally:
            if self._reader is not None:
                self._reader.join(STOP_DEADLINE)
            if process.stdout is not None:
                process.stdout.close()
            self.process = None
            self._reader = None
        return code

    def close(self) -> None:
        """Stop the server if it still runs (fixture teardown): SIGTERM first, so that it exits
        as it does in production and writes its coverage data (a SIGKILLed process writes
        none), then SIGKILL if it has not exited within CLOSE_DEADLINE."""
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):  # _reap has killed it
                self.stop(timeout=CLOSE_DEADLINE)
        if self in _ACTIVE:
            _ACTIVE.remove(self)

    def stderr_text(self, tail: int = 8000) -> str:
        try:
            text = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return text[-tail:]

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- helpers for the tests ----------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def http_client(
    base_url: str, token: str | None = None, *, read_timeout: float = HTTP_TIMEOUT
) -> httpx.Client:
    """A client for the server; ``read_timeout`` bounds the wait for each chunk of an answer
    (for a stream: the deadline for its next frame)."""
    return httpx.Client(
        base_url=base_url,
        headers=bearer(token) if token else {},
        timeout=httpx.Timeout(HTTP_TIMEOUT, read=read_timeout),
    )


def new_session(client: httpx.Client, **body: Any) -> str:
    """Create a session over HTTP (``body`` is the create request's JSON) and return its id."""
    response = client.post("/v1/sessions", json=body)
    assert response.status_code == 201, response.text
    sid: str = response.json()["session_id"]
    return sid


def post_message(client: httpx.Client, sid: str, content: str) -> int:
    """Store a user message over HTTP and return its seq."""
    response = client.post(
        f"/v1/sessions/{sid}/messages", json={"role": "user", "content": content}
    )
    assert response.status_code == 201, response.text
    seq: int = response.json()["seq"]
    return seq


def problem_of(
    response: httpx.Response, slug: str, status: int, *, session_id: str | None = None
) -> dict[str, Any]:
    """Check ``response`` is the problem ``slug`` with ``status``, and return its document."""
    assert "Traceback" not in response.text, response.text
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = response.json()
    assert problem["type"] == PROBLEM_BASE + slug, problem
    assert problem["status"] == status, problem
    assert isinstance(problem["title"], str), problem
    assert problem["title"], problem
    assert isinstance(problem["detail"], str), problem
    assert problem["detail"], problem
    assert problem.get("request_id") == response.headers["x-request-id"], problem
    if session_id is not None:
        assert problem["session_id"] == session_id, problem
    return problem


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for a whole test module (tests that kill or restart use ``make_server``)."""
    root = tmp_path_factory.mktemp("e2e-server")
    with ServerProcess(root / "data", log_dir=root) as process:
        yield process


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server_on_each_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server per durable store for a whole module: a module that overrides ``server``
    with this runs every test against ``jidoka serve`` on SQLite and on Postgres (a schema of
    its own, dropped after; skipped without a server, failed under CI=true)."""
    root = tmp_path_factory.mktemp(f"e2e-{request.param}")
    if request.param == "sqlite":
        with ServerProcess(root / "data", log_dir=root) as process:
            yield process
        return
    dsn = postgres.require_postgres()
    with (
        postgres.schema(dsn) as schema,
        ServerProcess(
            root / "data", log_dir=root, store=dsn, env={"JIDOKA_POSTGRES_SCHEMA": schema}
        ) as process,
    ):
        yield process


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Any]:
    """A factory of servers with their own data directory and options, closed after the test."""
    made: list[ServerProcess] = []

    def make(
        *,
        options: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        start: bool = True,
    ) -> ServerProcess:
        name = f"server{len(made)}"
        process = ServerProcess(
            tmp_path / f"{name}-data", log_dir=tmp_path, options=options, env=env, name=name
        )
        made.append(process)
        if start:
            process.start()
        return process

    try:
        yield make
    finally:
        for process in made:
            process.close()


@pytest.fixture
def alice(server: ServerProcess) -> Iterator[httpx.Client]:
    with http_client(server.url, ALICE_TOKEN) as client:
        yield client


@pytest.fixture
def bob(server: ServerProcess) -> Iterator[httpx.Client]:
    with http_client(server.url, BOB_TOKEN) as client:
        yield client


@pytest.fixture
def anonymous(server: ServerProcess) -> Iterator[httpx.Client]:
    """No Authorization header at all."""
    with http_client(server.url) as client:
        yield client


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and call.when in ("setup", "call"):
        for process in _ACTIVE:
            report.sections.append(
                (f"jidoka serve stderr ({process.stderr_path})", process.stderr_text())
            )
    return report


class SSEFrame(NamedTuple):
    """One Server-Sent Events message, or one comment line (``comment`` set, the rest None)."""

    id: str | None = None
    event: str | None = None
    data: str | None = None
    comment: str | None = None

    def json(self) -> Any:
        assert self.data is not None, self
        return json.loads(self.data)


def sse_frames(response: httpx.Response) -> Iterator[SSEFrame]:
    """The frames of an SSE response as they arrive (comments included, unlike httpx-sse)."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if fields:
                yield SSEFrame(fields.get("id"), fields.get("event"), fields.get("data"))
                fields = {}
            continue
        if line.startswith(":"):
            yield SSEFrame(comment=line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        fields[name] = f"{fields[name]}\n{value}" if name == "data" and name in fields else value
    if fields:
        yield SSEFrame(fields.get("id"), fields.get("event"), fields.get("data"))


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    """Poll ``predicate()`` (a cheap call, e.g. one HTTP request) until it returns something
    truthy; fail after ``timeout`` seconds. Each poll is itself a round trip, not a sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class WsClient:
    """A thin JSON-command client over a ``websockets`` connection: one reply per command,
    subscription frames kept aside (in order) until the test asks for them."""

    def __init__(self, connection: Any, *, timeout: float = HTTP_TIMEOUT) -> None:
        self.connection = connection
        self.timeout = timeout
        self.pushed: list[dict[str, Any]] = []
        self._ids = 0

    async def send(self, message: Mapping[str, Any]) -> None:
        await self.connection.send(json.dumps(message))

    async def receive(self) -> dict[str, Any]:
        async with asyncio.timeout(self.timeout):
            message: dict[str, Any] = json.loads(await self.connection.recv())
        return message

    async def call(self, op: str, args: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send ``op`` with a fresh request id; its reply (``ok``, ``result``/``error``)."""
        self._ids += 1
        request_id = f"r{self._ids}"
        await self.send({"id": request_id, "op": op, "args": dict(args or {})})
        while True:
            message = await self.receive()
            if "subscription" in message and "id" not in message:
                self.pushed.append(message)
                continue
            assert message.get("id") == request_id, message
            return message

    async def ok(self, op: str, args: Mapping[str, Any] | None = None) -> Any:
        reply = await self.call(op, args)
        assert reply["ok"] is True, reply
        return reply["result"]

    async def next_push(self) -> dict[str, Any]:
        """The next subscription frame (``{"subscription", "event"|"end"}``)."""
        if self.pushed:
            return self.pushed.pop(0)
        message = await self.receive()
        assert "subscription" in message, message
        assert "id" not in message, message
        return message
