"""Acknowledged means durable, over HTTP: kill or stop ``jidoka serve`` under load.

16 client threads post messages, each to its own session, and record every message the server
acknowledged with 201 (its seq and content). The server is then killed with SIGKILL, or stopped
with SIGTERM, while they post; after a restart on the same data directory, every acknowledged
message must be in its session's history, in order, with nothing lost or repeated. A SIGTERM
must also end open event streams with a final ``event: shutdown`` and exit 0 within the
shutdown timeout.

Nothing sleeps: the kill happens once enough acknowledgements have been counted (an event with
a deadline), and every wait for a thread or the process has a deadline.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    ALICE_TOKEN,
    ServerProcess,
    http_client,
    sse_frames,
    store_under_test,
)

pytestmark = pytest.mark.stores("sqlite", "postgres")

CLIENTS = 16
#: Acknowledged messages (over all clients) before the signal.
ACKS_BEFORE_SIGNAL = 400
DEADLINE = 60.0
SHUTDOWN_TIMEOUT = 5.0
#: The runtime's own close (flushing the store) after the HTTP side has drained.
CLOSE_MARGIN = 5.0
STREAMS = 4


@dataclass
class Poster:
    """One client thread's view: what it sent and what the server acknowledged."""

    index: int
    session_id: str
    acked: list[tuple[int, str]] = field(default_factory=list)  # (seq, content)
    statuses: list[int] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ended_by: str | None = None


class Load:
    """CLIENTS threads posting as fast as they can until told to stop or the server goes."""

    def __init__(self, url: str, sessions: list[str]) -> None:
        self.url = url
        self.posters = [Poster(i, sid) for i, sid in enumerate(sessions)]
        self.enough = threading.Event()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._acks = 0
        self._threads = [
            threading.Thread(target=self._run, args=(p,), name=f"poster-{p.index}")
            for p in self.posters
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        deadline = time.monotonic() + DEADLINE
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "a client thread did not stop"

    def _run(self, poster: Poster) -> None:
        try:
            with http_client(self.url, ALICE_TOKEN) as client:
                i = 0
                while not self.stop.is_set():
                    content = f"{poster.index}:{i}"
                    response = client.post(
                        f"/v1/sessions/{poster.session_id}/messages",
                        json={"role": "user", "content": content},
                    )
                    poster.statuses.append(response.status_code)
                    if response.status_code != 201:
                        poster.ended_by = f"HTTP {response.status_code}: {response.text[:300]}"
                        return
                    seq = response.json()["seq"]
                    poster.acked.append((seq, content))
                    i += 1
                    with self._lock:
                        self._acks += 1
                        if self._acks >= ACKS_BEFORE_SIGNAL:
                            self.enough.set()
        except httpx.TransportError as exc:  # the server went away mid-request: not acked
            poster.ended_by = type(exc).__name__
        except Exception as exc:  # anything else fails the test, in the main thread
            poster.unexpected.append(repr(exc))

    @property
    def acks(self) -> int:
        return sum(len(p.acked) for p in self.posters)


class StreamReader:
    """Reads one SSE stream in a thread until it ends; ``connected`` once it is subscribed."""

    def __init__(self, url: str, path: str, params: dict[str, Any] | None = None) -> None:
        self.frames: list[Any] = []
        self.error: str | None = None
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, path, params or {}))
        self._thread.start()

    def _run(self, url: str, path: str, params: dict[str, Any]) -> None:
        try:
            with (
                http_client(url, ALICE_TOKEN) as client,
                client.stream("GET", path, params=params) as response,
            ):
                if response.status_code != 200:
                    self.error = f"HTTP {response.status_code}"
                    return
                for frame in sse_frames(response):
                    if frame.comment == "ok":
                        self.connected.set()
                    self.frames.append(frame)
        except Exception as exc:
            self.error = repr(exc)
        finally:
            self.connected.set()  # never leave the main thread waiting

    def join(self) -> None:
        self._thread.join(DEADLINE)
        assert not self._thread.is_alive(), "an event stream did not end"


@contextmanager
def diagnostics(server: ServerProcess) -> Iterator[None]:
    """On failure, the server's stderr goes into the report."""
    try:
        yield
    except BaseException as exc:
        exc.add_note(f"jidoka serve stderr:\n{server.stderr_text()}")
        raise


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    store, env = store_under_test()
    process = ServerProcess(
        tmp_path / "data",
        log_dir=tmp_path,
        options={"shutdown-timeout": SHUTDOWN_TIMEOUT},
        name="fault-server",
        store=store,
        env=env,
    )
    try:
        process.start()
        yield process
    finally:
        process.close()


