"""The agent's MCP client: what a call of an MCP server's tool costs in a turn, against a
built-in tool call and against the SDK's own round trip.

The MCP server is the official SDK's ``MCPServer`` with one tool, ``add(a, b)``, served over
streamable HTTP by uvicorn in a **child process** (``python -m benchmarks.bench_mcp --serve``),
so its work is not on this process's loop. In this process, a runtime on the memory store:

1. **An MCP tool call in a turn**: one turn of K rounds (K = 99: ``max_iterations`` K + 1 is
   its ceiling), each a call of ``mcp__calc__add`` (then a final answer), timed from
   ``chat()`` to its return, per round;
   the session's connection is open already (a warm-up turn opened it). Baseline: the same
   turn with K ``read_file`` rounds of a 4-line file (a built-in tool, run in a worker thread).
   Both include the model's rounds (the scripted provider, put in place of the session's own
   as in ``bench_agent``): their ratio is what choosing an MCP tool costs a turn.
2. **Jidoka's share of an MCP call**: (turn per round - the SDK's ``call_tool`` round trip to
   the same server, made directly in this process with the same client settings), marked
   ``difference``: the events (``tool_call``, ``tool_result``, two ``agent_status``), the
   next model call's request, the result's conversion. Baseline: the SDK's round trip.

Medians over repeats, on the default asyncio loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._common import ROOT, Baseline, ChildServer, Result, clock, make_runtime, quiesce, run_async

__all__ = ["NAME", "run"]

NAME = "mcp"

USAGE = {"prompt_tokens": 100, "completion_tokens": 10}
SMALL_FILE = "def main():\n    # the answer\n    return 42\n\n"


def _sizes(quick: bool) -> tuple[int, int]:
    """(rounds per turn, repeats)."""
    return (5, 2) if quick else (99, 5)


# --- the server (child process) -------------------------------------------------------------------


async def _serve() -> None:
    import uvicorn
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("calc")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    app = server.streamable_http_app()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    config = uvicorn.Config(
        app, lifespan="off", http="h11", ws="none", log_config=None, access_log=False
    )
    config.load()
    running = uvicorn.Server(config)
    running.lifespan = config.lifespan_class(config)
    async with app.router.lifespan_context(app):  # the SDK's session manager
        await running.startup(sockets=[sock])
        print(json.dumps({"url": f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"}), flush=True)
        await asyncio.Event().wait()  # until SIGTERM


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIDOKA_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("PYTHONASYNCIODEBUG", None)
    return env


# --- this process ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _project() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="jidoka-bench-mcp-") as root:
        Path(root, "small.py").write_text(SMALL_FILE, encoding="utf-8")
        yield root


async def _session(rt: Any, project: str, url: str, rounds: int) -> str:
    """A session with the calc server that chatted once (connection open, provider made)."""
    sid: str = await rt.client.create_session(
        project_root=project,
        config={"max_iterations": rounds + 1, "mcp_servers": [{"name": "calc", "url": url}]},
        llm_config={"provider": "scripted", "script": [{"text": "warm", "usage": USAGE}]},
    )
    await rt.client.chat(sid, "warm up")
    return sid


async def _timed_turn(rt: Any, sid: str, call: dict[str, Any], rounds: int) -> float:
    """Seconds per round of a turn of ``rounds`` calls of ``call``."""
    from jidoka.llm.providers.scripted import ScriptedProvider

    turns: list[dict[str, Any]] = [
        {"tool_calls": [{**call, "id": f"c{i}"}], "usage": USAGE} for i in range(rounds)
    ]
    turns.append({"text": "done", "usage": USAGE})
    provider = ScriptedProvider(turns)
    agent = rt._agents.get(sid)  # internal: swap in the provider to measure (as bench_agent)
    slot = getattr(agent, "_providers", None)
    if slot is None or slot.current is None:
        raise RuntimeError("the agent internals changed: cannot swap its provider")
    slot.replace(provider)
    quiesce()
    start = clock()
    await rt.client.chat(sid, "go")
    elapsed = clock() - start
    if len(provider.requests) != rounds + 1:
        raise RuntimeError(f"the turn made {len(provider.requests)} model calls")
    events = await rt.client.read_events(sid, after_seq=0)
    errors = [e for e in events[-4 * rounds :] if e.type == "tool_result" and e.data["is_error"]]
    if errors:
        raise RuntimeError(f"a call failed: {errors[0].data['content']}")
    return elapsed / rounds


async def _sdk_round_trip(url: str, rounds: int) -> float:
    """Seconds per ``call_tool`` made directly with the SDK (a connection opened first)."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async with (
        httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, read=300.0)) as http,
        Client(streamable_http_client(url, http_client=http), cache=None) as client,
    ):
        await client.call_tool("add", {"a": 1, "b": 1})  # warm
        quiesce()
        start = clock()
        for i in range(rounds):
            result = await client.call_tool("add", {"a": i, "b": 1})
            if result.is_error:
                raise RuntimeError("the SDK's call failed")
        return (clock() - start) / rounds


async def _rows(url: str, quick: bool) -> list[Result]:
    rounds, repeats = _sizes(quick)
    mcp_call = {"name": "mcp__calc__add", "arguments": {"a": 2, "b": 3}}
    read = {"name": "read_file", "arguments": {"path": "small.py"}}
    with _project() as project:
        async with make_runtime() as rt:
            sid = await _session(rt, project, url, rounds)
            await _timed_turn(rt, sid, mcp_call, min(rounds, 5))  # warm-up
            await _timed_turn(rt, sid, read, min(rounds, 5))
            mcp: list[float] = []
            builtin: list[float] = []
            sdk: list[float] = []
            for _ in range(repeats):  # interleaved, so load hits all three alike
                mcp.append(await _timed_turn(rt, sid, mcp_call, rounds))
                builtin.append(await _timed_turn(rt, sid, read, rounds))
                sdk.append(await _sdk_round_trip(url, rounds))
    share = [m - s for m, s in zip(mcp, sdk, strict=True)]
    extra = statistics.median(mcp) - statistics.median(builtin)
    return [
        Result(
            key="mcp.tool_call.memory",
            title=f"MCP tool call in a turn, per round, memory store ({rounds} rounds)",
            unit="s",
            samples=mcp,
            higher_is_better=False,
            baseline=Baseline("read_file call in a turn, per round", builtin),
            notes=f"an MCP round costs {extra * 1e6:.0f} µs more than a built-in one "
            "(server in a child process, streamable HTTP on loopback)",
            details={"rounds": rounds, "store": "memory"},
        ),
        Result(
            key="mcp.jidoka_share.memory",
            title="Jidoka's share of an MCP call in a turn (turn round - SDK round trip)",
            unit="s",
            samples=share,
            higher_is_better=False,
            baseline=Baseline("the SDK's call_tool round trip", sdk),
            notes="events, the next model request and the result's conversion, per round",
            details={"difference": True, "rounds": rounds, "turn_s": mcp, "sdk_s": sdk},
        ),
    ]


def run(quick: bool = False) -> list[Result]:
    command = [sys.executable, "-m", "benchmarks.bench_mcp", "--serve"]
    with ChildServer(command, "the MCP server", env=_child_env()) as child:
        return run_async(lambda: _rows(str(child.ready["url"]), quick))


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", action="store_true", help="run the MCP server (child)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve())
        return
    from ._common import format_table

    print(format_table(run(quick=args.quick)))


if __name__ == "__main__":
    _main()
