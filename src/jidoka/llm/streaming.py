"""One model call, streamed into the session's log as ``llm_stream_chunk`` events.

The provider is read by a task of its own while chunks are committed, and whatever text arrives
in the meantime goes into the next event: a slow store makes fewer, larger chunks instead of
slowing the model down (and never holds the provider's connection open longer).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from ..payloads import LLMStreamChunkData, event_item
from .types import ChatRequest, Completion, Provider, TextDelta

__all__ = ["stream_call"]


async def stream_call(
    provider: Provider,
    request: ChatRequest,
    iteration: int,
    *,
    emit: Callable[[str, dict[str, Any]], Awaitable[None]],
    partial: list[str],
) -> Completion:
    """Stream one model call into ``llm_stream_chunk`` events (``emit``); return its
    :class:`Completion`. Each chunk's text is also appended to ``partial``, which is what a turn
    keeps of an answer cancelled mid-stream."""
    items: asyncio.Queue[TextDelta | Completion | BaseException] = asyncio.Queue()

    async def read() -> None:
        try:
            async for item in provider.stream(request):
                items.put_nowait(item)
        except Exception as exc:
            items.put_nowait(exc)

    reader = asyncio.get_running_loop().create_task(read())
    try:
        while True:
            item = await items.get()
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, Completion):
                return item
            text = [item.text]
            done: Completion | BaseException | None = None
            while not items.empty():
                more = items.get_nowait()
                if isinstance(more, TextDelta):
                    text.append(more.text)
                else:
                    done = more
                    break
            chunk = "".join(text)
            partial.append(chunk)
            if chunk:
                await emit(*event_item(LLMStreamChunkData(text=chunk, iteration=iteration)))
            if isinstance(done, BaseException):
                raise done
            if done is not None:
                return done
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
