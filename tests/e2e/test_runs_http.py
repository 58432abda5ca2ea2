"""Runs over HTTP against a real ``jidoka serve``: ``POST .../runs`` answers 202 with a
``Location`` at once, the ``Idempotency-Key`` header makes a retry answer the first run (and the
first message), a different request under the same key is 422, and the session's SSE stream
replays a run from its first seq."""

from __future__ import annotations

import httpx

from tests.e2e.conftest import ServerProcess, new_session, problem_of, sse_frames

SCRIPT = {"provider": "scripted", "script": [{"chunks": ["one ", "answer"]}]}


def test_a_run_is_accepted_at_once_with_its_location(
    server: ServerProcess, alice: httpx.Client
) -> None:
    sid = new_session(alice, llm_config=SCRIPT)
    started = alice.post(f"/v1/sessions/{sid}/runs", json={"text": "go"})
    assert started.status_code == 202, started.text
    run = started.json()
    assert run["status"] == "queued"
    assert started.headers["location"] == f"/v1/sessions/{sid}/runs/{run['run_id']}"
    joined = alice.get(started.headers["location"] + "/join", params={"timeout": 30})
    assert joined.status_code == 200
    assert joined.json()["status"] == "completed"
    assert joined.json()["message"]["content"] == "one answer"
    # The stream replays the run from its run_queued: what a client that looks later sees.
    first_seq = next(
        e["seq"]
        for e in alice.get(f"/v1/sessions/{sid}/log").json()["events"]
        if e["type"] == "run_queued"
    )
    with alice.stream(
        "GET", f"/v1/sessions/{sid}/events", params={"after_seq": first_seq - 1}
    ) as response:
        kinds = []
        for frame in sse_frames(response):
            if frame.data is None:
                continue
            kinds.append(frame.event)
            if frame.event == "run_completed":
                break
    assert kinds[0] == "run_queued"
    assert kinds[-1] == "run_completed"


def test_the_idempotency_key_header_answers_the_first_run_and_message(
    server: ServerProcess, alice: httpx.Client
) -> None:
    sid = new_session(alice, llm_config=SCRIPT)
    key = {"Idempotency-Key": "7d1c3f5e-run"}
    first = alice.post(f"/v1/sessions/{sid}/runs", json={"text": "go"}, headers=key)
    again = alice.post(f"/v1/sessions/{sid}/runs", json={"text": "go"}, headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json()["run_id"] == first.json()["run_id"]
    other = alice.post(f"/v1/sessions/{sid}/runs", json={"text": "stop"}, headers=key)
    assert problem_of(other, "invalid-argument", 422)["argument"] == "idempotency_key"
    both = alice.post(
        f"/v1/sessions/{sid}/runs",
        json={"text": "go", "idempotency_key": "another"},
        headers=key,
    )
    assert problem_of(both, "invalid-argument", 422)["argument"] == "idempotency_key"
    listed = alice.get(f"/v1/sessions/{sid}/runs").json()["runs"]
    assert [r["run_id"] for r in listed] == [first.json()["run_id"]]

    message_key = {"Idempotency-Key": "msg-1"}
    body = {"role": "user", "content": "note"}
    sent = alice.post(f"/v1/sessions/{sid}/messages", json=body, headers=message_key)
    resent = alice.post(f"/v1/sessions/{sid}/messages", json=body, headers=message_key)
    assert sent.status_code == resent.status_code == 201
    assert resent.json() == sent.json()
    notes = [
        m
        for m in alice.get(f"/v1/sessions/{sid}/messages").json()["messages"]
        if m["content"] == "note"
    ]
    assert len(notes) == 1
