"""The verb table against the hand-written :class:`jidoka.Client`: every declaration names a
Client method whose parameters and result it agrees with, every Client verb is declared, and
:class:`jidoka.RemoteClient` has each of them with Client's very signature."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterable
from typing import Any

import msgspec
import pytest

from jidoka import Client, RemoteClient
from jidoka.errors import InvalidArgument
from jidoka.verbs import VERBS, Verb, selected, sharing

#: Client methods that are not verbs of the wire: the scoped view itself, the 202's queue,
#: and the event streams (the stream routes and the WebSocket's ``subscribe``).
NOT_VERBS = {"scoped", "submit_chat", "subscribe_to_session", "subscribe_to_all_sessions"}
#: Where the wire's name of an argument is not Client's: (verb, wire name) -> Client's name.
RENAMED = {("list_sessions", "cursor"): "after"}
#: Where the wire's default stands for Client's: ``include`` absent is every part, and a page
#: of sessions is ``limit``'s default where Client lists them all (RemoteClient reads pages).
DEFAULTS_STANDING_FOR = {("build_context", "include"), ("list_sessions", "limit")}


def _client_verbs() -> set[str]:
    # Client's own methods and its mixins' (the run verbs are RunMethods').
    return {
        name
        for klass in Client.__mro__[:-1]
        for name, member in vars(klass).items()
        if not name.startswith("_") and inspect.iscoroutinefunction(member)
    } | {"subscribe_to_session", "subscribe_to_all_sessions"}


def _members(kind: Any) -> set[Any]:
    """The non-None members of a union, each without its ``Annotated`` metadata."""
    kinds = (
        typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, _UnionType) else (kind,)
    )
    found = set()
    for member in kinds:
        if typing.get_origin(member) is typing.Annotated:
            member = typing.get_args(member)[0]
        if member is not type(None):
            found.add(member)
    return found


_UnionType = type(int | None)


def _accepts(client_type: Any, wire_type: Any) -> bool:
    """Whether every value the wire takes for an argument is one Client takes."""
    if client_type is Any:
        return True
    accepted = _members(client_type)
    for member in _members(wire_type):
        origin = typing.get_origin(member) or member
        ok = member in accepted or any(
            isinstance(origin, type)
            and isinstance(typing.get_origin(a) or a, type)
            and issubclass(origin, typing.get_origin(a) or a)
            for a in accepted
        )
        if not ok and origin is typing.Literal:
            ok = all(type(v) in accepted for v in typing.get_args(member))
        if not ok and origin is list:
            ok = any(typing.get_origin(a) is Iterable for a in accepted)
        if not ok:
            return False
    return True


@pytest.mark.parametrize("verb", [v for v in VERBS if v.client], ids=lambda v: v.name)
def test_each_declaration_agrees_with_its_client_method(verb: Verb) -> None:
    assert verb.client is not None
    method = getattr(Client, verb.client)
    signature = inspect.signature(method)
    hints = typing.get_type_hints(method)
    wire_hints = typing.get_type_hints(verb.args, include_extras=True)
    for field in msgspec.structs.fields(verb.args):
        name = RENAMED.get((verb.name, field.name), field.name)
        assert name in signature.parameters, f"{verb.name}: Client has no {name!r}"
        parameter = signature.parameters[name]
        assert _accepts(hints[name], wire_hints[field.name]), (verb.name, name)
        if (verb.name, field.name) in DEFAULTS_STANDING_FOR:
            pass
        elif field.default is not msgspec.NODEFAULT and field.default is not None:
            assert parameter.default == field.default, (verb.name, name)
        elif field.default is None:
            assert parameter.default is None, (verb.name, name)
    # Every argument Client requires travels (``owner`` is the server's to set).
    wire = {RENAMED.get((verb.name, f), f) for f in verb.args.__struct_fields__}
    for name, parameter in list(signature.parameters.items())[1:]:
        if name != "owner" and parameter.default is inspect.Parameter.empty:
            assert name in wire, f"{verb.name}: {name!r} does not travel"
    # What the wire answers is what Client returns (or holds it, in the field ``unwrap``), or
    # Client returns nothing and the wire echoes what was done.
    result = verb.result
    if verb.unwrap is not None:
        assert result is not None
        result = typing.get_type_hints(result)[verb.unwrap]
    returned = hints["return"]
    assert returned in (Any, result, type(None)), (
        verb.name,
        returned,
        result,
    )


def test_every_client_verb_is_declared() -> None:
    declared = {v.client for v in VERBS if v.client is not None}
    assert _client_verbs() - NOT_VERBS == declared


@pytest.mark.parametrize("name", sorted({v.client for v in VERBS if v.client}))
def test_remote_client_has_each_verb_with_clients_signature(name: str) -> None:
    remote = getattr(RemoteClient, name)
    assert inspect.iscoroutinefunction(remote)
    assert inspect.signature(remote) == inspect.signature(getattr(Client, name))


def test_arguments_are_one_struct_per_verb_with_path_query_and_body() -> None:
    for verb in VERBS:
        fields = set(verb.args.__struct_fields__)
        assert set(verb.path_params) | {p.name for p in verb.query} | set(verb.body_fields) == (
            fields
        ), verb.name
        assert len(verb.path_params) + len(verb.query) + len(verb.body_fields) == len(fields)
    assert len({v.name for v in VERBS}) == len(VERBS)
    # One verb per method and path, or one more selected on its route by a query flag.
    assert len({(v.method, v.path, v.selected_by) for v in VERBS}) == len(VERBS)


def test_a_verb_selected_by_a_flag_rides_on_a_route_of_its_own_method_and_path() -> None:
    flagged = [v for v in VERBS if v.selected_by is not None]
    assert [v.name for v in flagged] == ["purge_session"]
    for verb in flagged:
        routes = [v for v in VERBS if v.selected_by is None and (v.method, v.path) == (
            verb.method, verb.path)]  # fmt: skip
        assert len(routes) == 1, verb.name
        assert sharing(routes[0]) == (verb,)
        assert verb.selected_by not in verb.args.__struct_fields__  # the flag is no argument
        route = routes[0]
        assert selected(route, {}) is route
        assert selected(route, {"purge": "false", "reason": "x"}) is route
        assert selected(route, {"purge": "true"}) is verb
        with pytest.raises(InvalidArgument, match="purge must be true or false") as bad:
            selected(route, {"purge": "yes"})
        assert bad.value.argument == "purge"
        with pytest.raises(InvalidArgument, match="reason does not apply with purge=true"):
            selected(route, {"purge": "true", "reason": "x"})


def test_remote_client_has_none_of_clients_in_process_only_methods() -> None:
    """``scoped`` and ``submit_chat`` are Client's alone (the type checker is told so)."""
    assert not hasattr(RemoteClient, "scoped")
    assert not hasattr(RemoteClient, "submit_chat")
