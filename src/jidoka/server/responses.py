"""JSON and problem+json responses, and the few errors only the HTTP layer can raise."""

from __future__ import annotations

import logging
from typing import Any, Final

import msgspec
from starlette.responses import Response

from ..errors import JidokaError, LimitExceeded, NotOwner, RuntimeClosed, Unauthorized
from ..problems import PROBLEM_BASE, PROBLEM_CONTENT_TYPE, MalformedBody, problem_for
from ..store.base import CommitOutcomeUnknown, StoreUnavailable

__all__ = [
    "MalformedBody",
    "RouteNotFound",
    "json_response",
    "problem_body",
    "problem_response",
]

logger = logging.getLogger("jidoka.server")
_encode: Final = msgspec.json.Encoder().encode


class RouteNotFound(JidokaError):
    """No route has this path (404), or it has no handler for the method (405, with ``allow``:
    every method the path has, for the ``Allow`` header)."""

    def __init__(self, message: str, *, status: int, allow: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.allow = allow


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(_encode(content), status, headers, media_type="application/json")


def problem_body(exc: JidokaError, request_id: str | None) -> tuple[int, dict[str, Any]]:
    """The status and problem document for ``exc`` (:data:`~jidoka.problems.PROBLEMS`' row;
    a missing route, whose slug follows its status, is the one kind outside the table)."""
    problem = problem_for(exc, request_id=request_id)
    if isinstance(exc, RouteNotFound):
        slug, title = (
            ("not-found", "Not found") if exc.status == 404 else
            ("method-not-allowed", "Method not allowed")
        )  # fmt: skip
        problem.update(type=PROBLEM_BASE + slug, title=title, status=exc.status)
    return int(problem["status"]), problem


def _retry_soon(exc: JidokaError) -> bool:
    """Errors a client should simply send again shortly: another node owns the session (or
    will once a lost node's lease ends), the store cannot be reached, the server is stopping.
    Not an unknown outcome: that one is read from the log before anything is resent."""
    if isinstance(exc, CommitOutcomeUnknown):
        return False
    return isinstance(exc, NotOwner | StoreUnavailable | RuntimeClosed)


def problem_response(
    exc: JidokaError, request_id: str | None, headers: dict[str, str] | None = None
) -> Response:
    status, problem = problem_body(exc, request_id)
    extra = dict(headers or {})
    if isinstance(exc, Unauthorized):
        extra["WWW-Authenticate"] = 'Bearer realm="jidoka"'
    if isinstance(exc, RouteNotFound) and exc.allow is not None:
        extra["Allow"] = exc.allow
    if (isinstance(exc, LimitExceeded) and status == 429) or _retry_soon(exc):
        extra["Retry-After"] = "1"
    if status >= 500:
        logger.error("request %s failed: %s", request_id, exc)
    return Response(_encode(problem), status, extra, media_type=PROBLEM_CONTENT_TYPE)
