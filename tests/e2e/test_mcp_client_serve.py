"""``jidoka serve`` and MCP servers: a stdio server only where the operator allows it
(``--mcp-allow-stdio`` or ``JIDOKA_MCP_ALLOW_STDIO``), and then its tool runs in a turn over
HTTP, the process started by the session's agent."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import ALICE_TOKEN, ServerProcess, http_client, problem_of

STDIO_SERVER = Path(__file__).parent.parent / "support" / "mcp_stdio_calc.py"
STDIO = {"mcp_servers": [{"name": "calc", "command": sys.executable, "args": [str(STDIO_SERVER)]}]}
SCRIPT = [
    {"tool_calls": [{"id": "m1", "name": "mcp__calc__add", "arguments": {"a": 6, "b": 7}}]},
    {"text": "13"},
]


class _AllowingStdio(ServerProcess):
    """``jidoka serve`` with the ``--mcp-allow-stdio`` switch."""

    def command(self) -> list[str]:
        return [*super().command(), "--mcp-allow-stdio"]


def test_a_stdio_server_is_refused_by_default(make_server: Any) -> None:
    server = make_server()
    with http_client(server.url, ALICE_TOKEN) as alice:
        refused = alice.post("/v1/sessions", json={"config": STDIO})
        problem = problem_of(refused, "invalid-config", 422)
    assert problem["field"] == "mcp_servers[0].command"
    assert "--mcp-allow-stdio" in problem["detail"]


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_a_stdio_server_where_the_operator_allows_it(tmp_path: Path, how: str) -> None:
    server: ServerProcess
    if how == "flag":
        server = _AllowingStdio(tmp_path / "data", log_dir=tmp_path)
    else:
        server = ServerProcess(
            tmp_path / "data", log_dir=tmp_path, env={"JIDOKA_MCP_ALLOW_STDIO": "1"}
        )
    with server, http_client(server.url, ALICE_TOKEN) as alice:  # started by entering
        created = alice.post(
            "/v1/sessions",
            json={"config": STDIO, "llm_config": {"provider": "scripted", "script": SCRIPT}},
        )
        assert created.status_code == 201, created.text
        sid = created.json()["session_id"]
        answered = alice.post(f"/v1/sessions/{sid}/chat?wait=true", json={"text": "6 + 7?"})
        assert answered.status_code == 200, answered.text
        log = alice.get(f"/v1/sessions/{sid}/log", params={"after_seq": 0})
        assert log.status_code == 200, log.text
    events = log.json()["events"]
    results = [
        {k: v for k, v in e["data"].items() if k != "run_id"}  # the chat's run
        for e in events
        if e["type"] == "tool_result"
    ]
    assert results == [
        {"call_id": "m1", "name": "mcp__calc__add", "content": "13", "is_error": False}
    ]
    assert not [e for e in events if e["type"] == "error"]
