"""Runs on a three-node cluster: started, joined, listed and cancelled through nodes that do not
own the session; the same ``Idempotency-Key`` through another node answers the same run; and
when the owner is killed with a run under way and one queued, a live node resumes the queued one
by itself (the runs' sweep) while the one that was running ends ``interrupted`` (``owner_lost``),
never run again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import ALICE_TOKEN, sse_frames
from tests.support.cluster import Cluster, ClusterNode, require_cluster

JOIN = 30.0


def _post(node: ClusterNode, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    with node.client(ALICE_TOKEN, timeout=JOIN + 10) as client:
        return client.post(path, json=body, headers=headers)


def _get(node: ClusterNode, path: str, **params: Any) -> httpx.Response:
    with node.client(ALICE_TOKEN, timeout=JOIN + 10) as client:
        return client.get(path, params=params)


def test_runs_through_nodes_that_do_not_own_the_session(cluster: Cluster) -> None:
    n1, n2, n3 = cluster.nodes
    script = {"provider": "scripted", "script": [{"text": "first"}, {"text": "second"}]}
    created = _post(n1, "/v1/sessions", {"llm_config": script})
    sid = created.json()["session_id"]
    runs = f"/v1/sessions/{sid}/runs"
    started = _post(n2, runs, {"text": "go"}, **{"Idempotency-Key": "cluster-1"})
    assert started.status_code == 202, started.text
    run_id = started.json()["run_id"]
    again = _post(n3, runs, {"text": "go"}, **{"Idempotency-Key": "cluster-1"})
    assert again.status_code == 202, again.text
    assert again.json()["run_id"] == run_id  # the same run, whichever node is asked
    joined = _get(n3, f"{runs}/{run_id}/join", timeout=JOIN)
    assert joined.status_code == 200, joined.text
    assert joined.json()["status"] == "completed"
    assert joined.json()["message"]["content"] == "first"
    assert _get(n2, f"{runs}/{run_id}").json() == joined.json()
    listed = _get(n1, runs).json()["runs"]
    assert [r["run_id"] for r in listed] == [run_id]
    cancelled = _post(n2, f"{runs}/{run_id}/cancel", {})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "completed"  # it had ended: answered as it is


def test_a_dead_owners_queued_run_is_resumed_by_a_live_node(tmp_path: Path) -> None:
    dsn, bus = require_cluster()
    with Cluster(
        tmp_path, size=3, dsn=dsn, bus_url=bus, env={"JIDOKA_RUN_SWEEP_SECONDS": "0.5"}
    ) as cluster:
        _resumed_by_a_live_node(cluster)


def _resumed_by_a_live_node(cluster: Cluster) -> None:
    n1, _, n3 = cluster.nodes
    script = {
        "provider": "scripted",
        "script": [{"chunks": ["stuck"], "hang": True}, {"text": "resumed"}],
    }
    sid = _post(n1, "/v1/sessions", {"llm_config": script}).json()["session_id"]
    runs = f"/v1/sessions/{sid}/runs"
    running = _post(n1, runs, {"text": "hang"}).json()["run_id"]
    queued = _post(n1, runs, {"text": "after", "multitask": "enqueue"}).json()["run_id"]
    assert _get(n1, f"{runs}/{queued}").json()["status"] == "queued"
    n1.kill()
    # Nobody touches the session (a stream is served from the store and the bus, taking
    # nothing): a live node's sweep takes it once n1's lease has run out, ends the running run
    # and runs the queued one. (The new owner's scripted model starts its script again, so
    # the queued run's turn hangs too: what matters here is that it was resumed.)
    with (
        n3.client(ALICE_TOKEN, timeout=cluster.lease_ttl + JOIN) as client,
        client.stream("GET", f"/v1/sessions/{sid}/events", params={"after_seq": 0}) as response,
    ):
        assert response.status_code == 200, response.read()
        for frame in sse_frames(response):
            if frame.data is None:
                continue
            event = frame.json()
            if event["type"] == "run_started" and event["data"]["run_id"] == queued:
                break
    ended = _get(n3, f"{runs}/{running}").json()
    assert (ended["status"], ended["reason"]) == ("interrupted", "owner_lost")
    log = _get(n3, f"/v1/sessions/{sid}/log", limit=1000).json()["events"]
    starts = [e["data"]["run_id"] for e in log if e["type"] == "run_started"]
    assert starts.count(running) == 1  # never run again
    assert starts.count(queued) == 1
