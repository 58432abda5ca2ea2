"""The model's side of the file tools: their argument Structs, the JSON Schemas generated from
them, and running one :class:`~jidoka.tools.spec.ToolCall` safely.

Schemas are generated from the same Structs that decode the model's arguments, so what the model
is told and what is enforced cannot drift apart. :meth:`ToolRegistry.run` never raises for
anything the model got wrong or the disk refused: that becomes a ``ToolResult`` with
``is_error=True`` and ``content="error: ..."``, for the model to read and correct itself from.
Only cancellation propagates.

``run`` and :func:`preview_write` take a ``timeout`` instead of leaving it to the caller's
``asyncio.timeout`` (ruff's ASYNC109): the work runs in a thread that cannot be cancelled, so the
thread itself must know the deadline to stop at it.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import inspect
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Final

import msgspec
from msgspec import Meta

from ..errors import JidokaError, LimitExceeded, PathNotAllowed
from . import files
from .files import ToolContext, ToolError, ToolOutput
from .spec import ToolCall, ToolSpec

__all__ = [
    "EditFileArgs",
    "ListFilesArgs",
    "ReadFileArgs",
    "SearchCodeArgs",
    "Tool",
    "ToolRegistry",
    "ToolResult",
    "WriteFileArgs",
    "preview_write",
    "quote_path",
]

log = logging.getLogger(__name__)

Path = Annotated[str, Meta(min_length=1, description="File path relative to the project root.")]
Glob = Annotated[
    str,
    Meta(
        min_length=1,
        description="gitignore-style glob, e.g. 'src/**/*.py' or 'tests/**'; "
        "a pattern without '/' (like '*.md') matches at any depth.",
    ),
]


class ReadFileArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    path: Path
    start_line: Annotated[int, Meta(ge=1, description="First line to show (1-based).")] = 1
    end_line: Annotated[int, Meta(ge=1, description="Last line to show (inclusive).")] | None = None


class ListFilesArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pattern: Glob = "**/*"
    max_results: Annotated[int, Meta(ge=1, le=2000)] = 200


class SearchCodeArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pattern: Annotated[str, Meta(min_length=1, description="Regular expression (Python syntax).")]
    glob: Glob = "**/*"
    max_matches: Annotated[int, Meta(ge=1, le=1000)] = 100
    case_sensitive: bool = True


class WriteFileArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    path: Path
    content: Annotated[str, Meta(description="The whole new content of the file.")]


class EditFileArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    path: Path
    old_text: Annotated[str, Meta(min_length=1, description="Exact text to replace (unique).")]
    new_text: Annotated[str, Meta(description="Text to put in its place.")]


class ToolResult(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to one call, as the turn loop records it and sends it back to the model."""

    call_id: str
    name: str
    content: str
    is_error: bool = False
    paths_read: list[str] = []
    paths_written: list[str] = []


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool: its function (called as ``function(ctx, **args, deadline=...)``, blocking), the
    Struct its arguments decode into, and whether it changes the project (needs approval)."""

    name: str
    function: Callable[..., ToolOutput]
    args: type[msgspec.Struct]
    writes: bool = False

    def spec(self) -> ToolSpec:
        doc = inspect.cleandoc(self.function.__doc__ or self.name)
        description = doc.split("\n\n", 1)[0].replace("\n", " ")
        return ToolSpec(name=self.name, description=description, parameters=_schema(self.args))


_TOOLS: Final = (
    Tool("read_file", files.read_file, ReadFileArgs),
    Tool("list_files", files.list_files, ListFilesArgs),
    Tool("search_code", files.search_code, SearchCodeArgs),
    Tool("write_file", files.write_file, WriteFileArgs, writes=True),
    Tool("edit_file", files.edit_file, EditFileArgs, writes=True),
)
_KNOWN: Final = {tool.name: tool for tool in _TOOLS}


class ToolRegistry:
    """The tools one session's model may call. Stateless apart from the tool table, so one
    registry can serve many sessions; everything per session is in the :class:`ToolContext`."""

    __slots__ = ("_specs", "_tools")

    def __init__(self, tools: Iterable[Tool]) -> None:
        self._tools = {tool.name: tool for tool in tools}
        self._specs = [tool.spec() for tool in self._tools.values()]

    @classmethod
    def default(cls, allow_write: bool) -> ToolRegistry:
        """The file tools; ``write_file`` and ``edit_file`` only when ``allow_write``.

        The two registries are made once: building the schemas costs about a millisecond,
        which was most of a short turn, and a registry is stateless, so every session can
        share one.
        """
        return _default_registry(bool(allow_write))

    def specs(self) -> list[ToolSpec]:
        return list(self._specs)

    def is_write(self, name: str) -> bool:
        """Whether the tool changes the project, even one this registry does not offer (so a
        read-only session can still tell the model *why* a write was refused)."""
        tool = self._tools.get(name) or _KNOWN.get(name)
        return tool is not None and tool.writes

    async def run(
        self,
        call: ToolCall,
        ctx: ToolContext,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> ToolResult:
        """Run ``call`` in a worker thread under ``timeout`` seconds; failures become error
        results. On timeout the thread stops at its own deadline (each tool checks it), since
        threads cannot be killed."""
        try:
            tool = self._tools.get(call.name)
            if tool is None:
                raise ToolError(_unknown(call.name, self._tools))
            output = await _call(tool.function, _decode(tool, call, ctx), ctx, timeout)
        except TimeoutError:
            message = f"{call.name} timed out after {timeout:g}s; narrow the request"
            return _error(call, message)
        except (JidokaError, OSError) as exc:
            return _error(call, _describe(exc, ctx))
        except Exception as exc:  # a bug in a tool must not end the turn, let alone the session
            log.exception("tool %s failed (session %s)", call.name, ctx.session_id)
            return _error(call, f"internal error in {call.name}: {type(exc).__name__}")
        return ToolResult(
            call_id=call.id,
            name=call.name,
            content=output.content,
            paths_read=output.paths_read,
            paths_written=output.paths_written,
        )


async def preview_write(
    call: ToolCall,
    ctx: ToolContext,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> tuple[str, str]:
    """``(path key, unified diff)`` of what a ``write_file``/``edit_file`` call would do, writing
    nothing: what an approval prompt shows. The diff is bounded to ``max_diff_lines`` lines.

    Raises :class:`~jidoka.tools.files.ToolError` for every failure (not a write tool, bad
    arguments, refused path, limit, I/O error, timeout), with the message :meth:`ToolRegistry.run`
    would give the model, so a doomed write can be answered without asking the user.
    Async because it reads the file (in a worker thread).
    """
    tool = _KNOWN.get(call.name)
    if tool is None or not tool.writes:
        raise ToolError(f"{call.name!r} is not a write tool; there is nothing to preview")
    args = _decode(tool, call, ctx)
    try:
        preview: tuple[str, str] = await _call(_preview, args, ctx, timeout)
    except TimeoutError:
        raise ToolError(f"preview of {call.name} timed out after {timeout:g}s") from None
    except ToolError:
        raise
    except (JidokaError, OSError) as exc:
        raise ToolError(_describe(exc, ctx)) from exc
    except Exception as exc:  # a bug must not end the turn: the model hears of it instead
        log.exception("preview of %s failed (session %s)", call.name, ctx.session_id)
        raise ToolError(f"internal error in {call.name}: {type(exc).__name__}") from exc
    return preview


def quote_path(key: str, prefix: str = "") -> str:
    """``key`` for a human to read, unambiguously: as it is when plain, else in double quotes
    with what could disguise it escaped (as git quotes odd names): control characters
    (``\\n``, ``\\x1b``), invisible or direction-changing ones (``\\u202e``), quotes and
    backslashes; the quotes show leading and trailing spaces. An approval prompt names its file
    this way, so ``"a.py\\n+ harmless"`` cannot pass for a line of the diff. ``prefix`` (a diff
    header's ``a/``) goes inside the quotes; whether to quote is decided on ``key`` alone."""
    plain = key.isprintable() and key == key.strip() and '"' not in key and "\\" not in key
    if plain and key:
        return prefix + key
    return '"' + "".join(_escape(char) for char in prefix + key) + '"'


def _escape(char: str) -> str:
    if char in ('"', "\\"):
        return "\\" + char
    if char.isprintable():
        return char
    return repr(char)[1:-1]  # \n, \t, \x1b, \u202e, ...


def _describe(exc: JidokaError | OSError, ctx: ToolContext) -> str:
    """An error as the model reads it: what went wrong and with which path or limit, without the
    session id (which the model has no use for) or the absolute root (which it should not see)."""
    if isinstance(exc, PathNotAllowed):
        return f"path {exc.path!r} not allowed: {exc.reason}"
    if isinstance(exc, LimitExceeded):
        where = f" for {exc.path!r}" if exc.path else ""
        got = f" (got {exc.actual})" if exc.actual is not None else ""
        return f"limit {exc.limit}={exc.maximum} exceeded{where}{got}"
    if isinstance(exc, JidokaError):
        return exc.message.removeprefix(f"session {ctx.session_id!r}: ")
    where = exc.filename if isinstance(exc.filename, str) else ""
    if where.startswith(ctx.root + os.sep):
        where = where[len(ctx.root) + 1 :]
    return f"{exc.strerror or type(exc).__name__}" + (f": {where!r}" if where else "")


async def _call(
    function: Callable[..., Any], args: msgspec.Struct, ctx: ToolContext, seconds: float
) -> Any:
    deadline = time.monotonic() + seconds
    kwargs = msgspec.structs.asdict(args)
    async with asyncio.timeout(seconds):
        return await asyncio.to_thread(function, ctx, **kwargs, deadline=deadline)


def _decode(tool: Tool, call: ToolCall, ctx: ToolContext) -> msgspec.Struct:
    """The call's arguments as the tool's Struct. Empty arguments mean ``{}`` (some models send
    nothing for a call without arguments)."""
    if len(call.arguments) > 8 * ctx.max_write_bytes:  # JSON escapes at most ~6 bytes per byte
        raise ToolError(
            f"arguments for {tool.name} are longer than {8 * ctx.max_write_bytes} chars"
        )
    text = call.arguments if call.arguments.strip() else "{}"
    try:
        return msgspec.json.decode(text, type=tool.args)
    except msgspec.ValidationError as exc:
        raise ToolError(f"invalid arguments for {tool.name}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ToolError(f"arguments for {tool.name} are not valid JSON: {exc}") from None


def _preview(
    ctx: ToolContext,
    path: str,
    content: str | None = None,
    old_text: str | None = None,
    new_text: str | None = None,
    *,
    deadline: float | None = None,
) -> tuple[str, str]:
    editing = content is None
    key, old = files.current_text(ctx, path, strict=editing)
    if editing:
        assert old_text is not None  # EditFileArgs has both
        assert new_text is not None
        if old is None:
            raise PathNotAllowed(ctx.session_id, path, "no such file")
        new = files.edit_text(old, old_text, new_text, key)
    else:
        assert content is not None
        new = content
    files.encode_content(ctx, new, path)
    return key, _diff(ctx, key, old, new)


def _diff(ctx: ToolContext, key: str, old: str | None, new: str) -> str:
    before = "/dev/null" if old is None else quote_path(key, "a/")
    after = quote_path(key, "b/")
    lines = difflib.unified_diff(_keep_ends(old or ""), _keep_ends(new), before, after)
    out: list[str] = []
    for line in lines:
        if len(out) == ctx.max_diff_lines:
            out.append(f"[diff truncated: {1 + sum(1 for _ in lines)} more lines]\n")
            break
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    text = "".join(out) if out else f"[no changes to {quote_path(key)}]"
    if len(text) > ctx.max_output_chars:
        text = text[: ctx.max_output_chars - 40] + "\n[diff truncated: too long]\n"
    return text


def _keep_ends(text: str) -> list[str]:
    parts = text.split("\n")
    return [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _schema(args: type[msgspec.Struct]) -> dict[str, Any]:
    """A plain object schema (no ``$ref``/``$defs``, no title) as OpenAI-style tool calling wants;
    generated, never hand-written."""
    raw = msgspec.json.schema(args)
    schema: dict[str, Any] = _inline(raw, raw.get("$defs", {}))
    schema.pop("title", None)
    schema.pop("description", None)  # the tool's description says it
    schema["additionalProperties"] = False  # forbid_unknown_fields already says so; make sure
    schema.setdefault("required", [])
    return schema


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {key: _inline(value, defs) for key, value in node.items() if key != "$defs"}
    if isinstance(node, list):
        return [_inline(value, defs) for value in node]
    return node


def _unknown(name: str, tools: dict[str, Tool]) -> str:
    if name in _KNOWN:
        return f"tool {name!r} is not allowed in this session (read-only: it would write files)"
    return f"unknown tool {name!r}; available: {', '.join(tools)}"


def _error(call: ToolCall, message: str) -> ToolResult:
    return ToolResult(call_id=call.id, name=call.name, content=f"error: {message}", is_error=True)


@functools.cache
def _default_registry(allow_write: bool) -> ToolRegistry:
    return ToolRegistry(tool for tool in _TOOLS if allow_write or not tool.writes)
