"""Model providers: the OpenAI-compatible one against a real local server through the real
``openai`` SDK, the scripted one offline, and the ``llm_config`` validation in front of both."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import traceback
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import msgspec
import openai
import pytest

import jidoka
from jidoka.config import LLMConfig
from jidoka.errors import InvalidConfig, LLMError, RuntimeClosed
from jidoka.llm.providers import make_provider
from jidoka.llm.providers.openai import OpenAIProvider
from jidoka.llm.providers.scripted import END_OF_SCRIPT, ScriptedProvider
from jidoka.llm.types import (
    ChatMessage,
    ChatRequest,
    Completion,
    Provider,
    TextDelta,
    ToolCall,
    ToolSpec,
    Usage,
)
from tests.helpers import PROMPTLY
from tests.support.openai_server import (
    Cut,
    Empty,
    Hang,
    JSONInstead,
    Malformed,
    OpenAIServer,
    Recorded,
    Slow,
    Status,
    Text,
    ToolCalls,
    openai_server,
    rate_limited,
)

KEY = "sk-jidoka-test-Q7zX9-do-not-leak-4f1e"
ENV = {"JIDOKA_TEST_KEY": KEY}
SID = "01KDVDNA002TGFDYKMPAK7J69H"

HELLO = ChatRequest(model="test-model", messages=[ChatMessage(role="user", content="hi")])


def opened(
    provider: Provider, request: ChatRequest
) -> AsyncGenerator[TextDelta | Completion, None]:
    """The provider's stream, which is an async generator, so that ``aclosing`` ends the call
    at once (the Provider protocol promises only an AsyncIterator)."""
    stream = provider.stream(request)
    assert isinstance(stream, AsyncGenerator), stream
    return stream


async def run(provider: Provider, request: ChatRequest = HELLO) -> tuple[list[str], Completion]:
    """The text deltas and the completion of one call (which must end with exactly one)."""
    deltas: list[str] = []
    completions: list[Completion] = []
    async with asyncio.timeout(PROMPTLY), aclosing(opened(provider, request)) as items:
        async for item in items:
            if isinstance(item, TextDelta):
                assert not completions, "a delta after the completion"
                deltas.append(item.text)
            else:
                completions.append(item)
    assert len(completions) == 1
    return deltas, completions[0]


async def failure(provider: Provider, request: ChatRequest = HELLO) -> tuple[list[str], LLMError]:
    """The deltas streamed before the call failed, and its error."""
    deltas: list[str] = []

    async def consume() -> None:
        async with asyncio.timeout(PROMPTLY), aclosing(opened(provider, request)) as items:
            async for item in items:
                assert isinstance(item, TextDelta), f"a failing call yielded {item!r}"
                deltas.append(item.text)

    with pytest.raises(LLMError) as caught:
        await consume()
    return deltas, caught.value


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    async with openai_server() as running:
        yield running


Build = Callable[..., Provider]


@pytest.fixture
async def build(server: OpenAIServer) -> AsyncIterator[Build]:
    """Build OpenAI providers aimed at the test server (closed at the end of the test)."""
    built: list[Provider] = []

    def make(**config: Any) -> Provider:
        llm_config = {
            "provider": "openai",
            "base_url": server.base_url,
            "model": "test-model",
            "api_key_env": "JIDOKA_TEST_KEY",
            "max_retries": 0,
            **config,
        }
        provider = make_provider(llm_config, environ=ENV, session_id=SID)
        built.append(provider)
        return provider

    yield make
    for provider in built:
        await provider.aclose()


# --- OpenAI-compatible: streaming -----------------------------------------------------------------


async def test_text_streams_in_order_then_one_completion(server: OpenAIServer, build: Build):
    server.queue(Text(["Hel", "lo", ", world"], prompt_tokens=12, completion_tokens=4))
    provider = build()
    assert isinstance(provider, OpenAIProvider)
    assert provider.name == "openai"

    deltas, completion = await run(provider)

    assert deltas == ["Hel", "lo", ", world"]
    assert completion == Completion(
        text="Hello, world",
        usage=Usage(prompt_tokens=12, completion_tokens=4, total_tokens=16),
        finish_reason="stop",
    )
    [sent] = server.requests
    assert sent.authorization == f"Bearer {KEY}"
    assert sent.body["model"] == "test-model"
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}
    assert sent.body["messages"] == [{"role": "user", "content": "hi"}]
    assert "tools" not in sent.body
    assert "temperature" not in sent.body


async def test_messages_tools_and_sampling_are_translated(server: OpenAIServer, build: Build):
    server.queue(Text(["done"]))
    provider = build(temperature=0.5, max_tokens=99)
    call = ToolCall(id="c1", name="read_file", arguments='{"path": "a.py"}')
    request = ChatRequest(
        model="other-model",
        messages=[
            ChatMessage(role="system", content="be brief"),
            ChatMessage(role="user", content="read a.py"),
            ChatMessage(role="assistant", tool_calls=[call]),
            ChatMessage(role="tool", tool_call_id="c1", content="print(1)"),
            ChatMessage(role="assistant", content="It prints 1."),
        ],
        tools=[
            ToolSpec(
                name="read_file",
                description="Read a file of the project",
                parameters={"type": "object", "properties": {"path": {"type": "string"}}},
            )
        ],
        max_tokens=10,  # the request's own setting wins over the provider's default
    )

    await run(provider, request)

    body = server.requests[0].body
    assert body["model"] == "other-model"
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "read a.py"},
        {
            "role": "assistant",
            "content": "",  # never absent, never null: what every server accepts
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "read_file", "arguments": '{"path": "a.py"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "print(1)"},
        {"role": "assistant", "content": "It prints 1."},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "read_file",
                "description": "Read a file of the project",
                "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
            },
        }
    ]
    assert body["temperature"] == 0.5
    assert body["max_tokens"] == 10


async def test_a_name_repeated_in_every_fragment_is_taken_once(server: OpenAIServer, build: Build):
    # llama-cpp-python repeats function.name (and the id) in every streamed fragment.
    server.queue(
        ToolCalls(
            [
                ("call_a", "read_file", '{"path": "src/app.py"}'),
                ("call_b", "search_code", '{"pattern": "def main"}'),
            ],
            pieces=5,
            repeat_name=True,
        )
    )

    _, completion = await run(build())

    assert completion.tool_calls == [
        ToolCall(id="call_a", name="read_file", arguments='{"path": "src/app.py"}'),
        ToolCall(id="call_b", name="search_code", arguments='{"pattern": "def main"}'),
    ]


async def test_a_server_that_sends_no_usage_gets_none_not_zero(server: OpenAIServer, build: Build):
    # llama-cpp-python ignores stream_options.include_usage.
    server.queue(Text(["Hi", "!"], usage=False))

    _, completion = await run(build())

    assert server.requests[0].body["stream_options"] == {"include_usage": True}
    assert completion.text == "Hi!"
    assert completion.usage is None  # unknown: the turn loop estimates it and says so


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ("read_file", {"type": "function", "function": {"name": "read_file"}}),
        ("required", "required"),
        ("none", "none"),
    ],
)
async def test_tool_choice_is_sent_as_the_server_expects(
    server: OpenAIServer, build: Build, choice: str, sent: object
):
    server.queue(Text(["ok"]), Text(["ok"]))
    spec = ToolSpec(name="read_file", description="Read", parameters={"type": "object"})
    provider = build()

    await run(
        provider, ChatRequest(model="m", messages=HELLO.messages, tools=[spec], tool_choice=choice)
    )
    await run(provider, ChatRequest(model="m", messages=HELLO.messages, tools=[spec]))

    assert server.requests[0].body["tool_choice"] == sent
    assert "tool_choice" not in server.requests[1].body


async def test_an_empty_api_key_env_means_no_key(server: OpenAIServer, build: Build):
    server.queue(Text(["ok"]))

    await run(build(api_key_env=""))

    assert server.requests[0].authorization == "Bearer not-needed"


async def test_tool_calls_are_assembled_from_split_deltas(server: OpenAIServer, build: Build):
    server.queue(
        ToolCalls(
            [
                ("call_a", "read_file", '{"path": "src/app.py"}'),
                ("call_b", "search", '{"query": "def main", "limit": 5}'),
            ],
            text=["Let me look."],
            pieces=4,
        )
    )

    deltas, completion = await run(build())

    assert deltas == ["Let me look."]
    assert completion.text == "Let me look."
    assert completion.finish_reason == "tool_calls"
    assert completion.tool_calls == [
        ToolCall(id="call_a", name="read_file", arguments='{"path": "src/app.py"}'),
        ToolCall(id="call_b", name="search", arguments='{"query": "def main", "limit": 5}'),
    ]
    assert completion.usage == Usage(prompt_tokens=11, completion_tokens=5, total_tokens=16)


async def test_stream_options_refused_by_the_server_is_dropped_and_remembered(
    server: OpenAIServer, build: Build
):
    server.queue(
        Status(400, "Unrecognized request argument supplied: stream_options"),
        Text(["one"]),
        Text(["two"]),
    )
    provider = build()

    assert (await run(provider))[1].text == "one"
    assert (await run(provider))[1].text == "two"

    sent = [r.body for r in server.requests]
    assert "stream_options" in sent[0]
    assert "stream_options" not in sent[1]
    assert "stream_options" not in sent[2]


async def test_other_bad_requests_are_not_retried_without_stream_options(
    server: OpenAIServer, build: Build
):
    server.queue(Status(400, "messages: too long"))

    _, error = await failure(build())

    assert error.status == 400
    assert not error.retryable
    assert "messages: too long" in error.message
    assert len(server.requests) == 1


# --- OpenAI-compatible: retries and errors --------------------------------------------------------


async def test_rate_limit_is_retried_by_the_sdk(server: OpenAIServer, build: Build):
    server.queue(rate_limited(), rate_limited(), Text(["after ", "waiting"]))

    deltas, completion = await run(build(max_retries=2))

    assert deltas == ["after ", "waiting"]
    assert completion.text == "after waiting"
    assert len(server.requests) == 3
    assert server.requests[0].body == server.requests[2].body


@pytest.mark.parametrize(
    ("answer", "status", "retryable"),
    [
        (Status(500, "the server had an error"), 500, True),
        (Status(503, "overloaded"), 503, True),
        (rate_limited("slow down"), 429, True),
        (Status(401, "Incorrect API key provided"), 401, False),
        (Status(404, "The model does not exist"), 404, False),
    ],
)
async def test_http_errors_become_llm_errors(
    server: OpenAIServer, build: Build, answer: Status, status: int, retryable: bool
):
    server.queue(answer)

    deltas, error = await failure(build(max_retries=0))

    assert deltas == []
    assert (error.status, error.retryable, error.provider) == (status, retryable, "openai")
    assert answer.message in error.message
    assert error.session_id == SID
    assert SID in error.message
    assert isinstance(error.__cause__, openai.APIStatusError)
    assert len(server.requests) == 1  # max_retries=0: no retry


@pytest.mark.parametrize("abrupt", [True, False], ids=["connection-dropped", "body-ended"])
async def test_a_stream_cut_mid_answer_is_an_error_not_a_short_answer(
    server: OpenAIServer, build: Build, abrupt: bool
):
    server.queue(Cut(["The answer ", "is"], abrupt=abrupt))

    deltas, error = await failure(build(max_retries=3))

    assert deltas == ["The answer ", "is"]
    assert error.message.startswith(f"session {SID!r}: stream ended before the answer was complete")
    # A lost connection may go better next time; a stream the server ended itself will not.
    assert error.retryable is abrupt
    assert len(server.requests) == 1  # nothing is retried once the answer streams


@pytest.mark.parametrize("dropped", [False, True], ids=["body-ended", "connection-dropped"])
async def test_an_empty_200_stream_is_a_server_failure_not_retryable(
    server: OpenAIServer, build: Build, dropped: bool
):
    # llama-cpp-python answers 200 and then fails in its chat template: no chunk at all.
    server.queue(Empty(dropped=dropped))

    deltas, error = await failure(build(max_retries=3))

    assert deltas == []
    assert "answered HTTP 200 but sent no data" in error.message
    assert "its own log has the reason" in error.message
    assert not error.retryable
    assert len(server.requests) == 1


async def test_a_json_error_instead_of_a_stream_says_the_server_s_words(
    server: OpenAIServer, build: Build
):
    server.queue(JSONInstead("Template error: list object has no element 0"))

    _, error = await failure(build())

    assert "instead of a stream" in error.message
    assert "Template error: list object has no element 0" in error.message
    assert not error.retryable


async def test_an_error_event_in_the_stream_is_reported_with_its_text(
    server: OpenAIServer, build: Build, tmp_path: Path
):
    # llama-server reports a failure after the 200 as data: {"error": {...}}.
    (tmp_path / "err.sse").write_bytes(
        b'data: {"error":{"code":500,"message":"the request exceeds the available context '
        b'size","type":"exceed_context_size_error"}}\n\n'
    )
    (tmp_path / "err.json").write_text(
        json.dumps({"status": 200, "headers": {"content-type": "text/event-stream"}})
    )
    server.queue(Recorded(tmp_path / "err"))

    _, error = await failure(build())

    assert "exceeds the available context size" in error.message
    assert not error.retryable


async def test_a_chunk_that_is_not_json_is_an_error(server: OpenAIServer, build: Build):
    server.queue(Malformed(["so far"]))

    deltas, error = await failure(build())

    assert deltas == ["so far"]
    assert "malformed stream chunk" in error.message
    assert error.retryable


async def test_an_unreachable_endpoint_is_a_retryable_error(build: Build):
    with socket.socket() as bound:  # bound but not listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        provider = build(base_url=f"http://127.0.0.1:{port}/v1")

        _, error = await failure(provider)

    assert error.retryable
    assert error.status is None
    assert f"cannot reach http://127.0.0.1:{port}/v1" in error.message


async def test_a_silent_server_times_out(server: OpenAIServer, build: Build):
    server.queue(Hang())

    _, error = await failure(build(timeout=0.05))

    assert error.retryable
    assert error.status is None
    assert "timed out" in error.message


async def test_the_key_never_appears_in_an_error_message(server: OpenAIServer, build: Build):
    server.queue(
        Status(401, f"Incorrect API key provided: {KEY}."),  # servers do echo keys
        Status(500, f"upstream rejected Bearer {KEY}"),
        Cut(["partial"]),
    )
    provider = build()
    errors = [(await failure(provider))[1] for _ in range(3)]

    for error in errors:
        assert KEY not in str(error)
        assert KEY not in repr(error)
        assert KEY not in repr(vars(error))
    for error in errors:  # nor in a logged traceback (the SDK error it chains would quote it)
        assert KEY not in "".join(traceback.format_exception(error))
    assert "[redacted]" in errors[0].message
    assert "[redacted]" in errors[1].message
    assert KEY not in repr(provider)


# --- OpenAI-compatible: cancellation and lifecycle ------------------------------------------------


async def test_closing_the_stream_closes_the_http_request(server: OpenAIServer, build: Build):
    slow = Slow(["first", "second"])
    server.queue(slow)
    provider = build()

    async with aclosing(opened(provider, HELLO)) as items:
        first = await anext(items)
        assert first == TextDelta("first")
    # aclose() has returned: the server must see the client go, without the release ever set.
    async with asyncio.timeout(PROMPTLY):
        await server.disconnected.wait()
    assert server.disconnects == 1
    assert not slow.release.is_set()


async def test_cancelling_the_task_closes_the_http_request(server: OpenAIServer, build: Build):
    server.queue(Slow(["first", "second"]))
    provider = build()
    got_first = asyncio.Event()

    async def consume() -> None:
        async with aclosing(opened(provider, HELLO)) as items:
            async for _ in items:
                got_first.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(PROMPTLY):
        await got_first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(PROMPTLY):
        await server.disconnected.wait()


async def test_a_released_slow_stream_completes(server: OpenAIServer, build: Build):
    slow = Slow(["a", "b", "c"], before=2)
    server.queue(slow)
    provider = build()
    seen: list[str] = []

    async with asyncio.timeout(PROMPTLY), aclosing(opened(provider, HELLO)) as items:
        async for item in items:
            if isinstance(item, TextDelta):
                seen.append(item.text)
                if len(seen) == 2:
                    slow.release.set()
            else:
                assert item.text == "abc"
    assert seen == ["a", "b", "c"]
    assert server.disconnects == 0


async def test_a_closed_provider_refuses_calls_and_closes_twice(server: OpenAIServer, build: Build):
    server.queue(Text(["x"]))
    provider = build()
    await run(provider)

    await provider.aclose()
    await provider.aclose()

    with pytest.raises(RuntimeClosed):
        await run(provider)


async def test_closing_an_unused_provider_is_fine(build: Build):
    await build().aclose()


# --- OpenAI-compatible: the key -------------------------------------------------------------------


def test_a_missing_key_variable_is_named():
    for environ in ({}, {"JIDOKA_TEST_KEY": ""}):
        with pytest.raises(InvalidConfig) as caught:
            make_provider({"provider": "openai", "api_key_env": "JIDOKA_TEST_KEY"}, environ=environ)
        assert caught.value.field == "llm_config.api_key_env"
        assert "JIDOKA_TEST_KEY" in caught.value.message


def test_the_default_key_variable_is_openai_api_key():
    with pytest.raises(InvalidConfig, match="OPENAI_API_KEY"):
        make_provider({"provider": "openai"}, environ={})


async def test_a_server_without_keys_gets_a_placeholder(server: OpenAIServer, build: Build):
    server.queue(Text(["ok"]))

    await run(build(api_key_env=None))

    assert server.requests[0].authorization == "Bearer not-needed"


def test_an_api_key_in_llm_config_is_refused():
    config = {"provider": "openai", "api_key": KEY}
    for check in (
        lambda: LLMConfig.from_dict(config),
        lambda: make_provider(config, environ=ENV),
    ):
        with pytest.raises(InvalidConfig) as caught:
            check()
        assert caught.value.field == "llm_config.api_key"
        assert "environment variable" in caught.value.message
        assert "api_key_env" in caught.value.message
        assert KEY not in str(caught.value)


def test_a_key_put_in_api_key_env_is_not_echoed():
    with pytest.raises(InvalidConfig) as caught:
        LLMConfig.from_dict({"api_key_env": KEY})
    assert caught.value.field == "llm_config.api_key_env"
    assert KEY not in str(caught.value)


def test_without_the_sdk_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "openai", None)  # `import openai` now fails
    monkeypatch.delitem(sys.modules, "jidoka.llm.providers.openai")

    with pytest.raises(InvalidConfig) as caught:
        make_provider({"provider": "openai"}, environ=ENV)

    assert caught.value.field == "llm_config.provider"
    assert "pip install 'jidoka-core[llm]'" in caught.value.message


# --- the test server itself -----------------------------------------------------------------------


async def test_the_server_answers_without_streaming_too(server: OpenAIServer):
    server.queue(
        Text(["plain"]), ToolCalls([("c9", "read_file", '{"path": "x"}')], completion_tokens=3)
    )
    client = await asyncio.to_thread(
        openai.AsyncOpenAI, api_key=KEY, base_url=server.base_url, max_retries=0
    )
    async with client:
        text = await client.chat.completions.create(model="m", messages=[])
        calls = await client.chat.completions.create(model="m", messages=[])

    assert text.choices[0].message.content == "plain"
    [call] = calls.choices[0].message.tool_calls or []
    assert call.id == "c9"
    assert calls.usage is not None
    assert calls.usage.completion_tokens == 3


# --- llm_config validation and make_provider ------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"provider": "openai", "model": "gpt-4o-mini"},
        {
            "provider": "openai",
            "model": "qwen2.5-coder",
            "base_url": "http://127.0.0.1:8000/v1",
            "api_key_env": None,
            "temperature": 0,
            "max_tokens": 512,
            "context_window": 32768,
            "timeout": 2.5,
            "max_retries": 0,
        },
        {"provider": "scripted", "script": [{"chunks": ["a"]}, {"tool_calls": []}]},
        {"temperature": 2.0, "timeout": 1},
        {"temperature": None, "model": None},
        {"api_key_env": ""},  # no key, as JIDOKA_LLM_API_KEY_ENV="" says
        {"system_prompt": "You review Go code."},
        {"tool_choice": "read_file"},
        {"tool_choice": "required"},
        {"tool_choice": "none"},
    ],
)
def test_valid_llm_configs(config: dict[str, Any]):
    LLMConfig.from_dict(config)


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"provider": "anthropic"}, "llm_config.provider"),
        ({"provider": 3}, "llm_config.provider"),
        ({"modle": "x"}, "llm_config.modle"),
        ({"model": ""}, "llm_config.model"),
        ({"model": 4}, "llm_config.model"),
        ({"base_url": "ftp://example.com"}, "llm_config.base_url"),
        ({"system_prompt": ""}, "llm_config.system_prompt"),
        ({"system_prompt": 7}, "llm_config.system_prompt"),
        ({"system_prompt": "x" * 40_000}, "llm_config.system_prompt"),
        ({"tool_choice": "read file!"}, "llm_config.tool_choice"),
        ({"tool_choice": ""}, "llm_config.tool_choice"),
        ({"tool_choice": {"type": "function"}}, "llm_config.tool_choice"),
        ({"api_key_env": "1ABC"}, "llm_config.api_key_env"),
        ({"api_key_env": "MY KEY"}, "llm_config.api_key_env"),
        ({"temperature": 2.5}, "llm_config.temperature"),
        ({"temperature": -0.1}, "llm_config.temperature"),
        ({"temperature": "hot"}, "llm_config.temperature"),
        ({"temperature": True}, "llm_config.temperature"),
        ({"max_tokens": 0}, "llm_config.max_tokens"),
        ({"max_tokens": 1.5}, "llm_config.max_tokens"),
        ({"context_window": -1}, "llm_config.context_window"),
        ({"timeout": 0}, "llm_config.timeout"),
        ({"max_retries": -1}, "llm_config.max_retries"),
        ({"max_retries": True}, "llm_config.max_retries"),
        ({"script": {"chunks": []}}, "llm_config.script"),
        ({"provider": "openai", "script": []}, "llm_config.script"),
        ({"script": [{"chunk": ["typo"]}]}, "llm_config.script[0]"),
        ({"script": [{}, {"chunks": "abc"}]}, "llm_config.script[1].chunks"),
        ({"script": [{"tool_calls": [{"arguments": {}}]}]}, "llm_config.script[0].tool_calls[0]"),
        ({"script": [{"error": {"status": "500"}}]}, "llm_config.script[0].error.status"),
        (
            {"script": [{"usage": {"prompt_tokens": -1}}]},
            "llm_config.script[0].usage.prompt_tokens",
        ),
        ({"script": [{"delay": -1}]}, "llm_config.script[0].delay"),
    ],
)
def test_invalid_llm_configs_name_the_field(config: dict[str, Any], field: str):
    with pytest.raises(InvalidConfig) as caught:
        LLMConfig.from_dict(config)
    assert caught.value.field == field
    assert field in caught.value.message


def test_llm_config_must_be_an_object():
    with pytest.raises(InvalidConfig) as caught:
        LLMConfig.from_dict(["provider"])
    assert caught.value.field == "llm_config"


def test_llm_config_is_a_typed_struct_that_tells_null_from_absent():
    config = LLMConfig.from_dict({"provider": "openai", "api_key_env": None, "max_tokens": 64})
    assert isinstance(config, LLMConfig)
    assert (config.provider, config.api_key_env, config.max_tokens) == ("openai", None, 64)
    assert config.model is msgspec.UNSET  # left out: a default may fill it
    assert config.to_dict() == {"provider": "openai", "api_key_env": None, "max_tokens": 64}
    assert LLMConfig.from_dict(config) is config
    assert jidoka.LLMConfig is LLMConfig


@pytest.mark.parametrize(
    ("config", "shown", "hidden"),
    [
        ({"temperature": 2.5}, "got 2.5", None),
        ({"temperature": "hot"}, "got str", "hot"),
        ({"max_retries": True}, "got bool", None),
        ({"model": 12}, "got 12", None),
        ({"model": ["m"]}, "got list", None),
        ({"base_url": "ftp://sk-secret"}, "http://", "sk-secret"),
        ({"api_key_env": "sk-secret-key"}, "NAME", "sk-secret"),
        ({"tool_choice": "sk secret"}, "tool's name", "sk secret"),
        ({"provider": "sk-" + "x" * 60}, "unknown provider value", "sk-"),
    ],
)
def test_llm_config_messages_show_numbers_and_types_never_strings(
    config: dict[str, Any], shown: str, hidden: str | None
):
    with pytest.raises(InvalidConfig) as caught:
        LLMConfig.from_dict(config)
    assert shown in caught.value.message
    if hidden is not None:
        assert hidden not in str(caught.value)


def test_make_provider_needs_a_known_provider():
    with pytest.raises(InvalidConfig) as caught:
        make_provider({"model": "m"}, environ=ENV, session_id=SID)
    assert caught.value.field == "llm_config.provider"
    assert caught.value.session_id == SID
    with pytest.raises(InvalidConfig, match="unknown provider 'claude'"):
        make_provider({"provider": "claude"}, environ=ENV)


async def test_defaults_fill_the_gaps_key_by_key(server: OpenAIServer):
    server.queue(Text(["from defaults"]))
    defaults = {
        "provider": "openai",
        "model": "default-model",
        "base_url": server.base_url,
        "api_key_env": "JIDOKA_TEST_KEY",
        "temperature": 1.0,
    }
    provider = make_provider({"temperature": 0.2, "max_retries": 0}, environ=ENV, defaults=defaults)
    try:
        _, completion = await run(provider, ChatRequest(model="", messages=[]))
    finally:
        await provider.aclose()

    assert completion.text == "from defaults"
    body = server.requests[0].body
    assert (body["model"], body["temperature"]) == ("default-model", 0.2)


def test_a_session_config_can_switch_the_default_provider():
    defaults = {"provider": "openai", "api_key_env": "UNSET_VARIABLE"}
    provider = make_provider(
        {"provider": "scripted", "script": [{"text": "hi"}]}, environ={}, defaults=defaults
    )
    assert isinstance(provider, ScriptedProvider)


# --- scripted -------------------------------------------------------------------------------------


async def test_scripted_chunks_and_estimated_usage():
    provider = make_provider(
        {"provider": "scripted", "script": [{"chunks": ["Hel", "lo, world"]}]}, environ={}
    )
    assert isinstance(provider, ScriptedProvider)
    assert provider.name == "scripted"
    request = ChatRequest(model="m", messages=[ChatMessage(role="user", content="x" * 40)])

    deltas, completion = await run(provider, request)

    assert deltas == ["Hel", "lo, world"]
    assert completion == Completion(
        text="Hello, world",
        usage=Usage(prompt_tokens=10, completion_tokens=3, total_tokens=13),
        finish_reason="stop",
    )
    assert provider.requests == [request]


async def test_scripted_tool_calls_and_given_usage():
    provider = ScriptedProvider(
        [
            {
                "tool_calls": [
                    {"id": "c1", "name": "read_file", "arguments": {"path": "a.py"}},
                    {"id": "c2", "name": "search", "arguments": '{"query": oops'},
                    {"name": "list_files"},
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5},
            }
        ]
    )

    deltas, completion = await run(provider)

    assert deltas == []
    assert completion.finish_reason == "tool_calls"
    assert completion.tool_calls == [
        ToolCall(id="c1", name="read_file", arguments='{"path":"a.py"}'),
        ToolCall(id="c2", name="search", arguments='{"query": oops'),  # invalid JSON, as given
        ToolCall(id="call_1_2", name="list_files", arguments="{}"),
    ]
    assert completion.usage == Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15)


async def test_scripted_errors_after_the_chunks():
    provider = ScriptedProvider(
        [
            {"chunks": ["par", "tial"], "error": {"message": "overloaded", "status": 503}},
            {"error": {"message": "slow down", "status": 429, "retryable": True}},
            {"text": "recovered"},
        ],
        session_id=SID,
    )

    deltas, error = await failure(provider)
    assert deltas == ["par", "tial"]
    assert (error.status, error.retryable, error.provider) == (503, False, "scripted")
    assert "overloaded" in error.message
    assert error.session_id == SID

    _, error = await failure(provider)
    assert (error.status, error.retryable) == (429, True)

    assert (await run(provider))[1].text == "recovered"


async def test_scripted_end_of_script():
    provider = ScriptedProvider([{"text": "only"}])
    assert (await run(provider))[1].text == "only"
    assert provider.remaining == 0
    for _ in range(2):
        deltas, completion = await run(provider)
        assert deltas == [END_OF_SCRIPT]
        assert completion.text == "(end of script)"


async def test_scripted_delay_uses_the_injected_sleep():
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    provider = ScriptedProvider([{"chunks": ["a", "b", "c"], "delay": 0.25}], sleep=sleep)

    deltas, _ = await run(provider)

    assert deltas == ["a", "b", "c"]
    assert slept == [0.25, 0.25, 0.25]


async def test_scripted_hang_until_cancelled():
    provider = ScriptedProvider([{"chunks": ["thinking"], "hang": True}, {"text": "next"}])
    got_first = asyncio.Event()

    async def consume() -> None:
        async with aclosing(opened(provider, HELLO)) as items:
            async for _ in items:
                got_first.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(PROMPTLY):
        await got_first.wait()
    await asyncio.sleep(0)  # one more loop turn: the hang must not end on its own
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert (await run(provider))[1].text == "next"


async def test_scripted_hang_can_be_closed():
    provider = ScriptedProvider([{"hang": True}])
    items = provider.stream(HELLO)
    waiting = asyncio.ensure_future(anext(items))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await items.aclose()  # type: ignore[attr-defined]


async def test_scripted_respond_callable_after_the_turns():
    seen: list[str] = []

    def respond(request: ChatRequest) -> dict[str, Any]:
        last = request.messages[-1].content or ""
        seen.append(last)
        return {"text": last.upper()}

    provider = ScriptedProvider([{"text": "scripted first"}], respond=respond)

    assert (await run(provider))[1].text == "scripted first"
    assert (await run(provider))[1].text == "HI"
    assert seen == ["hi"]


async def test_scripted_respond_may_be_async_and_is_checked():
    async def respond(request: ChatRequest) -> dict[str, Any]:
        await asyncio.sleep(0)
        if len(request.messages) > 1:
            return {"chunks": "not a list"}
        return {"tool_calls": [{"id": "t", "name": "echo", "arguments": {"n": 1}}]}

    provider = ScriptedProvider(respond=respond)

    _, completion = await run(provider)
    assert completion.tool_calls == [ToolCall(id="t", name="echo", arguments='{"n":1}')]

    two = ChatRequest(model="m", messages=[HELLO.messages[0], HELLO.messages[0]])
    with pytest.raises(InvalidConfig) as caught:
        await run(provider, two)
    assert caught.value.field == "respond().chunks"


async def test_scripted_closed_provider_refuses_calls():
    provider = ScriptedProvider([{"text": "x"}])
    await provider.aclose()
    await provider.aclose()
    with pytest.raises(RuntimeClosed):
        await run(provider)


def test_scripted_bad_turn_is_refused_at_construction():
    with pytest.raises(InvalidConfig) as caught:
        ScriptedProvider([{"text": "ok"}, {"hang": "yes"}])
    assert caught.value.field == "llm_config.script[1].hang"


def test_providers_satisfy_the_protocol():
    assert isinstance(ScriptedProvider(), Provider)
    assert isinstance(
        make_provider({"provider": "openai"}, environ={"OPENAI_API_KEY": "k"}), Provider
    )


# --- documented llm_config keys ------------------------------------------------------------------

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide.md"
#: A valid value for each key, to check that what the guide documents is accepted.
SAMPLES: dict[str, object] = {
    "provider": "openai",
    "model": "gemma-3-270m",
    "base_url": "http://127.0.0.1:8080/v1",
    "api_key_env": "OPENAI_API_KEY",
    "temperature": 0.2,
    "max_tokens": 256,
    "context_window": 2048,
    "auto_compact_at": 0.8,
    "timeout": 30,
    "max_retries": 1,
    "system_prompt": "You review Go code.",
    "tool_choice": "read_file",
    "script": [{"text": "hi"}],
}


def documented_keys() -> list[str]:
    """The keys in the guide's llm_config table (the rows after "Its keys")."""
    text = GUIDE.read_text(encoding="utf-8")
    table = text.split("Its keys (all optional", 1)[1].split("\n\n", 2)[1]
    return [line.split("`")[1] for line in table.splitlines() if line.startswith("| `")]


