"""A Postgres outage seen over HTTP: ``jidoka serve`` on the Postgres store, through a proxy.

Client threads post messages, each to its own session. The proxy then cuts every connection to
the database and refuses new ones: the server keeps running and answers what needs the store
with 503 (a ``store-error`` problem, or ``commit-outcome-unknown`` for a message cut off
mid-commit) and ``/readyz`` with 503, within a bound. Once the proxy
forwards again the same server process is ready again (no restart), the posters go on, and each
session holds exactly the messages acknowledged: in order, once each.

A 503 may answer a message whose commit was cut off mid-flight (its outcome unknown: it may be
stored), so a poster does what a careful client must: once the server is ready again it reads
the session's log (``/log``) and sends the message again only if it is not there.

Nothing sleeps: the cut happens once enough acknowledgements were counted (an event with a
deadline), readiness is polled with requests, and every thread is joined with a deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import (
    ALICE_TOKEN,
    ServerProcess,
    http_client,
    new_session,
    problem_of,
    wait_until,
)
from tests.support.postgres import address_of, dsn_via
from tests.support.tcp_proxy import ThreadedTcpProxy

pytestmark = pytest.mark.stores("postgres")

CLIENTS = 6
#: Acknowledged messages of each client before the cut, and again after the restore.
PROGRESS = 5
DEADLINE = 60.0
#: The store's connect timeout in the server (JIDOKA_POSTGRES_CONNECT_TIMEOUT), and the bound
#: on a request failing while the database is cut off: a few of them, with room for CI.
CONNECT_TIMEOUT = 1.0
FAIL_WITHIN = 10 * CONNECT_TIMEOUT


@dataclass
class Poster:
    index: int
    session_id: str
    acked: list[tuple[int, str]] = field(default_factory=list)  # (seq, content)
    refused: int = 0  # 503 answers
    found_stored: int = 0  # of them, messages the log then showed stored
    unexpected: list[str] = field(default_factory=list)


class Load:
    """A thread per session posting until told to stop; a 503 makes it wait for ``restored``
    and post the same message again."""

    def __init__(self, url: str, sessions: list[str]) -> None:
        self.url = url
        self.posters = [Poster(i, sid) for i, sid in enumerate(sessions)]
        self.restored = threading.Event()
        self.restored.set()
        self.stop = threading.Event()
        self.changed = threading.Condition()
        self._threads = [threading.Thread(target=self._run, args=(p,)) for p in self.posters]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        self.restored.set()
        deadline = time.monotonic() + DEADLINE
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "a client thread did not stop"

    def _run(self, poster: Poster) -> None:
        try:
            with http_client(self.url, ALICE_TOKEN) as client:
                while not self.stop.is_set():
                    content = f"{poster.index}:{len(poster.acked)}"
                    response = client.post(
                        f"/v1/sessions/{poster.session_id}/messages",
                        json={"role": "user", "content": content},
                    )
                    if response.status_code == 201:
                        poster.acked.append((response.json()["seq"], content))
                    elif response.status_code == 503:
                        # "store-error": nothing was stored. "commit-outcome-unknown": the
                        # commit was cut off mid-flight; the log will say. Either way a careful
                        # poster reads the log before sending the message again.
                        slug = response.json()["type"].rsplit("/", 1)[-1]
                        assert slug in ("store-error", "commit-outcome-unknown"), slug
                        problem_of(response, slug, 503, session_id=poster.session_id)
                        poster.refused += 1
                        self._notify()
                        self.restored.wait(DEADLINE)
                        seq = self._logged(client, poster, content)
                        if seq is not None:
                            if slug == "store-error":
                                poster.unexpected.append(
                                    f"{content!r} was refused as store-error (nothing stored), "
                                    f"yet it is in the log at seq {seq}"
                                )
                                return
                            poster.found_stored += 1
                            poster.acked.append((seq, content))
                        continue
                    else:
                        poster.unexpected.append(f"HTTP {response.status_code}: {response.text}")
                        return
                    self._notify()
        except Exception as exc:  # fails the test, in the main thread
            poster.unexpected.append(repr(exc))
            self._notify()

    def _logged(self, client: httpx.Client, poster: Poster, content: str) -> int | None:
        """The seq of ``content`` in the session's log after the last acknowledged message
        (``None``: not stored); asked until the server answers (each try is a request)."""
        after = poster.acked[-1][0] if poster.acked else 0
        deadline = time.monotonic() + DEADLINE
        while True:
            path = f"/v1/sessions/{poster.session_id}/log"
            response = client.get(path, params={"after_seq": after})
            if response.status_code == 200:
                break
            assert response.status_code == 503, response.text
            assert time.monotonic() < deadline, f"{poster.session_id}: /log still 503"
        events = response.json()["events"]
        added = [e for e in events if e["type"] == "conversation_added"]
        found = [e["seq"] for e in added if e["data"]["content"] == content]
        assert len(found) <= 1, f"{poster.session_id}: {content!r} stored {len(found)} times"
        return found[0] if found else None

    def _notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def wait_for_progress(self, what: str) -> None:
        target = [len(p.acked) + PROGRESS for p in self.posters]

        def done() -> bool:
            acked = [len(p.acked) for p in self.posters]
            failed = any(p.unexpected for p in self.posters)
            return failed or all(n >= t for n, t in zip(acked, target, strict=True))

        with self.changed:
            assert self.changed.wait_for(done, DEADLINE), f"no progress {what}"
        assert not [p.unexpected for p in self.posters if p.unexpected]


@pytest.fixture
def proxy(postgres_dsn: str) -> Iterator[ThreadedTcpProxy]:
    with ThreadedTcpProxy(*address_of(postgres_dsn)) as running:
        yield running


@pytest.fixture
def server(
    tmp_path: Path, proxy: ThreadedTcpProxy, postgres_dsn: str, postgres_schema: str
) -> Iterator[ServerProcess]:
    env = {
        "JIDOKA_POSTGRES_SCHEMA": postgres_schema,
        "JIDOKA_POSTGRES_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
    }
    process = ServerProcess(
        tmp_path / "data",
        log_dir=tmp_path,
        store=dsn_via(postgres_dsn, proxy.port),
        env=env,
        name="outage-server",
    )
    try:
        process.start()
        yield process
    finally:
        proxy.restore()  # a failed test must not leave the server's close waiting on a cut
        process.close()


def refused_promptly(client: httpx.Client, method: str, path: str, body: object = None) -> None:
    """The request is answered 503 within FAIL_WITHIN (the request's own read timeout)."""
    try:
        response = client.request(method, path, json=body, timeout=FAIL_WITHIN)
    except httpx.TimeoutException:
        raise AssertionError(f"{method} {path}: no answer {FAIL_WITHIN}s into the outage") from None
    assert response.status_code == 503, (response.status_code, response.text)
    if path != "/readyz":
        problem_of(response, "store-error", 503)


def test_an_outage_is_503_then_the_same_server_serves_and_nothing_is_lost(
    server: ServerProcess, proxy: ThreadedTcpProxy
) -> None:
    with http_client(server.url, ALICE_TOKEN) as alice:
        sessions = [new_session(alice) for _ in range(CLIENTS)]
        load = Load(server.url, sessions)
        load.start()
        try:
            load.wait_for_progress("before the outage")
            load.restored.clear()
            proxy.cut()
            refused_promptly(alice, "GET", "/readyz")
            refused_promptly(alice, "POST", "/v1/sessions", {})
            proxy.restore()
            wait_until(
                lambda: alice.get("/readyz").status_code == 200, DEADLINE, "/readyz after it"
            )
            load.restored.set()
            load.wait_for_progress("after the outage")
        finally:
            load.join()
        for poster in load.posters:
            assert poster.unexpected == [], poster.unexpected
            response = alice.get(f"/v1/sessions/{poster.session_id}/messages")
            assert response.status_code == 200, response.text
            stored = [(m["seq"], m["content"]) for m in response.json()["messages"]]
            assert stored == poster.acked, f"{poster.session_id}: {stored} vs {poster.acked}"
