"""Every route of docs/http-api.md against a real ``jidoka serve``: statuses, bodies, headers.

The route table of the doc is parsed and compared with the routes these tests drive, so a route
added to the doc without a test here fails :func:`test_every_documented_route_is_exercised`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    ALICE_TOKEN,
    CAROL_TOKEN,
    ServerProcess,
    http_client,
    problem_of,
    sse_frames,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "http-api.md"
_ROUTE_ROW = re.compile(r"^\| `(GET|POST|PUT|PATCH|DELETE) (/[^`?]+)")
SESSION_FIELDS = {
    "session_id", "status", "created_at", "updated_at", "metadata", "config", "llm_config",
    "conversation_count", "error", "reason", "project_root", "owner",
}  # fmt: skip
MESSAGE_FIELDS = {"id", "role", "content", "timestamp", "seq"}
SAVED_FIELDS = {"session_id", "saved_at", "message_count", "metadata", "owner"}
BUNDLE_FIELDS = {
    "messages", "files", "file_index", "working_context", "token_count", "max_tokens",
    "truncated", "omitted_messages",
}  # fmt: skip

#: What this module drives, by the doc's (method, path). The WebSocket has its own module.
EXERCISED = {
    ("POST", "/v1/sessions/{id}/chat"),
    ("POST", "/v1/sessions/{id}/cancel"),
    ("POST", "/v1/sessions/{id}/approvals/{call_id}"),
    ("POST", "/v1/sessions"),
    ("GET", "/v1/sessions"),
    ("GET", "/v1/sessions/{id}"),
    ("DELETE", "/v1/sessions/{id}"),
    ("POST", "/v1/sessions/{id}/messages"),
    ("GET", "/v1/sessions/{id}/messages"),
    ("DELETE", "/v1/sessions/{id}/messages"),
    ("GET", "/v1/sessions/{id}/log"),
    ("GET", "/v1/sessions/{id}/files"),
    ("POST", "/v1/sessions/{id}/files"),
    ("DELETE", "/v1/sessions/{id}/files"),
    ("GET", "/v1/sessions/{id}/file-index"),
    ("PATCH", "/v1/sessions/{id}/file-index"),
    ("GET", "/v1/sessions/{id}/working-context"),
    ("GET", "/v1/sessions/{id}/working-context/{key}"),
    ("PUT", "/v1/sessions/{id}/working-context/{key}"),
    ("DELETE", "/v1/sessions/{id}/working-context/{key}"),
    ("POST", "/v1/sessions/{id}/context"),
    ("POST", "/v1/sessions/{id}/save"),
    ("POST", "/v1/sessions/{id}/fork"),  # tests/e2e/test_isolation.py, test_verbs.py
    ("POST", "/v1/sessions/{id}/rewind"),  # tests/e2e/test_sse.py, test_isolation.py
    ("POST", "/v1/sessions/{id}/compact"),  # tests/e2e/test_compaction_http.py
    ("GET", "/v1/saved-sessions"),
    ("POST", "/v1/saved-sessions/{id}/restore"),
    ("DELETE", "/v1/saved-sessions/{id}"),
    ("GET", "/v1/sessions/{id}/events"),
    ("GET", "/v1/events"),
    ("POST", "/v1/stream-tickets"),  # tests/e2e/test_stream_tickets.py
    ("GET", "/v1/ws"),  # tests/e2e/test_websocket.py
    ("GET", "/v1/cluster"),
    ("POST", "/v1/mcp"),  # tests/e2e/test_mcp_server.py
    ("POST", "/v1/sessions/{id}/runs"),  # tests/e2e/test_runs_http.py, test_verbs.py
    ("GET", "/v1/sessions/{id}/runs"),
    ("GET", "/v1/sessions/{id}/runs/{run_id}"),
    ("GET", "/v1/sessions/{id}/runs/{run_id}/join"),
    ("POST", "/v1/sessions/{id}/runs/{run_id}/cancel"),
}


def doc_routes() -> set[tuple[str, str]]:
    routes = set()
    for line in DOC.read_text(encoding="utf-8").splitlines():
        match = _ROUTE_ROW.match(line)
        if match:
            routes.add((match.group(1), match.group(2).strip()))
    return routes


def rfc3339(value: str) -> datetime:
    assert value.endswith("Z") or value.endswith("+00:00"), value
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    offset = parsed.utcoffset()
    assert offset is not None
    assert offset.total_seconds() == 0
    return parsed


def check_session(body: dict[str, Any], *, owner: str = "alice") -> None:
    assert set(body) >= SESSION_FIELDS, sorted(body)  # documented fields (more may be added)
    assert isinstance(body["session_id"], str)
    assert body["session_id"]
    assert body["status"] in {"initializing", "active", "idle", "terminating", "terminated"}
    rfc3339(body["created_at"])
    rfc3339(body["updated_at"])
    assert body["owner"] == owner
    assert isinstance(body["config"], dict)
    assert "max_history" in body["config"]
    assert isinstance(body["conversation_count"], int)


def create(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/sessions", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


@pytest.fixture
def sid(alice: httpx.Client) -> str:
    session_id: str = create(alice, metadata={"test": "routes"})["session_id"]
    return session_id


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text("def main():\n    return 42\n", encoding="utf-8")
    (root / "README.md").write_text("# demo\n", encoding="utf-8")
    return root


@pytest.fixture
def carol(server: ServerProcess) -> Iterator[httpx.Client]:
    with http_client(server.url, CAROL_TOKEN) as client:
        yield client


def test_every_documented_route_is_exercised() -> None:
    routes = doc_routes()
    assert len(routes) >= 24, routes  # the parser found the table
    assert routes == EXERCISED


# --- sessions -----------------------------------------------------------------------------------


def test_create_session_answers_201_with_location(alice: httpx.Client) -> None:
    body = {
        "metadata": {"project": "demo", "n": 1},
        "config": {"max_history": 7},
        "llm_config": {"model": "m"},
    }
    response = alice.post("/v1/sessions", json=body)
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/json"
    created = response.json()
    check_session(created)
    assert created["status"] == "active"
    assert created["metadata"] == body["metadata"]
    assert created["llm_config"] == body["llm_config"]
    assert created["config"]["max_history"] == 7
    assert created["conversation_count"] == 0
    assert created["reason"] is None
    assert created["error"] is None
    assert response.headers["location"] == f"/v1/sessions/{created['session_id']}"
    again = alice.get(response.headers["location"])
    assert again.status_code == 200
    assert again.json()["session_id"] == created["session_id"]


def test_create_session_with_no_body(alice: httpx.Client) -> None:
    response = alice.post("/v1/sessions")
    assert response.status_code == 201, response.text
    check_session(response.json())
    assert response.json()["metadata"] == {}


def test_get_session(alice: httpx.Client, sid: str) -> None:
    response = alice.get(f"/v1/sessions/{sid}")
    assert response.status_code == 200
    body = response.json()
    check_session(body)
    assert body["session_id"] == sid
    assert body["metadata"] == {"test": "routes"}


def test_terminate_session_with_reason_then_twice_then_send(alice: httpx.Client, sid: str) -> None:
    response = alice.delete(f"/v1/sessions/{sid}", params={"reason": "done-here"})
    assert response.status_code == 200, response.text
    body = response.json()
    check_session(body)
    assert body["status"] == "terminated"
    assert body["reason"] == "done-here"
    # Still described after termination.
    assert alice.get(f"/v1/sessions/{sid}").json()["status"] == "terminated"
    again = alice.delete(f"/v1/sessions/{sid}")
    problem = problem_of(again, "invalid-transition", 409, session_id=sid)
    assert problem["from_status"] == "terminated"
    sent = alice.post(f"/v1/sessions/{sid}/messages", json={"role": "user", "content": "x"})
    problem = problem_of(sent, "session-terminated", 409, session_id=sid)
    assert problem["reason"] == "done-here"


def test_purge_session_removes_it_and_says_so_on_the_global_stream(
    alice: httpx.Client, sid: str
) -> None:
    """``DELETE ?purge=true``: 204, then the session is not found (nor a second purge); the
    flag takes no other parameter and only ``true``/``false``; ``purge=false`` terminates."""
    mixed = alice.delete(f"/v1/sessions/{sid}", params={"purge": "true", "reason": "x"})
    assert problem_of(mixed, "invalid-argument", 422)["argument"] == "reason"
    bad = alice.delete(f"/v1/sessions/{sid}", params={"purge": "maybe"})
    assert problem_of(bad, "invalid-argument", 422)["argument"] == "purge"
    assert alice.get(f"/v1/sessions/{sid}").json()["status"] in ("active", "initializing")
    with alice.stream("GET", "/v1/events") as stream:
        frames = sse_frames(stream)
        assert next(frames).comment == "ok"
        response = alice.delete(f"/v1/sessions/{sid}", params={"purge": "true"})
        assert response.status_code == 204, response.text
        assert response.content == b""
        for frame in frames:
            if frame.data is None:
                continue
            event = frame.json()
            if event["type"] == "session_purged" and event["session_id"] == sid:
                assert event["data"] == {"reason": "requested", "owner": "alice"}
                break
    problem_of(alice.get(f"/v1/sessions/{sid}"), "session-not-found", 404, session_id=sid)
    again = alice.delete(f"/v1/sessions/{sid}", params={"purge": "true"})
    problem_of(again, "session-not-found", 404, session_id=sid)
    other = create(alice)["session_id"]
    ended = alice.delete(f"/v1/sessions/{other}", params={"purge": "false"})
    assert (ended.status_code, ended.json()["status"]) == (200, "terminated")


def test_terminate_without_reason_says_requested(alice: httpx.Client, sid: str) -> None:
    body = alice.delete(f"/v1/sessions/{sid}").json()
    assert body["status"] == "terminated"
    assert body["reason"] == "requested"


def test_list_sessions_pages_with_a_cursor(carol: httpx.Client) -> None:
    created = {create(carol, metadata={"i": i})["session_id"] for i in range(5)}
    seen: list[str] = []
    pages: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(10):  # a bound, in case the cursor never ends
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        response = carol.get("/v1/sessions", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"sessions", "next_cursor"}
        pages.append(page)
        for info in page["sessions"]:
            check_session(info, owner="carol")
        seen += [info["session_id"] for info in page["sessions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(p["sessions"]) for p in pages] == [2, 2, 1]
    assert pages[-1]["next_cursor"] is None
    assert all(isinstance(p["next_cursor"], str) for p in pages[:-1])
    assert len(seen) == len(set(seen)), "a session appeared on two pages"
    assert set(seen) == created
    # The default page holds them all; a status filter narrows it.
    everything = carol.get("/v1/sessions").json()
    assert {s["session_id"] for s in everything["sessions"]} == created
    assert everything["next_cursor"] is None
    ended = sorted(created)[0]
    assert carol.delete(f"/v1/sessions/{ended}").status_code == 200
    terminated = carol.get("/v1/sessions", params={"status": "terminated"}).json()["sessions"]
    active = carol.get("/v1/sessions", params={"status": "active"}).json()["sessions"]
    assert ended in {s["session_id"] for s in terminated}
    assert all(s["status"] == "terminated" for s in terminated)
    assert {s["session_id"] for s in active} == created - {ended}


# --- messages -----------------------------------------------------------------------------------


def test_messages_send_list_clear(alice: httpx.Client, sid: str) -> None:
    sent = []
    for i, role in enumerate(["user", "assistant", "system"]):
        response = alice.post(
            f"/v1/sessions/{sid}/messages", json={"role": role, "content": f"m{i} ünï"}
        )
        assert response.status_code == 201, response.text
        message = response.json()
        assert set(message) >= MESSAGE_FIELDS
        assert message["role"] == role
        assert message["content"] == f"m{i} ünï"
        assert isinstance(message["seq"], int)
        rfc3339(message["timestamp"])
        sent.append(message)
    assert [m["seq"] for m in sent] == sorted({m["seq"] for m in sent})
    history = alice.get(f"/v1/sessions/{sid}/messages")
    assert history.status_code == 200
    assert history.json() == {"messages": sent}
    assert alice.get(f"/v1/sessions/{sid}").json()["conversation_count"] == 3
    cleared = alice.delete(f"/v1/sessions/{sid}/messages")
    assert cleared.status_code == 200
    assert cleared.json() == {"cleared": 3}
    assert alice.get(f"/v1/sessions/{sid}/messages").json() == {"messages": []}
    assert alice.delete(f"/v1/sessions/{sid}/messages").json() == {"cleared": 0}


def test_the_log_reads_in_pages_and_outlives_the_session(alice: httpx.Client, sid: str) -> None:
    for i in range(5):
        assert alice.post(f"/v1/sessions/{sid}/messages", json={"role": "user", "content": f"m{i}"})
    pages, after = [], 0
    while page := alice.get(f"/v1/sessions/{sid}/log", params={"after_seq": after, "limit": 2}):
        assert page.status_code == 200, page.text
        events = page.json()["events"]
        if not events:
            break
        assert len(events) <= 2
        pages.append(events)
        after = events[-1]["seq"]
    seqs = [e["seq"] for events in pages for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [
        e["data"]["content"] for p in pages for e in p if e["type"] == "conversation_added"
    ] == [f"m{i}" for i in range(5)]
    assert {e["session_id"] for p in pages for e in p} == {sid}
    assert alice.delete(f"/v1/sessions/{sid}").status_code == 200
    after_end = alice.get(f"/v1/sessions/{sid}/log", params={"after_seq": seqs[-1]}).json()
    assert [e["type"] for e in after_end["events"]][-1] == "session_terminated"
    bad = alice.get(f"/v1/sessions/{sid}/log", params={"limit": 0})
    assert bad.status_code == 422
    assert bad.json()["argument"] == "limit"


# --- files and the file index -------------------------------------------------------------------


def test_files_and_file_index(alice: httpx.Client, project: Path) -> None:
    sid = create(alice, project_root=str(project))["session_id"]
    assert alice.get(f"/v1/sessions/{sid}/files").json() == {"files": []}
    added = alice.post(f"/v1/sessions/{sid}/files", json={"path": "src/app.py"})
    assert added.status_code == 201, added.text
    active = added.json()
    assert set(active) >= {"path", "added_at", "seq"}
    assert active["path"] == "src/app.py"
    rfc3339(active["added_at"])
    files = alice.get(f"/v1/sessions/{sid}/files")
    assert files.status_code == 200
    assert files.json() == {"files": [active]}

    index = alice.get(f"/v1/sessions/{sid}/file-index")
    assert index.status_code == 200
    assert set(index.json()) == {"entries"}
    assert "src/app.py" in {e["path"] for e in index.json()["entries"]}

    patched = alice.patch(
        f"/v1/sessions/{sid}/file-index",
        json={"path": "README.md", "fields": {"language": "markdown", "owner_team": "docs"}},
    )
    assert patched.status_code == 200, patched.text
    entry = patched.json()
    assert entry["path"] == "README.md"
    assert entry["language"] == "markdown"
    assert entry["extra"] == {"owner_team": "docs"}
    entries = {e["path"]: e for e in alice.get(f"/v1/sessions/{sid}/file-index").json()["entries"]}
    assert entries["README.md"] == entry

    removed = alice.delete(f"/v1/sessions/{sid}/files", params={"path": "src/app.py"})
    assert removed.status_code == 200
    assert removed.json() == {"removed": True}
    again = alice.delete(f"/v1/sessions/{sid}/files", params={"path": "src/app.py"})
    assert again.json() == {"removed": False}
    assert alice.get(f"/v1/sessions/{sid}/files").json() == {"files": []}


def test_remove_file_needs_a_path(alice: httpx.Client, sid: str) -> None:
    problem = problem_of(alice.delete(f"/v1/sessions/{sid}/files"), "invalid-argument", 422)
    assert problem["argument"] == "path"


# --- working context ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["plain", "notes/2024/plan.md", "a/b/c/d", "dots.and-dashes_x"])
def test_working_context_keys_with_slashes(alice: httpx.Client, sid: str, key: str) -> None:
    value = {"list": [1, 2, {"x": None}], "text": "ünï/côdé"}
    put = alice.put(f"/v1/sessions/{sid}/working-context/{key}", json={"value": value})
    assert put.status_code == 200, put.text
    assert put.json() == {"key": key, "value": value}
    got = alice.get(f"/v1/sessions/{sid}/working-context/{key}")
    assert got.status_code == 200
    assert got.json() == {"key": key, "value": value}
    whole = alice.get(f"/v1/sessions/{sid}/working-context")
    assert whole.status_code == 200
    assert whole.json() == {"working_context": {key: value}}
    # null is a value like any other
    assert alice.put(f"/v1/sessions/{sid}/working-context/{key}", json={"value": None}).json() == {
        "key": key,
        "value": None,
    }
    assert alice.get(f"/v1/sessions/{sid}/working-context/{key}").json()["value"] is None
    deleted = alice.delete(f"/v1/sessions/{sid}/working-context/{key}")
    assert deleted.status_code == 200
    assert deleted.json() == {"deleted": True}
    assert alice.delete(f"/v1/sessions/{sid}/working-context/{key}").json() == {"deleted": False}
    missing = alice.get(f"/v1/sessions/{sid}/working-context/{key}")
    problem = problem_of(missing, "working-context-key-not-found", 404, session_id=sid)
    assert problem["key"] == key
    assert alice.get(f"/v1/sessions/{sid}/working-context").json() == {"working_context": {}}


# --- context ------------------------------------------------------------------------------------


def test_build_context(alice: httpx.Client, sid: str) -> None:
    alice.post(f"/v1/sessions/{sid}/messages", json={"role": "user", "content": "hello there"})
    alice.put(f"/v1/sessions/{sid}/working-context/goal", json={"value": "ship it"})
    full = alice.post(f"/v1/sessions/{sid}/context")
    assert full.status_code == 200, full.text
    bundle = full.json()
    assert set(bundle) >= BUNDLE_FIELDS
    assert [m["content"] for m in bundle["messages"]] == ["hello there"]
    assert bundle["working_context"] == {"goal": "ship it"}
    assert bundle["token_count"] > 0
    narrow = alice.post(
        f"/v1/sessions/{sid}/context", json={"include": ["conversation"], "max_tokens": 1000}
    )
    assert narrow.status_code == 200, narrow.text
    assert narrow.json()["max_tokens"] == 1000
    assert narrow.json()["working_context"] == {}
    assert [m["content"] for m in narrow.json()["messages"]] == ["hello there"]


# --- saved sessions -----------------------------------------------------------------------------


def test_save_restore_delete(alice: httpx.Client, sid: str) -> None:
    alice.post(f"/v1/sessions/{sid}/messages", json={"role": "user", "content": "keep me"})
    saved = alice.post(f"/v1/sessions/{sid}/save")
    assert saved.status_code == 201, saved.text
    summary = saved.json()
    assert set(summary) >= SAVED_FIELDS
    assert summary["session_id"] == sid
    assert summary["message_count"] == 1
    assert summary["metadata"] == {"test": "routes"}
    assert summary["owner"] == "alice"
    rfc3339(summary["saved_at"])
    listed = alice.get("/v1/saved-sessions")
    assert listed.status_code == 200
    assert set(listed.json()) == {"saved_sessions"}
    assert summary in listed.json()["saved_sessions"]

    # A live session cannot be restored over; a terminated one comes back with its messages.
    problem_of(alice.post(f"/v1/saved-sessions/{sid}/restore"), "session-exists", 409)
    assert alice.delete(f"/v1/sessions/{sid}").status_code == 200
    restored = alice.post(f"/v1/saved-sessions/{sid}/restore")
    assert restored.status_code == 200, restored.text
    info = restored.json()
    check_session(info)
    assert info["session_id"] == sid
    assert info["status"] == "active"
    history = alice.get(f"/v1/sessions/{sid}/messages").json()["messages"]
    assert [m["content"] for m in history] == ["keep me"]
    # Still usable after the restore.
    more = alice.post(f"/v1/sessions/{sid}/messages", json={"role": "user", "content": "more"})
    assert more.status_code == 201

    deleted = alice.delete(f"/v1/saved-sessions/{sid}")
    assert deleted.status_code == 204
    assert deleted.content == b""
    problem_of(alice.delete(f"/v1/saved-sessions/{sid}"), "session-not-found", 404)
    problem_of(alice.post(f"/v1/saved-sessions/{sid}/restore"), "session-not-found", 404)
    saved_ids = {s["session_id"] for s in alice.get("/v1/saved-sessions").json()["saved_sessions"]}
    assert sid not in saved_ids


# --- event streams (details in test_sse.py) -----------------------------------------------------


def test_session_events_stream(alice: httpx.Client, sid: str) -> None:
    with alice.stream("GET", f"/v1/sessions/{sid}/events", params={"after_seq": 0}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-request-id"]
        frames = sse_frames(response)
        first = next(f for f in frames if f.comment is None)
    assert first.id == "1"
    assert first.event == "session_created"
    event = first.json()
    assert event["session_id"] == sid
    assert event["seq"] == 1
    assert event["type"] == "session_created"


def test_global_events_stream(alice: httpx.Client) -> None:
    with alice.stream("GET", "/v1/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = sse_frames(response)
        assert next(frames).comment == "ok"  # the stream is open: created events come next
        sid = create(alice)["session_id"]
        frame = next(f for f in frames if f.comment is None)
    assert frame.event == "session_created"
    assert frame.id == f"{sid}-1"
    assert frame.json()["session_id"] == sid


# --- request ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given", ["my-request.id:42", "A" * 128, "3b43364b-806b-4c6b-a58a-6b4bfd553576"]
)
def test_sane_request_id_is_echoed(alice: httpx.Client, given: str) -> None:
    response = alice.get("/v1/sessions", headers={"X-Request-ID": given})
    assert response.headers["x-request-id"] == given
    missing = alice.get("/v1/sessions/nope", headers={"X-Request-ID": given})
    assert problem_of(missing, "session-not-found", 404)["request_id"] == given


@pytest.mark.parametrize(
    "garbage", ["has spaces", "semi;colon", "A" * 129, 'quote"d', "tab\there", "é"]
)
def test_garbage_request_id_is_replaced(alice: httpx.Client, garbage: str) -> None:
    response = alice.get("/v1/sessions/nope", headers={b"X-Request-ID": garbage.encode()})
    replaced = response.headers["x-request-id"]
    assert replaced != garbage
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", replaced)
    assert problem_of(response, "session-not-found", 404)["request_id"] == replaced


def test_request_id_is_new_per_request(alice: httpx.Client, anonymous: httpx.Client) -> None:
    ids = {alice.get("/v1/sessions").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5
    # Public routes and refusals carry one too.
    assert anonymous.get("/healthz").headers["x-request-id"]
    assert anonymous.get("/v1/sessions").headers["x-request-id"]


# --- public routes ------------------------------------------------------------------------------


def test_healthz(anonymous: httpx.Client) -> None:
    response = anonymous.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz(anonymous: httpx.Client) -> None:
    response = anonymous.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "store": "ok", "bus": "memory"}


def test_a_single_node_is_no_cluster(alice: httpx.Client, anonymous: httpx.Client) -> None:
    response = alice.get("/v1/cluster")
    assert response.status_code == 200, response.text
    assert response.json() == {"node_id": None, "lease_ttl": None, "nodes": []}
    assert anonymous.get("/v1/cluster").status_code == 401


def test_metrics(alice: httpx.Client, anonymous: httpx.Client) -> None:
    create(alice)
    alice.get("/v1/sessions")
    response = anonymous.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    created = re.search(r"^jidoka_sessions_created_total(\{[^}]*\})? (\S+)$", text, re.M)
    assert created, text[:2000]
    assert float(created.group(2)) >= 1
    requests = re.findall(
        r"^http_server_request_duration_seconds_count\{([^}]*)\} (\S+)$", text, re.M
    )
    assert requests, text[:2000]
    labels = " ".join(label for label, _ in requests)
    assert 'http_route="/v1/sessions"' in labels
    assert 'http_request_method="POST"' in labels
    assert 'http_response_status_code="201"' in labels
    assert "# TYPE http_server_request_duration_seconds histogram" in text


def test_openapi_document(anonymous: httpx.Client) -> None:
    response = anonymous.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document = response.json()
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"]
    paths = document["paths"]
    for method, path in doc_routes():
        if path == "/v1/ws":
            continue  # a WebSocket: OpenAPI has no way to describe it
        if path == "/v1/mcp":
            continue  # JSON-RPC (MCP): the protocol describes it, tools/list its tools
        template = path.replace("{id}", "{session_id}")
        assert template in paths, f"{method} {path} is documented but not in /openapi.json"
        assert method.lower() in paths[template], f"{method} {path} missing from /openapi.json"
    assert "bearer" in document["components"]["securitySchemes"]


def test_docs_page(anonymous: httpx.Client) -> None:
    response = anonymous.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<html" in response.text.lower()
    assert "/openapi.json" in response.text


# --- restart ------------------------------------------------------------------------------------


def test_everything_survives_a_graceful_restart(make_server: Any) -> None:
    server = make_server()
    with http_client(server.url, ALICE_TOKEN) as client:
        sid = create(client, metadata={"keep": True})["session_id"]
        client.post(f"/v1/sessions/{sid}/messages", json={"role": "user", "content": "durable"})
        client.put(f"/v1/sessions/{sid}/working-context/a/b", json={"value": {"x": 1}})
        assert client.post(f"/v1/sessions/{sid}/save").status_code == 201
        ended = create(client)["session_id"]
        assert client.delete(f"/v1/sessions/{ended}").status_code == 200
    assert server.stop() == 0
    server.start()  # same data directory, same tokens, a new port
    with http_client(server.url, ALICE_TOKEN) as client:
        info = client.get(f"/v1/sessions/{sid}").json()
        assert info["metadata"] == {"keep": True}
        assert info["status"] in ("active", "idle")
        history = client.get(f"/v1/sessions/{sid}/messages").json()["messages"]
        assert [m["content"] for m in history] == ["durable"]
        value = client.get(f"/v1/sessions/{sid}/working-context/a/b").json()
        assert value == {"key": "a/b", "value": {"x": 1}}
        saved = client.get("/v1/saved-sessions").json()["saved_sessions"]
        assert sid in {s["session_id"] for s in saved}
        live = {s["session_id"] for s in client.get("/v1/sessions").json()["sessions"]}
        assert sid in live
        sent = client.post(f"/v1/sessions/{sid}/messages", json={"role": "user", "content": "more"})
        assert sent.status_code == 201
        assert sent.json()["seq"] > history[-1]["seq"]


def _events_until(
    client: httpx.Client, sid: str, after: int, stop: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """The session's events after ``after``, read from its stream until ``stop(event)``."""
    seen: list[dict[str, Any]] = []
    headers = {"Last-Event-ID": str(after)}
    with client.stream("GET", f"/v1/sessions/{sid}/events", headers=headers) as response:
        assert response.status_code == 200
        for frame in sse_frames(response):
            if frame.data is None:
                continue
            event = frame.json()
            seen.append(event)
            if stop(event):
                return seen
    raise AssertionError(f"stream ended before the expected event: {seen}")


