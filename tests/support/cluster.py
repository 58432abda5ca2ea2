"""A cluster of real ``jidoka serve`` subprocesses on one Postgres and one Redis, for tests.

Each :class:`ClusterNode` is a :class:`~tests.e2e.conftest.ServerProcess` with a fixed port (so
its advertise URL survives a restart), a data directory of its own, and its own two TCP proxies
(:class:`~tests.support.tcp_proxy.ThreadedTcpProxy`): one in front of Postgres, one in front of
Redis. The test can therefore take one node's store or bus away without touching the others,
which is the partition a real network makes. Signals cover the rest of the faults: SIGKILL (a
crash), SIGSTOP/SIGCONT (a paused process: the zombie owner that wakes up believing it still owns
its sessions), SIGTERM (a graceful hand-over).

A :class:`Cluster` owns the nodes, one Postgres schema and one Redis key prefix, both private to
the test and removed by :meth:`Cluster.close` whatever happened. Nothing sleeps: starting waits
for the URL line and then polls ``/readyz`` (one request per poll) until a deadline.

:func:`require_cluster` skips a test when Postgres or Redis is missing, and fails it instead
under ``CI=true``, where the cluster suite must run.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import httpx
import psycopg
import redis
from psycopg import sql

from tests.e2e.conftest import TOKENS, ServerProcess, bearer
from tests.support import postgres
from tests.support import redis as redis_support
from tests.support.tcp_proxy import ThreadedTcpProxy

__all__ = [
    "LEASE_TTL",
    "Cluster",
    "ClusterNode",
    "ShutdownHung",
    "drop_redis_prefix",
    "require_cluster",
]

#: The lease TTL the cluster tests run with (seconds).
LEASE_TTL = 2.0
READY_DEADLINE = 30.0
#: How long a node may take to exit after SIGTERM: the server's shutdown timeout (10 s) and the
#: runtime's grace (5 s), and some.
TERM_DEADLINE = 20.0
#: How long faulthandler gets to write the stacks of a node that would not stop.
ABORT_DEADLINE = 5.0
#: One ``/readyz`` poll's bound (a paused node must not hold up the poller).
PROBE_TIMEOUT = 2.0


def require_cluster() -> tuple[str, str]:
    """The Postgres DSN and Redis URL of servers that answer; else skip the test (fail it on
    CI, see tests/support/postgres.py and tests/support/redis.py)."""
    return postgres.require_postgres(), redis_support.require_redis()


def drop_redis_prefix(url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` (a test's bus); the number deleted."""
    deleted = 0
    with redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10) as client:
        batch: list[Any] = []
        for key in client.scan_iter(match=f"{prefix}*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(client.delete(*batch))
                batch = []
        if batch:
            deleted += int(client.delete(*batch))
    return deleted


def _free_port() -> int:
    """A loopback port nothing listens on now (kept for the node's life, restarts included)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class ShutdownHung(AssertionError):
    """A node did not exit within its deadline after SIGTERM (it was killed)."""


class ClusterNode(ServerProcess):
    """One node: a ``jidoka serve`` with cluster flags whose store and bus go through proxies
    this node owns (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        root: Path,
        *,
        dsn: str,
        schema: str,
        bus_url: str,
        bus_prefix: str,
        lease_ttl: float = LEASE_TTL,
        tokens: Mapping[str, str] = TOKENS,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        measured: bool = True,
    ) -> None:
        super().__init__(root / f"{node_id}-data", log_dir=root, tokens=tokens, env=env,
                         name=node_id)  # fmt: skip
        self.node_id = node_id
        #: Whether the node runs under coverage like every other child of a measured run.
        self.measured = measured
        self.port = _free_port()
        self.advertise_url = f"http://127.0.0.1:{self.port}"
        self.schema = schema
        self.bus_prefix = bus_prefix
        self.lease_ttl = lease_ttl
        self.extra_args = list(extra_args)
        self.postgres_proxy = ThreadedTcpProxy(*postgres.address_of(dsn)).start()
        self.redis_proxy = ThreadedTcpProxy(*redis_support.address_of(bus_url)).start()
        self.store_url = postgres.dsn_via(dsn, self.postgres_proxy.port)
        self.bus_url = redis_support.url_via(bus_url, self.redis_proxy.port)
        self.paused = False

    def environment(self) -> dict[str, str]:
        """The server's environment, with faulthandler on (see :meth:`terminate`); for a node
        that is not ``measured``, without coverage's variables and without asyncio's debug mode
        (``PYTHONASYNCIODEBUG``, which ./scripts/test sets): a timing test should time the node
        as it runs in production, not the tracer (several times slower) or the debug mode's
        checks (measured: takeovers 0.5-1.5 s slower under a CPU hog)."""
        env = {**super().environment(), "PYTHONFAULTHANDLER": "1"}
        if not self.measured:
            env = {
                k: v
                for k, v in env.items()
                if not k.startswith("COVERAGE_") and k != "PYTHONASYNCIODEBUG"
            }
        return env

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "jidoka", "serve", "--host", "127.0.0.1",
            "--port", str(self.port), "--data-dir", str(self.data_dir),
            "--store", self.store_url, "--postgres-schema", self.schema,
            "--bus", self.bus_url, "--bus-prefix", self.bus_prefix,
            "--node-id", self.node_id, "--advertise-url", self.advertise_url,
            "--lease-ttl", str(self.lease_ttl), *self.extra_args,
        ]  # fmt: skip

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> str:
        url = super().start()
        self.paused = False
        return url

    def ready(self) -> bool:
        """Whether ``/readyz`` answers 200 now (one request, bounded)."""
        if not self.running:
            return False
        try:
            response = httpx.get(self.advertise_url + "/readyz", timeout=PROBE_TIMEOUT)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def wait_ready(self, timeout: float = READY_DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if not self.running:
                raise RuntimeError(f"{self.node_id} exited:\n{self.stderr_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.node_id} not ready after {timeout} s:\n{self.stderr_text(3000)}"
                )

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets and its beliefs, and does nothing."""
        self.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT: the paused process wakes up where it stopped."""
        self.send_signal(signal.SIGCONT)
        self.paused = False

    def terminate(self, timeout: float = TERM_DEADLINE) -> int:
        """SIGTERM and wait for the exit (a graceful hand-over); the exit code (see
        :meth:`wait_exit`)."""
        self.signal_term()
        return self.wait_exit(timeout)

    def signal_term(self) -> None:
        """SIGTERM, without waiting: the hand-over begins at the signal, while the node is
        still shutting down."""
        self._continue()
        assert self.process is not None, "not started"
        self.process.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float = TERM_DEADLINE) -> int:
        """Wait for the exit after :meth:`signal_term`; the exit code. A node still running
        after ``timeout`` gets SIGABRT (faulthandler writes every thread's stack to its stderr),
        then SIGKILL, and :class:`ShutdownHung` says so with those stacks."""
        assert self.process is not None, "not started"
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(ABORT_DEADLINE)
            self._reap(signal.SIGKILL)
            raise ShutdownHung(
                f"{self.node_id} still running {timeout} s after SIGTERM; its stacks:\n"
                f"{self.stderr_text(6000)}"
            ) from None
        return self._reap(None)

    def kill(self) -> int:
        self.paused = False
        return super().kill()

    def restart(self) -> str:
        self._continue()
        return super().restart()

    def _continue(self) -> None:
        if self.paused and self.running:
            self.resume()
        self.paused = False

    def close(self) -> None:
        """Stop the process (woken first if paused: SIGTERM would wait behind SIGSTOP), then
        the proxies."""
        self._continue()
        try:
            super().close()
        finally:
            self.postgres_proxy.close()
            self.redis_proxy.close()

    # --- links --------------------------------------------------------------------------------

    def cut_postgres(self) -> None:
        self.postgres_proxy.cut()

    def cut_redis(self) -> None:
        self.redis_proxy.cut()

    def heal_links(self) -> None:
        self.postgres_proxy.restore()
        self.redis_proxy.restore()

    def client(self, token: str, *, timeout: float = 10.0) -> httpx.Client:
        return httpx.Client(
            base_url=self.advertise_url, headers=bearer(token), timeout=httpx.Timeout(timeout)
        )