def create_sessions(url: str) -> list[str]:
    with http_client(url, ALICE_TOKEN) as client:
        sessions = []
        for i in range(CLIENTS):
            response = client.post(
                "/v1/sessions", json={"metadata": {"client": i}, "config": {"max_history": 10000}}
            )
            assert response.status_code == 201, response.text
            sessions.append(response.json()["session_id"])
        return sessions


def check_everything_acknowledged_is_there(url: str, load: Load) -> None:
    with http_client(url, ALICE_TOKEN) as client:
        for poster in load.posters:
            sid = poster.session_id
            info = client.get(f"/v1/sessions/{sid}")
            assert info.status_code == 200, info.text
            assert info.json()["status"] in ("active", "idle"), info.json()
            response = client.get(f"/v1/sessions/{sid}/messages")
            assert response.status_code == 200, response.text
            stored = [(m["seq"], m["content"]) for m in response.json()["messages"]]
            lost = set(poster.acked) - set(stored)
            assert not lost, f"{sid}: acknowledged but lost after restart: {sorted(lost)[:5]}"
            # In order, each once; at most the one in-flight message beyond what was acked.
            numbers = [int(content.split(":")[1]) for _, content in stored]
            assert numbers == list(range(len(numbers))), f"{sid}: gap or repeat: {numbers[:20]}"
            assert [seq for seq, _ in stored] == sorted({seq for seq, _ in stored})
            assert len(poster.acked) <= len(stored) <= len(poster.acked) + 1
            # Still a working session.
            after = client.post(
                f"/v1/sessions/{sid}/messages", json={"role": "user", "content": "after"}
            )
            assert after.status_code == 201, after.text
            assert after.json()["seq"] > max((seq for seq, _ in stored), default=0)


def test_every_acknowledged_message_survives_sigkill(server: ServerProcess) -> None:
    with diagnostics(server):
        sessions = create_sessions(server.url)
        load = Load(server.url, sessions)
        load.start()
        try:
            assert load.enough.wait(DEADLINE), f"only {load.acks} acks within {DEADLINE}s"
            code = server.kill()
        finally:
            load.join()
        assert code == -signal.SIGKILL
        for poster in load.posters:
            assert poster.unexpected == [], poster.unexpected
            # Only the kill stops a client: never an error answer from a healthy server.
            assert set(poster.statuses) == {201}, (poster.statuses[-3:], poster.ended_by)
        assert load.acks >= ACKS_BEFORE_SIGNAL
        server.start()
        check_everything_acknowledged_is_there(server.url, load)


def test_sigterm_under_load_drains_streams_and_loses_nothing(server: ServerProcess) -> None:
    with diagnostics(server):
        sessions = create_sessions(server.url)
        readers = [
            StreamReader(server.url, f"/v1/sessions/{sid}/events", {"after_seq": 0})
            for sid in sessions[:STREAMS]
        ]
        readers.append(StreamReader(server.url, "/v1/events"))
        for reader in readers:
            assert reader.connected.wait(DEADLINE)
            assert reader.error is None, reader.error
        load = Load(server.url, sessions)
        load.start()
        try:
            assert load.enough.wait(DEADLINE), f"only {load.acks} acks within {DEADLINE}s"
            server.send_signal(signal.SIGTERM)
            # The deadline is the check: wait() raises if the server outlives it. (No stopwatch
            # beside it: reaping the process after the wait would count against the bound.)
            code = server.wait(SHUTDOWN_TIMEOUT + CLOSE_MARGIN)
        finally:
            load.join()
            for reader in readers:
                reader.join()
        assert code == 0, f"exit code {code}"

        for reader in readers:
            assert reader.error is None, reader.error
            events = [f for f in reader.frames if f.comment is None]
            assert events, "the stream carried nothing"
            assert events[-1].event == "shutdown", events[-3:]
            assert events[-1].id is None
            assert sum(f.event == "shutdown" for f in events) == 1
        for poster in load.posters:
            assert poster.unexpected == [], poster.unexpected
            # A request caught by the shutdown may be refused (503), never fail with a 500.
            assert set(poster.statuses) <= {201, 503}, (poster.statuses[-3:], poster.ended_by)
        assert load.acks >= ACKS_BEFORE_SIGNAL

        server.start()
        check_everything_acknowledged_is_there(server.url, load)
