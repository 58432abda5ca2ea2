"""The HTTP API: message round trips against a bare hello-world route, SSE fan-out, stream memory.

The server runs in a **child process** (``python -m benchmarks.bench_http --serve STORE``), so
the load generator (this process) never shares its CPU or GIL; the machine has 2 cores, one for
each. The child is what ``jidoka serve`` runs, minus its flags: uvicorn (one worker,
``httptools``, on ``uvloop``) serving ``create_app(runtime, ServerConfig(tokens={TOKEN:
"bench"}, access_log=False), owns_runtime=True)`` over ``Runtime(settings=Settings(),
store=...)``, which its lifespan opens and closes. Unlike ``jidoka serve`` it passes no
Prometheus ``metrics=`` (the app then records its ``http.server.request.duration`` on the
global, no-op, OpenTelemetry provider) and keeps idle
connections open 30 s instead of uvicorn's 5 s. In front of the app sits a tiny raw ASGI
callable (:class:`_Front`) that answers three routes itself and passes everything else on:

- ``GET /hello``: a 200 ``{"hello":"world"}`` JSON answer, straight from ASGI: the bare
  hello-world route on the same server, process and event loop, the baseline the issue names;
- ``GET /rss``: the child's resident set size (after ``gc.collect()``), its open event streams
  and its open connections (for the memory measurement, not timed);
- ``GET /bench/sessions?n=N``: creates N sessions in-process, owned by the benchmark's principal
  as the API would own them (set-up for the memory measurement, much faster than N POSTs).

What is measured, on the memory store and on the SQLite store (the ``jidoka serve`` default:
WAL, ``synchronous=FULL``, a fresh data directory under ``bench_durable.scratch_root()``), one
fresh server each:

1. **Message round trips**: ``POST /v1/sessions/{id}/messages`` with ``{"role":"user",
   "content":"hello"}`` (201), in a closed loop for a fixed window, by 1 and by 64 concurrent
   clients, each with its own keep-alive connection (64 sessions are created through the API
   first). Two baselines on the same server, in the same rounds: ``GET /hello`` (raw ASGI,
   above) and ``GET /healthz`` (inside the Jidoka app: its router, the
   middlewares, a JSON response; no auth). Every request carries the same
   ``Authorization`` and ``Content-Type`` headers. A round is one window each of hello, healthz,
   messages; the rounds repeat (3) and the table gives the medians over rounds of requests/s
   and of each round's p50 and p99 latency. The issue's target: message round trips at ≥ 0.5x
   the hello-world route's rate (the target column gives it in req/s, from the same run; only
   the wrk rows are judged).
   Two load generators:

   - **wrk** (C, one thread, ``-t1 -cN``, 2 s windows; a Lua script formats the requests,
     round-robin over the N sessions, and prints its summary as JSON), when ``wrk`` is on
     ``PATH`` (``apt-get install wrk``); without it its rows are left out. With a core of its
     own it drives the server to saturation: these are the server's numbers.
   - **httpx** (``httpx.AsyncClient``, one per simulated client, its own session each, on uvloop
     in this process, 1 s windows). Its own cost per request is of the order of the server's,
     so these rows measure client and server together, and the 64-client rates are bounded by
     the load generator.

2. **SSE fan-out**: 100 clients on one session's ``GET /v1/sessions/{id}/events`` (raw asyncio
   sockets that decode the chunked stream and pick the messages out with a regex, far lighter
   than an HTTP client), then 300 messages posted through the API by 4 concurrent httpx
   posters, each message carrying the ``perf_counter`` reading taken just before its POST.
   Events/s is messages x clients over the time from the first POST to the last client
   receiving the last message; delivery latency is each (message, client)'s receive time minus
   that reading, p50 and p99 over all deliveries, with the POSTs' own round trips (same run) as
   the baseline. Posting saturates the server, so latencies include queueing. 3 repeats, a fresh
   session and fresh connections each.

3. **Memory per idle SSE stream** (memory store): in a fresh server, 1,000 sessions are created
   (in-process, ``/bench/sessions``), 20 streams opened and closed (warm-up), then RSS is read
   before and after opening 1,000 idle event streams, one per session (each past its headers
   and the first ``: ok`` comment; the server must count them open). Reported: the RSS growth
   divided by 1,000. Baseline: the same in another fresh server with 1,000 idle keep-alive
   connections that each made one ``GET /hello`` (uvicorn's own cost per connection). 2 repeats
   in fresh servers, the order alternating (the spread is a few bytes).

The load generator runs on uvloop when it is installed (it comes with ``uvicorn[standard]``),
for its own speed; no Jidoka code runs in this process. Any answer other than the expected
status fails the benchmark (a ``429`` from ``max_inflight`` would show up here). The machine is
shared: whatever else runs on it takes CPU from the server and the load generator alike, so
compare ratios measured in the same rounds rather than absolute rates across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from ._common import (
    ROOT,
    Baseline,
    ChildServer,
    Result,
    Target,
    clock,
    percentile,
    quiesce,
    run_async,
)

__all__ = ["NAME", "run"]

NAME = "http"

TOKEN = "bench-token-0123456789abcdef"
PRINCIPAL = "bench"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
MESSAGE = b'{"role":"user","content":"hello"}'
HELLO = b'{"hello":"world"}'
#: Seconds uvicorn keeps an idle connection open (its default is 5).
KEEP_ALIVE = 30
#: The fraction of the hello-world rate the issue asks message round trips to reach.
TARGET_RATIO = 0.5
STORES = ("memory", "sqlite")
ENDPOINTS = ("hello", "healthz", "messages")

_T = TypeVar("_T")


@dataclass(frozen=True)
class Sizes:
    clients: tuple[int, ...]  # concurrent clients (httpx)
    window: float  # seconds per endpoint and round (httpx)
    wrk_window: int  # the same for wrk (whole seconds)
    wrk_clients: tuple[int, ...]
    wrk_stores: tuple[str, ...]
    rounds: int
    warm_up: float  # seconds per endpoint, once per server
    fanout_clients: int
    fanout_messages: int
    fanout_posters: int
    fanout_repeats: int
    idle_streams: int
    memory_repeats: int


FULL = Sizes(
    clients=(1, 64),
    window=1.0,
    wrk_window=2,
    wrk_clients=(1, 64),
    wrk_stores=STORES,
    rounds=3,
    warm_up=0.5,
    fanout_clients=100,
    fanout_messages=300,
    fanout_posters=4,
    fanout_repeats=3,
    idle_streams=1_000,
    memory_repeats=2,
)
QUICK = Sizes(
    clients=(1, 64),
    window=0.2,
    wrk_window=1,
    wrk_clients=(64,),
    wrk_stores=("memory",),
    rounds=1,
    warm_up=0.1,
    fanout_clients=10,
    fanout_messages=30,
    fanout_posters=2,
    fanout_repeats=1,
    idle_streams=200,
    memory_repeats=1,
)


# --- the server (child process) -------------------------------------------------------------------


def _rss() -> int:
    """Resident set size of this process in bytes (``/proc``, else psutil)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return int(psutil.Process().memory_info().rss)


