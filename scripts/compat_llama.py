"""The compatibility check that ``scripts/compat-llama`` runs (see that script for the set-up).

Starts each server on 127.0.0.1 under ``nice -n 19``, one at a time, and checks Jidoka's
``openai`` provider against it through the real agent loop: a plain turn (streaming), a tool
call, the usage the server reports, and cancelling a turn mid-answer. Prints a table, server x
streaming / tool calls / usage / cancel. With ``--record DIR`` it first records the raw SSE
answers of each server to a few fixed requests (the shapes tests/unit/test_llm_streams.py
replays): the body exactly as it came off the wire, plus the request, status, headers and how the
body ended.

Not part of CI or ./scripts/test: it needs the build in .compat/ and minutes of CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import jidoka
from jidoka.llm.orchestrator import ChatResult

#: Runs llama-cpp-python's server with use_extra_bufts=False: the server has no flag for it
#: (it is a field of llama_model_params), so the launcher wraps the default-params function that
#: llama_cpp.Llama calls, then runs the server's own ``__main__``.
LAUNCH_A = """
import runpy, llama_cpp.llama_cpp as lib
_defaults = lib.llama_model_default_params
def _no_extra_bufts():
    params = _defaults()
    params.use_extra_bufts = False
    return params
lib.llama_model_default_params = _no_extra_bufts
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""
#: The GGUF carries no chat template, so each server is given Gemma's turn format: llama-cpp-python
#: by its built-in ``gemma`` chat format, llama-server as a Jinja template written for this check.
#: llama-server learns the tool-call format from the template itself, by rendering it with and
#: without a call and comparing the text: a call rendered as ``<tool_call>\n{"name": ...,
#: "arguments": ...}\n</tool_call>`` inside Gemma's model turn is recognised as a JSON call
#: between tags, so llama-server parses such calls into streamed ``tool_calls`` and, with
#: ``tool_choice: "required"``, constrains the output by a grammar to end in one. Choices made for
#: the small model:
#: - an assistant message renders only its first call: the template then does not claim parallel
#:   calls, so the grammar allows exactly one call (with parallel calls allowed, the model repeats
#:   the same call until ``max_tokens`` cuts it off);
#: - when tools are offered, a short made-up exchange precedes the conversation (a call of the
#:   first tool, its result, and a plain greeting): the grammar allows free text before the call,
#:   and without an example the model only echoes the prompt and never reaches one;
#: - the system message goes into the first user turn, and a tool result is a user turn.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='', first=true) %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{% set ns.system = ns.system + m['content'] + '\n\n' %}{% endif %}{% endfor %}"
    "{% if tools %}"
    "{{ '<start_of_turn>user\nYou can call tools. To call one, answer with only a call in tags:\n"
    '<tool_call>\n{"name": "NAME", "arguments": {...}}\n</tool_call>\nThe tools:\n\' }}'
    "{% for t in tools %}{{ t | tojson }}{{ '\n' }}{% endfor %}"
    "{% set demo = tools[0]['function']['name'] %}"
    "{{ 'Call ' + demo + '.<end_of_turn>\n<start_of_turn>model\n<tool_call>\n{\"name\": \"'"
    ' + demo + \'", "arguments": {}}\n</tool_call><end_of_turn>\n'
    "<start_of_turn>user\nTool result:\n(done)<end_of_turn>\n"
    "<start_of_turn>model\nDone.<end_of_turn>\n"
    "<start_of_turn>user\nSay hi.<end_of_turn>\n<start_of_turn>model\nHi!<end_of_turn>\n' }}"
    "{% endif %}"
    "{% for m in messages %}{% if m['role'] != 'system' %}"
    "{% if m['role'] == 'assistant' %}{{ '<start_of_turn>model\n' }}"
    "{% if m['content'] %}{{ m['content'] | trim }}{% endif %}"
    "{% if m['tool_calls'] %}{% for c in m['tool_calls'][:1] %}"
    "{{ '<tool_call>\n{\"name\": \"' + c['function']['name'] + '\", \"arguments\": ' }}"
    "{{ c['function']['arguments'] if c['function']['arguments'] is string "
    "else c['function']['arguments'] | tojson }}{{ '}\n</tool_call>' }}{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\n' }}"
    "{% elif m['role'] == 'tool' %}"
    "{{ '<start_of_turn>user\nTool result:\n' + m['content'] | trim + '<end_of_turn>\n' }}"
    "{% else %}{{ '<start_of_turn>user\n' }}"
    "{% if ns.first %}{{ ns.system }}{% set ns.first = false %}{% endif %}"
    "{{ m['content'] | trim + '<end_of_turn>\n' }}{% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
