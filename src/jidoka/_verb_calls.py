"""How each verb of :mod:`jidoka.verbs` runs on a principal-scoped client: the ``call`` of its
declaration (what the transports run once the scope is checked), and the ``Location`` of what a
201 created. Apart from the table so that the table reads as the list of verbs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from . import wire
from .problems import KeyNotFound
from .runs.info import RunInfo, RunPage
from .session.branching import Rewound
from .session.context import CONTEXT_PARTS, ContextBundle
from .session.info import SessionInfo
from .session.state import Message

if TYPE_CHECKING:
    from .scoped import ScopedClient

__all__ = [
    "Call",
    "approve_call",
    "build_context_call",
    "cluster_status_call",
    "compact_session_call",
    "create_session_call",
    "delete_saved_session_call",
    "fork_session_call",
    "get_working_context_call",
    "list_saved_sessions_call",
    "list_sessions_call",
    "put_working_context_call",
    "read_events_call",
    "rewind_session_call",
    "run_location",
    "send_message_call",
    "session_location",
    "start_run_call",
    "join_run_call",
    "list_runs_call",
    "session_verb",
    "terminate_session_call",
]

#: A verb's ``call``: the scoped client and the verb's argument struct.
Call = Callable[["ScopedClient", Any], Awaitable[Any]]

_MISSING: Any = object()


async def create_session_call(c: ScopedClient, a: Any) -> SessionInfo:
    sid = await c.create_session(
        metadata=a.metadata, config=a.config, llm_config=a.llm_config, project_root=a.project_root
    )
    return await c.client.get_session_info(sid)


async def list_sessions_call(c: ScopedClient, a: Any) -> wire.SessionPage:
    # One more than asked: whether there is a next page, without a second query.
    found = await c.client.list_sessions(a.status, limit=a.limit + 1, after=a.cursor, owner=c.owner)
    page = found[: a.limit]
    cursor = page[-1].session_id if len(found) > a.limit and page else None
    return wire.SessionPage(sessions=page, next_cursor=cursor)


async def read_events_call(c: ScopedClient, a: Any) -> wire.EventList:
    events = await c.client.read_events(a.session_id, after_seq=a.after_seq, limit=a.limit)
    return wire.EventList(events=events)


async def terminate_session_call(c: ScopedClient, a: Any) -> SessionInfo:
    return await c.client.terminate_session(a.session_id, reason=a.reason)


async def get_working_context_call(c: ScopedClient, a: Any) -> wire.WorkingContextValue:
    value = await c.client.get_working_context(a.session_id, a.key, _MISSING)
    if value is _MISSING:
        raise KeyNotFound(a.session_id, a.key)
    return wire.WorkingContextValue(key=a.key, value=value)


async def put_working_context_call(c: ScopedClient, a: Any) -> wire.WorkingContextValue:
    await c.client.put_working_context(a.session_id, a.key, a.value)
    return wire.WorkingContextValue(key=a.key, value=a.value)


async def build_context_call(c: ScopedClient, a: Any) -> ContextBundle:
    include = CONTEXT_PARTS if a.include is None else a.include
    return await c.client.build_context(a.session_id, include, a.max_tokens)


async def fork_session_call(c: ScopedClient, a: Any) -> SessionInfo:
    sid = await c.fork_session(a.session_id, at_seq=a.at_seq, metadata=a.metadata)
    return await c.client.get_session_info(sid)


async def rewind_session_call(c: ScopedClient, a: Any) -> Rewound:
    return await c.client.rewind_session(a.session_id, to_seq=a.to_seq, cancel=a.cancel)


async def compact_session_call(c: ScopedClient, a: Any) -> wire.Compacted:
    return await c.client.compact_session(
        a.session_id, instructions=a.instructions, keep_last=a.keep_last
    )


async def list_saved_sessions_call(c: ScopedClient, a: Any) -> wire.SavedSessionList:
    found = await c.client.list_saved_sessions(owner=c.owner)
    return wire.SavedSessionList(saved_sessions=found)


async def cluster_status_call(c: ScopedClient, a: Any) -> wire.ClusterStatus:
    return await c.client.cluster_status()


async def approve_call(c: ScopedClient, a: Any) -> None:
    await c.client.approve(a.session_id, a.call_id, a.allow)


async def delete_saved_session_call(c: ScopedClient, a: Any) -> None:
    await c.client.delete_saved_session(a.session_id)


async def send_message_call(c: ScopedClient, a: Any) -> Message:
    return await c.client.send_message(
        a.session_id, a.role, a.content, idempotency_key=a.idempotency_key
    )


async def start_run_call(c: ScopedClient, a: Any) -> RunInfo:
    return await c.client.start_run(
        a.session_id,
        a.text,
        multitask=a.multitask,
        webhook=a.webhook,
        idempotency_key=a.idempotency_key,
        metadata=a.metadata,
    )


async def list_runs_call(c: ScopedClient, a: Any) -> RunPage:
    return await c.client.list_runs(a.session_id, status=a.status, limit=a.limit, cursor=a.cursor)


async def join_run_call(c: ScopedClient, a: Any) -> RunInfo:
    return await c.client.join_run(a.session_id, a.run_id, timeout=a.timeout)


def session_verb(method: str, *fields: str, wrap: type | None = None, key: str = "") -> Call:
    """The common shape: ``client.<method>(session_id, *fields)``, its answer wrapped in
    ``wrap(<key>=answer)`` when the wire wraps it (collections and bare values)."""

    async def call(c: ScopedClient, a: Any) -> Any:
        answer = await getattr(c.client, method)(a.session_id, *(getattr(a, f) for f in fields))
        return answer if wrap is None else wrap(**{key: answer})

    call.__name__ = f"_{method}"
    return call


def session_location(info: SessionInfo) -> str:
    return f"/v1/sessions/{quote(info.session_id, safe='')}"


def run_location(run: RunInfo) -> str:
    return f"/v1/sessions/{quote(run.session_id, safe='')}/runs/{quote(run.run_id, safe='')}"
