"""The cluster harness itself (tests/support/cluster.py), so that a cluster test that passes is
not one whose faults never happened: a node listens on the same port across restarts, a paused
node stops answering and answers again once continued, a cut Postgres link makes it unready and
restoring it makes it ready again, a cut Redis link refuses and comes back, and a test's Redis
prefix is removed without touching anyone else's keys.

The node here runs ``jidoka serve`` on Postgres without the cluster flags (a single node behind
its proxies), so these tests run whether or not the server side of the cluster is there.
"""

from __future__ import annotations

import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.e2e.conftest import ALICE_TOKEN
from tests.support import postgres
from tests.support.cluster import PROBE_TIMEOUT, ClusterNode, drop_redis_prefix
from tests.support.redis import require_redis

_CLUSTER_ONLY = {"--bus", "--bus-prefix", "--node-id", "--advertise-url", "--lease-ttl"}


class PlainNode(ClusterNode):
    """A :class:`ClusterNode` without the cluster flags (see the module docstring)."""

    def command(self) -> list[str]:
        command = super().command()
        kept: list[str] = []
        skip = False
        for arg in command:
            if skip:
                skip = False
                continue
            if arg in _CLUSTER_ONLY:
                skip = True
                continue
            kept.append(arg)
        return kept


@pytest.fixture
def node(tmp_path: Path) -> Iterator[ClusterNode]:
    dsn = postgres.require_postgres()
    bus = require_redis()
    with postgres.schema(dsn) as schema:
        made = PlainNode(
            "n1", tmp_path, dsn=dsn, schema=schema, bus_url=bus, bus_prefix="jt_unused:"
        )
        try:
            made.start()
            made.wait_ready()
            yield made
        finally:
            made.close()


def test_a_node_keeps_its_port_and_its_sessions_across_kill_and_restart(node: ClusterNode) -> None:
    with node.client(ALICE_TOKEN) as client:
        sid = client.post("/v1/sessions", json={}).json()["session_id"]
    assert node.kill() == -signal.SIGKILL
    assert not node.ready()
    url = node.start()
    assert url.rstrip("/").endswith(f":{node.port}")
    node.wait_ready()
    with node.client(ALICE_TOKEN) as client:
        assert client.get(f"/v1/sessions/{sid}").status_code == 200
    assert node.terminate() == 0


def test_a_paused_node_answers_nothing_until_continued(node: ClusterNode) -> None:
    node.pause()
    assert node.running
    assert not node.ready()  # the probe times out after PROBE_TIMEOUT: no answer at all
    node.resume()
    node.wait_ready(timeout=PROBE_TIMEOUT * 5)


def test_a_paused_node_still_closes(node: ClusterNode) -> None:
    """Teardown of a SIGSTOPped node must not wait for a SIGTERM it cannot receive."""
    node.pause()
    node.close()
    assert not node.running


def test_cutting_the_postgres_link_makes_the_node_unready_until_restored(
    node: ClusterNode,
) -> None:
    node.cut_postgres()
    assert not node.ready()
    node.heal_links()
    node.wait_ready()


def test_the_redis_link_can_be_cut_and_restored(node: ClusterNode) -> None:
    client = redis.Redis.from_url(node.bus_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        assert client.ping()
        node.cut_redis()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        node.heal_links()
        assert client.ping()
    finally:
        client.close()


def test_a_prefix_is_dropped_and_nothing_else() -> None:
    url = require_redis()
    mine, theirs = f"jt_{secrets.token_hex(6)}:", f"jt_{secrets.token_hex(6)}:"
    with redis.Redis.from_url(url) as client:
        try:
            for index in range(1200):  # more than one batch of deletes
                client.set(f"{mine}k{index}", 1)
            client.set(f"{theirs}k", 1)
            assert drop_redis_prefix(url, mine) == 1200
            assert client.keys(f"{mine}*") == []
            assert client.get(f"{theirs}k") == b"1"
        finally:
            drop_redis_prefix(url, theirs)
            drop_redis_prefix(url, mine)
