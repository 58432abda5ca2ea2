"""``config.mcp_servers``: validation (errors naming the field and the session), the names the
model sees, the stdio gate, and how an MCP result and an MCP failure are told."""

from __future__ import annotations

from typing import Any

import pytest
from mcp_types import (
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    TextResourceContents,
)

import jidoka
from jidoka._mcp_config import MAX_MCP_SERVERS, MCPServerConfig, check_mcp_servers, mcp_tool_name
from jidoka.config import SessionConfig, Settings
from jidoka.errors import InvalidConfig
from jidoka.llm.mcp_results import MAX_FAILURE, MAX_RESULT_TEXT, describe_failure, result_text


def servers(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"mcp_servers": list(entries)}


def test_tool_names_as_the_model_sees_them() -> None:
    assert mcp_tool_name("calc", "add") == "mcp__calc__add"
    assert mcp_tool_name("gh", "repo.read/all files") == "mcp__gh__repo_read_all_files"
    assert mcp_tool_name("a-b", "x-y_z") == "mcp__a-b__x-y_z"
    assert mcp_tool_name("s", "t" * 56) == "mcp__s__" + "t" * 56  # 64 characters: the limit
    assert mcp_tool_name("s", "t" * 57) is None


def test_a_valid_entry_round_trips_and_keeps_only_variable_names() -> None:
    entry = {
        "name": "calc",
        "url": "https://mcp.example.com/mcp",
        "headers": {"Authorization": "CALC_AUTH"},
        "allowed_tools": ["add"],
        "require_approval": ["add"],
    }
    config = SessionConfig.from_dict(servers(entry))
    (server,) = config.mcp_servers
    assert server == MCPServerConfig(**entry)  # type: ignore[arg-type]
    assert server.headers == {"Authorization": "CALC_AUTH"}
    assert SessionConfig.from_dict(config.to_dict()) == config
    assert SessionConfig().mcp_servers == []


def test_approval_and_allowed_tools() -> None:
    every = MCPServerConfig(name="a", url="http://h/", require_approval=True)
    some = MCPServerConfig(name="b", url="http://h/", require_approval=["x"], allowed_tools=["x"])
    assert every.needs_approval("anything")
    assert some.needs_approval("x")
    assert not some.needs_approval("y")
    assert not MCPServerConfig(name="c", url="http://h/").needs_approval("x")
    assert every.allows("anything")
    assert some.allows("x")
    assert not some.allows("y")


@pytest.mark.parametrize(
    ("entries", "field", "words"),
    [
        ([{"name": "Calc", "url": "http://h/"}], "mcp_servers[0].name", "[a-z0-9_-]"),
        ([{"name": "x" * 33, "url": "http://h/"}], "mcp_servers[0].name", "{1,32}"),
        ([{"name": "a__b", "url": "http://h/"}], "mcp_servers[0]", "'__'"),
        ([{"name": "c"}], "mcp_servers[0]", "exactly one of 'url' and 'command'"),
        ([{"name": "c", "url": "http://h/", "command": "x"}], "mcp_servers[0]", "exactly one"),
        ([{"name": "c", "url": "ftp://h/"}], "mcp_servers[0]", "http:// or https://"),
        ([{"name": "c", "url": "http:///path"}], "mcp_servers[0]", "with a host"),
        ([{"name": "c", "url": "http://h/", "headers": {"X": "a-b"}}], "mcp_servers[0].head", ""),
        ([{"name": "c", "url": "http://h/", "headers": {"Host": "H"}}], "mcp_servers[0]", "'Host'"),
        ([{"name": "c", "url": "http://h/", "args": ["-v"]}], "mcp_servers[0]", "'args'"),
        ([{"name": "c", "command": "x", "headers": {"A": "B"}}], "mcp_servers[0]", "'headers'"),
        ([{"name": "c", "url": "http://h/", "token": "x"}], "mcp_servers[0].token", "unknown"),
        ([{"name": "c", "url": "http://h/", "require_approval": "yes"}], "mcp_servers[0]", ""),
        ([{"name": "c", "url": "http://h/"}, {"name": "c", "url": "http://i/"}],
         "mcp_servers[1].name", "used twice"),
        ([{"name": f"s{n}", "url": "http://h/"} for n in range(MAX_MCP_SERVERS + 1)],
         "mcp_servers", ""),
    ],
)  # fmt: skip
def test_bad_entries_name_the_field_and_the_session(
    entries: list[dict[str, Any]], field: str, words: str
) -> None:
    with pytest.raises(InvalidConfig) as caught:
        SessionConfig.from_dict({"mcp_servers": entries}, session_id="s-1")
    assert caught.value.field.startswith(field), caught.value.field
    assert words in caught.value.message
    assert caught.value.session_id == "s-1"


