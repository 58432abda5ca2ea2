"""The OpenAPI 3.1 document, generated from the verb table (:data:`jidoka.verbs.VERBS`) and
the msgspec types the handlers really encode and decode, so the document cannot drift from the
code. It is meant to be taken as is by validators and client generators: timestamps say
``format: date-time``, enums say their type, every status a route can answer is declared
(problems with the problem schema), and the event streams are ``text/event-stream``.

There is one operation per method and path. A verb selected on another verb's route by a query
flag (``Verb.selected_by``: ``DELETE /v1/sessions/{id}?purge=true``) is part of that route's
operation: its flag is a documented boolean query parameter, and its answers join the
operation's (its success status described as what the flag does).
"""

from __future__ import annotations

import re
import typing
from typing import Any, Final

import msgspec
from msgspec import inspect as mi

from .._version import __version__
from ..errors import JidokaError
from ..problems import PROBLEM_CONTENT_TYPE, PROBLEMS
from ..verbs import VERBS, Param, Verb, sharing
from ..wire import Accepted, Problem

__all__ = ["openapi_document"]

_REF: Final = "#/components/schemas/{name}"
_PARAM: Final = re.compile(r"\{(\w+)(?::\w+)?\}")
_WAIT: Final = Param(
    "wait",
    typing.Literal["true", "false"],
    "false",
    "true: answer with the turn's result when it ends (else 202 at once)",
)
#: What each problem status means, in the words of this API.
_STATUS_TEXT: Final = {
    400: "The body is not JSON",
    401: "Missing or unknown token (or a spent stream ticket)",
    403: "A browser page of another origin (origin-not-allowed)",
    404: "No such session (or another principal's)",
    409: "The session's state forbids it",
    413: "A size limit was exceeded",
    415: "The body is not declared as JSON",
    421: "The Host header names another server (host-not-allowed)",
    422: "Invalid input (the problem's argument names it)",
    429: "Too many requests in flight, or a count limit was exceeded (Retry-After)",
    500: "A bug of the server (the problem carries the request id)",
    502: "The model provider failed (llm-error)",
    503: "The store is unavailable or the server is shutting down",
}
#: What any route can answer: auth, host check, query check, in-flight bound, bugs, store.
_ALWAYS: Final = frozenset({401, 421, 422, 429, 500, 503})
#: What a route with a body can answer too; a change can also meet the origin check.
_WITH_BODY: Final = frozenset({400, 413, 415})
_CHANGES: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _status_of(error: type[JidokaError]) -> int:
    """The status of ``error``'s row in the problem table (the first row it belongs to)."""
    for row in PROBLEMS:
        if issubclass(error, row.error):
            return row.status
    return 500  # pragma: no cover - JidokaError has the last row


def _problem_statuses(verb: Verb) -> set[int]:
    statuses = set(_ALWAYS) | {_status_of(error) for error in verb.errors}
    if verb.body is not None:
        statuses |= _WITH_BODY
    if verb.method in _CHANGES:
        statuses.add(403)
    return statuses


def _without_none(kind: Any) -> Any:
    """``X | None`` -> ``X``: a query parameter is absent, never null."""
    args = typing.get_args(kind)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else kind
    return kind


