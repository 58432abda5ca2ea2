"""How a turn's model calls are steered and how a failed turn is told: the ``tool_choice`` of
each call and the ``error`` event a failure ends a turn with (pure functions of the turn's
facts, kept beside :mod:`.orchestrator` so its turn loop reads as the loop)."""

from __future__ import annotations

import msgspec

from ..errors import InvalidConfig, JidokaError, LimitExceeded, LLMError
from ..payloads import ErrorData
from .types import Usage
from .usage import usage_data

__all__ = ["choice_for", "error_code", "failure_data"]


def failure_data(exc: Exception, usage: Usage, iterations: int) -> ErrorData:
    """The ``error`` event of a turn that failed with ``exc``: its code and message, the
    error's own fields, and the usage so far (counted in ``SessionInfo.usage`` too)."""
    if isinstance(exc, JidokaError):
        message = exc.message
    else:  # a bug of ours: say so, without details that belong in the log
        message = f"internal error ({type(exc).__name__}); see the server log"
    used = usage_data(usage) if usage.total_tokens or usage.estimated else msgspec.UNSET
    data = ErrorData(code=error_code(exc), iterations=iterations, message=message, usage=used)
    if isinstance(exc, LLMError):
        data = msgspec.structs.replace(
            data, provider=exc.provider, status=exc.status, retryable=exc.retryable
        )
    elif isinstance(exc, LimitExceeded):
        data = msgspec.structs.replace(data, limit=exc.limit, maximum=exc.maximum)
    elif isinstance(exc, InvalidConfig):
        data = msgspec.structs.replace(data, field=exc.field)
    return data


def error_code(exc: Exception) -> str:
    """The ``code`` of a turn's ``error`` event."""
    if isinstance(exc, LLMError):
        return "llm_error"
    if isinstance(exc, LimitExceeded):
        return "max_iterations" if exc.limit == "max_iterations" else "limit_exceeded"
    if isinstance(exc, InvalidConfig):
        return "invalid_config"
    if isinstance(exc, JidokaError):
        return "error"
    return "internal_error"


def choice_for(tool_choice: object, iteration: int, last: int) -> str | None:
    """``tool_choice`` for one call of a turn. The turn's last allowed call is ``none``: a call
    there would end the turn in ``LimitExceeded`` anyway, so the model is asked to answer from
    what its tools found instead (small local models otherwise call tools until the limit).
    Else ``llm_config.tool_choice``: ``none`` for every call; a tool's name or ``required``
    only for the first (the model must be free to answer after); ``auto`` or unset: nothing."""
    if iteration >= last:
        return "none"
    if not isinstance(tool_choice, str) or tool_choice == "auto":
        return None
    return tool_choice if tool_choice == "none" or iteration == 1 else None
