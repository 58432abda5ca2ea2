"""What the model and the log are told of an MCP server: a tool's result as text, and a failure
in one line.

Apart from :mod:`.mcp_client` because neither needs a connection: both are pure functions of
what the SDK returned or raised, tested on their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec

__all__ = ["describe_failure", "result_text"]

#: Longest failure description (an SDK message can carry a whole response body).
MAX_FAILURE: Final = 500
#: Longest result text kept (as the built-in tools bound theirs, ``max_output_chars``): what
#: the turn holds for the model, before it is cut to the room left in the window.
MAX_RESULT_TEXT: Final = 100_000


def result_text(content: Sequence[Any], structured: Any = None) -> str:
    """A ``CallToolResult``'s content as the text the model reads: text parts as they are,
    joined by newlines; other parts described in brackets (an image is not sent to the model);
    the structured content as JSON when there is no content at all; at most
    :data:`MAX_RESULT_TEXT` characters, saying how much more there was."""
    parts: list[str] = []
    for part in content:
        kind = getattr(part, "type", None)
        if kind == "text":
            parts.append(str(part.text))
        elif kind in ("image", "audio"):
            size = len(getattr(part, "data", "") or "") * 3 // 4
            parts.append(f"[{kind}: {getattr(part, 'mime_type', '?')}, about {size} bytes]")
        elif kind == "resource_link":
            parts.append(f"[resource link: {part.uri}]")
        elif kind == "resource":
            resource = part.resource
            text = getattr(resource, "text", None)
            if isinstance(text, str):
                parts.append(text)
            else:
                mime = getattr(resource, "mime_type", None) or "binary"
                parts.append(f"[resource {resource.uri}: {mime}]")
        else:
            parts.append(f"[{kind or type(part).__name__} content]")
    if not parts and structured is not None:
        text = msgspec.json.encode(structured).decode()
    else:
        text = "\n".join(parts)
    if len(text) <= MAX_RESULT_TEXT:
        return text
    return text[:MAX_RESULT_TEXT] + f"\n[result cut: {len(text) - MAX_RESULT_TEXT} more chars]"


def describe_failure(exc: BaseException) -> str:
    """One line on why a connection or a call failed: the first real error inside the
    exception groups anyio raises, as ``Type: message``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= MAX_FAILURE else line[:MAX_FAILURE] + "…"
