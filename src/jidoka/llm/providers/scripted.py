"""A deterministic, offline provider: the model's answers are written down in advance.

It is the provider for offline demos and for tests of code built on Jidoka: no network, no key,
the same answers every run. Configure it with ``llm_config``::

    {"provider": "scripted", "script": [turn, ...]}

or build it directly: ``ScriptedProvider(turns=[...], respond=...)``. Each call to
:meth:`ScriptedProvider.stream` (one model call) plays the next *turn*, a dict whose keys are all
optional::

    {
        "chunks": ["Hel", "lo"],          # the text, as it streams (one TextDelta per chunk)
        "text": "Hello",                  # shorthand for a single chunk
        "tool_calls": [{"id": "c1", "name": "read_file", "arguments": {"path": "a.py"}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
        "finish_reason": "stop",          # default: "tool_calls" if there are any, else "stop"
        "error": {"message": "overloaded", "status": 500, "retryable": True},
        "delay": 0.0,                     # seconds before each chunk (via the injected ``sleep``)
        "hang": False,                    # after the chunks, wait forever (cancellation tests)
    }

A tool call's ``arguments`` may be an object (encoded to JSON) or a string passed as-is, which is
how a test feeds the tool layer invalid JSON. The chunks are streamed first, then ``error`` (if
any) is raised as an :class:`~jidoka.errors.LLMError` -- a failure in the middle of an answer --
or ``hang`` waits until the call is cancelled; otherwise the :class:`Completion` ends the call.
Usage not given is estimated at about four characters per token (prompt and answer).

When the turns run out, ``respond(request)`` (if given; it may be a coroutine function) returns
the next turn, so code built on Jidoka can script a model that reacts to its prompt; without it
every further call answers ``"(end of script)"``, except a request for a summary (a compaction,
``ChatRequest.summary``), which gets :func:`scripted_summary` of its prompt: deterministic, and
never empty. ``requests`` keeps every request received.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import msgspec

from ..._llm_config import ScriptTurn
from ...errors import LLMError, RuntimeClosed
from ...session.context import estimate_tokens
from ..types import ChatRequest, Completion, TextDelta, ToolCall, Usage

__all__ = ["END_OF_SCRIPT", "ScriptedProvider", "scripted_summary"]

#: The text of every call past the end of the script (when there is no ``respond``).
END_OF_SCRIPT: Final = "(end of script)"

Turn = Mapping[str, Any]
Respond = Callable[[ChatRequest], Turn | Awaitable[Turn]]
Sleep = Callable[[float], Awaitable[None]]


class ScriptedProvider:
    """Plays scripted turns, one per :meth:`stream` call (see the module docstring)."""

    def __init__(
        self,
        turns: Sequence[Turn] = (),
        *,
        respond: Respond | None = None,
        sleep: Sleep = asyncio.sleep,
        name: str = "scripted",
        session_id: str | None = None,
    ) -> None:
        for index, turn in enumerate(turns):
            ScriptTurn.check(turn, f"llm_config.script[{index}]", session_id=session_id)
        self.name = name
        self.requests: list[ChatRequest] = []
        self._turns = list(turns)
        self._next = 0
        self._respond = respond
        self._sleep = sleep
        self._session_id = session_id
        self._closed = False

    @property
    def remaining(self) -> int:
        """Scripted turns not played yet (``respond`` turns not counted)."""
        return len(self._turns) - self._next

    async def stream(self, request: ChatRequest) -> AsyncIterator[TextDelta | Completion]:
        if self._closed:
            raise RuntimeClosed(f"the {self.name} provider is closed", session_id=self._session_id)
        self.requests.append(request)
        turn = await self._take_turn(request)
        chunks: list[str] = list(turn.get("chunks") or ())
        if turn.get("text"):
            chunks.append(turn["text"])
        delay = float(turn.get("delay") or 0.0)
        for chunk in chunks:
            if delay > 0:
                await self._sleep(delay)
            yield TextDelta(chunk)
        if (error := turn.get("error")) is not None:
            raise LLMError(
                str(error.get("message") or "scripted error"),
                provider=self.name,
                session_id=self._session_id,
                status=error.get("status"),
                retryable=bool(error.get("retryable", False)),
            )
        if turn.get("hang"):
            await asyncio.Event().wait()  # until cancelled
        text = "".join(chunks)
        number = len(self.requests)
        calls = [_tool_call(c, number, i) for i, c in enumerate(turn.get("tool_calls") or ())]
        yield Completion(
            text=text,
            tool_calls=calls,
            usage=_usage(turn.get("usage"), request, text, calls),
            finish_reason=turn.get("finish_reason") or ("tool_calls" if calls else "stop"),
        )

    async def aclose(self) -> None:
        self._closed = True

    async def _take_turn(self, request: ChatRequest) -> Turn:
        if self._next < len(self._turns):
            turn = self._turns[self._next]
            self._next += 1
            return turn
        if self._respond is None:
            return {"text": scripted_summary(request) if request.summary else END_OF_SCRIPT}
        answer = self._respond(request)
        turn = await answer if inspect.isawaitable(answer) else answer
        ScriptTurn.check(turn, "respond()", session_id=self._session_id)
        return turn


#: The longest summary :func:`scripted_summary` makes (characters).
SUMMARY_CHARS: Final = 2000


def scripted_summary(request: ChatRequest) -> str:
    """What the scripted provider answers a summary request past its script: ``summary:`` and
    the start of each line of the request's last message (the transcript it is asked to
    summarise), so a test can tell which messages a summary stands for."""
    text = request.messages[-1].content or "" if request.messages else ""
    lines = [line.strip()[:60] for line in text.splitlines() if line.strip()]
    return ("summary: " + " | ".join(lines))[:SUMMARY_CHARS]


def _tool_call(call: Mapping[str, Any], turn: int, index: int) -> ToolCall:
    arguments = call.get("arguments")
    if arguments is None:
        arguments = "{}"
    elif not isinstance(arguments, str):
        arguments = msgspec.json.encode(arguments).decode()
    return ToolCall(
        id=call.get("id") or f"call_{turn}_{index}", name=call["name"], arguments=arguments
    )


def _usage(
    given: Mapping[str, int] | None, request: ChatRequest, text: str, calls: list[ToolCall]
) -> Usage:
    given = given or {}
    prompt = given.get("prompt_tokens")
    if prompt is None:
        prompt = sum(estimate_tokens(m.content or "") for m in request.messages)
    completion = given.get("completion_tokens")
    if completion is None:
        completion = estimate_tokens(text + "".join(c.name + c.arguments for c in calls))
    total = given.get("total_tokens", prompt + completion)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total)