def test_every_documented_llm_config_key_is_accepted_and_every_accepted_key_documented():
    keys = documented_keys()
    assert "system_prompt" in keys
    assert sorted(keys) == sorted(LLMConfig.__struct_fields__)
    assert sorted(SAMPLES) == sorted(keys)
    for key in keys:
        config = {key: SAMPLES[key]}
        if key == "script":
            config["provider"] = "scripted"
        LLMConfig.from_dict(config)  # nothing documented is refused
    for key in keys:  # the class's own table says the same
        assert f"``{key}``" in (LLMConfig.__doc__ or "")


def test_the_sdks_chat_resources_load_with_the_client_in_its_worker_thread() -> None:
    """The SDK imports its chat resources on first use. The client is built in a worker thread,
    so they must load there: on the event loop, at a process's first turn, reading them from
    disk stalled every session (and a cluster node's lease renewals) for up to half a second on
    a busy host. A fresh interpreter, since this process has loaded them long ago."""
    code = (
        "import sys\n"
        "from jidoka.llm.providers.openai import OpenAIProvider\n"
        "provider = OpenAIProvider.from_config(\n"
        "    {'model': 'm', 'base_url': 'http://127.0.0.1:1/v1', 'api_key_env': None},\n"
        "    environ={},\n"
        ")\n"
        "assert 'openai.resources.chat.completions' not in sys.modules\n"
        "provider._build_client()\n"
        "print('openai.resources.chat.completions' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "True"
