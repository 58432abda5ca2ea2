"""Any node serves any session: the same conversation driven through one node and spread over
three (create on n1, send on n2, stream on n3, chat, approve and cancel through nodes that do not
own the session) gives the same answers and the same log; and a principal sees nothing of
another's sessions through any node.

Each scenario is played twice on the same cluster: once with every request sent to the node
that created the session (what one server would answer), once with each request sent to the
next node round the ring. What two identically played sessions cannot share (ids, times) is
masked before comparing; everything else (statuses, bodies, event types and data, seqs) must be
equal.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import ALICE_TOKEN, BOB_TOKEN, sse_frames
from tests.support.cluster import Cluster, ClusterNode

_VARYING = re.compile(
    r'"(session_id|id|created_at|updated_at|timestamp|added_at|saved_at|last_accessed|time|'
    r'source|events|request_id|project_root|message_id|run_id)":("[^"]*"|null)'
)
_SESSION_PATH = re.compile(r"/v1/sessions/[^/?]+")
_WRITE = {"path": "app.py", "content": "x = 2\n"}
_SCRIPT = [
    {"chunks": ["Changing ", "it."],
     "tool_calls": [{"id": "w1", "name": "write_file", "arguments": _WRITE}]},
    {"text": "Done.", "usage": {"prompt_tokens": 9, "completion_tokens": 2}},
    {"text": "Second answer."},
    {"chunks": ["stuck"], "hang": True},
]  # fmt: skip


def _masked(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, _VARYING.sub(r'"\1":"*"', response.text)


def _turn_over(event: dict[str, Any]) -> bool:
    return event["type"] == "agent_status" and event["data"]["status"] in (
        "idle", "cancelled", "failed",
    )  # fmt: skip


def _events_until(
    node: ClusterNode, sid: str, after: int, stop: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """The session's events after ``after`` from ``node``'s stream, until ``stop(event)``."""
    seen: list[dict[str, Any]] = []
    with (
        node.client(ALICE_TOKEN, timeout=30.0) as client,
        client.stream(
            "GET", f"/v1/sessions/{sid}/events", headers={"Last-Event-ID": str(after)}
        ) as response,
    ):
        assert response.status_code == 200, response.read()
        for frame in sse_frames(response):
            if frame.data is None:
                continue
            event = frame.json()
            seen.append(event)
            if stop(event):
                return seen
    raise AssertionError(f"{node.node_id}'s stream ended before the expected event: {seen}")


def _log(node: ClusterNode, sid: str) -> list[dict[str, Any]]:
    """The session's whole stored log, read through ``node`` page by page."""
    events: list[dict[str, Any]] = []
    with node.client(ALICE_TOKEN) as client:
        while True:
            after = events[-1]["seq"] if events else 0
            page = client.get(f"/v1/sessions/{sid}/log", params={"after_seq": after})
            assert page.status_code == 200, page.text
            got = page.json()["events"]
            if not got:
                return events
            events += got


def _play(nodes: Iterator[ClusterNode], project: Path) -> tuple[list[Any], str]:
    """Create a session, append, chat with an approved write, chat again, cancel a hanging
    turn, each request (and each stream read) on the next node ``nodes`` gives; every answer
    masked, and the session id."""
    answers: list[Any] = []

    def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
        node = next(nodes)
        with node.client(ALICE_TOKEN, timeout=30.0) as client:
            response = client.request(method, path, **kwargs)
        answers.append((method, _SESSION_PATH.sub("/v1/sessions/*", path), *_masked(response)))
        return response

    created = call(
        "POST",
        "/v1/sessions",
        json={
            "project_root": str(project),
            "config": {"allow_write": "ask"},
            "llm_config": {"provider": "scripted", "script": _SCRIPT},
        },
    )
    assert created.status_code == 201, created.text
    sid = created.json()["session_id"]
    base = f"/v1/sessions/{sid}"
    sent = call("POST", base + "/messages", json={"role": "user", "content": "hello"})
    assert sent.status_code == 201, sent.text
    assert call("POST", base + "/chat", json={"text": "bump it"}).status_code == 202
    asked = _events_until(next(nodes), sid, 0, lambda e: e["type"] == "approval_requested")[-1]
    approved = call("POST", base + "/approvals/w1", json={"allow": True})
    assert approved.status_code == 204, approved.text
    turn = _events_until(next(nodes), sid, asked["seq"], _turn_over)
    assert turn[-1]["data"]["status"] == "idle", turn
    waited = call("POST", base + "/chat?wait=true", json={"text": "and now?"})
    assert waited.status_code == 200, waited.text
    assert call("POST", base + "/cancel").json() == {"cancelled": False}
    last = _log(next(nodes), sid)[-1]["seq"]
    assert call("POST", base + "/chat", json={"text": "hang"}).status_code == 202
    chunk = _events_until(next(nodes), sid, last, lambda e: e["type"] == "llm_stream_chunk")[-1]
    assert call("POST", base + "/cancel").json() == {"cancelled": True}
    turn = _events_until(next(nodes), sid, chunk["seq"], _turn_over)
    assert turn[-1]["data"]["status"] == "cancelled", turn
    # History verbs through nodes that may not own the session: forwarded to the owner.
    rewound = call("POST", base + "/rewind", json={"to_seq": sent.json()["seq"]})
    assert rewound.status_code == 200, rewound.text
    assert rewound.json()["touched_paths"] == ["app.py"]
    forked = call("POST", base + "/fork", json={"at_seq": sent.json()["seq"]})
    assert forked.status_code == 201, forked.text
    call("GET", forked.headers["location"] + "/messages")
    for path in ("", "/messages", "/files", "/working-context"):
        call("GET", base + path)
    return answers, sid


