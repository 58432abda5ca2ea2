"""The tools ``/v1/mcp`` offers: one :class:`McpTool` per entry of :data:`MCP_TOOLS`.

Each tool is a thin call of one verb of the verb table (:data:`jidoka.verbs.VERBS`) on the
caller's :class:`~jidoka.scoped.ScopedClient`, so an MCP client can do exactly what the same
principal could do over HTTP, and nothing else: another principal's session is not found, the
same as over HTTP. A tool takes the verb's own argument struct unless it says otherwise (a
default the verb does not have, like ``send_message``'s ``role``, or an argument only the tool
reads, like ``get_history``'s ``limit``); its input schema is that struct's JSON Schema, so what
the schema promises is what is checked. Adding a tool is one entry: ``tool("start_run", "...")``.

What a tool answers is its verb's answer as JSON (text content, and the same as structured
content); a tool may present it otherwise (``chat``: the assistant's text and the usage). A
:class:`~jidoka.JidokaError` becomes a tool error (``isError``) whose text is the problem's
title and detail (which names the session or the argument) and whose structured content is the
problem document, as the HTTP API would have answered.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal, NamedTuple

import msgspec

from ..errors import InvalidArgument, JidokaError
from ..problems import problem_for
from ..scoped import ScopedClient
from ..verbs import MAX_PAGE, Verb, by_name
from .inputs import NestingTooDeep, decode_json

__all__ = ["MCP_TOOLS", "Answer", "McpTool", "Runner", "error_answer", "tool", "tools_by_name"]


class Answer(NamedTuple):
    """What a tool call gives back: the text a model reads, the same as structured JSON (an
    object, or ``None``), and whether it is an error."""

    text: str
    structured: dict[str, Any] | None
    is_error: bool = False


#: How a tool turns its verb's answer into an :class:`Answer`: ``(tool arguments, answer)``.
Present = Callable[[Any, Any], Answer]
#: How a verb runs for a tool: ``(scoped client, verb, the verb's arguments) -> its answer``.
Runner = Callable[[ScopedClient, Verb, Any], Awaitable[Any]]
_ENCODER: Final = msgspec.json.Encoder()
#: msgspec's words for an argument the tool does not take (it points at the object, not it).
_UNKNOWN_FIELD: Final = re.compile(r"unknown field `([^`]*)`")


def as_json(args: Any, result: Any) -> Answer:
    """The verb's answer as the HTTP API encodes it (``null`` for a verb without one)."""
    data = msgspec.to_builtins(result)
    structured = data if isinstance(data, dict) else {"result": data}
    return Answer(_ENCODER.encode(data).decode(), structured)


def error_answer(exc: JidokaError) -> Answer:
    """A tool error: the problem's title and detail as text, the problem document as JSON."""
    problem = problem_for(exc)
    return Answer(f"{problem['title']}: {problem['detail']}", problem, is_error=True)


@dataclass(frozen=True, slots=True)
class McpTool:
    """One tool: its name and description, the verb it calls, the struct its arguments are
    (the input schema is that struct's), and how it presents the verb's answer."""

    name: str
    description: str
    verb: Verb
    args: type[msgspec.Struct]
    present: Present = as_json
    #: The argument fields the verb takes (the rest only the tool reads), derived.
    passed: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        theirs = msgspec.structs.fields(self.verb.args)
        takes = {spec.name for spec in theirs}
        mine = [spec.name for spec in msgspec.structs.fields(self.args)]
        missing = {spec.name for spec in theirs if spec.required and spec.name not in mine}
        if missing:
            raise ValueError(f"tool {self.name}: arguments lack {sorted(missing)} of its verb")
        object.__setattr__(self, "passed", tuple(name for name in mine if name in takes))

    def input_schema(self) -> dict[str, Any]:
        """The arguments' JSON Schema: an object schema at the top, its other types under
        ``$defs`` (MCP wants ``type: object`` at the top, not a ``$ref``)."""
        (ref,), defs = msgspec.json.schema_components([self.args], ref_template="#/$defs/{name}")
        name = ref["$ref"].rsplit("/", 1)[1]
        schema: dict[str, Any] = dict(defs.pop(name))
        schema.pop("title", None)
        if not schema.get("required"):
            schema.pop("required", None)  # an empty list is no valid schema before 2019-09
        if defs:
            schema["$defs"] = defs
        return schema

    def arguments(self, raw: Mapping[str, Any] | None) -> Any:
        """The call's arguments as :attr:`args`, or an :class:`InvalidArgument` naming the one
        that is wrong (a missing one, one of the wrong type, one the tool does not take), as a
        request body is checked over HTTP: JSON nested deeper than the HTTP API takes is
        refused the same way (``NestingTooDeep``)."""
        try:
            document = _ENCODER.encode(dict(raw or {}))
        except (
            TypeError,
            ValueError,
            msgspec.EncodeError,
        ) as exc:  # pragma: no cover - decoded JSON
            raise InvalidArgument(f"{self.name}: {exc}", argument="arguments") from None
        try:
            return decode_json(document, self.args, argument="arguments", what="the arguments")
        except NestingTooDeep:
            raise
        except InvalidArgument as exc:
            unknown = _UNKNOWN_FIELD.search(exc.message)
            where = unknown.group(1) if unknown is not None else exc.argument
            named = (raw or {}).get("session_id")  # the session the call is about, if any
            raise InvalidArgument(
                f"{self.name}: {exc.message}",
                argument=where,
                session_id=named if isinstance(named, str) and named else None,
            ) from None

    async def call(
        self, scoped: ScopedClient, raw: Mapping[str, Any] | None, run: Runner | None = None
    ) -> Answer:
        """Run the tool for ``scoped``'s principal (with ``run``: where it says, as on a node
        of a cluster); a :class:`JidokaError` is the answer's error, anything else propagates
        (the SDK answers it as an internal error)."""
        try:
            args = self.arguments(raw)
            verb_args = self.verb.args(**{name: getattr(args, name) for name in self.passed})
            if run is None:
                result = await scoped.run(self.verb, verb_args)
            else:
                result = await run(scoped, self.verb, verb_args)
        except JidokaError as exc:
            return error_answer(exc)
        return self.present(args, result)


