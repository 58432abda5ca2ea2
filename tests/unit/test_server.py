"""The server's parts in process: auth, limits, config, framing, middleware, OpenAPI, metrics.

Requests go through the real app with httpx's ASGI transport (no socket); the end-to-end tests in
tests/e2e drive a real server process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

import jidoka
from jidoka.errors import InvalidConfig, LimitExceeded, Unauthorized
from jidoka.events import Event, EventType
from jidoka.server.app import create_app
from jidoka.server.auth import Authenticator, InflightLimiter
from jidoka.server.config import ServerConfig, load_tokens
from jidoka.server.metrics import PrometheusMetrics
from jidoka.server.openapi import openapi_document
from jidoka.server.routes import ROUTES
from jidoka.server.streams import sse_frame

ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789ab"
JSON = {"Content-Type": "application/json"}


# --- auth and limits -----------------------------------------------------------------------------


def test_bearer_tokens_map_to_principals() -> None:
    auth = Authenticator({ALICE: "alice", BOB: "bob"})
    assert auth.principal(f"Bearer {ALICE}") == "alice"
    assert auth.principal(f"bearer  {BOB} ") == "bob"
    for header in (None, "", "Bearer", f"Basic {ALICE}", "Bearer nope", f"Bearer {ALICE}x"):
        with pytest.raises(Unauthorized):
            auth.principal(header)


def test_disabled_auth_has_one_anonymous_principal() -> None:
    auth = Authenticator({}, enabled=False)
    assert auth.principal(None) is None
    assert auth.check_token("anything") is None


def test_inflight_limit_is_per_principal() -> None:
    limiter = InflightLimiter(2)
    limiter.acquire("a")
    limiter.acquire("a")
    limiter.acquire("b")
    with pytest.raises(LimitExceeded) as caught:
        limiter.acquire("a")
    assert caught.value.limit == "max_inflight_requests"
    assert caught.value.maximum == 2
    limiter.release("a")
    limiter.acquire("a")
    assert limiter.inflight("a") == 2
    for _ in range(3):
        limiter.release("a")
    assert limiter.inflight("a") == 0


# --- config --------------------------------------------------------------------------------------


def test_non_loopback_without_tokens_is_refused() -> None:
    with pytest.raises(InvalidConfig, match="insecure-no-auth") as caught:
        ServerConfig(host="0.0.0.0")
    assert caught.value.field == "host"
    assert ServerConfig(host="0.0.0.0", insecure_no_auth=True).auth_enabled is False
    assert ServerConfig(host="0.0.0.0", tokens={ALICE: "alice"}).is_loopback is False
    assert ServerConfig(host="::1").is_loopback
    assert ServerConfig(host="localhost").is_loopback


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"port": 70000}, "port"),
        ({"max_body_bytes": 0}, "max_body_bytes"),
        ({"max_inflight": 0}, "max_inflight"),
        ({"heartbeat_seconds": 0.0}, "heartbeat_seconds"),
        ({"shutdown_timeout": float("inf")}, "shutdown_timeout"),
        ({"tokens": {"short": "alice"}}, "tokens"),
        ({"tokens": {ALICE: ""}}, "tokens"),
    ],
)
def test_bad_server_config_names_the_field(values: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        ServerConfig(**values)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_config_from_environment_and_flags() -> None:
    env = {
        "JIDOKA_TOKENS": json.dumps({ALICE: "alice"}),
        "JIDOKA_PORT": "9000",
        "JIDOKA_CORS_ORIGINS": "https://a.example, https://b.example",
        "JIDOKA_MAX_INFLIGHT": "8",
    }
    config = ServerConfig.from_env(env, port=9001)
    assert config.tokens == {ALICE: "alice"}
    assert config.port == 9001
    assert config.cors_origins == ("https://a.example", "https://b.example")
    assert config.max_inflight == 8
    with pytest.raises(InvalidConfig, match="JIDOKA_TOKENS is not valid JSON"):
        ServerConfig.from_env({"JIDOKA_TOKENS": "{nope"})
    with pytest.raises(InvalidConfig, match="JSON object"):
        ServerConfig.from_env({"JIDOKA_TOKENS": '["a"]'})
    with pytest.raises(InvalidConfig, match="JIDOKA_PORT"):
        ServerConfig.from_env({"JIDOKA_PORT": "eighty"})


def test_tokens_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({ALICE: "alice"}), encoding="utf-8")
    assert load_tokens(path) == {ALICE: "alice"}
    with pytest.raises(InvalidConfig, match=r"missing\.json"):
        load_tokens(tmp_path / "missing.json")


# --- framing -------------------------------------------------------------------------------------


def test_sse_frames_carry_the_seq_or_the_event_id() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    event = Event(EventType.CONVERSATION_ADDED, "S1", 7, when, {"role": "user"})
    frame = sse_frame(event, by_seq=True).decode()
    assert frame.startswith("id: 7\nevent: conversation_added\ndata: {")
    assert frame.endswith("}\n\n")
    assert json.loads(frame.split("data: ", 1)[1])["seq"] == 7
    assert sse_frame(event, by_seq=False).startswith(b"id: S1-7\n")
    marker = Event(EventType.EVENTS_DROPPED, "", 0, when, {"count": 3})
    assert sse_frame(marker, by_seq=False).startswith(b"event: events_dropped\n")


# --- the app in process --------------------------------------------------------------------------


@pytest.fixture
def metrics() -> Iterator[PrometheusMetrics]:
    """Made outside the loop: the SDK takes locks while it sets up."""
    metrics = PrometheusMetrics()
    yield metrics
    metrics.shutdown()


@pytest.fixture
async def api(
    metrics: PrometheusMetrics,
) -> AsyncIterator[tuple[httpx.AsyncClient, PrometheusMetrics]]:
    async with jidoka.Runtime(store="memory", meter_provider=metrics.meter_provider) as rt:
        config = ServerConfig(
            tokens={ALICE: "alice", BOB: "bob"}, max_body_bytes=4096, max_inflight=1
        )
        app = create_app(rt, config, metrics=metrics)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        headers = {"Authorization": f"Bearer {ALICE}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://localhost", headers=headers
        ) as http:
            yield http, metrics


async def test_request_ids_are_echoed_or_made(
    api: tuple[httpx.AsyncClient, PrometheusMetrics],
) -> None:
    http, _ = api
    response = await http.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    response = await http.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    made = response.headers["x-request-id"]
    assert made != "bad id\twith spaces"
    assert len(made) == 22
    again = (await http.get("/healthz")).headers["x-request-id"]
    assert again != made
    assert again[:12] == made[:12]  # one random prefix per process, then a counter


async def test_body_over_the_limit_is_413_by_header_or_by_stream(
    api: tuple[httpx.AsyncClient, PrometheusMetrics],
) -> None:
    http, _ = api
    big = json.dumps({"metadata": {"x": "y" * 5000}}).encode()
    response = await http.post("/v1/sessions", content=big)
    assert response.status_code == 413
    problem = response.json()
    assert problem["limit"] == "max_request_bytes"
    assert problem["maximum"] == 4096

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for _ in range(10):
            yield b" " * 1000

    response = await http.post("/v1/sessions", content=chunks(), headers=JSON)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert (await http.get("/v1/sessions")).json()["sessions"] == []


async def test_too_many_requests_in_flight_is_429_with_retry_after(
    api: tuple[httpx.AsyncClient, PrometheusMetrics],
) -> None:
    http, _ = api
    release = asyncio.Event()
    started = asyncio.Event()

    async def held_body() -> AsyncIterator[bytes]:
        started.set()
        await release.wait()
        yield b"{}"

    held = asyncio.create_task(http.post("/v1/sessions", content=held_body(), headers=JSON))
    await started.wait()
    response = await http.get("/v1/sessions")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json()["limit"] == "max_inflight_requests"
    other = await http.get("/v1/sessions", headers={"Authorization": f"Bearer {BOB}"})
    assert other.status_code == 200  # the bound is per principal
    release.set()
    assert (await held).status_code == 201
    assert (await http.get("/v1/sessions")).status_code == 200


async def test_metrics_expose_runtime_and_http_series(
    api: tuple[httpx.AsyncClient, PrometheusMetrics],
) -> None:
    http, _ = api
    assert (await http.post("/v1/sessions", json={})).status_code == 201
    text = (await http.get("/metrics")).text
    assert "jidoka_sessions_created_total 1.0" in text
    # OpenTelemetry's HTTP semantic conventions: the metric's name and its attributes.
    assert (
        'http_server_request_duration_seconds_count{http_request_method="POST",'
        'http_response_status_code="201",http_route="/v1/sessions",url_scheme="http"} 1.0'
    ) in text
    assert "http_server_request_duration_seconds_bucket" in text
    # A 404 is labelled without its path (the label set stays bounded), and so is a method
    # nobody knows.
    assert (await http.request("BREW", "/v1/nowhere/1234")).status_code == 404
    text = (await http.get("/metrics")).text
    assert (
        'http_request_method="_OTHER",http_response_status_code="404",http_route="unmatched"'
        in text
    )
    assert "nowhere" not in text  # (not "1234": a duration's digits may hold it)


async def test_unexpected_errors_are_500_problems_without_a_traceback(
    api: tuple[httpx.AsyncClient, PrometheusMetrics],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    http, _ = api
    from jidoka.client import Client

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom: internal detail")

    monkeypatch.setattr(Client, "list_saved_sessions", broken)
    response = await http.get("/v1/saved-sessions")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert "boom" not in response.text
    assert "Traceback" not in response.text
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert "boom: internal detail" in caplog.text


async def test_a_held_request_on_a_path_ending_in_events_counts_as_in_flight(
    api: tuple[httpx.AsyncClient, PrometheusMetrics],
) -> None:
    """``PUT .../working-context/x/events`` is no event stream: held open, it takes the
    principal's one slot (``max_inflight=1``) like any request."""
    http, _ = api
    sid = (await http.post("/v1/sessions", json={})).json()["session_id"]
    release = asyncio.Event()
    started = asyncio.Event()

    async def held_body() -> AsyncIterator[bytes]:
        started.set()
        await release.wait()
        yield b'{"value": 1}'

    path = f"/v1/sessions/{sid}/working-context/x/events"
    held = asyncio.create_task(
        http.put(path, content=held_body(), headers={"Content-Type": "application/json"})
    )
    await started.wait()
    refused = await http.get("/v1/sessions")
    assert refused.status_code == 429, refused.text
    assert refused.json()["limit"] == "max_inflight_requests"
    release.set()
    assert (await held).json() == {"key": "x/events", "value": 1}
    assert (await http.get("/v1/sessions")).status_code == 200