def _masked_log(node: ClusterNode, sid: str) -> list[tuple[int, str, str]]:
    return [
        (
            event["seq"],
            event["type"],
            _VARYING.sub(r'"\1":"*"', json.dumps(event["data"], separators=(",", ":"))),
        )
        for event in _log(node, sid)
    ]


def test_a_conversation_spread_over_the_nodes_matches_one_node(
    cluster: Cluster, tmp_path: Path
) -> None:
    n1, n2, n3 = cluster.nodes
    alone, spread = tmp_path / "alone", tmp_path / "spread"
    for project in (alone, spread):
        project.mkdir()
        (project / "app.py").write_text("x = 1\n")

    one_answers, one_sid = _play(itertools.repeat(n1), alone)
    many_answers, many_sid = _play(itertools.cycle([n1, n2, n3]), spread)

    assert many_answers == one_answers
    owners = cluster.owned()
    assert owners is not None
    assert many_sid in owners["n1"], owners  # so n2 and n3 forwarded what they were sent
    assert (spread / "app.py").read_text() == "x = 2\n"  # the approved write ran (on the owner)
    reference = _masked_log(n1, one_sid)
    for node in cluster.nodes:  # every node reads the same log of each session
        assert _masked_log(node, one_sid) == reference
        _same_log(_masked_log(node, many_sid), reference, node)


def _same_log(got: list[tuple[int, str, str]], expected: list[tuple[int, str, str]],
              node: ClusterNode) -> None:  # fmt: skip
    """Equal, else fail naming the first event that differs, in full."""
    for mine, theirs in zip(got, expected, strict=False):
        assert mine == theirs, f"via {node.node_id}:\n{mine}\n  where one node has\n{theirs}"
    assert len(got) == len(expected), (node.node_id, got[len(expected) :], expected[len(got) :])


def test_create_send_stream_list_on_different_nodes(cluster: Cluster) -> None:
    """Create on n1, send on n2, follow the stream on n3 (it sees the message sent on n2), list
    on each node: all three list the session and describe it the same way."""
    n1, n2, n3 = cluster.nodes
    with n1.client(ALICE_TOKEN) as client:
        created = client.post("/v1/sessions", json={"metadata": {"case": "routing"}})
    assert created.status_code == 201, created.text
    sid = created.json()["session_id"]
    with n2.client(ALICE_TOKEN) as client:
        sent = client.post(f"/v1/sessions/{sid}/messages", json={"role": "user", "content": "hi"})
    assert sent.status_code == 201, sent.text
    seen = _events_until(n3, sid, 0, lambda e: e["type"] == "conversation_added")
    assert seen[-1]["seq"] == sent.json()["seq"]
    assert seen[-1]["data"]["content"] == "hi"
    assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))

    described = set()
    for node in cluster.nodes:
        with node.client(ALICE_TOKEN) as client:
            listed = client.get("/v1/sessions").json()["sessions"]
            info = client.get(f"/v1/sessions/{sid}")
        assert [s["session_id"] for s in listed] == [sid]
        assert info.status_code == 200, info.text
        described.add(_VARYING.sub("", info.text.replace(sid, "")))
    assert len(described) == 1, described


def test_principals_are_isolated_through_every_node(cluster: Cluster) -> None:
    """Bob cannot see, write to, stream or list alice's session through any node: 404 (not
    403: he does not learn it exists), and his listing is empty everywhere."""
    with cluster.nodes[0].client(ALICE_TOKEN) as client:
        created = client.post("/v1/sessions", json={})
    sid = created.json()["session_id"]
    for node in cluster.nodes:
        with node.client(BOB_TOKEN) as bob:
            assert bob.get(f"/v1/sessions/{sid}").status_code == 404
            assert bob.get(f"/v1/sessions/{sid}/log").status_code == 404
            sent = bob.post(f"/v1/sessions/{sid}/messages", json={"role": "user", "content": "x"})
            assert sent.status_code == 404, sent.text
            assert bob.post(f"/v1/sessions/{sid}/cancel").status_code == 404
            assert bob.get(f"/v1/sessions/{sid}/events").status_code == 404
            assert bob.get("/v1/sessions").json()["sessions"] == []
    # Nothing bob tried reached the log (taking the session on demand may log its status).
    types = {e["type"] for e in _log(cluster.nodes[2], sid)}
    assert types <= {"session_created", "session_status"}, types


def test_the_cluster_view_lists_every_node(cluster: Cluster) -> None:
    for node in cluster.nodes:
        nodes = cluster.view(ALICE_TOKEN, via=node)["nodes"]
        by_id = {entry["node_id"]: entry for entry in nodes}
        assert set(by_id) == {"n1", "n2", "n3"}
        for member in cluster.nodes:
            assert by_id[member.node_id]["advertise_url"] == member.advertise_url
            assert by_id[member.node_id]["alive"] is True