def _parameters(verb: Verb, schemas: dict[Any, Any]) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAM.findall(verb.path)
    ]
    for param in (*verb.query, *((_WAIT,) if verb.background else ())):
        entry: dict[str, Any] = {
            "name": param.name,
            "in": "query",
            "required": param.default is msgspec.NODEFAULT,
            "description": param.description,
            "schema": dict(schemas[_without_none(param.type)]),
        }
        if param.default not in (msgspec.NODEFAULT, None):
            entry["schema"]["default"] = param.default
        params.append(entry)
    for other in sharing(verb):
        params.append(
            {
                "name": other.selected_by,
                "in": "query",
                "required": False,
                "description": f"true: {other.name} instead ({other.summary}); answers "
                f"{other.status}{'' if other.query else ' and takes no other query parameter'}",
                "schema": {"type": "boolean", "default": False},
            }
        )
        params += [p for p in _parameters(other, schemas) if p["in"] == "query"]
    if any(param.name == "after_seq" for param in verb.query):
        params.append({"name": "Last-Event-ID", "in": "header", "required": False,
                       "schema": {"type": "string"}})  # fmt: skip
    if "idempotency_key" in verb.body_fields:
        params.append({"name": "Idempotency-Key", "in": "header", "required": False,
                       "description": "A retry with the same key (same principal, within 24 "
                       "hours) answers the first request's result instead of acting again; "
                       "the same key with another request is 422. The body's "
                       "idempotency_key, if both are given, must be the same.",
                       "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                                  "pattern": "^[!-~]+$"}})  # fmt: skip
    return params


def _operation(verb: Verb, schemas: dict[Any, Any]) -> dict[str, Any]:
    problem = {"content": {PROBLEM_CONTENT_TYPE: {"schema": schemas[Problem]}}}
    responses: dict[str, Any] = {}
    if verb.stream:
        responses["200"] = {
            "description": "Server-Sent Events (see docs/http-api.md)",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
        if verb.path_params:
            responses["204"] = {"description": "Nothing left to stream: the session has ended"}
    else:
        ok: dict[str, Any] = {"description": "Success"}
        if verb.result is not None:
            ok["content"] = {"application/json": {"schema": schemas[verb.result]}}
        responses[str(verb.status)] = ok
    if verb.background:
        content = {"application/json": {"schema": schemas[Accepted]}}
        text = "The turn is queued; follow it on the events stream (without ?wait=true)"
        responses["202"] = {"description": text, "content": content}
    problems = _problem_statuses(verb)
    for other in sharing(verb):
        answer: dict[str, Any] = {"description": f"With {other.selected_by}=true: {other.summary}"}
        if other.result is not None:
            answer["content"] = {"application/json": {"schema": schemas[other.result]}}
        responses.setdefault(str(other.status), answer)
        problems |= _problem_statuses(other)
    for status in sorted(problems):
        responses[str(status)] = {"description": _STATUS_TEXT[status], **problem}
    operation: dict[str, Any] = {
        "operationId": verb.name,
        "summary": verb.summary,
        "parameters": _parameters(verb, schemas),
        "responses": dict(sorted(responses.items())),
        "security": [{"bearer": []}],
    }
    if verb.body is not None:
        operation["requestBody"] = {
            "required": not verb.body_optional,
            "content": {"application/json": {"schema": schemas[verb.body]}},
        }
    return operation


def _types() -> list[Any]:
    types: list[Any] = [Problem, Accepted, _WAIT.type]
    for verb in VERBS:
        types += [t for t in (verb.body, verb.result) if t is not None]
        types += [_without_none(param.type) for param in verb.query]
    return list(dict.fromkeys(types))


def _is_datetime(kind: mi.Type) -> bool:
    if isinstance(kind, mi.UnionType):
        return any(isinstance(t, mi.DateTimeType) for t in kind.types)
    return isinstance(kind, mi.DateTimeType)


def _datetime_fields(types: list[Any]) -> dict[str, set[str]]:
    """Component name -> the fields that hold a timestamp (msgspec's schema says only
    ``string`` for them; a generator needs ``format: date-time`` to parse them)."""
    found: dict[str, set[str]] = {}
    seen: set[type] = set()
    pending: list[mi.Type] = list(mi.multi_type_info(types))
    while pending:
        kind = pending.pop()
        if isinstance(kind, mi.StructType):
            if kind.cls in seen:
                continue
            seen.add(kind.cls)
            for field in kind.fields:
                if _is_datetime(field.type):
                    found.setdefault(kind.cls.__name__, set()).add(field.encode_name)
                pending.append(field.type)
        elif isinstance(kind, mi.UnionType):
            pending += kind.types
        elif isinstance(kind, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
            pending.append(kind.item_type)
        elif isinstance(kind, mi.DictType):
            pending.append(kind.value_type)
    return found


def _date_time(schema: dict[str, Any]) -> None:
    for member in schema.get("anyOf", [schema]):
        if member.get("type") == "string":
            member["format"] = "date-time"


def _typed_enums(node: Any) -> None:
    """Give every ``enum`` its ``type``, as generators want it."""
    if isinstance(node, dict):
        values = node.get("enum")
        if isinstance(values, list) and "type" not in node:
            if all(isinstance(v, str) for v in values):
                node["type"] = "string"
            elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                node["type"] = "integer"
        for value in node.values():
            _typed_enums(value)
    elif isinstance(node, list):
        for value in node:
            _typed_enums(value)


def openapi_document() -> dict[str, Any]:
    types = _types()
    refs, components = msgspec.json.schema_components(types, ref_template=_REF)
    schemas = dict(zip(types, refs, strict=True))
    for name, fields in _datetime_fields(types).items():
        for field in fields:
            _date_time(components[name]["properties"][field])
    paths: dict[str, dict[str, Any]] = {}
    for verb in VERBS:
        if verb.selected_by is not None:
            continue  # part of its route's operation
        path = _PARAM.sub(r"{\1}", verb.path)
        paths.setdefault(path, {})[verb.method.lower()] = _operation(verb, schemas)
    for probe, text in (("/healthz", "The process is alive"), ("/readyz", "The store answers")):
        paths[probe] = {"get": {"operationId": probe[1:], "summary": text, "security": [],
                                "responses": {"200": {"description": "OK"},
                                              "503": {"description": "Not ready"}}}}  # fmt: skip
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "Jidoka",
            "version": __version__,
            "description": "Many isolated AI coding-assistant sessions. See docs/http-api.md.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    _typed_enums(document)
    return document
