"""Purge and retention in a cluster of real nodes: a purge sent to a node that does not own the
session is forwarded to its owner, which removes every row of it (the head with its owner node
and fence included) and says so on every node's global stream; and with ``terminated_ttl`` set,
every node sweeps at once and each expired session is reported exactly once. Rows are counted in
the cluster's Postgres schema directly (psycopg)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.e2e.conftest import ALICE_TOKEN, sse_frames
from tests.support.cluster import Cluster, ClusterNode, require_cluster


def _rows(cluster: Cluster, sid: str) -> dict[str, int]:
    """Rows of ``sid`` in every table of the cluster's schema keyed by session, and its tickets."""
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.columns"
                " WHERE table_schema = %s AND column_name = 'session_id'",
                (cluster.schema,),
            ).fetchall()
        ]
        counts: dict[str, int] = {}
        for table in tables:
            query = sql.SQL("SELECT count(*) FROM {}.{} WHERE session_id = %s").format(
                sql.Identifier(cluster.schema), sql.Identifier(table)
            )
            row = conn.execute(query, (sid,)).fetchone()
            counts[table] = row[0] if row else 0
        query = sql.SQL("SELECT count(*) FROM {}.stream_tickets WHERE path LIKE %s").format(
            sql.Identifier(cluster.schema)
        )
        row = conn.execute(query, (f"/v1/sessions/{sid}/%",)).fetchone()
        counts["stream_tickets"] = row[0] if row else 0
        return counts


def _purged(frames: Iterator[Any], wanted: set[str]) -> list[str]:
    """Session ids of the ``session_purged`` events of a global stream, until every one of
    ``wanted`` has come (any more that come meanwhile are kept, to catch a duplicate)."""
    seen: list[str] = []
    for frame in frames:
        if frame.data is None:
            continue
        event = frame.json()
        if event["type"] == "session_purged":
            assert event["data"]["owner"] == "alice", event
            seen.append(event["session_id"])
            if wanted <= set(seen):
                return seen
    raise AssertionError(f"the stream ended before every purge was reported: {seen}")


def _create(node: ClusterNode, **body: Any) -> str:
    with node.client(ALICE_TOKEN) as client:
        created = client.post("/v1/sessions", json=body)
        assert created.status_code == 201, created.text
        sid: str = created.json()["session_id"]
        sent = client.post(f"/v1/sessions/{sid}/messages", json={"role": "user", "content": "x"})
        assert sent.status_code == 201, sent.text
        return sid


def test_a_purge_through_another_node_removes_every_row(cluster: Cluster) -> None:
    n1, n2, n3 = cluster.nodes
    sid = _create(n1)  # n1 owns it
    assert _rows(cluster, sid)["sessions"] == 1
    with (
        n3.client(ALICE_TOKEN, timeout=30.0) as watcher,
        watcher.stream("GET", "/v1/events") as stream,
    ):
        frames = sse_frames(stream)
        assert next(frames).comment == "ok"
        with n2.client(ALICE_TOKEN) as client:
            purged = client.delete(f"/v1/sessions/{sid}", params={"purge": "true"})
        assert purged.status_code == 204, purged.text
        assert _purged(frames, {sid}) == [sid]
    counts = _rows(cluster, sid)
    assert set(counts) >= {"events", "sessions", "snapshots", "saved_sessions"}
    assert not any(counts.values()), counts
    for node in cluster.nodes:
        with node.client(ALICE_TOKEN) as client:
            assert client.get(f"/v1/sessions/{sid}").status_code == 404
            again = client.delete(f"/v1/sessions/{sid}", params={"purge": "true"})
            assert again.status_code == 404, again.text


def test_a_purged_session_is_not_found_on_nodes_that_remember_it(cluster: Cluster) -> None:
    """The node that ended the session leaves; the others each recall it from the store (and
    keep a tombstone). After a purge through one of them, neither describes it any more."""
    n1, n2, n3 = cluster.nodes
    sid = _create(n1)
    with n1.client(ALICE_TOKEN) as client:
        assert client.delete(f"/v1/sessions/{sid}").status_code == 200
    assert n1.terminate() == 0
    for node in (n2, n3):
        with node.client(ALICE_TOKEN) as client:
            assert client.get(f"/v1/sessions/{sid}").json()["status"] == "terminated"
    with n2.client(ALICE_TOKEN) as client:
        assert client.delete(f"/v1/sessions/{sid}", params={"purge": "true"}).status_code == 204
    assert not any(_rows(cluster, sid).values())
    for node in (n2, n3):
        with node.client(ALICE_TOKEN) as client:
            gone = client.get(f"/v1/sessions/{sid}")
            assert gone.status_code == 404, (node.node_id, gone.text)


def test_every_node_sweeps_and_each_expired_session_is_reported_once(tmp_path: Path) -> None:
    """Three nodes sweeping every 0.2 s with a TTL of 0.5 s: the terminated sessions go, each
    reported once on the global stream; the live one stays."""
    dsn, bus = require_cluster()
    env = {"JIDOKA_TERMINATED_TTL": "0.5", "JIDOKA_RETENTION_SWEEP_SECONDS": "0.2",
           "JIDOKA_RETENTION_BATCH": "2"}  # fmt: skip
    with Cluster(tmp_path, size=3, dsn=dsn, bus_url=bus, env=env) as cluster:
        n1, n2, n3 = cluster.nodes
        live = _create(n1, config={"timeout_minutes": 0})
        with (
            n3.client(ALICE_TOKEN, timeout=30.0) as watcher,
            watcher.stream("GET", "/v1/events") as stream,
        ):
            frames = sse_frames(stream)
            assert next(frames).comment == "ok"
            ended = [_create(node) for node in (n1, n2, n3, n1, n2, n3, n1)]
            for sid in ended:
                with n2.client(ALICE_TOKEN) as client:
                    done = client.delete(f"/v1/sessions/{sid}")
                    assert done.status_code == 200, done.text
            seen = _purged(frames, set(ended))
        assert sorted(seen) == sorted(ended)  # once each
        for sid in ended:
            assert not any(_rows(cluster, sid).values())
        with n1.client(ALICE_TOKEN) as client:
            assert client.get(f"/v1/sessions/{live}").status_code == 200
        assert _rows(cluster, live)["events"] >= 2
