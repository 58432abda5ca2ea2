"""The app's own cost per request, no server, no socket: ``python -m benchmarks.bench_http_app``.

Calls the ASGI app :func:`jidoka.server.create_app` returns directly, on the memory store, as
uvicorn would (a fresh scope per request, the body in one message, the answer collected), for:

- ``POST /v1/sessions/{id}/messages`` (201) -- the message round trip of the HTTP benchmark,
  less uvicorn and the wire: routing, the middlewares, the session's command, the JSON answer;
- ``GET /healthz`` -- routing and the middlewares around the smallest endpoint.

With ``--routing``: the router alone -- the full route table with trivial endpoints and no
middleware -- for a message POST (the table's 7th route), ``GET /healthz`` (its first) and
``POST /v1/stream-tickets`` (its last ``/v1`` route), since Starlette's router tries the routes
in turn.

Each figure is the median over ``--rounds`` rounds of the mean time per request in a round of
``--requests`` requests, in microseconds. It is what an A/B of the app's layering measures
best: ``bench_http`` sees the same change through uvicorn, the wire and a load generator that
share the box's two cores, so its noise is larger than the change. Run it once per source tree
(``PYTHONPATH=<tree>/src``), alternating, and compare the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import time
from typing import Any

TOKEN = "bench-token-0123456789"
HEADERS = [
    (b"host", b"127.0.0.1"),
    (b"authorization", f"Bearer {TOKEN}".encode()),
    (b"content-type", b"application/json"),
]
BODY = b'{"role":"user","content":"hello"}'


async def _request(app: Any, method: str, path: str, body: bytes = b"") -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [*HEADERS, (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    status = 0
    message = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    async def send(sent: dict[str, Any]) -> None:
        nonlocal status
        if sent["type"] == "http.response.start":
            status = sent["status"]

    await app(scope, receive, send)
    return status


async def _round(app: Any, method: str, path: str, body: bytes, requests: int) -> float:
    started = time.perf_counter()
    for _ in range(requests):
        await _request(app, method, path, body)
    return (time.perf_counter() - started) / requests * 1e6


async def measure(rounds: int, requests: int) -> dict[str, float]:
    import jidoka
    from jidoka.server.app import create_app
    from jidoka.server.config import ServerConfig

    async with jidoka.Runtime(settings=jidoka.Settings(), store="memory") as runtime:
        config = ServerConfig(tokens={TOKEN: "bench"}, access_log=False)
        app = create_app(runtime, config)
        sid = await runtime.client.create_session(owner="bench")
        path = f"/v1/sessions/{sid}/messages"
        assert await _request(app, "POST", path, BODY) == 201
        assert await _request(app, "GET", "/healthz") == 200
        results: dict[str, list[float]] = {"post_message_us": [], "healthz_us": []}
        for _ in range(rounds):
            gc.collect()
            results["post_message_us"].append(await _round(app, "POST", path, BODY, requests))
            results["healthz_us"].append(await _round(app, "GET", "/healthz", b"", requests))
        return {name: statistics.median(values) for name, values in results.items()}


async def measure_routing(rounds: int, requests: int) -> dict[str, float]:
    from starlette.responses import Response

    from jidoka.server.router import ApiRoute, build_router
    from jidoka.server.routes import ROUTES

    answer = Response(b"{}", media_type="application/json")

    async def endpoint(request: Any) -> Any:
        return answer

    extras = ("/metrics", "/openapi.json", "/", "/docs", "/docs/assets/{name}")
    app = build_router(
        [
            *(ApiRoute(path, "GET", endpoint) for path in ("/healthz", "/readyz")),
            *(ApiRoute(spec.path, spec.method, endpoint, query=spec.query) for spec in ROUTES),
            *(ApiRoute(path, "GET", endpoint) for path in extras),
        ]
    )
    cases = {
        "route_post_message_us": ("POST", "/v1/sessions/01JABCDEFGHJKMNPQRSTVWXYZ0/messages"),
        "route_healthz_us": ("GET", "/healthz"),
        "route_stream_tickets_us": ("POST", "/v1/stream-tickets"),
    }
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (method, path) in cases.items():
            results[name].append(await _round(app, method, path, b"", requests))
    return {name: statistics.median(values) for name, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_http_app")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--routing", action="store_true", help="the router alone")
    args = parser.parse_args()
    run = measure_routing if args.routing else measure
    print(json.dumps(asyncio.run(run(args.rounds, args.requests))))


if __name__ == "__main__":
    main()
