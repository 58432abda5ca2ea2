"""The pieces ``bench_cluster`` measures with: nodes as real ``jidoka serve`` subprocesses, a
small HTTP/1.1 client, and the clean-up of a run's Postgres schemas and Redis keys.

The nodes are the real thing (``python -m jidoka serve`` with ``--node-id``, a Postgres store
and a Redis bus), started the way an operator would, so what is timed includes the forwarding
hop, the lease and the takeover exactly as deployed. The client is a few lines over asyncio
streams rather than httpx: on a two-core machine the load generator shares the CPU with three
servers, and httpx costs several times more per request than the requests it sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Final

from ._common import ROOT, clock

__all__ = [
    "TOKEN",
    "Http",
    "Node",
    "free_ports",
    "redis_unavailable",
    "redis_url",
    "drop_redis_keys",
]

#: The one principal of a run; every node gets the same ``JIDOKA_TOKENS``.
TOKEN: Final = "bench-cluster-" + secrets.token_hex(12)
PRINCIPAL: Final = "bench"
REDIS_VARIABLE: Final = "JIDOKA_TEST_REDIS_URL"
DEFAULT_REDIS: Final = "redis://127.0.0.1:6379/0"
_URL_LINE: Final = re.compile(r"^export JIDOKA_URL=(\S+)\s*$")
START_DEADLINE: Final = 60.0


def redis_url() -> str:
    return os.environ.get(REDIS_VARIABLE) or DEFAULT_REDIS


def redis_unavailable(url: str) -> str | None:
    """Why the run cannot use Redis at ``url`` (no client library, no server), or ``None``."""
    try:
        import redis
    except ImportError:
        return "redis-py is not installed (pip install -e '.[redis]')"
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=3) as client:
            client.ping()
    except (redis.RedisError, OSError) as exc:
        return f"no Redis at {url} ({type(exc).__name__}: {str(exc).strip()[:160]})"
    return None


def drop_redis_keys(url: str, prefix: str) -> int:
    """Delete every key under ``prefix:`` (the bus uses pub/sub, so normally none); returns
    how many there were."""
    import redis

    with redis.Redis.from_url(url, socket_connect_timeout=3) as client:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    return len(keys)


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free right now (a node keeps its port across restarts, so
    its advertised URL stays the same, as a real node's would)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Node:
    """One ``jidoka serve`` node of a cluster: start, SIGKILL, SIGTERM, restart on its port."""

    def __init__(
        self,
        node_id: str,
        port: int,
        *,
        dsn: str,
        schema: str,
        bus: str,
        prefix: str,
        ttl: float,
        workdir: Path,
        src: Path | None = None,
    ) -> None:
        self.node_id = node_id
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.data_dir = workdir / node_id
        self.log_path = workdir / f"{node_id}.stderr"
        self.command = [
            sys.executable, "-m", "jidoka", "serve", "--host", "127.0.0.1",
            "--port", str(port), "--data-dir", str(self.data_dir), "--store", dsn,
            "--postgres-schema", schema, "--bus", bus, "--bus-prefix", prefix,
            "--node-id", node_id, "--lease-ttl", str(ttl), "--log-level", "warning",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("JIDOKA_")}
        env.pop("PYTHONASYNCIODEBUG", None)
        env.pop("PYTHONTRACEMALLOC", None)
        #: The tree the node runs (this checkout's ``src`` unless told; ``bench_cluster --src``).
        self.src = (src or ROOT / "src").resolve()
        path = [str(self.src), env.get("PYTHONPATH")]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, path))
        env["JIDOKA_TOKENS"] = json.dumps({TOKEN: PRINCIPAL})
        env["PYTHONUNBUFFERED"] = "1"
        self.env = env
        self.process: subprocess.Popen[str] | None = None
        self._found = threading.Event()
        self.starts = 0

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.node_id} is not running")
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn(self) -> None:
        """Start the process; :meth:`wait_started` waits for its URL line."""
        if self.running:
            raise RuntimeError(f"{self.node_id} is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self._found = threading.Event()
        with self.log_path.open("ab") as log:
            log.write(f"--- start #{self.starts}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                bufsize=1,
            )
        assert self.process.stdout is not None
        threading.Thread(
            target=self._drain, args=(self.process.stdout, self._found), daemon=True
        ).start()

    @staticmethod
    def _drain(stdout: IO[str], found: threading.Event) -> None:
        """Watch for the URL line, then keep reading so the pipe never fills."""
        for line in stdout:
            if _URL_LINE.match(line.strip()):
                found.set()
        stdout.close()

    def wait_started(self) -> None:
        if not self._found.wait(START_DEADLINE) or not self.running:
            self.stop()
            raise RuntimeError(f"node {self.node_id} did not start:\n{self.log_tail()}")

    def start(self) -> None:
        self.spawn()
        self.wait_started()

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    def signal(self, signum: int) -> None:
        if self.process is None:
            raise RuntimeError(f"{self.node_id} is not running")
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for the process to end (killing it past ``timeout``); its exit status."""
        process = self.process
        if process is None:
            return 0
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        self.process = None
        return code

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 30 s): the hand-over path, as an operator stops one."""
        if self.running:
            self.signal(signal.SIGTERM)
        self.wait_exit()

    def rss(self) -> int:
        """The node's resident set size in bytes, from ``/proc``."""
        with open(f"/proc/{self.pid}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def start_all(nodes: Sequence[Node]) -> None:
    """Start the nodes side by side (each start is mostly imports), wait for all of them."""
    for node in nodes:
        node.spawn()
    for node in nodes:
        node.wait_started()


@contextlib.contextmanager
def running(nodes: Sequence[Node]) -> Iterator[Sequence[Node]]:
    try:
        start_all(nodes)
        yield nodes
    finally:
        for node in nodes:
            if node.running:
                node.signal(signal.SIGTERM)
        for node in nodes:
            node.wait_exit()


# --- a minimal HTTP/1.1 keep-alive client ---------------------------------------------------------


class HttpError(Exception):
    """The connection failed or the answer could not be read (the caller reconnects)."""


class Http:
    """One keep-alive connection to a node, one request at a time, bearer token included.

    A connection idle longer than the server's keep-alive (5 s by default) is closed by the
    server, so one left idle for :attr:`MAX_IDLE` is reopened before it is used again rather
    than found closed halfway through a request.
    """

    MAX_IDLE: Final = 2.0

    def __init__(self, port: int, token: str = TOKEN) -> None:
        self.port = port
        self._head = (
            f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\n"
        )
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._used = 0.0

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._writer is not None and clock() - self._used > self.MAX_IDLE:
            await self.close()
        if self._reader is None or self._writer is None:
            try:
                self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError as exc:
                raise HttpError(f"connect to {self.port}: {exc}") from exc
        return self._reader, self._writer

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """``(status, body)``; raises :class:`HttpError` (after closing) if it cannot."""
        reader, writer = await self._connection()
        head = f"{method} {path} HTTP/1.1\r\n{self._head}Content-Length: {len(body)}\r\n\r\n"
        try:
            writer.write(head.encode("ascii") + body)
            status_line = await reader.readuntil(b"\r\n")
            headers = await reader.readuntil(b"\r\n\r\n")
            length = 0
            close = False
            for line in headers.split(b"\r\n"):
                name, _, value = line.partition(b":")
                lowered = name.strip().lower()
                if lowered == b"content-length":
                    length = int(value)
                elif lowered == b"connection" and value.strip().lower() == b"close":
                    close = True
            payload = await reader.readexactly(length) if length else b""
            status = int(status_line.split(b" ", 2)[1])
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            await self.close()
            raise HttpError(f"{method} {path} on {self.port}: {exc!r}") from exc
        if close:
            await self.close()
        self._used = clock()
        return status, payload

    async def json(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        data = b"" if body is None else json.dumps(body).encode()
        status, payload = await self.request(method, path, data)
        if status != expect:
            raise RuntimeError(f"{method} {path} on {self.port}: {status} {payload[:300]!r}")
        return json.loads(payload) if payload else None
