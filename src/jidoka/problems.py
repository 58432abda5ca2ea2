"""Errors as RFC 9457 problem documents, and back: one table, :data:`PROBLEMS`.

The server turns every :class:`~jidoka.JidokaError` into an ``application/problem+json`` body with
a stable ``type`` URI per error class; :class:`~jidoka.RemoteClient` turns that body back into the
same exception class with the same attributes, so ``except SessionNotFound`` works the same in
process and over the network. Each error class has one row saying both directions (its status,
``type`` URI, title, the fields it carries and how it is rebuilt), so they cannot drift: the HTTP
layer, the WebSocket and the remote client all read this table and nothing else.

The ``type`` URIs are identifiers, not links: ``https://jidoka.dev/problems/<slug>``. Clients
should switch on ``type`` (or on the exception class), never on ``detail``.

Three errors only the HTTP layer raises live here too, so that their rows need no import of the
server: :class:`MalformedBody`, :class:`NestingTooDeep` and :class:`KeyNotFound`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple, TypeAlias

from .errors import (
    DataDirLocked,
    HostNotAllowed,
    InvalidArgument,
    InvalidConfig,
    InvalidRole,
    InvalidTransition,
    JidokaError,
    LimitExceeded,
    LLMError,
    NotOwner,
    OriginNotAllowed,
    PathNotAllowed,
    ProjectRootUnavailable,
    RunNotFound,
    RuntimeClosed,
    SessionBusy,
    SessionExists,
    SessionNotFound,
    SessionTerminated,
    StoreError,
    Unauthorized,
    UnsupportedMediaType,
)
from .store.base import CommitOutcomeUnknown

__all__ = [
    "PROBLEMS",
    "PROBLEM_BASE",
    "PROBLEM_CONTENT_TYPE",
    "KeyNotFound",
    "MalformedBody",
    "NestingTooDeep",
    "Problem",
    "error_from_problem",
    "problem_for",
    "problem_of",
    "status_for",
]

PROBLEM_BASE: Final = "https://jidoka.dev/problems/"
PROBLEM_CONTENT_TYPE: Final = "application/problem+json"


class MalformedBody(InvalidArgument):
    """The request body is not JSON at all (400; a JSON body of the wrong shape is 422)."""


class NestingTooDeep(InvalidArgument):
    """A JSON document nests deeper than ``maximum`` levels (422; ``limit`` names the bound)."""

    def __init__(self, what: str, *, argument: str, maximum: int) -> None:
        super().__init__(
            f"{what} nests arrays and objects deeper than max_json_depth={maximum}",
            argument=argument,
        )
        self.limit = "max_json_depth"
        self.maximum = maximum


class KeyNotFound(JidokaError):
    """A working-context key the session does not hold (404 over HTTP); over the network,
    ``get_working_context`` answers its default instead of raising it."""

    def __init__(self, session_id: str | None, key: str) -> None:
        super().__init__(f"no working-context key {key!r}", session_id=session_id)
        self.key = key


#: Rebuilds an error from its problem document, its ``session_id`` and its ``detail``.
Rebuild: TypeAlias = Callable[[Mapping[str, Any], str | None, str], JidokaError]


class Problem(NamedTuple):
    """How one error class travels.

    ``slug`` is the ``type`` URI's last part; ``title`` a summary that never changes between
    occurrences (as RFC 9457 asks); ``fields`` the error's own members the document carries
    besides ``session_id`` (each an attribute of the same name, but ``provider_status``, which
    is ``LLMError.status``); ``rebuild`` makes the exception again on the client (``None``: the
    first row with the same slug does, as a body that is not JSON comes back an
    ``InvalidArgument``); ``status_of`` refines ``status`` for one error where it depends on
    its fields.
    """

    error: type[JidokaError]
    slug: str
    status: int
    title: str
    fields: tuple[str, ...]
    rebuild: Rebuild | None
    status_of: Callable[[Any], int] | None = None

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.slug


def _str(problem: Mapping[str, Any], name: str, default: str = "") -> str:
    value = problem.get(name)
    return value if isinstance(value, str) else default


def _opt_str(problem: Mapping[str, Any], name: str) -> str | None:
    value = problem.get(name)
    return value if isinstance(value, str) else None


def _int(problem: Mapping[str, Any], name: str) -> int | None:
    value = problem.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _same_detail(exc: JidokaError, session_id: str | None) -> JidokaError:
    """Keep the server's wording: the detail already names the session where one applies."""
    exc.session_id = session_id
    return exc


