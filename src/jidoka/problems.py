"""Errors as RFC 9457 problem documents, and back.

The server turns every :class:`~jidoka.JidokaError` into an ``application/problem+json`` body with
a stable ``type`` URI per error class; :class:`~jidoka.RemoteClient` turns that body back into the
same exception class with the same attributes, so ``except SessionNotFound`` works the same in
process and over the network. Both directions live here, in one table, so they cannot drift.

The ``type`` URIs are identifiers, not links: ``https://jidoka.dev/problems/<slug>``. Clients
should switch on ``type`` (or on the exception class), never on ``detail``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple

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
    OriginNotAllowed,
    PathNotAllowed,
    RuntimeClosed,
    SessionBusy,
    SessionExists,
    SessionNotFound,
    SessionTerminated,
    StoreError,
    Unauthorized,
    UnsupportedMediaType,
)

__all__ = [
    "PROBLEM_BASE",
    "PROBLEM_CONTENT_TYPE",
    "ProblemKind",
    "error_from_problem",
    "problem_for",
    "status_for",
]

PROBLEM_BASE: Final = "https://jidoka.dev/problems/"
PROBLEM_CONTENT_TYPE: Final = "application/problem+json"


class ProblemKind(NamedTuple):
    """How one error class travels: its slug (the ``type`` URI's last part), HTTP status and
    title (a short summary that never changes between occurrences, as RFC 9457 asks)."""

    error: type[JidokaError]
    slug: str
    status: int
    title: str

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.slug


#: Most specific class first: the first ``isinstance`` match wins.
KINDS: Final = (
    ProblemKind(SessionNotFound, "session-not-found", 404, "Session not found"),
    ProblemKind(SessionTerminated, "session-terminated", 409, "Session terminated"),
    ProblemKind(InvalidTransition, "invalid-transition", 409, "Invalid lifecycle transition"),
    ProblemKind(SessionExists, "session-exists", 409, "Session already live"),
    ProblemKind(SessionBusy, "session-busy", 409, "Session busy with a turn"),
    ProblemKind(LLMError, "llm-error", 502, "Model provider failed"),
    ProblemKind(InvalidRole, "invalid-role", 422, "Invalid message role"),
    ProblemKind(InvalidConfig, "invalid-config", 422, "Invalid configuration"),
    ProblemKind(UnsupportedMediaType, "unsupported-media-type", 415, "Request body is not JSON"),
    ProblemKind(InvalidArgument, "invalid-argument", 422, "Invalid argument"),
    # 422, not 403: the caller may act on the session; the path it named is what is refused.
    ProblemKind(PathNotAllowed, "path-not-allowed", 422, "Path not allowed"),
    ProblemKind(LimitExceeded, "limit-exceeded", 429, "Limit exceeded"),
    ProblemKind(Unauthorized, "unauthorized", 401, "Unauthorized"),
    # The browser checks (docs/operations.md, "Browsers and the local server").
    ProblemKind(HostNotAllowed, "host-not-allowed", 421, "Host not allowed"),
    ProblemKind(OriginNotAllowed, "origin-not-allowed", 403, "Origin not allowed"),
    ProblemKind(StoreError, "store-error", 503, "Session store unavailable"),
    ProblemKind(RuntimeClosed, "runtime-closed", 503, "Runtime shutting down"),
    ProblemKind(DataDirLocked, "data-dir-locked", 503, "Data directory locked"),
    ProblemKind(JidokaError, "internal-error", 500, "Internal error"),
)
_BY_SLUG: Final = {kind.slug: kind for kind in KINDS}

#: Extra members a problem may carry: the error's attributes, so nothing is lost in transit.
_MEMBERS: Final = (
    "session_id",
    "argument",
    "field",
    "role",
    "path",
    "reason",
    "limit",
    "maximum",
    "actual",
    "from_status",
    "to_status",
    "data_dir",
    "provider",
    "host",
    "origin",
    "content_type",
)


def _kind_of(exc: JidokaError) -> ProblemKind:
    for kind in KINDS:
        if isinstance(exc, kind.error):
            return kind
    return KINDS[-1]  # pragma: no cover - JidokaError matches everything


def status_for(exc: JidokaError) -> int:
    """The HTTP status for ``exc``. A size limit (``*_bytes``) is 413, any other limit 429."""
    if isinstance(exc, LimitExceeded) and exc.limit.endswith("_bytes"):
        return 413
    return _kind_of(exc).status


def problem_for(exc: JidokaError, *, request_id: str | None = None) -> dict[str, Any]:
    """The problem document for ``exc`` (no traceback, only what the error says of itself)."""
    kind = _kind_of(exc)
    problem: dict[str, Any] = {
        "type": kind.type_uri,
        "title": kind.title,
        "status": status_for(exc),
        "detail": exc.message,
    }
    for name in _MEMBERS:
        value = getattr(exc, name, None)
        if isinstance(value, str | int) and not isinstance(value, bool):
            problem[name] = value
    if isinstance(exc, LLMError):
        problem["retryable"] = exc.retryable
        if exc.status is not None:
            problem["provider_status"] = exc.status
    if request_id is not None:
        problem["request_id"] = request_id
    return problem


def _str(problem: Mapping[str, Any], name: str, default: str = "") -> str:
    value = problem.get(name)
    return value if isinstance(value, str) else default


def _int(problem: Mapping[str, Any], name: str) -> int | None:
    value = problem.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _rebuild_limit(problem: Mapping[str, Any], sid: str | None, detail: str) -> JidokaError:
    return LimitExceeded(
        _str(problem, "limit", "unknown"),
        _int(problem, "maximum") or 0,
        session_id=sid,
        actual=_int(problem, "actual"),
        path=problem.get("path") if isinstance(problem.get("path"), str) else None,
    )


_REBUILD: Final[dict[str, Callable[[Mapping[str, Any], str | None, str], JidokaError]]] = {
    "session-not-found": lambda p, sid, d: SessionNotFound(sid or ""),
    "session-terminated": lambda p, sid, d: SessionTerminated(
        sid or "", reason=_str(p, "reason") or None
    ),
    "invalid-transition": lambda p, sid, d: InvalidTransition(
        sid or "", _str(p, "from_status"), _str(p, "to_status")
    ),
    "session-exists": lambda p, sid, d: SessionExists(sid or ""),
    "session-busy": lambda p, sid, d: SessionBusy(sid or ""),
    "llm-error": lambda p, sid, d: LLMError(
        d,
        provider=_str(p, "provider", "unknown"),
        session_id=sid,
        status=_int(p, "provider_status"),
        retryable=p.get("retryable") is True,
    ),
    "invalid-role": lambda p, sid, d: InvalidRole(sid, p.get("role")),
    "invalid-config": lambda p, sid, d: _same_detail(
        InvalidConfig(d, field=_str(p, "field", "config")), sid
    ),
    "unsupported-media-type": lambda p, sid, d: UnsupportedMediaType(
        p.get("content_type") if isinstance(p.get("content_type"), str) else None
    ),
    "host-not-allowed": lambda p, sid, d: HostNotAllowed(_str(p, "host")),
    "origin-not-allowed": lambda p, sid, d: OriginNotAllowed(_str(p, "origin")),
    "invalid-argument": lambda p, sid, d: _same_detail(
        InvalidArgument(d, argument=_str(p, "argument", "request")), sid
    ),
    "path-not-allowed": lambda p, sid, d: PathNotAllowed(
        sid, _str(p, "path"), _str(p, "reason", "refused")
    ),
    "limit-exceeded": _rebuild_limit,
    "unauthorized": lambda p, sid, d: Unauthorized(d, session_id=sid),
    "store-error": lambda p, sid, d: StoreError(d, session_id=sid),
    "runtime-closed": lambda p, sid, d: RuntimeClosed(d, session_id=sid),
    "data-dir-locked": lambda p, sid, d: _same_detail(DataDirLocked(_str(p, "data_dir")), None),
}


def _same_detail(exc: JidokaError, session_id: str | None) -> JidokaError:
    """Keep the server's wording: the detail already names the session where one applies."""
    exc.session_id = session_id
    return exc


def error_from_problem(problem: Mapping[str, Any], *, status: int) -> JidokaError:
    """The exception a problem document stands for (``JidokaError`` if its type is unknown).

    The rebuilt exception carries the same attributes; its message is the server's ``detail``.
    """
    type_uri = _str(problem, "type")
    slug = type_uri[len(PROBLEM_BASE) :] if type_uri.startswith(PROBLEM_BASE) else ""
    sid = problem.get("session_id") if isinstance(problem.get("session_id"), str) else None
    detail = _str(problem, "detail") or _str(problem, "title") or f"HTTP {status}"
    rebuild = _REBUILD.get(slug)
    if rebuild is None:
        return JidokaError(detail, session_id=sid)
    exc = rebuild(problem, sid, detail)
    exc.args = (detail,)
    return exc
