"""``POST /v1/sessions/{id}/compact`` and ``GET .../messages?view=`` on a real ``jidoka serve``
(SQLite, tokens on): the answer's shape, the compacted and full views, a 422 naming the
argument, 409 while a turn runs, 404 for another principal's session (exactly as for one that
does not exist), and the route in the OpenAPI document.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.e2e.conftest import new_session, post_message, problem_of

NO_SUCH_SESSION = "01ZZZZZZZZZZZZZZZZZZZZZZZZ"


def scripted(*turns: dict[str, Any]) -> dict[str, Any]:
    return {"llm_config": {"provider": "scripted", "script": list(turns)}}


def test_compact_over_http(alice: httpx.Client) -> None:
    sid = new_session(alice, **scripted({"text": "alice asked three things"}))
    seqs = [post_message(alice, sid, f"question {i}") for i in range(4)]
    response = alice.post(f"/v1/sessions/{sid}/compact", json={"keep_last": 1})
    assert response.status_code == 200, response.text
    done = response.json()
    assert set(done) == {
        "seq", "summary", "first_seq", "last_seq", "tokens_before", "tokens_after",
    }  # fmt: skip
    assert done["summary"] == "alice asked three things"
    assert (done["first_seq"], done["last_seq"]) == (seqs[0], seqs[2])

    compacted = alice.get(f"/v1/sessions/{sid}/messages", params={"view": "compacted"})
    assert [(m["role"], m["content"]) for m in compacted.json()["messages"]] == [
        ("system", "alice asked three things"),
        ("user", "question 3"),
    ]
    full = alice.get(f"/v1/sessions/{sid}/messages").json()["messages"]
    assert [m["content"] for m in full] == [f"question {i}" for i in range(4)]
    context = alice.post(f"/v1/sessions/{sid}/context", json={}).json()
    assert context["summary"] == "alice asked three things"
    log = alice.get(f"/v1/sessions/{sid}/log", params={"after_seq": seqs[-1]}).json()["events"]
    assert [e["type"] for e in log] == ["agent_status", "context_compacted", "agent_status"]


def test_compact_validates_its_body(alice: httpx.Client) -> None:
    sid = new_session(alice, **scripted())
    post_message(alice, sid, "only one")
    bad = alice.post(f"/v1/sessions/{sid}/compact", json={"keep_last": -1})
    assert problem_of(bad, "invalid-argument", 422)["argument"] == "keep_last"
    unknown = alice.post(f"/v1/sessions/{sid}/compact", json={"keep": 1})
    assert unknown.status_code == 422
    nothing = alice.post(f"/v1/sessions/{sid}/compact", json={})
    problem = problem_of(nothing, "invalid-argument", 422, session_id=sid)
    assert problem["argument"] == "keep_last"
    view = alice.get(f"/v1/sessions/{sid}/messages", params={"view": "short"})
    assert view.status_code == 422


def test_another_principals_session_is_not_found(alice: httpx.Client, bob: httpx.Client) -> None:
    sid = new_session(alice, **scripted())
    for i in range(3):
        post_message(alice, sid, f"private {i}")
    for target in (sid, NO_SUCH_SESSION):
        response = bob.post(f"/v1/sessions/{target}/compact", json={"keep_last": 0})
        problem_of(response, "session-not-found", 404, session_id=target)
        history = bob.get(f"/v1/sessions/{target}/messages", params={"view": "compacted"})
        problem_of(history, "session-not-found", 404, session_id=target)
    log = alice.get(f"/v1/sessions/{sid}/log").json()["events"]
    assert "context_compacted" not in [e["type"] for e in log]


def test_compact_is_in_the_openapi_document(alice: httpx.Client) -> None:
    document = alice.get("/openapi.json").json()
    operation = document["paths"]["/v1/sessions/{session_id}/compact"]["post"]
    assert operation["operationId"] == "compact_session"
    assert "requestBody" in operation
    assert "200" in operation["responses"]
    history = document["paths"]["/v1/sessions/{session_id}/messages"]["get"]
    assert "view" in [p["name"] for p in history["parameters"]]