def test_stdio_servers_only_where_the_operator_allows_them() -> None:
    stdio = servers({"name": "local", "command": "python3", "args": ["server.py"]})
    config = SessionConfig.from_dict(stdio)  # a config alone may say so ...
    with pytest.raises(InvalidConfig) as caught:  # ... a runtime that does not allow it refuses
        Settings().session_config(stdio)
    assert caught.value.field == "mcp_servers[0].command"
    assert "--mcp-allow-stdio" in caught.value.message
    assert Settings(mcp_allow_stdio=True).session_config(stdio) == config
    check_mcp_servers(config.mcp_servers, allow_stdio=True)
    with pytest.raises(InvalidConfig) as defaults:
        Settings.build({"session_defaults": stdio})
    assert defaults.value.field == "session_defaults.mcp_servers[0].command"
    allowed = Settings.build({"session_defaults": stdio, "mcp_allow_stdio": True})
    assert allowed.session_defaults.mcp_servers[0].command == "python3"


def test_the_stdio_gate_from_the_environment() -> None:
    assert Settings.from_env({}).mcp_allow_stdio is False
    assert Settings.from_env({"JIDOKA_MCP_ALLOW_STDIO": "1"}).mcp_allow_stdio is True
    assert Settings.from_env({"JIDOKA_MCP_ALLOW_STDIO": "false"}).mcp_allow_stdio is False
    with pytest.raises(InvalidConfig) as caught:
        Settings.from_env({"JIDOKA_MCP_ALLOW_STDIO": "sometimes"})
    assert caught.value.field == "mcp_allow_stdio"


def test_a_result_as_the_model_reads_it() -> None:
    content = [
        TextContent(text="first"),
        ImageContent(data="AAAA" * 10, mime_type="image/png"),
        ResourceLink(uri="file:///a.txt", name="a"),
        EmbeddedResource(resource=TextResourceContents(uri="file:///b.txt", text="inline")),
        TextContent(text="last"),
    ]
    assert result_text(content) == "\n".join(
        [
            "first",
            "[image: image/png, about 30 bytes]",
            "[resource link: file:///a.txt]",
            "inline",
            "last",
        ]
    )
    assert result_text([], {"result": 5}) == '{"result":5}'
    assert result_text([TextContent(text="5")], {"result": 5}) == "5"
    assert result_text([]) == ""
    long = result_text([TextContent(text="x" * (MAX_RESULT_TEXT + 5))])
    assert long == "x" * MAX_RESULT_TEXT + "\n[result cut: 5 more chars]"


def test_a_failure_in_one_line() -> None:
    inner = ConnectionRefusedError("All connection attempts failed\nmore detail")
    group = ExceptionGroup("unhandled errors in a TaskGroup", [ExceptionGroup("x", [inner])])
    assert describe_failure(group) == "ConnectionRefusedError: All connection attempts failed"
    assert describe_failure(TimeoutError()) == "TimeoutError"
    long = describe_failure(ValueError("x" * 5000))
    assert len(long) == MAX_FAILURE + 1
    assert long.endswith("…")


def test_exported_from_config() -> None:
    assert jidoka.config.MCPServerConfig is MCPServerConfig