# --- OpenAPI -------------------------------------------------------------------------------------


def test_openapi_describes_every_route_with_resolvable_schemas() -> None:
    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    schemas = document["components"]["schemas"]
    for spec in ROUTES:
        path = spec.path.replace("{key:path}", "{key}")
        operation = document["paths"][path][spec.method.lower()]
        assert operation["operationId"] == spec.name
        if spec.response is not None:
            ref = operation["responses"][str(spec.status)]["content"]["application/json"]
            assert ref["schema"]["$ref"].rsplit("/", 1)[1] in schemas
    text = json.dumps(document)
    for name in text.split('"#/components/schemas/')[1:]:
        assert name.split('"', 1)[0] in schemas
    assert "/v1/sessions/{session_id}/events" in document["paths"]


async def test_projects_dir_confines_project_roots(tmp_path: Path) -> None:
    (tmp_path / "projects" / "web").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    async with jidoka.Runtime(store="memory") as rt:
        config = ServerConfig(tokens={ALICE: "alice"}, projects_dir=str(tmp_path / "projects"))
        transport = httpx.ASGITransport(app=create_app(rt, config))
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://localhost",
            headers={"Authorization": f"Bearer {ALICE}"},
        ) as http:
            ok = await http.post("/v1/sessions", json={"project_root": "web"})
            assert ok.status_code == 201
            assert ok.json()["project_root"] == str((tmp_path / "projects" / "web").resolve())
            for escape in ("../elsewhere", str(tmp_path / "elsewhere"), "web/../.."):
                refused = await http.post("/v1/sessions", json={"project_root": escape})
                assert refused.status_code == 422, escape
                assert refused.json()["type"].endswith("/path-not-allowed")
                assert refused.json()["path"] == escape