def _limit_status(exc: LimitExceeded) -> int:
    """A size limit (``*_bytes``) is 413 Content Too Large; any other limit 429."""
    return 413 if exc.limit.endswith("_bytes") else 429


#: Most specific class first: the first ``isinstance`` match wins, so a private subclass
#: (``SeqConflict``, ``ToolError`` ...) travels as its nearest public ancestor.
PROBLEMS: Final[tuple[Problem, ...]] = (
    Problem(SessionNotFound, "session-not-found", 404, "Session not found", (),
            lambda p, sid, d: SessionNotFound(sid or "")),
    Problem(RunNotFound, "run-not-found", 404, "Run not found", ("run_id",),
            lambda p, sid, d: RunNotFound(sid, _str(p, "run_id"))),
    Problem(KeyNotFound, "working-context-key-not-found", 404, "Working-context key not found",
            ("key",), lambda p, sid, d: KeyNotFound(sid, _str(p, "key"))),
    Problem(SessionTerminated, "session-terminated", 409, "Session terminated", ("reason",),
            lambda p, sid, d: SessionTerminated(sid or "", reason=_opt_str(p, "reason"))),
    Problem(InvalidTransition, "invalid-transition", 409, "Invalid lifecycle transition",
            ("from_status", "to_status"),
            lambda p, sid, d: InvalidTransition(
                sid or "", _str(p, "from_status"), _str(p, "to_status"))),
    Problem(SessionExists, "session-exists", 409, "Session already live", (),
            lambda p, sid, d: SessionExists(sid or "")),
    Problem(SessionBusy, "session-busy", 409, "Session busy with a turn", (),
            lambda p, sid, d: SessionBusy(sid or "")),
    Problem(LLMError, "llm-error", 502, "Model provider failed",
            ("provider", "retryable", "provider_status"),
            lambda p, sid, d: LLMError(
                d, provider=_str(p, "provider", "unknown"), session_id=sid,
                status=_int(p, "provider_status"), retryable=p.get("retryable") is True)),
    Problem(InvalidRole, "invalid-role", 422, "Invalid message role", ("argument", "role"),
            lambda p, sid, d: InvalidRole(sid, p.get("role"))),
    Problem(InvalidConfig, "invalid-config", 422, "Invalid configuration", ("argument", "field"),
            lambda p, sid, d: _same_detail(
                InvalidConfig(d, field=_str(p, "field", "config")), sid)),
    Problem(UnsupportedMediaType, "unsupported-media-type", 415, "Request body is not JSON",
            ("argument", "content_type"),
            lambda p, sid, d: UnsupportedMediaType(_opt_str(p, "content_type"))),
    Problem(MalformedBody, "invalid-argument", 400, "Invalid argument", ("argument",), None),
    Problem(NestingTooDeep, "invalid-argument", 422, "Invalid argument",
            ("argument", "limit", "maximum"), None),
    Problem(InvalidArgument, "invalid-argument", 422, "Invalid argument", ("argument",),
            lambda p, sid, d: _same_detail(
                InvalidArgument(d, argument=_str(p, "argument", "request")), sid)),
    # 422, not 403: the caller may act on the session; the path it named is what is refused.
    Problem(PathNotAllowed, "path-not-allowed", 422, "Path not allowed", ("path", "reason"),
            lambda p, sid, d: PathNotAllowed(sid, _str(p, "path"), _str(p, "reason", "refused"))),
    Problem(LimitExceeded, "limit-exceeded", 429, "Limit exceeded",
            ("path", "limit", "maximum", "actual"),
            lambda p, sid, d: LimitExceeded(
                _str(p, "limit", "unknown"), _int(p, "maximum") or 0, session_id=sid,
                actual=_int(p, "actual"), path=_opt_str(p, "path")),
            _limit_status),
    Problem(Unauthorized, "unauthorized", 401, "Unauthorized", (),
            lambda p, sid, d: Unauthorized(d, session_id=sid)),
    # The browser checks (docs/operations.md, "Browsers and the local server").
    Problem(HostNotAllowed, "host-not-allowed", 421, "Host not allowed", ("host",),
            lambda p, sid, d: HostNotAllowed(_str(p, "host"))),
    Problem(OriginNotAllowed, "origin-not-allowed", 403, "Origin not allowed", ("origin",),
            lambda p, sid, d: OriginNotAllowed(_str(p, "origin"))),
    # A cluster: another node owns the session (retry there; a forwarding node does so once).
    Problem(NotOwner, "not-owner", 421, "Not the owner node", ("owner", "owner_url"),
            lambda p, sid, d: NotOwner(sid or "", d, owner=_opt_str(p, "owner"),
                                       owner_url=_opt_str(p, "owner_url"))),
    Problem(ProjectRootUnavailable, "project-root-unavailable", 503, "Project root unavailable",
            ("path", "node"),
            lambda p, sid, d: _same_detail(
                ProjectRootUnavailable(sid or "", _str(p, "path"), _str(p, "node")), sid)),
    # Not "store-error": the command may have been stored, so a client must not simply send it
    # again; it reads the session's log (or its stream) once the store is back.
    Problem(CommitOutcomeUnknown, "commit-outcome-unknown", 503, "Commit outcome unknown", (),
            lambda p, sid, d: CommitOutcomeUnknown(d, session_id=sid)),
    Problem(StoreError, "store-error", 503, "Session store unavailable", (),
            lambda p, sid, d: StoreError(d, session_id=sid)),
    Problem(RuntimeClosed, "runtime-closed", 503, "Runtime shutting down", (),
            lambda p, sid, d: RuntimeClosed(d, session_id=sid)),
    Problem(DataDirLocked, "data-dir-locked", 503, "Data directory locked", ("data_dir",),
            lambda p, sid, d: _same_detail(DataDirLocked(_str(p, "data_dir")), None)),
    Problem(JidokaError, "internal-error", 500, "Internal error", (),
            lambda p, sid, d: JidokaError(d, session_id=sid)),
)  # fmt: skip
#: The row that rebuilds each slug: the first with a ``rebuild``.
_BY_SLUG: Final[dict[str, Problem]] = {
    row.slug: row for row in reversed(PROBLEMS) if row.rebuild is not None
}
#: Members whose value is a boolean (any other boolean is not a member's value).
_FLAGS: Final = frozenset({"retryable"})
#: Members whose attribute has another name.
_ATTRIBUTES: Final = {"provider_status": "status"}


