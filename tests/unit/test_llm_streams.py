"""Real servers' streams, replayed byte for byte through the real ``openai`` SDK.

tests/fixtures/llm_streams holds the raw SSE answers of llama-cpp-python's server and of
upstream llama-server (README.md there says how they were recorded: server, version, model,
flags). The local test server sends each body exactly as it came off the wire; the provider reads
it through the SDK as it would read the real server. No model runs here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jidoka.errors import LLMError
from jidoka.llm.providers import make_provider
from jidoka.llm.types import Completion, Provider, Usage
from tests.support.openai_server import OpenAIServer, Recorded, openai_server
from tests.unit.test_providers import HELLO, failure, run

STREAMS = Path(__file__).resolve().parents[1] / "fixtures" / "llm_streams"
LLAMA_CPP_PYTHON = STREAMS / "llama-cpp-python"
LLAMA_SERVER = STREAMS / "llama-server"


def parsed(recording: Path) -> dict[str, Any]:
    """What the recorded body says, read without the SDK: the text, the tool calls' names and
    arguments by index (every name fragment kept), the finish_reason and the usage."""
    text = ""
    names: dict[int, list[str | None]] = {}
    arguments: dict[int, str] = {}
    finish, usage = None, None
    body = recording.with_suffix(".sse").read_bytes().decode()
    for event in body.split("\n\n"):
        if not event.startswith("data: ") or event == "data: [DONE]":
            continue
        chunk = json.loads(event.removeprefix("data: "))
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            for call in delta.get("tool_calls") or ():
                function = call.get("function") or {}
                names.setdefault(call["index"], []).append(function.get("name"))
                arguments[call["index"]] = arguments.get(call["index"], "") + (
                    function.get("arguments") or ""
                )
            finish = choice.get("finish_reason") or finish
    return {"text": text, "names": names, "arguments": arguments, "finish": finish, "usage": usage}


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    async with openai_server() as running:
        yield running


@pytest.fixture
async def provider(server: OpenAIServer) -> AsyncIterator[Provider]:
    config = {"provider": "openai", "base_url": server.base_url, "model": "gemma-3-270m"}
    built = make_provider({**config, "api_key_env": None, "max_retries": 0}, environ={})
    yield built
    await built.aclose()


async def replay(server: OpenAIServer, provider: Provider, recording: Path) -> Completion:
    server.queue(Recorded(recording))
    _, completion = await run(provider, HELLO)
    return completion


def test_the_recordings_are_there_and_say_how_they_were_made() -> None:
    readme = (STREAMS / "README.md").read_text(encoding="utf-8")
    for directory in (LLAMA_CPP_PYTHON, LLAMA_SERVER):
        assert directory.name in readme
        for name in ("plain", "no_usage", "tool_calls", "length", "tool_length", "no_content"):
            meta = json.loads((directory / f"{name}.json").read_text())
            assert meta["request"]["stream"] is True
            assert meta["server"]
            assert (directory / f"{name}.sse").exists()


@pytest.mark.parametrize("directory", [LLAMA_CPP_PYTHON, LLAMA_SERVER], ids=lambda d: d.name)
async def test_a_plain_answer_streams_whole(
    server: OpenAIServer, provider: Provider, directory: Path
) -> None:
    recording = directory / "plain"
    expected = parsed(recording)
    completion = await replay(server, provider, recording)
    assert completion.text == expected["text"]
    assert completion.text
    assert completion.finish_reason == expected["finish"] == "length"  # max_tokens 64
    assert completion.tool_calls == []


async def test_llama_cpp_python_sends_no_usage_so_none_is_reported(
    server: OpenAIServer, provider: Provider
) -> None:
    # It was asked for usage (stream_options.include_usage) and ignored it.
    recording = LLAMA_CPP_PYTHON / "plain"
    assert Recorded(recording).request["stream_options"] == {"include_usage": True}
    assert parsed(recording)["usage"] is None
    completion = await replay(server, provider, recording)
    assert completion.usage is None  # not Usage(0, 0, 0): the turn loop estimates it


async def test_llama_server_reports_usage_when_asked_and_not_otherwise(
    server: OpenAIServer, provider: Provider
) -> None:
    usage = parsed(LLAMA_SERVER / "plain")["usage"]
    completion = await replay(server, provider, LLAMA_SERVER / "plain")
    assert completion.usage == Usage(
        prompt_tokens=usage["prompt_tokens"],
        completion_tokens=usage["completion_tokens"],
        total_tokens=usage["total_tokens"],
    )
    assert (await replay(server, provider, LLAMA_SERVER / "no_usage")).usage is None


async def test_llama_cpp_python_tool_call_name_is_taken_once(
    server: OpenAIServer, provider: Provider
) -> None:
    recording = LLAMA_CPP_PYTHON / "tool_calls"
    expected = parsed(recording)
    assert len(expected["names"][0]) > 5  # the name comes again in every fragment
    assert set(expected["names"][0]) == {"read_file"}

    completion = await replay(server, provider, recording)

    [call] = completion.tool_calls
    assert call.name == "read_file"  # once, not "read_fileread_file..."
    assert call.arguments == expected["arguments"][0]
    assert isinstance(json.loads(call.arguments), dict)
    assert completion.finish_reason == "tool_calls"


async def test_llama_server_streams_one_whole_tool_call_when_required(
    server: OpenAIServer, provider: Provider
) -> None:
    # The check's template lets llama-server recognise its call format, so tool_choice
    # "required" is enforced: the name comes once, the arguments in fragments.
    recording = LLAMA_SERVER / "tool_calls"
    assert Recorded(recording).request["tool_choice"] == "required"
    expected = parsed(recording)
    assert [n for n in expected["names"][0] if n] == ["read_file"]

    completion = await replay(server, provider, recording)

    [call] = completion.tool_calls
    assert call.name == "read_file"
    assert json.loads(call.arguments) == {"path": "notes.txt"}
    assert completion.text == ""
    assert completion.finish_reason == "tool_calls"


async def test_llama_cpp_python_cut_tool_call_has_arguments_that_do_not_parse(
    server: OpenAIServer, provider: Provider
) -> None:
    # max_tokens cut the call, yet the server says finish_reason "tool_calls", not "length":
    # the cut shows only as arguments that are not JSON, which the tool layer refuses.
    completion = await replay(server, provider, LLAMA_CPP_PYTHON / "tool_length")
    [call] = completion.tool_calls
    assert call.name == "read_file"
    with pytest.raises(json.JSONDecodeError):
        json.loads(call.arguments)


async def test_llama_cpp_python_empty_200_is_a_clear_not_retryable_error(
    server: OpenAIServer, provider: Provider
) -> None:
    # A tool-only assistant message without content: its chat format fails after the 200.
    recording = LLAMA_CPP_PYTHON / "no_content"
    assert "content" not in Recorded(recording).request["messages"][2]
    assert Recorded(recording).body == b""
    server.queue(Recorded(recording))

    deltas, error = await failure(provider, HELLO)

    assert deltas == []
    assert isinstance(error, LLMError)
    assert not error.retryable
    assert "answered HTTP 200 but sent no data" in error.message


async def test_llama_server_tool_calls_cut_by_length(
    server: OpenAIServer, provider: Provider
) -> None:
    recording = LLAMA_SERVER / "no_content"
    expected = parsed(recording)
    completion = await replay(server, provider, recording)
    assert completion.finish_reason == expected["finish"] == "length"
    assert [c.name for c in completion.tool_calls] == ["read_file"] * len(expected["names"])
    assert [c.arguments for c in completion.tool_calls] == [
        expected["arguments"][i] for i in sorted(expected["arguments"])
    ]


@pytest.mark.parametrize("directory", [LLAMA_CPP_PYTHON, LLAMA_SERVER], ids=lambda d: d.name)
async def test_an_answer_cut_by_max_tokens_says_length(
    server: OpenAIServer, provider: Provider, directory: Path
) -> None:
    completion = await replay(server, provider, directory / "length")
    assert completion.finish_reason == "length"
    assert completion.text == parsed(directory / "length")["text"]
