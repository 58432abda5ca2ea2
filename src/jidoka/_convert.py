"""Turning plain data into a config struct, with an error that names the field at fault."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from .errors import InvalidConfig

__all__ = ["convert_or_raise"]

_T = TypeVar("_T")
_AT_PATH = re.compile(r"- at (?:`key` in )?`\$\.?([^`]*)`$")
_UNKNOWN = re.compile(r"unknown field `([^`]*)`")


def convert_or_raise(data: dict[str, Any], kind: type[_T], *, session_id: str | None = None) -> _T:
    """``msgspec.convert`` that turns a validation error into :class:`InvalidConfig`.

    The error's ``field`` is the dotted path msgspec reports (``features.x``), so callers and
    HTTP clients learn exactly which field was wrong.
    """
    try:
        return msgspec.convert(data, kind, strict=True)
    except msgspec.ValidationError as exc:
        text = str(exc)
        unknown = _UNKNOWN.search(text)
        at = _AT_PATH.search(text)
        if unknown:  # nested: ``mcp_servers[0].bogus``
            field = f"{at.group(1)}.{unknown.group(1)}" if at and at.group(1) else unknown.group(1)
        elif at and at.group(1):
            field = at.group(1)
        else:
            field = kind.__name__
        raise InvalidConfig(
            f"invalid {kind.__name__} field {field!r}: {text}", field=field, session_id=session_id
        ) from None