def _turn_over(event: dict[str, Any]) -> bool:
    return event["type"] == "agent_status" and event["data"]["status"] in (
        "idle", "cancelled", "failed",
    )  # fmt: skip


def test_chat_with_an_approved_write_then_wait_then_cancel(
    alice: httpx.Client, project: Path
) -> None:
    write = {"path": "src/app.py", "content": "def main():\n    return 43\n"}
    script = [
        {"chunks": ["Changing ", "it."],
         "tool_calls": [{"id": "w1", "name": "write_file", "arguments": write}]},
        {"text": "Done.", "usage": {"prompt_tokens": 9, "completion_tokens": 2}},
        {"text": "Second answer."},
        {"chunks": ["stuck"], "hang": True},
    ]  # fmt: skip
    session = create(
        alice,
        project_root=str(project),
        config={"allow_write": "ask"},
        llm_config={"provider": "scripted", "script": script},
    )
    sid = session["session_id"]

    accepted = alice.post(f"/v1/sessions/{sid}/chat", json={"text": "bump it"})
    assert accepted.status_code == 202, accepted.text
    assert accepted.json() == {"session_id": sid, "events": f"/v1/sessions/{sid}/events"}
    assert accepted.headers["location"] == f"/v1/sessions/{sid}/events"
    asked = _events_until(alice, sid, 2, lambda e: e["type"] == "approval_requested")[-1]
    assert asked["data"]["call_id"] == "w1"
    assert "+    return 43" in asked["data"]["diff"]
    approved = alice.post(f"/v1/sessions/{sid}/approvals/w1", json={"allow": True})
    assert approved.status_code == 204, approved.text
    turn = _events_until(alice, sid, asked["seq"], _turn_over)
    assert turn[-1]["data"]["status"] == "idle"
    assert [e["type"] for e in turn][:2] == ["approval_decided", "tool_result"]
    assert (project / "src" / "app.py").read_text() == "def main():\n    return 43\n"
    again = alice.post(f"/v1/sessions/{sid}/approvals/w1", json={"allow": True})
    assert again.status_code == 422
    assert again.json()["argument"] == "call_id"

    waited = alice.post(f"/v1/sessions/{sid}/chat?wait=true", json={"text": "and now?"})
    assert waited.status_code == 200, waited.text
    result = waited.json()
    assert result["message"]["content"] == "Second answer."
    assert result["interrupted"] is False
    assert set(result) == {"message", "usage", "interrupted", "iterations", "finish_reason"}
    info = alice.get(f"/v1/sessions/{sid}").json()
    assert info["usage"]["completion_tokens"] >= 2

    assert alice.post(f"/v1/sessions/{sid}/cancel").json() == {"cancelled": False}
    last = info["updated_at"]
    assert last
    seq = alice.get(f"/v1/sessions/{sid}/messages").json()["messages"][-1]["seq"]
    assert alice.post(f"/v1/sessions/{sid}/chat", json={"text": "hang"}).status_code == 202
    chunk = _events_until(alice, sid, seq, lambda e: e["type"] == "llm_stream_chunk")[-1]
    assert chunk["data"]["text"] == "stuck"
    assert alice.post(f"/v1/sessions/{sid}/cancel").json() == {"cancelled": True}
    turn = _events_until(alice, sid, chunk["seq"], _turn_over)
    assert turn[-1]["data"]["status"] == "cancelled"
    assert [e["type"] for e in turn] == [
        "conversation_added", "llm_response", "agent_status",
    ]  # fmt: skip
    assert turn[1]["data"]["interrupted"] is True
    assert alice.post(f"/v1/sessions/{sid}/chat", json={}).status_code == 422