def test_openapi_declares_exactly_the_query_parameters_each_route_takes() -> None:
    """The router refuses undeclared query parameters, so the document must list every one
    a route takes -- the event streams' included (``lastEventId`` for EventSource polyfills)."""
    paths = openapi_document()["paths"]
    streams = {spec.path: spec for spec in ROUTES if spec.stream}
    assert set(streams) == {"/v1/sessions/{session_id}/events", "/v1/events"}
    browser = {"ticket", "frames"}  # a stream ticket, unnamed frames (docs/http-api.md)
    assert set(streams["/v1/sessions/{session_id}/events"].query) == {
        "after_seq",
        "lastEventId",
        *browser,
    }
    assert set(streams["/v1/events"].query) == {"lastEventId", *browser}
    for spec in ROUTES:
        operation = paths[spec.path.replace("{key:path}", "{key}")][spec.method.lower()]
        declared = {p["name"] for p in operation["parameters"] if p["in"] == "query"}
        assert declared == set(spec.query), spec.name
    # A verb selected by a flag is its route's operation's boolean parameter (one operation
    # per method and path), and its 204 is among the operation's answers.
    delete = paths["/v1/sessions/{session_id}"]["delete"]
    assert delete["operationId"] == "terminate_session"
    [purge] = [p for p in delete["parameters"] if p["name"] == "purge"]
    assert purge["schema"] == {"type": "boolean", "default": False}
    assert purge["description"].startswith("true: purge_session instead")
    assert {"200", "204", "404", "409"} <= set(delete["responses"])
    headers = paths["/v1/sessions/{session_id}/events"]["get"]["parameters"]
    assert {"name": "Last-Event-ID", "in": "header", "required": False,
            "schema": {"type": "string"}} in headers  # fmt: skip


async def test_the_access_log_has_a_line_per_request_with_status_and_principal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with jidoka.Runtime(store="memory") as rt:
        config = ServerConfig(tokens={ALICE: "alice"}, access_log=True)
        transport = httpx.ASGITransport(app=create_app(rt, config), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            with caplog.at_level(logging.INFO, logger="jidoka.server.access"):
                headers = {"Authorization": f"Bearer {ALICE}"}
                assert (await http.post("/v1/sessions", json={}, headers=headers)).is_success
                assert (await http.get("/v1/sessions")).status_code == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "jidoka.server.access"]
    assert len(lines) == 2, lines
    assert re.fullmatch(r"POST /v1/sessions 201 [\d.]+ms principal=alice", lines[0]), lines
    assert re.fullmatch(r"GET /v1/sessions 401 [\d.]+ms principal=-", lines[1]), lines