async def _send_json(send: Callable[[dict[str, Any]], Awaitable[None]], body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Front:
    """Raw ASGI in front of the Jidoka app: ``GET /hello``, ``GET /rss`` and ``GET
    /bench/sessions?n=N`` (creates N sessions in-process, owned by the benchmark's principal,
    much faster than through the API; for the memory measurement), the rest passed on."""

    def __init__(self, app: Any) -> None:
        from jidoka.server.lifespan import lifespan_of

        self.app = app
        self.lifespan = lifespan_of(app)  # its runtime and its event streams
        self.server: Any = None  # the uvicorn.Server, for its open connections

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path = scope["path"]
            if path == "/hello":
                await _send_json(send, HELLO)
                return
            if path == "/bench/sessions":  # many sessions fast, owned as the API would
                client = self.lifespan.runtime.client
                n = int(scope["query_string"].decode().partition("n=")[2] or 1)
                ids = [await client.create_session(owner=PRINCIPAL) for _ in range(n)]
                await _send_json(send, json.dumps(ids).encode())
                return
            if path == "/rss":
                gc.collect()
                state = {
                    "rss": _rss(),
                    "streams": len(self.lifespan.streams),
                    "connections": len(self.server.server_state.connections),
                }
                await _send_json(send, json.dumps(state).encode())
                return
        await self.app(scope, receive, send)


async def _serve(store: str, data_dir: Path | None) -> None:
    import uvicorn

    import jidoka
    from jidoka.server.app import create_app
    from jidoka.server.config import ServerConfig
    from jidoka.server.serve import exit_zero_after_signals

    from .bench_durable import durable_runtime

    if store == "memory":
        runtime = jidoka.Runtime(settings=jidoka.Settings(), store="memory")
    else:
        assert data_dir is not None
        runtime = durable_runtime(data_dir)
    # One principal opens every stream of the fan-out and idle-stream runs: lift the
    # per-principal stream limit (32 by default) above what they open.
    server_config = ServerConfig(
        tokens={TOKEN: PRINCIPAL}, access_log=False, max_streams_per_principal=1 << 16
    )
    # As in `jidoka serve`: the app's lifespan opens and closes the runtime, and drains the
    # streams on SIGTERM.
    app = create_app(runtime, server_config, owns_runtime=True)
    front = _Front(app)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    config = uvicorn.Config(
        front,
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    front.server = server
    loop = type(asyncio.get_running_loop()).__module__
    print(json.dumps({"port": sock.getsockname()[1], "loop": loop}), flush=True)
    try:
        with exit_zero_after_signals():
            await server.serve(sockets=[sock])
    finally:
        sock.close()


def _child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_http")
    parser.add_argument("--serve", choices=STORES, required=True)
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(_serve(args.serve, args.data_dir))


def _child_env() -> dict[str, str]:
    """As :func:`benchmarks._common.run_child`: no ``JIDOKA_*``, no debug or tracemalloc."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIDOKA_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("PYTHONASYNCIODEBUG", None)
    env.pop("PYTHONTRACEMALLOC", None)
    return env


class _Server:
    """A server child process, from start (it prints its port) to SIGTERM."""

    def __init__(self, store: str, data_dir: Path | None = None) -> None:
        self.store = store
        self.data_dir = data_dir
        self.port = 0
        self.base = ""
        command = [sys.executable, "-m", "benchmarks.bench_http", "--serve", store]
        if data_dir is not None:
            command += ["--data-dir", str(data_dir)]
        self._child = ChildServer(command, f"the {store} server", env=_child_env())

    def __enter__(self) -> _Server:
        self.port = int(self._child.__enter__().ready["port"])
        self.base = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._child.__exit__(*exc)


# --- HTTP helpers (load generator) ----------------------------------------------------------------


@dataclass
class _Window:
    """One endpoint, one round: what the load generator saw."""

    requests: int
    seconds: float
    p50: float
    p99: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def _client(base: str) -> Any:
    import httpx

    # verify=False: plain HTTP on loopback; the default loads the CA bundle (~75 ms a client).
    return httpx.AsyncClient(base_url=base, headers=HEADERS, timeout=30.0, verify=False)


async def _create_sessions(http: Any, n: int, batch: int = 32) -> list[str]:
    ids: list[str] = []
    while len(ids) < n:
        answers = await asyncio.gather(
            *(http.post("/v1/sessions", content=b"{}") for _ in range(min(batch, n - len(ids))))
        )
        for answer in answers:
            if answer.status_code != 201:
                raise RuntimeError(f"POST /v1/sessions: {answer.status_code} {answer.text}")
            ids.append(answer.json()["session_id"])
    return ids


def _request_for(endpoint: str, sid: str) -> tuple[str, str, bytes | None, int]:
    """(method, path, body, expected status) of one request to ``endpoint``."""
    if endpoint == "hello":
        return "GET", "/hello", None, 200
    if endpoint == "healthz":
        return "GET", "/healthz", None, 200
    return "POST", f"/v1/sessions/{sid}/messages", MESSAGE, 201


async def _httpx_window(
    clients: Sequence[Any], sids: Sequence[str], endpoint: str, seconds: float
) -> _Window:
    """Every client in a closed loop on ``endpoint`` (its own session) for ``seconds``."""
    latencies: list[float] = []
    failures: list[str] = []

    async def worker(http: Any, sid: str, deadline: float) -> None:
        method, path, body, expected = _request_for(endpoint, sid)
        while True:
            start = clock()
            if start >= deadline:
                return
            answer = await http.request(method, path, content=body)
            latencies.append(clock() - start)
            if answer.status_code != expected:
                failures.append(f"{method} {path}: {answer.status_code} {answer.text[:300]}")
                return

    quiesce()
    start = clock()
    deadline = start + seconds
    await asyncio.gather(*(worker(h, s, deadline) for h, s in zip(clients, sids, strict=True)))
    elapsed = clock() - start
    if failures:
        raise RuntimeError(f"httpx load on {endpoint}: {failures[0]}")
    return _Window(len(latencies), elapsed, percentile(latencies, 50), percentile(latencies, 99))


# --- wrk ------------------------------------------------------------------------------------------

#: Arguments after ``--``: the method, then one path per request to cycle through.
WRK_SCRIPT = """
local requests = {}
local count = 0
local next_index = 0

function init(args)
  local method = args[1]
  local body = nil
  if method == "POST" then body = '__BODY__' end
  for k = 2, #args do
    local headers = {["Authorization"] = "Bearer __TOKEN__",
                     ["Content-Type"] = "application/json"}
    count = count + 1
    requests[count] = wrk.format(method, args[k], headers, body)
  end
end

function request()
  next_index = next_index % count + 1
  return requests[next_index]
end

function done(summary, latency, requests_)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
""".replace("__BODY__", MESSAGE.decode()).replace("__TOKEN__", TOKEN)


def _wrk_window(
    script: Path, base: str, sids: Sequence[str], endpoint: str, seconds: int
) -> _Window:
    method, _, _, _ = _request_for(endpoint, sids[0])
    paths = [_request_for(endpoint, sid)[1] for sid in sids]
    if endpoint != "messages":
        paths = paths[:1]
    command = ["wrk", "-t1", f"-c{len(sids)}", f"-d{seconds}s", "--timeout", "10s"]
    command += ["-s", str(script), base + "/", "--", method, *paths]
    quiesce()
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}\n{done.stdout}")
    summary = json.loads(lines[-1])
    errors = {k: summary[k] for k in ("connect", "read", "write", "status", "timeout")}
    if any(errors.values()) or summary["requests"] == 0:
        raise RuntimeError(f"wrk on {endpoint}: errors {errors}\n{done.stdout}")
    return _Window(
        summary["requests"],
        summary["duration_us"] / 1e6,
        summary["p50_us"] / 1e6,
        summary["p99_us"] / 1e6,
    )


# --- 1. message round trips -----------------------------------------------------------------------


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _load_rows(
    store: str,
    generator: str,
    n_clients: int,
    windows: dict[str, list[_Window]],
    extra: dict[str, Any],
) -> list[Result]:
    rates = {ep: [w.rate for w in windows[ep]] for ep in ENDPOINTS}
    p50 = {ep: [w.p50 for w in windows[ep]] for ep in ENDPOINTS}
    p99 = {ep: [w.p99 for w in windows[ep]] for ep in ENDPOINTS}
    hello = statistics.median(rates["hello"])
    ratios = [m / h for m, h in zip(rates["messages"], rates["hello"], strict=True)]
    healthz_ratios = [m / h for m, h in zip(rates["messages"], rates["healthz"], strict=True)]
    label = f"{store} store, {_plural(n_clients, 'client')}, {generator}"
    key = f"http.{generator}.{store}.c{n_clients}"
    details = {
        "store": store,
        "generator": generator,
        "clients": n_clients,
        "sessions": n_clients,
        "rounds": len(windows["messages"]),
        "windows": {ep: [asdict(w) for w in windows[ep]] for ep in ENDPOINTS},
        "rate_median": {ep: statistics.median(rates[ep]) for ep in ENDPOINTS},
        "p50_median_s": {ep: statistics.median(p50[ep]) for ep in ENDPOINTS},
        "p99_median_s": {ep: statistics.median(p99[ep]) for ep in ENDPOINTS},
        "ratio_to_hello_per_round": ratios,
        "ratio_to_healthz_per_round": healthz_ratios,
        **extra,
    }
    summary = (
        f"per round ÷ hello {min(ratios):.3g}-{max(ratios):.3g}, ÷ healthz "
        f"{min(healthz_ratios):.3g}-{max(healthz_ratios):.3g}; p50 "
        f"{statistics.median(p50['messages']) * 1e3:.3g} ms, p99 "
        f"{statistics.median(p99['messages']) * 1e3:.3g} ms"
    )
    hello_base = "raw ASGI GET /hello"
    # Judged against the target only with wrk: httpx's own cost bounds both sides of its ratio.
    target = None
    if generator == "wrk":
        text = f"≥ {TARGET_RATIO:g}x GET /hello (≥ {TARGET_RATIO * hello:,.0f} req/s)"
        target = Target(">=", TARGET_RATIO * hello, text)
    else:
        summary += "; client-bound (httpx), so not judged against the target"
    return [
        Result(
            key=f"{key}.rps",
            title=f"POST message round trips ({label})",
            unit="req/s",
            samples=rates["messages"],
            baseline=Baseline(hello_base, rates["hello"]),
            target=target,
            notes=summary,
            details=details,
        ),
        Result(
            key=f"{key}.rps_vs_healthz",
            title=f"Same, against GET /healthz through the app ({label})",
            unit="req/s",
            samples=rates["messages"],
            baseline=Baseline("GET /healthz (routing + middlewares)", rates["healthz"]),
            notes=summary,
            details=details,
        ),
        Result(
            key=f"{key}.p50",
            title=f"POST message latency, p50 ({label})",
            unit="s",
            samples=p50["messages"],
            higher_is_better=False,
            baseline=Baseline(f"{hello_base}, p50", p50["hello"]),
            notes=f"GET /healthz p50 {statistics.median(p50['healthz']) * 1e3:.3g} ms",
            details=details,
        ),
        Result(
            key=f"{key}.p99",
            title=f"POST message latency, p99 ({label})",
            unit="s",
            samples=p99["messages"],
            higher_is_better=False,
            baseline=Baseline(f"{hello_base}, p99", p99["hello"]),
            notes=f"GET /healthz p99 {statistics.median(p99['healthz']) * 1e3:.3g} ms",
            details=details,
        ),
    ]


async def _round_trips(
    server: _Server, sids: Sequence[str], sizes: Sizes, wrk_script: Path | None
) -> list[Result]:
    results: list[Result] = []
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(_client(server.base)) for _ in range(max(sizes.clients))
        ]
        for endpoint in ENDPOINTS:  # warm-up: connections open, code paths and caches warm
            await _httpx_window(clients, sids[: len(clients)], endpoint, sizes.warm_up)
        # httpx first, while its connections are fresh (wrk's windows outlast the keep-alive).
        plans: list[tuple[str, int]] = [("httpx", n) for n in sizes.clients]
        if wrk_script is not None and server.store in sizes.wrk_stores:
            plans += [("wrk", n) for n in sizes.wrk_clients]
        for generator, n_clients in plans:
            windows: dict[str, list[_Window]] = {ep: [] for ep in ENDPOINTS}
            for _ in range(sizes.rounds):
                for endpoint in ENDPOINTS:
                    if generator == "wrk":
                        assert wrk_script is not None
                        window = await asyncio.to_thread(
                            _wrk_window,
                            wrk_script,
                            server.base,
                            sids[:n_clients],
                            endpoint,
                            sizes.wrk_window,
                        )
                    else:
                        window = await _httpx_window(
                            clients[:n_clients], sids[:n_clients], endpoint, sizes.window
                        )
                    windows[endpoint].append(window)
            extra = {
                "window_s": sizes.wrk_window if generator == "wrk" else sizes.window,
                "keep_alive": True,
            }
            results += _load_rows(server.store, generator, n_clients, windows, extra)
    # The table shows wrk's rows (the server's own numbers) first.
    return sorted(results, key=lambda r: r.details["generator"] != "wrk")


# --- raw sockets: event streams and idle connections ----------------------------------------------


async def _read_chunk(reader: asyncio.StreamReader) -> bytes:
    """One chunk of a chunked HTTP/1.1 body (``b""`` at its end)."""
    line = await reader.readline()
    if not line:
        raise ConnectionError("connection closed mid-stream")
    size = int(line.split(b";", 1)[0].strip(), 16)
    data = await reader.readexactly(size + 2)
    return data[:-2]


async def _open_stream(port: int, sid: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An open event stream of ``sid``, past its headers and its first ``: ok`` comment."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /v1/sessions/%s/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer %s\r\nAccept: text/event-stream\r\n\r\n"
        % (sid.encode(), TOKEN.encode())
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") or b"transfer-encoding: chunked" not in head.lower():
        raise RuntimeError(f"event stream of {sid}: {head!r}")
    first = await _read_chunk(reader)
    if not first.startswith(b":"):
        raise RuntimeError(f"event stream of {sid} began with {first!r}")
    return reader, writer


async def _open_hello(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A keep-alive connection that has made one ``GET /hello``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    match = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
    if not head.startswith(b"HTTP/1.1 200") or match is None:
        raise RuntimeError(f"GET /hello: {head!r}")
    await reader.readexactly(int(match.group(1)))
    return reader, writer


async def _open_many(opener: Callable[[], Awaitable[_T]], n: int, batch: int = 100) -> list[_T]:
    opened: list[_T] = []
    while len(opened) < n:
        opened += await asyncio.gather(*(opener() for _ in range(min(batch, n - len(opened)))))
    return opened


async def _close_all(connections: Sequence[tuple[Any, asyncio.StreamWriter]]) -> None:
    for _, writer in connections:
        writer.close()
    for _, writer in connections:
        with contextlib.suppress(OSError):
            await writer.wait_closed()


# --- 2. SSE fan-out -------------------------------------------------------------------------------

_FAN = re.compile(rb'"content":"fan (\d+) ([0-9.]+)"')


@dataclass
class _Fanout:
    rate: float
    p50: float
    p99: float
    post_p50: float
    post_p99: float
    seconds: float
    post_rate: float


async def _fanout_once(server: _Server, posters: Sequence[Any], sizes: Sizes) -> _Fanout:
    n_msgs, n_clients = sizes.fanout_messages, sizes.fanout_clients
    [sid] = await _create_sessions(posters[0], 1)
    streams = await _open_many(lambda: _open_stream(server.port, sid), n_clients)
    latencies: list[float] = []
    finished: list[float] = []

    async def listen(reader: asyncio.StreamReader) -> None:
        got = 0
        tail = b""
        while got < n_msgs:
            chunk = await _read_chunk(reader)
            if not chunk:
                raise RuntimeError(f"the stream ended after {got} of {n_msgs} messages")
            now = clock()
            buffer = tail + chunk
            cut = buffer.rfind(b"\n\n") + 2
            complete, tail = (buffer[:cut], buffer[cut:]) if cut >= 2 else (b"", buffer)
            if b"events_dropped" in complete:
                raise RuntimeError("a fan-out client was sent events_dropped")
            for match in _FAN.finditer(complete):
                latencies.append(now - float(match.group(2)))
                got += 1
        finished.append(clock())

    post_latencies: list[float] = []
    counter = iter(range(n_msgs))

    async def post(http: Any) -> None:
        path = f"/v1/sessions/{sid}/messages"
        for i in counter:
            sent = clock()
            body = json.dumps({"role": "user", "content": f"fan {i} {sent!r}"})
            answer = await http.post(path, content=body.encode())
            post_latencies.append(clock() - sent)
            if answer.status_code != 201:
                raise RuntimeError(f"POST {path}: {answer.status_code} {answer.text[:300]}")

    listeners: list[asyncio.Task[None]] = []
    try:
        listeners += [asyncio.create_task(listen(reader)) for reader, _ in streams]
        await asyncio.sleep(0.05)
        quiesce()
        first = clock()
        async with asyncio.timeout(120):
            await asyncio.gather(*(post(http) for http in posters))
            posted = clock()
            await asyncio.gather(*listeners)
    finally:
        for task in listeners:
            task.cancel()
        await _close_all(streams)
    await posters[0].delete(f"/v1/sessions/{sid}")
    elapsed = max(finished) - first
    return _Fanout(
        rate=n_msgs * n_clients / elapsed,
        p50=percentile(latencies, 50),
        p99=percentile(latencies, 99),
        post_p50=percentile(post_latencies, 50),
        post_p99=percentile(post_latencies, 99),
        seconds=elapsed,
        post_rate=n_msgs / (posted - first),
    )


async def _fanout(server: _Server, sizes: Sizes) -> list[Result]:
    async with contextlib.AsyncExitStack() as stack:
        posters = [
            await stack.enter_async_context(_client(server.base))
            for _ in range(sizes.fanout_posters)
        ]
        runs = [await _fanout_once(server, posters, sizes) for _ in range(sizes.fanout_repeats)]
    n_msgs, n_clients = sizes.fanout_messages, sizes.fanout_clients
    details = {
        "store": server.store,
        "clients": n_clients,
        "messages": n_msgs,
        "posters": sizes.fanout_posters,
        "deliveries_per_repeat": n_msgs * n_clients,
        "runs": [asdict(r) for r in runs],
    }
    label = f"{n_msgs:,} messages to {n_clients:,} clients of one session, {server.store} store"
    seconds = statistics.median(r.seconds for r in runs)
    post_rate = statistics.median(r.post_rate for r in runs)
    key = f"http.sse.{server.store}"
    return [
        Result(
            key=f"{key}.events_per_s",
            title=f"SSE fan-out, events delivered/s in total ({label})",
            unit="events/s",
            samples=[r.rate for r in runs],
            notes=(
                f"{sizes.fanout_posters} concurrent posters; last delivery after {seconds:.3g} s; "
                f"messages posted at {post_rate:,.0f}/s"
            ),
            details=details,
        ),
        Result(
            key=f"{key}.latency_p50",
            title=f"SSE delivery latency (POST start to client), p50 ({label})",
            unit="s",
            samples=[r.p50 for r in runs],
            higher_is_better=False,
            baseline=Baseline("the POST's own round trip, p50", [r.post_p50 for r in runs]),
            details=details,
        ),
        Result(
            key=f"{key}.latency_p99",
            title=f"SSE delivery latency, p99 ({label})",
            unit="s",
            samples=[r.p99 for r in runs],
            higher_is_better=False,
            baseline=Baseline("the POST's own round trip, p99", [r.post_p99 for r in runs]),
            details=details,
        ),
    ]


# --- 3. memory per idle stream --------------------------------------------------------------------


async def _rss_of(http: Any) -> dict[str, int]:
    answer = await http.get("/rss")
    answer.raise_for_status()
    state: dict[str, int] = answer.json()
    return state


async def _idle_memory(kind: str, n: int) -> dict[str, Any]:
    """RSS growth of a fresh memory-store server per idle connection of ``kind``."""
    with _Server("memory") as server:
        async with _client(server.base) as http:
            answer = await http.get("/bench/sessions", params={"n": n})
            answer.raise_for_status()
            sids: list[str] = answer.json()
            port = server.port
            openers: dict[str, Callable[[str], Awaitable[Any]]] = {
                "stream": lambda sid: _open_stream(port, sid),
                "hello": lambda sid: _open_hello(port),
            }
            opener = openers[kind]
            warm = [await opener(sid) for sid in sids[:20]]
            await _close_all(warm)
            await asyncio.sleep(0.2)
            before = await _rss_of(http)
            pending = iter(sids)
            connections = await _open_many(lambda: opener(next(pending)), n)
            await asyncio.sleep(0.2)
            after = await _rss_of(http)
            await _close_all(connections)
    if kind == "stream" and after["streams"] - before["streams"] != n:
        raise RuntimeError(f"{n} streams opened, the server counts {after['streams']}")
    if after["connections"] - before["connections"] < n:
        raise RuntimeError(f"{n} connections opened, the server counts {after['connections']}")
    return {
        "kind": kind,
        "connections": n,
        "rss_before": before["rss"],
        "rss_after": after["rss"],
        "per_connection": (after["rss"] - before["rss"]) / n,
    }


async def _memory(sizes: Sizes) -> list[Result]:
    n = sizes.idle_streams
    streams: list[dict[str, Any]] = []
    hellos: list[dict[str, Any]] = []
    for repeat in range(sizes.memory_repeats):
        if repeat % 2:
            hellos.append(await _idle_memory("hello", n))
            streams.append(await _idle_memory("stream", n))
        else:
            streams.append(await _idle_memory("stream", n))
            hellos.append(await _idle_memory("hello", n))
    per_stream = [s["per_connection"] for s in streams]
    per_hello = [h["per_connection"] for h in hellos]
    median = statistics.median(per_stream)
    return [
        Result(
            key="http.sse_idle_rss",
            title=f"RSS per idle SSE stream ({n:,} open, one per session, memory store)",
            unit="B",
            samples=per_stream,
            higher_is_better=False,
            baseline=Baseline("idle keep-alive connection after one GET /hello", per_hello),
            notes=(
                f"{median / 1024:.3g} KiB per stream; {n:,} streams add "
                f"{median * n / 1024 / 1024:.3g} MiB; fresh server each"
            ),
            details={"streams": streams, "hello_connections": hellos},
        )
    ]


# --- the module -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _data_dir(store: str) -> Iterator[Path | None]:
    if store == "memory":
        yield None
        return
    from .bench_durable import scratch_dir

    with scratch_dir("http-sqlite") as path:
        yield path


async def _main(sizes: Sizes, wrk_script: Path | None) -> list[Result]:
    results = await _memory(sizes)
    n_sessions = max(max(sizes.clients), max(sizes.wrk_clients))
    for store in STORES:
        with _data_dir(store) as data_dir, _Server(store, data_dir) as server:
            async with _client(server.base) as http:
                sids = await _create_sessions(http, n_sessions)
            rows = await _round_trips(server, sids, sizes, wrk_script)
            if data_dir is not None:
                from .bench_durable import filesystem_of

                for row in rows:
                    row.details["filesystem"] = filesystem_of(data_dir)
            results += rows
            results += await _fanout(server, sizes)
    return results


def _run_loop(main: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """The load generator's loop: uvloop if installed (debug off), else the default one."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return run_async(main)
    return uvloop.run(main(), debug=False)


def run(quick: bool = False) -> list[Result]:
    sizes = QUICK if quick else FULL
    # Without wrk (`apt-get install wrk`) only the httpx rows are measured.
    wrk = shutil.which("wrk")
    with tempfile.TemporaryDirectory(prefix="jidoka-bench-http-") as scratch:
        script: Path | None = None
        if wrk is not None:
            script = Path(scratch, "jidoka.lua")
            script.write_text(WRK_SCRIPT, encoding="utf-8")
        return _run_loop(lambda: _main(sizes, script))


if __name__ == "__main__":
    _child_main(sys.argv[1:])