def tool(
    verb: str,
    description: str,
    *,
    name: str | None = None,
    args: type[msgspec.Struct] | None = None,
    present: Present = as_json,
) -> McpTool:
    """The tool for ``verb`` (named after it unless ``name``), taking the verb's arguments
    unless ``args`` says otherwise."""
    found = by_name(verb)
    if found is None or found.call is None:
        raise LookupError(f"no client verb {verb!r} for an MCP tool")
    return McpTool(name or verb, description, found, args or found.args, present)


# --- the arguments and answers that are the tools' own --------------------------------------


class SendMessageArgs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    session_id: str
    content: str
    role: str = "user"
    #: A retry with the same key (within 24 hours) answers the first message.
    idempotency_key: str | None = None


class HistoryArgs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    session_id: str
    view: Literal["full", "compacted"] = "full"
    #: The newest ``limit`` messages of the window only (all of it if absent).
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)] | None = None


def _chat_answer(args: Any, result: Any) -> Answer:
    """The assistant's answer as the text, with its usage and how the turn ended as JSON."""
    message = result.message
    structured = {
        "text": message.content,
        "seq": message.seq,
        "usage": msgspec.to_builtins(result.usage),
        "interrupted": result.interrupted,
        "finish_reason": result.finish_reason,
        "iterations": result.iterations,
    }
    return Answer(message.content, structured)


def _history_answer(args: Any, result: Any) -> Answer:
    """The window's messages, the newest ``limit`` of them if the call gave one."""
    messages = result.messages
    if args.limit is not None:
        messages = messages[-args.limit :]
    return as_json(args, {"messages": messages})


def _approval_answer(args: Any, result: Any) -> Answer:
    return as_json(args, {"session_id": args.session_id, "call_id": args.call_id,
                          "allow": args.allow})  # fmt: skip


#: Every tool of ``/v1/mcp``, in the order ``tools/list`` gives them.
MCP_TOOLS: Final[tuple[McpTool, ...]] = (
    tool("create_session",
         "Create a Jidoka coding session owned by you. Optional: project_root (a directory "
         "on the server, within its projects directory if it has one), metadata (any JSON "
         "object), config (session settings, e.g. {\"allow_write\": \"ask\"}) and llm_config "
         "(the model). Answers the session's description; its session_id names it in every "
         "other tool."),
    tool("send_message",
         "Append a message (its text in content) to a session's conversation without "
         "running the agent; role 'user' unless given ('user', 'assistant' or 'system'). "
         "Answers the stored message with its seq; a retry with the same idempotency_key "
         "(within 24 hours) answers the first message instead of sending it again.",
         args=SendMessageArgs),
    tool("chat",
         "Run one agent turn in a session on text and wait for it to end. Answers the "
         "assistant's reply as text; the structured result adds the token usage, the "
         "message's seq and whether the turn was interrupted (cancel) or stopped early.",
         present=_chat_answer),
    tool("get_conversation_history",
         "Read a session's conversation window, oldest first. view 'full' (default) or "
         "'compacted' (the latest compaction's summary, then the messages after it); limit: "
         "only the newest so many messages.",
         name="get_history", args=HistoryArgs, present=_history_answer),
    tool("list_sessions",
         "List your sessions, a page at a time (limit, default 100; cursor: the next_cursor "
         "of the previous page; status: only sessions with this status)."),
    tool("cancel",
         "Stop the agent turn running in a session, if any. Answers whether one was running."),
    tool("approve",
         "Answer a write the agent asked approval for (sessions whose config has allow_write "
         "'ask'): call_id is the approval_requested event's call_id, allow true lets the "
         "write happen, false refuses it.",
         present=_approval_answer),
    tool("start_run",
         "Start an agent turn on text in the background and answer at once with the run "
         "(run_id, status 'queued'); get_run, join_run or the session's events follow it. "
         "multitask: what to do if a run is under way ('reject' (default), 'enqueue', "
         "'interrupt'); webhook: a URL POSTed the run, signed, when it ends (the server's "
         "allow-list must admit it); idempotency_key: a retry with the same key answers the "
         "first run; metadata: any JSON object kept with the run."),
    tool("get_run",
         "The run run_id as it is now: status (queued, running, completed, failed, cancelled, "
         "interrupted) and, once it ended, the assistant's message and the token usage."),
    tool("join_run",
         "Wait for the run run_id to end (at most timeout seconds, default 30) and answer it; "
         "still "
         "'running' if the time ran out (join again)."),
    tool("list_runs",
         "List a session's runs, newest first (limit, cursor, status)."),
    tool("cancel_run",
         "Cancel the run run_id: a queued one never starts, a running one stops (its partial "
         "answer is kept)."),
    tool("terminate_session",
         "Terminate a session (reason optional): it stops, its history stays readable, "
         "nothing can change it any more. Answers its final description."),
)  # fmt: skip

_BY_NAME: Final = {entry.name: entry for entry in MCP_TOOLS}


def tools_by_name() -> Mapping[str, McpTool]:
    """:data:`MCP_TOOLS` by name."""
    return _BY_NAME