class Cluster:
    """``size`` nodes ``n1``... sharing a private schema and Redis prefix (see the module
    docstring). Use as a context manager; :meth:`close` removes everything."""

    def __init__(
        self,
        root: Path,
        *,
        size: int = 3,
        dsn: str,
        bus_url: str,
        lease_ttl: float = LEASE_TTL,
        tokens: Mapping[str, str] = TOKENS,
        env: Mapping[str, str] | None = None,
        measured: bool = True,
    ) -> None:
        self.dsn = dsn
        self.redis_url = bus_url
        self.lease_ttl = lease_ttl
        self.tokens = dict(tokens)
        self.schema = postgres.new_schema_name()
        self.bus_prefix = f"jt_{secrets.token_hex(6)}"
        self.nodes: list[ClusterNode] = []
        try:
            for index in range(1, size + 1):
                self.nodes.append(
                    ClusterNode(
                        f"n{index}",
                        root,
                        dsn=dsn,
                        schema=self.schema,
                        bus_url=bus_url,
                        bus_prefix=self.bus_prefix,
                        lease_ttl=lease_ttl,
                        tokens=tokens,
                        env=env,
                        measured=measured,
                    )
                )
        except BaseException:
            self.close()
            raise

    def __getitem__(self, node_id: str) -> ClusterNode:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    def start(self) -> Self:
        """Start every node (one at a time: the first creates the schema), then wait until
        each says it is ready."""
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_ready()
        return self

    def live(self) -> list[ClusterNode]:
        """The nodes running and not paused (those a client can expect answers from)."""
        return [node for node in self.nodes if node.running and not node.paused]

    def any_live(self, rng: random.Random | None = None) -> ClusterNode:
        live = self.live()
        if not live:
            raise RuntimeError("no live node")
        return (rng or random).choice(live)

    def view(self, token: str, via: ClusterNode | None = None) -> dict[str, Any]:
        """``GET /v1/cluster`` from ``via`` (any live node by default)."""
        node = via or self.any_live()
        response = httpx.get(
            node.advertise_url + "/v1/cluster", headers=bearer(token), timeout=PROBE_TIMEOUT
        )
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        return document

    def owned(self) -> dict[str, list[str]] | None:
        """Node id -> the live sessions it owns, as the store records them (``sessions.node``,
        read on a connection of the test's own, not through any proxy); ``None`` if the store
        cannot say (no such column, or Postgres does not answer)."""
        query = sql.SQL(
            "SELECT node, session_id FROM {}.sessions"
            " WHERE status <> 'terminated' AND node IS NOT NULL ORDER BY session_id"
        ).format(sql.Identifier(self.schema))
        try:
            with psycopg.connect(self.dsn, connect_timeout=3, autocommit=True) as conn:
                rows = conn.execute(query).fetchall()
        except psycopg.Error:
            return None
        result: dict[str, list[str]] = {node.node_id: [] for node in self.nodes}
        for node_id, session_id in rows:
            result.setdefault(str(node_id), []).append(str(session_id))
        return result

    def heal(self) -> None:
        """Every link restored, every paused node resumed, every stopped node started again,
        and all of them ready."""
        for node in self.nodes:
            node.heal_links()
            if node.paused:
                node.resume()
            if not node.running:
                node.start()
        for node in self.nodes:
            node.wait_ready()

    def close(self) -> None:
        try:
            for node in self.nodes:
                with contextlib.suppress(Exception):
                    node.close()
        finally:
            try:
                postgres.drop_schema(self.dsn, self.schema)
            finally:
                drop_redis_prefix(self.redis_url, self.bus_prefix)

    def stderr_tails(self, tail: int = 4000) -> Iterator[tuple[str, str]]:
        for node in self.nodes:
            yield node.node_id, node.stderr_text(tail)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()  # __exit__ does not run when __enter__ raises
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