N_CTX = 4096
#: Jidoka counts about four characters a token; Gemma's tokenizer makes more tokens of code, so
#: the window Jidoka budgets for is kept below the server's own.
CONTEXT_WINDOW = 3072
READY_TIMEOUT = 300.0
TURN_TIMEOUT = 300.0
NOTES = "The launch code is PELICAN-42.\nThe backup code is HERON-7.\n"

READ_FILE_TOOL = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read a text file of the project.",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string", "description": "File path."}},
            "required": ["path"],
        },
    },
}


@dataclass
class Server:
    name: str  # a column of the table and a fixture directory
    label: str  # what it is, for people
    argv: list[str]
    env: dict[str, str]
    #: ``tool_choice`` the server needs before it acts on tools (None: it acts on "auto").
    tool_choice: str | None
    log: Path
    port: int = 0
    process: asyncio.subprocess.Process | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@dataclass
class Result:
    streaming: str = "-"
    tool_calls: str = "-"
    usage: str = "-"
    cancel: str = "-"
    notes: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def running(server: Server) -> AsyncIterator[Server]:
    """The server, started under nice -n 19 and ready (its model loaded); stopped at the end."""
    server.port = free_port()
    argv = [arg.replace("{port}", str(server.port)) for arg in server.argv]
    log = server.log.open("ab")
    process = await asyncio.create_subprocess_exec(
        "nice", "-n", "19", *argv, env={**os.environ, **server.env}, stdout=log, stderr=log
    )
    server.process = process
    try:
        await wait_ready(server)
        yield server
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


async def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    async with httpx.AsyncClient(timeout=5) as http:
        while time.monotonic() < deadline:
            assert server.process is not None
            if server.process.returncode is not None:
                raise RuntimeError(
                    f"{server.name} exited with {server.process.returncode}; see {server.log}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{server.base_url}/models")).status_code == 200:
                    return
            await asyncio.sleep(1)  # polling a process we do not control: nothing to wait on
    raise RuntimeError(f"{server.name} was not ready in {READY_TIMEOUT:g} s; see {server.log}")


# --- recording ------------------------------------------------------------------------------------


