"""A/B of the client a node of a cluster forwards requests with: httpx against aiohttp.

``python -m benchmarks.ab_forward_client [--requests N] [--rounds R]`` starts one
``jidoka serve`` (memory store, no auth, a free loopback port), then sends
``POST /v1/sessions/{id}/messages`` from this process with each client in turn (httpx
``AsyncClient``, aiohttp ``ClientSession``, each with a pool of 256), one at a time and 16 at
once, alternating within each round, and prints this process's CPU per request
(``getrusage``) and the rate. The forwarding node's cost is its client's CPU: that is the
number that decided the forwarder's client (``docs/performance.md``, "Cluster").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx

_BODY = json.dumps({"role": "user", "content": "hello"}).encode()
_HEADERS = {"content-type": "application/json"}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _drive(one: Callable[[], Awaitable[None]], n: int, at_once: int) -> tuple[float, float]:
    """(µs of this process's CPU per request, requests per second)."""
    left = iter(range(n))

    async def worker() -> None:
        for _ in left:
            await one()

    cpu, start = _cpu(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(at_once)))
    return (_cpu() - cpu) / n * 1e6, n / (time.perf_counter() - start)


async def _httpx(url: str, n: int, at_once: int) -> tuple[float, float]:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=30, limits=limits, trust_env=False) as client:

        async def one() -> None:
            response = await client.post(url, content=_BODY, headers=_HEADERS)
            assert response.status_code == 201, response.text

        return await _drive(one, n, at_once)


async def _aiohttp(url: str, n: int, at_once: int) -> tuple[float, float]:
    connector = aiohttp.TCPConnector(limit=256, limit_per_host=128, keepalive_timeout=2.0)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as client:

        async def one() -> None:
            async with client.post(url, data=_BODY, headers=_HEADERS) as response:
                await response.read()
                assert response.status == 201

        return await _drive(one, n, at_once)


async def _main(base: str, requests: int, rounds: int) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:
        created = await client.post(f"{base}/v1/sessions", json={})
        sid = created.json()["session_id"]
    url = f"{base}/v1/sessions/{sid}/messages"
    print("| round | client | at once | client CPU per request | requests/s |")
    print("|---|---|---|---|---|")
    for index in range(rounds):
        order = [("httpx", _httpx), ("aiohttp", _aiohttp)]
        if index % 2:
            order.reverse()
        for name, run in order:
            for at_once in (1, 16):
                cpu, rate = await run(url, requests, at_once)
                print(f"| {index} | {name} | {at_once} | {cpu:.0f} µs | {rate:.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    port = _free_port()
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen(
            [sys.executable, "-m", "jidoka", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--data-dir", data, "--store", "memory", "--insecure-no-auth", "--log-level",
             "warning"],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1"},
        )  # fmt: skip
        try:
            assert server.stdout is not None
            for line in server.stdout:  # the banner names the URL once it listens
                if "serving on" in line:
                    break
            asyncio.run(_main(f"http://127.0.0.1:{port}", args.requests, args.rounds))
        finally:
            server.terminate()
            server.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
