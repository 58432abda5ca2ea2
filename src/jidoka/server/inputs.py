"""Untrusted input as the server reads it: JSON bodies and commands, and query strings.

Everything a client sends passes through here before a handler sees it, and everything here
answers bad input with an :class:`~jidoka.InvalidArgument` that names what was wrong (the body,
the command, the query parameter), never with whatever the parser happened to raise:

- **JSON** is decoded by msgspec into the request's type, and refused if it nests deeper than
  :data:`MAX_JSON_DEPTH`: a thousand brackets would otherwise exhaust the interpreter's
  recursion limit inside the decoder (a ``RecursionError``, a 500) or later, wherever the value
  is walked (the store's encoder, an event's payload). The depth is only measured when the
  document has more brackets than the limit, so an ordinary body costs two ``bytes.count``.
- **Query integers** take ASCII digits only, at most 18 of them: ``str.isdigit`` also accepts
  a superscript two (U+00B2), which ``int`` refuses (a 500 it was), and ``int`` reads an
  Arabic-Indic one (U+0661) as 1: neither is a number a client means to send.
- **Query names** a route does not declare are refused (:func:`check_query`) rather than
  ignored, so a misspelt ``?limt=5`` is an error and not a silent default.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any, Final, TypeVar

import msgspec
from starlette.datastructures import QueryParams

from ..errors import InvalidArgument
from ..problems import MalformedBody, NestingTooDeep

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_QUERY_INT_DIGITS",
    "NestingTooDeep",
    "check_query",
    "decode_json",
    "error_path",
    "parse_seq",
    "query_int",
    "query_str",
]

T = TypeVar("T")

#: Levels of arrays and objects a JSON document may nest (the outermost object is level 1).
MAX_JSON_DEPTH: Final = 128
#: Digits of a query integer: 18 always fit a signed 64-bit integer.
MAX_QUERY_INT_DIGITS: Final = 18
#: How much of a client's text a message quotes back (a name may be kilobytes long).
_QUOTE: Final = 64
_ASCII_INT: Final = re.compile(rf"[0-9]{{1,{MAX_QUERY_INT_DIGITS}}}")
_ERROR_PATH: Final = re.compile(r" - at `\$\.?([^`]*)`")
_MISSING_FIELD: Final = re.compile(r"^Object missing required field `([^`]*)`")
_CONTAINERS: Final = (dict, list, msgspec.Struct)


def _shown(text: str) -> str:
    return repr(text if len(text) <= _QUOTE else text[:_QUOTE] + "...")


def error_path(exc: msgspec.ValidationError, default: str) -> str:
    """The field a msgspec error is about (``$.config.max_files`` -> ``config.max_files``), or
    ``default`` when it is about the whole document."""
    text = str(exc)
    match = _ERROR_PATH.search(text)
    # msgspec writes a mapping's key as ``[...]``: the path stops at the mapping.
    path = match.group(1).split("[...]", 1)[0] if match else ""
    missing = _MISSING_FIELD.match(text)
    if missing is not None:  # the field that is missing, where it should be
        path = f"{path}.{missing.group(1)}" if path else missing.group(1)
    return path or default


def decode_json(
    raw: bytes | str, kind: type[T], *, argument: str = "body", what: str = "the request body"
) -> T:
    """``raw`` as ``kind``, or an :class:`InvalidArgument` naming what is wrong with it.

    Not JSON at all: :class:`~jidoka.server.responses.MalformedBody` (400 over HTTP). JSON of
    the wrong shape: :class:`InvalidArgument` naming the field (422). Too deep:
    :class:`NestingTooDeep` (422, with ``limit`` and ``maximum``).
    """
    try:
        value = msgspec.json.decode(raw, type=kind)
    except RecursionError:
        raise NestingTooDeep(what, argument=argument, maximum=MAX_JSON_DEPTH) from None
    except msgspec.ValidationError as exc:
        where = error_path(exc, argument)
        raise InvalidArgument(f"invalid {_noun(what)}: {exc}", argument=where) from None
    except msgspec.DecodeError as exc:
        raise MalformedBody(f"{what} is not valid JSON: {exc}", argument=argument) from None
    # Cheap bound first: a document with no more brackets than the limit cannot be too deep.
    if _brackets(raw) > MAX_JSON_DEPTH and _deeper_than(value, MAX_JSON_DEPTH):
        raise NestingTooDeep(what, argument=argument, maximum=MAX_JSON_DEPTH)
    return value


def _brackets(raw: bytes | str) -> int:
    """Opening brackets anywhere (in strings too): a bound on the depth, at C speed."""
    if isinstance(raw, str):
        return raw.count("[") + raw.count("{")
    return raw.count(b"[") + raw.count(b"{")


def _noun(what: str) -> str:
    return what.removeprefix("the ")


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` (decoded JSON, structs included) nests more than ``limit`` levels.

    Level by level rather than recursively, so the check itself cannot overflow the stack."""
    level = [value]
    for _ in range(limit):
        below: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                below += item.values()
            elif isinstance(item, list):
                below += item
            elif isinstance(item, msgspec.Struct):
                below += msgspec.structs.astuple(item)
        level = [item for item in below if isinstance(item, _CONTAINERS)]
        if not level:
            return False
    return True


# --- query strings ------------------------------------------------------------------------------


def query_str(params: QueryParams, name: str) -> str | None:
    """The one value of ``name``, or ``None``; given twice is an error (which one would win?)."""
    values = params.getlist(name)
    if len(values) > 1:
        raise InvalidArgument(f"query parameter {name} given more than once", argument=name)
    return values[0] if values else None


def query_int(
    params: QueryParams, name: str, *, default: int | None, minimum: int, maximum: int
) -> int | None:
    """``name`` as an integer from ``minimum`` to ``maximum``, or ``default`` when absent."""
    raw = query_str(params, name)
    if raw is None:
        return default
    value = _ascii_int(raw)
    if value is None or not minimum <= value <= maximum:
        raise InvalidArgument(
            f"query parameter {name} must be an integer from {minimum} to {maximum} "
            f"(ASCII digits), got {_shown(raw)}",
            argument=name,
        )
    return value


def parse_seq(raw: str, *, argument: str, source: str) -> int:
    """An event position (``Last-Event-ID``, ``after_seq``): a non-negative integer."""
    value = _ascii_int(raw)
    if value is None:
        raise InvalidArgument(
            f"{source} must be an event seq (a non-negative integer in ASCII digits), "
            f"got {_shown(raw)}",
            argument=argument,
        )
    return value


def _ascii_int(raw: str) -> int | None:
    return int(raw) if _ASCII_INT.fullmatch(raw) else None


def check_query(params: QueryParams, allowed: Collection[str]) -> None:
    """Refuse a query parameter the route does not take, naming it."""
    for name in params:
        if name not in allowed:
            expected = ", ".join(sorted(allowed)) if allowed else "none"
            raise InvalidArgument(
                f"unknown query parameter {_shown(name)} (this route takes: {expected})",
                argument=name[:_QUOTE],
            )
