"""Telemetry spans around the manager's operations, whose ending cannot fail the operation.

By the time a span ends, the operation it timed may have committed; an exporter or span
processor raising then must not turn a done command into an error (a client told so would
retry it). Every operation of the session manager that commits (create, restore, terminate, a
client command) is timed through :func:`guarded_span` for that reason.
"""

from __future__ import annotations

import contextlib
import logging
from contextlib import AbstractContextManager
from types import TracebackType

from opentelemetry.trace import Span

from ..telemetry import Telemetry

__all__ = ["guarded_span"]

logger = logging.getLogger("jidoka.manager")


def guarded_span(
    telemetry: Telemetry, operation: str, session_id: str | None = None
) -> AbstractContextManager[Span | None]:
    """The operation's span, whose *ending* cannot fail the operation (see _GuardedSpan)."""
    span = telemetry.span(operation, session_id)
    if isinstance(span, contextlib.nullcontext):  # tracing off: nothing that can fail
        return span
    return _GuardedSpan(span, operation, session_id)


class _GuardedSpan:
    """A telemetry span whose ending cannot fail the operation it timed.

    Such a failure is logged with the session id; an exception the operation itself raised
    passes through unchanged.
    """

    __slots__ = ("_inner", "_operation", "_session_id")

    def __init__(
        self, inner: AbstractContextManager[Span | None], operation: str, session_id: str | None
    ) -> None:
        self._inner = inner
        self._operation = operation
        self._session_id = session_id

    def __enter__(self) -> Span | None:
        return self._inner.__enter__()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self._inner.__exit__(kind, error, traceback)
        except Exception as exc:
            if exc is not error:
                logger.error(
                    "session %s: ending the %s span failed (%r); the operation stands",
                    self._session_id,
                    self._operation,
                    exc,
                    exc_info=exc,
                    extra={"session_id": self._session_id, "step": "telemetry"},
                )
