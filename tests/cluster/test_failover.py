"""One owner lost at a time, one session watched: the quick, readable form of what the history
checker (test_checker.py) measures in bulk. The session is created on n1 (which then owns it);
n1 is lost one way or another; appends through n2 and n3 (alternately, each bounded by
:data:`ATTEMPT_TIMEOUT`) must be acknowledged again within TTL + 2 s of the loss. Then n1 is
brought back (a paused n1 wakes up as a zombie that still believes it owns the session), one
more append goes through n1 itself, and the log must hold every acknowledged message once, its
seqs gap-free.
"""

from __future__ import annotations

import itertools
import time

import httpx
import pytest

from tests.e2e.conftest import ALICE_TOKEN
from tests.support.cluster import Cluster, ClusterNode

#: One attempt's bound: a request stuck on a lost owner is abandoned and tried again.
ATTEMPT_TIMEOUT = 1.0


def _send(node: ClusterNode, sid: str, text: str, timeout: float) -> httpx.Response | None:
    """One append through ``node``; ``None`` when no answer came in time."""
    try:
        with node.client(ALICE_TOKEN, timeout=timeout) as client:
            return client.post(
                f"/v1/sessions/{sid}/messages", json={"role": "user", "content": text}
            )
    except httpx.HTTPError:
        return None


def _log_messages(node: ClusterNode, sid: str) -> tuple[list[int], list[str]]:
    with node.client(ALICE_TOKEN) as client:
        events = client.get(f"/v1/sessions/{sid}/log", params={"limit": 1000}).json()["events"]
    texts = [e["data"]["content"] for e in events if e["type"] == "conversation_added"]
    return [e["seq"] for e in events], texts


@pytest.mark.parametrize("fault", ["kill", "stop", "term", "cut-postgres"])
def test_a_lost_owners_session_is_writable_elsewhere_within_ttl_plus_2s(
    cluster: Cluster, fault: str
) -> None:
    n1, n2, n3 = cluster.nodes
    with n1.client(ALICE_TOKEN) as client:
        sid = client.post("/v1/sessions", json={}).json()["session_id"]
    acked = []
    first = _send(n1, sid, "before", 10.0)
    assert first is not None
    assert first.status_code == 201, first.text
    acked.append("before")
    owners = cluster.owned()
    assert owners is not None
    assert sid in owners["n1"], owners

    lost = time.monotonic()
    if fault == "kill":
        n1.kill()
    elif fault == "stop":
        n1.pause()
    elif fault == "term":
        n1.terminate()
    else:
        n1.cut_postgres()
    bound = lost + cluster.lease_ttl + 2.0
    answers = []
    for attempt, node in zip(itertools.count(), itertools.cycle([n2, n3]), strict=False):
        text = f"after {attempt}"
        response = _send(node, sid, text, ATTEMPT_TIMEOUT)
        answers.append(None if response is None else response.status_code)
        if response is not None and response.status_code == 201:
            acked.append(text)
            break
        assert time.monotonic() < bound + 5.0, f"never writable; answers {answers}"
    took = time.monotonic() - lost
    print(f"{fault}: writable again after {took:.2f} s; answers {answers}")

    cluster.heal()  # n1 back: continued (a zombie), restarted, or its link restored
    last = _send(n1, sid, "through n1 again", 10.0)
    assert last is not None
    assert last.status_code == 201, last.text
    acked.append("through n1 again")
    seqs, texts = _log_messages(n2, sid)
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(texts) == len(set(texts)), texts
    assert set(acked) <= set(texts), (acked, texts)
    assert took <= cluster.lease_ttl + 2.0, f"{fault}: {took:.2f} s; answers {answers}"
