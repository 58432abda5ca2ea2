"""How ``--help`` names what a parameter takes: one spelling for every verb.

Typer labels each value with its Python type (``<str>``, ``<list[str]>``, ``<float range>``) and
gives flags a ``<bool>`` they never take, ``--help`` included. :class:`Command` and :class:`Group`
(the ``cls`` of every ``jidoka`` command) give each parameter that has no explicit ``metavar`` the
conventional one instead: ``TEXT``, ``INTEGER``, ``NUMBER``, ``PATH``, the choices
(``ask|yes|no``), nothing for a flag, and an argument's own name in capitals (``SESSION_ID``).
A usage line then reads ``jidoka send [OPTIONS] SESSION_ID TEXT`` (an optional argument in
brackets, ``[SESSION_ID]``) whatever the verb.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any, Final

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

__all__ = ["Command", "Group", "metavar"]

_NAMES: Final[dict[Any, str]] = {str: "TEXT", int: "INTEGER", float: "NUMBER", bool: "BOOLEAN"}


def _plain(annotation: Any) -> Any:
    """``list[X]`` and ``X | None`` to ``X``: what one value on the command line is."""
    origin = typing.get_origin(annotation)
    if origin is list:
        return _plain(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _plain(rest[0]) if len(rest) == 1 else annotation
    return annotation


def metavar(param: TyperArgument | TyperOption) -> str:
    """The conventional name of what ``param`` takes ("" for a flag: it takes nothing)."""
    if isinstance(param, TyperOption) and (param.is_flag or param.count):
        return ""
    annotation = _plain(param.type_descriptor.annotation)
    if isinstance(param, TyperArgument):
        return (param.name or "value").upper()
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "|".join(str(member.value) for member in annotation)
    if param.type_descriptor.is_choice and param.type_descriptor.choices is not None:
        return "|".join(str(choice) for choice in param.type_descriptor.choices)
    if param.type_descriptor.is_path or (
        isinstance(annotation, type) and issubclass(annotation, PurePath)
    ):
        return "PATH"
    name = getattr(annotation, "__name__", str(annotation))
    return _NAMES.get(annotation, name.upper())


def _type_column(param: TyperArgument | TyperOption) -> str:
    """What the help's type column says: an argument's kind of value, an option's metavar."""
    if isinstance(param, TyperOption):
        return param.metavar or ""
    annotation = _plain(param.type_descriptor.annotation)
    return _NAMES.get(annotation, "PATH" if param.type_descriptor.is_path else "TEXT")


class _Argument(TyperArgument):
    def display_type_rich(self, ctx: Any) -> str | None:
        return _type_column(self)

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        """``SESSION_ID`` when required, ``[SESSION_ID]`` when not (not Typer's braces)."""
        name = self.metavar or metavar(self)
        name = name if self.required else f"[{name}]"
        return [name if self.nargs == 1 else f"{name}..."]


class _Option(TyperOption):
    def display_type_rich(self, ctx: Any) -> str | None:
        return _type_column(self)


def _tidy(params: Sequence[Any]) -> None:
    for param in params:
        if not isinstance(param, TyperArgument | TyperOption):
            continue
        if param.metavar is None:
            param.metavar = metavar(param)
        # The same object, shown through the subclass whose type column is the metavar.
        if type(param) is TyperArgument:
            param.__class__ = _Argument
        elif type(param) is TyperOption:
            param.__class__ = _Option


class Command(TyperCommand):
    """A ``jidoka`` verb: its parameters (``--help`` included) with conventional metavars."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        _tidy(params)
        return params


class Group(TyperGroup):
    """A ``jidoka`` group (the root, ``sessions``): its own options tidied the same way."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        _tidy(params)
        return params