def problem_of(exc: JidokaError) -> Problem:
    """The row of ``exc``'s class (or of its nearest ancestor that has one)."""
    for row in PROBLEMS:
        if isinstance(exc, row.error):
            return row
    return PROBLEMS[-1]  # pragma: no cover - JidokaError matches everything


def status_for(exc: JidokaError) -> int:
    """The HTTP status for ``exc`` (a size limit, ``*_bytes``, is 413; any other limit 429)."""
    row = problem_of(exc)
    return row.status if row.status_of is None else row.status_of(exc)


def _member(exc: JidokaError, name: str) -> str | int | bool | None:
    value = getattr(exc, _ATTRIBUTES.get(name, name), None)
    if isinstance(value, bool):
        return value if name in _FLAGS else None
    return value if isinstance(value, str | int) else None


def problem_for(exc: JidokaError, *, request_id: str | None = None) -> dict[str, Any]:
    """The problem document for ``exc`` (no traceback, only what the error says of itself)."""
    row = problem_of(exc)
    problem: dict[str, Any] = {
        "type": row.type_uri,
        "title": row.title,
        "status": row.status if row.status_of is None else row.status_of(exc),
        "detail": exc.message,
    }
    for name in ("session_id", *row.fields):
        value = _member(exc, name)
        if value is not None:  # None is left out, not sent as null
            problem[name] = value
    if request_id is not None:
        problem["request_id"] = request_id
    return problem


def error_from_problem(problem: Mapping[str, Any], *, status: int) -> JidokaError:
    """The exception a problem document stands for (``JidokaError`` if its type is unknown).

    The rebuilt exception carries the same attributes; its message is the server's ``detail``.
    """
    type_uri = _str(problem, "type")
    slug = type_uri[len(PROBLEM_BASE) :] if type_uri.startswith(PROBLEM_BASE) else ""
    sid = _opt_str(problem, "session_id")
    detail = _str(problem, "detail") or _str(problem, "title") or f"HTTP {status}"
    row = _BY_SLUG.get(slug)
    if row is None or row.rebuild is None:
        return JidokaError(detail, session_id=sid)
    exc = row.rebuild(problem, sid, detail)
    exc.args = (detail,)
    return exc
