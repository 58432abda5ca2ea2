"""Property-based checks of the live server against its own ``/openapi.json`` (schemathesis).

For every operation of the document, schemathesis generates requests -- valid ones (positive)
and ones that break the schema (negative) -- and checks that the server never answers 5xx,
that every status is one the document lists for the operation, and that every body matches the
schema the document gives for that status. Examples are derandomized and bounded, so a run is
reproducible and takes seconds.

schemathesis' own pytest integration (``schema.parametrize()`` on a lazily loaded schema) does
not work with this pytest (it rewrites a node attribute pytest 9 no longer has), so the tests are
parametrized here, one per operation and mode, with the operation list taken from the document
the server serves (built in process at collection time, then loaded live from the server).

The two event-stream operations are left out: a stream of a live session (or ``/v1/events``)
never ends by itself, so a request/response checker would wait on it forever; test_sse.py
covers them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from jidoka.server.openapi import openapi_document
from tests.e2e.conftest import ALICE_TOKEN, HTTP_TIMEOUT, ServerProcess, bearer

MAX_EXAMPLES = 25
STREAMS = ("/v1/events", "/v1/sessions/{session_id}/events")
_DOCUMENT = openapi_document()["paths"]
OPERATIONS = sorted(
    (method.upper(), path)
    for path, methods in _DOCUMENT.items()
    for method in methods
    if path not in STREAMS
)
#: Operations with something to get wrong (a parameter or a body): the negative mode's.
WITH_INPUT = [
    (method, path)
    for method, path in OPERATIONS
    if _DOCUMENT[path][method.lower()].get("parameters")
    or "requestBody" in _DOCUMENT[path][method.lower()]
]
#: Operations on one session: also run against a real one (random ids only reach the 404).
ON_A_SESSION = [(method, path) for method, path in OPERATIONS if "{session_id}" in path]


@pytest.fixture(scope="module")
def api_schema(server: ServerProcess) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(server.url + "/openapi.json")


@pytest.fixture(scope="module")
def http_session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def test_the_operation_list_is_the_live_documents(api_schema: schemathesis.BaseSchema) -> None:
    live = sorted(
        (method.upper(), path)
        for path, methods in api_schema.raw_schema["paths"].items()
        for method in methods
        if path not in STREAMS
    )
    assert live == OPERATIONS
    assert len(OPERATIONS) >= 20


def _ids(operations: list[tuple[str, str]]) -> list[str]:
    return [f"{method} {path}" for method, path in operations]


def run_examples(
    schema: schemathesis.BaseSchema,
    session: requests.Session,
    method: str,
    path: str,
    mode: GenerationMode,
    **fixed: Any,
) -> None:
    operation = schema[path][method]

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(mode, **fixed))
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(
            session=session,
            headers=bearer(ALICE_TOKEN),
            checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
            timeout=HTTP_TIMEOUT,
        )

    check()


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=_ids(OPERATIONS))
def test_valid_requests(
    api_schema: schemathesis.BaseSchema, http_session: requests.Session, method: str, path: str
) -> None:
    run_examples(api_schema, http_session, method, path, GenerationMode.POSITIVE)


@pytest.mark.parametrize(("method", "path"), WITH_INPUT, ids=_ids(WITH_INPUT))
def test_invalid_requests(
    api_schema: schemathesis.BaseSchema, http_session: requests.Session, method: str, path: str
) -> None:
    run_examples(api_schema, http_session, method, path, GenerationMode.NEGATIVE)


@pytest.mark.parametrize(("method", "path"), ON_A_SESSION, ids=_ids(ON_A_SESSION))
def test_valid_requests_on_a_real_session(
    api_schema: schemathesis.BaseSchema,
    http_session: requests.Session,
    alice: httpx.Client,
    method: str,
    path: str,
) -> None:
    """The same, with ``session_id`` fixed to a live session of the caller's that has a message
    and a saved copy, so the operations get past the ownership check."""
    created = alice.post("/v1/sessions", json={"config": {"max_history": 1000}})
    assert created.status_code == 201
    sid = created.json()["session_id"]
    sent = alice.post(f"/v1/sessions/{sid}/messages", json={"role": "user", "content": "hi"})
    assert sent.status_code == 201
    assert alice.post(f"/v1/sessions/{sid}/save").status_code == 201
    run_examples(
        api_schema,
        http_session,
        method,
        path,
        GenerationMode.POSITIVE,
        path_parameters={"session_id": sid},
    )
