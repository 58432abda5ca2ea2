"""JSON and problem+json responses, and the few errors only the HTTP layer can raise."""

from __future__ import annotations

import logging
from typing import Any, Final

import msgspec
from starlette.responses import Response

from ..errors import InvalidArgument, JidokaError, LimitExceeded, Unauthorized
from ..problems import PROBLEM_BASE, PROBLEM_CONTENT_TYPE, problem_for, status_for
from .operations import KeyNotFound

__all__ = [
    "MalformedBody",
    "RouteNotFound",
    "json_response",
    "problem_body",
    "problem_response",
]

logger = logging.getLogger("jidoka.server")
_encode: Final = msgspec.json.Encoder().encode


class MalformedBody(InvalidArgument):
    """The request body is not JSON at all (400; a JSON body of the wrong shape is 422)."""


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
    """The status and problem document for ``exc``, including the server-only kinds."""
    problem = problem_for(exc, request_id=request_id)
    if isinstance(exc, MalformedBody):
        problem["status"] = 400
    elif isinstance(exc, KeyNotFound):
        problem.update(
            type=PROBLEM_BASE + "working-context-key-not-found",
            title="Working-context key not found",
            status=404,
            key=exc.key,
        )
    elif isinstance(exc, RouteNotFound):
        slug, title = (
            ("not-found", "Not found") if exc.status == 404 else
            ("method-not-allowed", "Method not allowed")
        )  # fmt: skip
        problem.update(type=PROBLEM_BASE + slug, title=title, status=exc.status)
    else:
        problem["status"] = status_for(exc)
    return int(problem["status"]), problem


def problem_response(
    exc: JidokaError, request_id: str | None, headers: dict[str, str] | None = None
) -> Response:
    status, problem = problem_body(exc, request_id)
    extra = dict(headers or {})
    if isinstance(exc, Unauthorized):
        extra["WWW-Authenticate"] = 'Bearer realm="jidoka"'
    if isinstance(exc, RouteNotFound) and exc.allow is not None:
        extra["Allow"] = exc.allow
    if isinstance(exc, LimitExceeded) and status == 429:
        extra["Retry-After"] = "1"
    if status >= 500:
        logger.error("request %s failed: %s", request_id, exc)
    return Response(_encode(problem), status, extra, media_type=PROBLEM_CONTENT_TYPE)
