"""The OpenAPI 3.1 document, generated from :data:`~jidoka.server.routes.ROUTES` and the msgspec
types the handlers really encode and decode, so the document cannot drift from the code."""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from .._version import __version__
from ..problems import PROBLEM_CONTENT_TYPE
from ..wire import Problem
from .routes import ROUTES, RouteSpec

__all__ = ["openapi_document"]

_REF: Final = "#/components/schemas/{name}"
_PARAM: Final = re.compile(r"\{(\w+)(?::\w+)?\}")

_QUERY: Final[dict[str, dict[str, Any]]] = {
    "status": {
        "description": "Only sessions with this status",
        "schema": {"$ref": "#/components/schemas/Status"},
    },
    "limit": {
        "description": "Page size (1-1000, default 100)",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
    },
    "cursor": {"description": "`next_cursor` of the previous page", "schema": {"type": "string"}},
    "reason": {"description": "Why it is terminated", "schema": {"type": "string"}},
    "path": {"description": "A path relative to the project root", "schema": {"type": "string"}},
    "wait": {
        "description": "true: answer with the turn's result when it ends (else 202 at once)",
        "schema": {"type": "string", "enum": ["true", "false"]},
    },
    "after_seq": {
        "description": "Replay the stored events after this seq, then go live",
        "schema": {"type": "integer", "minimum": 0},
    },
    "lastEventId": {
        "description": (
            "What EventSource polyfills send on reconnect: on a session's stream the same as "
            "after_seq (Last-Event-ID header first, then this, then after_seq); on /v1/events "
            "accepted and ignored (it does not replay)"
        ),
        "schema": {"type": "string"},
    },
    "ticket": {
        "description": (
            "A ticket from POST /v1/stream-tickets, in place of the Authorization header "
            "(for EventSource); single use"
        ),
        "schema": {"type": "string"},
    },
    "frames": {
        "description": "unnamed: event frames without an event: line (all reach onmessage)",
        "schema": {"type": "string", "enum": ["named", "unnamed"]},
    },
}
_ERRORS: Final = {
    "401": "Missing or unknown token",
    "404": "No such session (or another principal's)",
    "409": "The session's state forbids it",
    "413": "A size limit was exceeded",
    "422": "Invalid input",
    "429": "Too many requests in flight, or a count limit was exceeded",
}


def _operation(spec: RouteSpec, refs: dict[type, Any]) -> dict[str, Any]:
    params = _parameters(spec)
    problem = {"content": {PROBLEM_CONTENT_TYPE: {"schema": refs[Problem]}}}
    responses: dict[str, Any] = {
        code: {"description": text, **problem} for code, text in _ERRORS.items()
    }
    if spec.body is not None:
        responses["400"] = {"description": "The body is not JSON", **problem}
    ok: dict[str, Any] = {"description": "Success"}
    if spec.response is not None:
        ok["content"] = {"application/json": {"schema": refs[spec.response]}}
    responses[str(spec.status)] = ok
    for status, body, text in spec.also:
        if body is None:
            responses[str(status)] = {"description": text, **problem}
        else:
            content = {"application/json": {"schema": refs[body]}}
            responses[str(status)] = {"description": text, "content": content}
    operation: dict[str, Any] = {
        "operationId": spec.name,
        "summary": spec.summary,
        "parameters": params,
        "responses": responses,
        "security": [{"bearer": []}],
    }
    if spec.body is not None:
        optional = all(
            f.default is not msgspec.NODEFAULT or f.default_factory is not msgspec.NODEFAULT
            for f in msgspec.structs.fields(spec.body)
        )
        operation["requestBody"] = {
            "required": not optional,
            "content": {"application/json": {"schema": refs[spec.body]}},
        }
    return operation


def _parameters(spec: RouteSpec) -> list[dict[str, Any]]:
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAM.findall(spec.path)
    ]
    params += [{"name": name, "in": "query", "required": name == "path", **_QUERY[name]}
               for name in spec.query]  # fmt: skip
    return params


def _stream(spec: RouteSpec) -> dict[str, Any]:
    params = _parameters(spec)
    if "after_seq" in spec.query:
        params.append({"name": "Last-Event-ID", "in": "header", "required": False,
                       "schema": {"type": "string"}})  # fmt: skip
    return {
        "operationId": spec.name,
        "summary": spec.summary,
        "parameters": params,
        "security": [{"bearer": []}],
        "responses": {
            "200": {
                "description": "Server-Sent Events (see docs/http-api.md)",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            "204": {"description": "Nothing left to stream: the session has ended"},
            "401": {"description": "Missing or unknown token, or a spent stream ticket"},
            "404": {"description": "No such session"},
            "422": {"description": "A bad position, or an unknown query parameter"},
        },
    }


def openapi_document() -> dict[str, Any]:
    types: list[type] = [Problem]
    for spec in ROUTES:
        types += [t for t in (spec.body, spec.response) if t is not None]
        types += [body for _, body, _ in spec.also if body is not None]
    types = list(dict.fromkeys(types))
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    refs = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for spec in ROUTES:
        path = _PARAM.sub(r"{\1}", spec.path)
        operation = _stream(spec) if spec.stream else _operation(spec, refs)
        paths.setdefault(path, {})[spec.method.lower()] = operation
    for probe, text in (("/healthz", "The process is alive"), ("/readyz", "The store answers")):
        paths[probe] = {"get": {"operationId": probe[1:], "summary": text, "security": [],
                                "responses": {"200": {"description": "OK"},
                                              "503": {"description": "Not ready"}}}}  # fmt: skip
    return {
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
