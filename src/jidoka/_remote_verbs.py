""":class:`~jidoka.RemoteClient`'s calls, made from the verb table (:data:`jidoka.verbs.VERBS`).

A verb's declaration says where each argument goes (path, query, body) and what comes back; this
module turns a call of a :class:`~jidoka.Client` method (bound to that method's own signature,
so positional and keyword arguments and defaults behave the same) into that request, and refuses
here what the server would refuse, naming the same argument: an id that cannot name a session is
not found, a value of the wrong type or one JSON cannot carry is an ``InvalidArgument``.
Private: :mod:`jidoka.remote` is the public face.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import msgspec

from ._remote_events import segment, session_path
from .client import Client
from .errors import InvalidArgument
from .verbs import Verb

if TYPE_CHECKING:
    from .remote import RemoteClient

__all__ = ["Request", "refuse_owner", "remote_method", "request_for"]

#: Where a validation error points (``... - at `$.role```): the argument to name.
_ERROR_PATH: Final = re.compile(r" - at `\$\.?([^`.\[]*)")


class Request(NamedTuple):
    """One HTTP request of a verb."""

    method: str
    path: str
    params: dict[str, str | int]
    body: bytes | None
    long_lived: bool


def refuse_owner(owner: object) -> None:
    """``owner`` is the token's principal over the network: it cannot be chosen."""
    if owner is not None:
        raise InvalidArgument(
            "owner cannot be chosen through the server: it scopes every session to the principal "
            "of the client's token",
            argument="owner",
        )


def _path_values(verb: Verb, values: Mapping[str, Any]) -> dict[str, str]:
    """The path parameters, each checked as the server's router would take it."""
    found: dict[str, str] = {}
    session_id = values.get("session_id")
    for name in verb.path_params:
        value = values[name]
        if name == "session_id":
            session_path(value)  # SessionNotFound if it cannot name one, as in process
        elif (
            not isinstance(value, str)
            or not value
            or ("/" in value and not verb.takes_slashes(name))
        ):
            raise InvalidArgument(
                f"{name} must be a non-empty string that a path can hold, got {value!r:.80}",
                argument=name,
                session_id=session_id if isinstance(session_id, str) else None,
            )
        found[name] = value
    return found


def _body(verb: Verb, values: Mapping[str, Any]) -> bytes | None:
    """The body, its fields checked against their types first: JSON would carry some wrong
    ones as something else (bytes as a base64 string, a tuple as a list)."""
    if verb.body is None:
        return None
    fields = {name: values[name] for name in verb.body_fields if name in values}
    try:
        msgspec.convert(fields, verb.body)
    except msgspec.ValidationError as exc:
        match = _ERROR_PATH.search(str(exc))
        argument = (match.group(1) if match else "") or "request"
        raise InvalidArgument(f"invalid argument: {exc}", argument=argument) from None
    try:
        return msgspec.json.encode(verb.body(**fields))
    except (TypeError, ValueError, msgspec.EncodeError) as exc:
        culprit = next((name for name, value in fields.items() if not _encodes(value)), "request")
        raise InvalidArgument(
            f"{culprit} is not JSON-serialisable: {exc}", argument=culprit
        ) from None


def _encodes(value: object) -> bool:
    try:
        msgspec.json.encode(value)
    except (TypeError, ValueError, msgspec.EncodeError):
        return False
    return True


def request_for(verb: Verb, values: Mapping[str, Any]) -> Request:
    """The request that calls ``verb`` with ``values`` (its arguments by name)."""
    path = verb.url(_path_values(verb, values), segment)
    params: dict[str, str | int] = {}
    for param in verb.query:
        value = values.get(param.name)
        if value is not None:
            params[param.name] = value if isinstance(value, int | str) else str(value)
    if verb.background:
        params["wait"] = "true"  # the call returns the turn's result, as in process
    long_lived = verb.background or verb.long_running
    if verb.selected_by is not None:
        params[verb.selected_by] = "true"  # the flag that selects it on its route
    return Request(verb.method, path, params, _body(verb, values), long_lived)


def remote_method(verb: Verb) -> Callable[..., Awaitable[Any]]:
    """``RemoteClient``'s method for ``verb``: the signature, name and documentation of the
    ``Client`` method it is, its answer unwrapped as that method returns it."""
    assert verb.client is not None
    model = getattr(Client, verb.client)
    signature = inspect.signature(model)
    # A Client method that returns nothing drops the wire's echo (put_working_context's).
    returns_nothing = typing.get_type_hints(model).get("return") is type(None)

    async def method(self: RemoteClient, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        del values["self"]
        refuse_owner(values.pop("owner", None))
        answer = await self._verb(verb, values)
        if returns_nothing:
            return None
        return answer if verb.unwrap is None else getattr(answer, verb.unwrap)

    method.__name__ = method.__qualname__ = verb.client
    method.__doc__ = model.__doc__
    method.__signature__ = signature  # type: ignore[attr-defined]
    return method
