"""The tool table of ``/v1/mcp`` (:data:`jidoka.server.mcp_tools.MCP_TOOLS`): valid schemas
that say what the arguments check, descriptions, documentation, and calls on a real runtime."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # (the mcp SDK brings it; no stubs)
import msgspec
import pytest

import jidoka
from jidoka.errors import SessionNotFound
from jidoka.server.inputs import MAX_JSON_DEPTH, NestingTooDeep
from jidoka.server.mcp_tools import MCP_TOOLS, McpTool, error_answer, tool, tools_by_name
from jidoka.verbs import by_name

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide.md"
VALID: dict[str, dict[str, Any]] = {
    "create_session": {"metadata": {"a": 1}, "project_root": None},
    "send_message": {"session_id": "s", "content": "hi"},
    "chat": {"session_id": "s", "text": "go"},
    "get_history": {"session_id": "s", "view": "compacted", "limit": 3},
    "list_sessions": {"status": "active", "limit": 10, "cursor": "c"},
    "cancel": {"session_id": "s"},
    "approve": {"session_id": "s", "call_id": "w1", "allow": False},
    "terminate_session": {"session_id": "s", "reason": "done"},
    "start_run": {"session_id": "s", "text": "go", "multitask": "enqueue", "idempotency_key": "k"},
    "get_run": {"session_id": "s", "run_id": "run_1"},
    "join_run": {"session_id": "s", "run_id": "run_1", "timeout": 5},
    "list_runs": {"session_id": "s", "status": "completed", "limit": 5},
    "cancel_run": {"session_id": "s", "run_id": "run_1"},
}
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("chat", {"text": "go"}, "session_id"),
    ("chat", {"session_id": 5, "text": "go"}, "session_id"),
    ("send_message", {"session_id": "s", "content": "x", "extra": 1}, "extra"),
    ("get_history", {"session_id": "s", "limit": 0}, "limit"),
    ("get_history", {"session_id": "s", "view": "all"}, "view"),
    ("list_sessions", {"limit": "10"}, "limit"),
    ("list_sessions", {"status": "sleeping"}, "status"),
    ("approve", {"session_id": "s", "call_id": "w1", "allow": "yes"}, "allow"),
    ("start_run", {"session_id": "s", "text": "go", "multitask": "sometimes"}, "multitask"),
    ("join_run", {"session_id": "s", "run_id": "r", "timeout": -1}, "timeout"),
]


def test_the_table_names_each_tool_once_and_covers_every_valid_case() -> None:
    names = [entry.name for entry in MCP_TOOLS]
    assert len(names) == len(set(names))
    assert set(names) == set(VALID)
    assert tools_by_name().keys() == set(names)


@pytest.mark.parametrize("entry", MCP_TOOLS, ids=lambda entry: entry.name)
def test_each_schema_is_a_valid_object_schema(entry: McpTool) -> None:
    schema = entry.input_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    jsonschema.validate(VALID[entry.name], schema)
    entry.arguments(VALID[entry.name])  # and the struct takes what the schema takes


@pytest.mark.parametrize(("name", "arguments", "argument"), INVALID)
def test_schema_and_arguments_refuse_the_same_calls_naming_the_argument(
    name: str, arguments: dict[str, Any], argument: str
) -> None:
    entry = tools_by_name()[name]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(arguments, entry.input_schema())
    with pytest.raises(jidoka.InvalidArgument) as refused:
        entry.arguments(arguments)
    assert refused.value.argument == argument


@pytest.mark.parametrize("entry", MCP_TOOLS, ids=lambda entry: entry.name)
def test_each_tool_says_what_it_does_and_names_its_arguments(entry: McpTool) -> None:
    assert len(entry.description) >= 40, entry.description
    for name in entry.input_schema()["properties"]:
        if name != "session_id":
            assert name in entry.description, (entry.name, name)


def test_the_guide_documents_every_tool() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    section = text[text.index("### Driving Jidoka over MCP") :]
    section = re.split(r"\n## ", section, maxsplit=1)[0]
    for entry in MCP_TOOLS:
        assert f"`{entry.name}`" in section, entry.name


def test_a_tool_is_one_entry_and_refuses_a_verb_it_cannot_call() -> None:
    added = tool("get_session_info", "A session's description: status, config, usage, owner.")
    assert added.verb is by_name("get_session_info")
    assert added.passed == ("session_id",)
    with pytest.raises(LookupError):
        tool("session_events", "a stream is no tool")
    with pytest.raises(LookupError):
        tool("no_such_verb", "nothing")

    class Lacking(msgspec.Struct, kw_only=True):
        text: str

    with pytest.raises(ValueError, match="session_id"):
        tool("chat", "without the session it needs", args=Lacking)


def test_an_error_answer_is_the_problem_naming_the_session() -> None:
    answer = error_answer(SessionNotFound("s-1"))
    assert answer.is_error
    assert answer.structured is not None
    assert answer.structured["type"].endswith("/session-not-found")
    assert answer.structured["session_id"] == "s-1"
    assert "s-1" in answer.text


async def test_calls_run_on_the_principals_scoped_client(runtime: jidoka.Runtime) -> None:
    tools = tools_by_name()
    alice, bob = runtime.client.scoped("alice"), runtime.client.scoped("bob")
    created = await tools["create_session"].call(alice, {"metadata": {"k": 1}})
    assert not created.is_error, created.text
    assert created.structured is not None
    sid = created.structured["session_id"]
    sent = await tools["send_message"].call(alice, {"session_id": sid, "content": "one"})
    assert sent.structured is not None
    assert (sent.structured["role"], sent.structured["content"]) == ("user", "one")
    await tools["send_message"].call(alice, {"session_id": sid, "content": "two"})
    newest = await tools["get_history"].call(alice, {"session_id": sid, "limit": 1})
    assert newest.structured is not None
    assert [m["content"] for m in newest.structured["messages"]] == ["two"]
    hidden = await tools["get_history"].call(bob, {"session_id": sid})
    assert hidden.is_error
    assert hidden.structured is not None
    assert hidden.structured["type"].endswith("/session-not-found")
    listed = await tools["list_sessions"].call(bob, {})
    assert listed.structured == {"sessions": [], "next_cursor": None}
    bad = await tools["chat"].call(alice, {"session_id": sid})
    assert bad.is_error
    assert bad.structured is not None
    assert bad.structured["argument"] == "text"


def test_arguments_nested_deeper_than_the_http_api_takes_are_refused() -> None:
    deep: Any = 1
    for _ in range(MAX_JSON_DEPTH + 1):
        deep = {"a": deep}
    with pytest.raises(NestingTooDeep):
        tools_by_name()["create_session"].arguments({"metadata": deep})


def test_a_refused_argument_names_the_session_the_call_is_about() -> None:
    with pytest.raises(jidoka.InvalidArgument) as refused:
        tools_by_name()["get_history"].arguments({"session_id": "s-9", "limit": 0})
    assert (refused.value.argument, refused.value.session_id) == ("limit", "s-9")
    assert "get_history" in str(refused.value)