def recordings(tool_choice: str | None) -> dict[str, dict[str, Any]]:
    """The requests whose answers are recorded, by name."""
    system = {"role": "system", "content": "You are a helpful assistant. Answer briefly."}
    hello = {"role": "user", "content": "Say hello and name one colour."}
    ask = {"role": "user", "content": "Read the file notes.txt and tell me the launch code."}
    tools: dict[str, Any] = {"tools": [READ_FILE_TOOL]}
    if tool_choice in ("auto", "required", "none"):
        tools["tool_choice"] = tool_choice
    elif tool_choice is not None:
        tools["tool_choice"] = {"type": "function", "function": {"name": tool_choice}}
    usage = {"stream_options": {"include_usage": True}}
    base = {"model": "gemma-3-270m", "stream": True, "temperature": 0, "seed": 7}
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "read_file", "arguments": '{"path": "notes.txt"}'},
    }
    return {
        "plain": {**base, **usage, "messages": [system, hello], "max_tokens": 64},
        "no_usage": {**base, "messages": [system, hello], "max_tokens": 64},
        "tool_calls": {**base, **usage, **tools, "messages": [system, ask], "max_tokens": 96},
        "length": {**base, **usage, "messages": [system, hello], "max_tokens": 6},
        "tool_length": {**base, **usage, **tools, "messages": [system, ask], "max_tokens": 5},
        # An assistant message that only calls tools, sent as Jidoka used to send it (no
        # content): what made llama-cpp-python answer 200 with an empty stream.
        "no_content": {
            **base,
            **usage,
            **tools,
            "messages": [
                system,
                ask,
                {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": NOTES},
            ],
            "max_tokens": 64,
        },
    }


async def record(server: Server, directory: Path, version: str) -> None:
    target = directory / server.name
    target.mkdir(parents=True, exist_ok=True)
    # A connection per request: llama-server closes the connection after a streamed answer, and
    # a request sent on it at that moment gets no answer at all.
    for name, request in recordings(server.tool_choice).items():
        async with httpx.AsyncClient(timeout=TURN_TIMEOUT) as http:
            body = bytearray()
            ended = "complete"
            started = time.monotonic()
            async with http.stream(
                "POST", f"{server.base_url}/chat/completions", json=request
            ) as response:
                try:
                    async for piece in response.aiter_raw():
                        body += piece
                except httpx.RemoteProtocolError:
                    ended = "dropped"  # the server closed the connection mid-body
            meta = {
                "server": server.label,
                "version": version,
                "recorded": datetime.date.today().isoformat(),
                "seconds": round(time.monotonic() - started, 1),
                "status": response.status_code,
                "headers": dict(response.headers),
                "ended": ended,
                "request": request,
            }
            (target / f"{name}.sse").write_bytes(bytes(body))
            (target / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
            print(
                f"  recorded {server.name}/{name}: HTTP {response.status_code}, "
                f"{len(body)} bytes, {ended}",
                file=sys.stderr,
            )


# --- the check ------------------------------------------------------------------------------------


def llm(server: Server, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "provider": "openai",
        "model": "gemma-3-270m",
        "base_url": server.base_url,
        "api_key_env": "",
        # The SDK's retry covers a pooled connection the server closed after a streamed answer
        # (llama-server does): the request is sent again on a new one.
        "max_retries": 2,
        "timeout": TURN_TIMEOUT,
        "temperature": 0,
        "max_tokens": 256,
        "context_window": CONTEXT_WINDOW,
    }
    return {**config, **extra}


async def turn_events(
    client: jidoka.Client, sid: str, text: str, *, cancel_after_chunk: bool = False
) -> tuple[ChatResult, list[jidoka.Event]]:
    """Run one turn; return its result and its events (cancelling at its first streamed chunk
    when asked)."""
    seen: list[jidoka.Event] = []
    async with client.subscribe_to_session(sid, after_seq=0) as events:
        chat = asyncio.ensure_future(client.chat(sid, text))
        async with asyncio.timeout(TURN_TIMEOUT):
            async for event in events:
                seen.append(event)
                if cancel_after_chunk and event.type == "llm_stream_chunk":
                    cancel_after_chunk = False
                    await client.cancel(sid)
                if event.type == "agent_status" and event.data["status"] in (
                    "idle",
                    "failed",
                    "cancelled",
                ):
                    break
        try:
            result = await chat
        except jidoka.JidokaError as exc:
            raise TurnFailed(str(exc), seen) from exc
    return result, seen


class TurnFailed(Exception):
    def __init__(self, message: str, events: list[jidoka.Event]) -> None:
        super().__init__(message)
        self.events = events


def _json(call: jidoka.Event) -> bool:
    try:
        return isinstance(json.loads(call.data["arguments"]), dict)
    except ValueError:
        return False


def of_type(events: list[jidoka.Event], kind: str) -> list[jidoka.Event]:
    return [e for e in events if e.type == kind]


async def check(server: Server) -> Result:
    result = Result()
    with tempfile.TemporaryDirectory(prefix="jidoka-compat-") as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        (project / "notes.txt").write_text(NOTES)
        async with jidoka.Runtime(store="memory", data_dir=Path(tmp) / "data") as rt:
            client = rt.client
            # 1. A plain turn: streamed text, and the usage the server reports (or not).
            sid = await client.create_session(llm_config=llm(server), project_root=str(project))
            try:
                answer, events = await turn_events(client, sid, "Say hello and name one colour.")
            except TurnFailed as exc:
                result.streaming = "no"
                result.notes.append(f"plain turn failed: {exc}")
            else:
                chunks = len(of_type(events, "llm_stream_chunk"))
                good = bool(answer.message.content.strip()) and chunks >= 2
                result.streaming = "yes" if good else "no"
                result.notes.append(
                    f"plain turn: {chunks} chunks, finish_reason {answer.finish_reason}, "
                    f"{answer.message.content.strip()[:60]!r}"
                )
                usage = answer.usage
                if usage.estimated:
                    result.usage = "estimated (server sends none)"
                else:
                    result.usage = "reported"
                result.notes.append(
                    f"usage: {usage.prompt_tokens}+{usage.completion_tokens} tokens"
                    + (" (estimated)" if usage.estimated else " (from the server)")
                )
            # 2. A tool call the model makes, run, and the answer after it.
            extra = {"tool_choice": server.tool_choice} if server.tool_choice else {}
            sid = await client.create_session(
                llm_config=llm(server, **extra), project_root=str(project)
            )
            try:
                answer, events = await turn_events(
                    client, sid, "Read the file notes.txt and tell me the launch code."
                )
            except TurnFailed as exc:
                result.tool_calls = "no"
                result.notes.append(f"tool turn failed: {exc}")
            else:
                calls = of_type(events, "tool_call")
                results = of_type(events, "tool_result")
                names = [c.data["name"] for c in calls]
                ran = [r for r in results if not r.data["is_error"]]
                # The protocol works when the model's call arrives whole (a known name, JSON
                # arguments), runs, and its result goes back for the answer; whether a small
                # model picks the right path is the model's business (noted, not judged).
                whole = [c for c in calls if c.data["name"] == "read_file" and _json(c)]
                ok = bool(whole) and len(results) == len(calls) and answer.iterations >= 2
                for c in calls:
                    result.notes.append(f"call {c.data['name']}({c.data['arguments'][:80]})")
                how = f" (tool_choice: {server.tool_choice})" if server.tool_choice else ""
                result.tool_calls = ("yes" + how) if ok else "no"
                result.notes.append(
                    f"tool turn: calls {names}, {len(ran)}/{len(results)} ran, "
                    f"{answer.iterations} model calls, answer "
                    f"{answer.message.content.strip()[:60]!r}"
                )
            # 3. Cancel mid-answer, then a second turn on the same session.
            sid = await client.create_session(llm_config=llm(server), project_root=str(project))
            try:
                cancelled, events = await turn_events(
                    client,
                    sid,
                    "Write a long story about a lighthouse keeper, at least 300 words.",
                    cancel_after_chunk=True,
                )
                after, _ = await turn_events(client, sid, "Say hello.")
            except TurnFailed as exc:
                result.cancel = "no"
                result.notes.append(f"cancel: a turn failed: {exc}")
            else:
                ok = cancelled.interrupted and bool(after.message.content.strip())
                result.cancel = "yes" if ok else "no"
                result.notes.append(
                    f"cancel: interrupted={cancelled.interrupted} after "
                    f"{len(cancelled.message.content)} chars, usage "
                    f"{cancelled.usage.prompt_tokens}+{cancelled.usage.completion_tokens}"
                    f"{' (estimated)' if cancelled.usage.estimated else ''}; next turn answered"
                )
    return result


def table(results: dict[str, Result], servers: dict[str, Server]) -> str:
    rows = [
        "| server | streaming | tool calls | usage | cancel |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, res in results.items():
        rows.append(
            f"| {servers[name].label} | {res.streaming} | {res.tool_calls} | {res.usage} | "
            f"{res.cancel} |"
        )
    return "\n".join(rows)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--venv", type=Path, required=True)
    parser.add_argument("--lib", type=Path, required=True)
    parser.add_argument("--llama-server", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--logs", type=Path, required=True)
    parser.add_argument("--record", type=Path)
    parser.add_argument("--version", default="0.3.36")
    parser.add_argument("--only", help="check this server only (llama-cpp-python, llama-server)")
    args = parser.parse_args()
    python = str(args.venv / "bin" / "python")
    template = args.logs.parent / "gemma3-chat.jinja"
    template.write_text(GEMMA_TEMPLATE)
    threads = "2"
    servers = {
        "llama-cpp-python": Server(
            name="llama-cpp-python",
            label=f"llama-cpp-python[server] {args.version}",
            argv=[
                python,
                "-c",
                LAUNCH_A,
                "--model",
                str(args.model),
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
                "--n_ctx",
                str(N_CTX),
                "--n_threads",
                threads,
                "--model_alias",
                "gemma-3-270m",
                "--chat_format",
                "gemma",
            ],
            env={"LLAMA_CPP_LIB_PATH": str(args.lib)},
            tool_choice="read_file",
            log=args.logs / "llama-cpp-python.log",
        ),
        "llama-server": Server(
            name="llama-server",
            label=f"llama-server (llama.cpp from the {args.version} sdist)",
            argv=[
                str(args.llama_server),
                "-m",
                str(args.model),
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
                "-c",
                str(N_CTX),
                "-t",
                threads,
                "--no-repack",
                "--alias",
                "gemma-3-270m",
                "-np",
                "1",
                "--jinja",
                "--chat-template-file",
                str(template),
            ],
            env={"LD_LIBRARY_PATH": str(args.lib)},
            # Gemma 3 270M is a small base model and rarely chooses a tool by itself, so the
            # first call of a turn asks for one: llama-server then constrains the output by a
            # grammar to end in a call. It accepts only "auto", "none" and "required"; a
            # tool_choice naming a function is read as "auto".
            tool_choice="required",
            log=args.logs / "llama-server.log",
        ),
    }
    results: dict[str, Result] = {}
    for name, server in servers.items():
        if args.only is not None and name != args.only:
            continue
        print(f"compat-llama: starting {server.label}", file=sys.stderr)
        server.log.write_text(f"$ {' '.join(server.argv)}\n")
        started = time.monotonic()
        try:
            async with running(server):
                print(
                    f"compat-llama: {name} ready in {time.monotonic() - started:.0f} s",
                    file=sys.stderr,
                )
                if args.record is not None:
                    await record(server, args.record, args.version)
                results[name] = await check(server)
        except RuntimeError as exc:
            results[name] = Result(notes=[str(exc)])
        for note in results[name].notes:
            print(f"  {name}: {note}", file=sys.stderr)
    print(table(results, servers))
    green = all(
        r.streaming == "yes" and r.tool_calls.startswith("yes") and r.cancel == "yes"
        for r in results.values()
    )
    return 0 if green else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
