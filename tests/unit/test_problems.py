"""Problem documents: every error survives ``problem_for`` -> JSON -> ``error_from_problem``.

The remote client relies on this round trip to raise, over HTTP, the very exception the in-process
client raises (same class, message and attributes), so ``except SessionNotFound`` is portable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

import jidoka
from jidoka import errors
from jidoka.errors import (
    DataDirLocked,
    HostNotAllowed,
    InvalidArgument,
    InvalidConfig,
    InvalidRole,
    InvalidTransition,
    JidokaError,
    LimitExceeded,
    LLMError,
    NotOwner,
    OriginNotAllowed,
    PathNotAllowed,
    ProjectRootUnavailable,
    RunNotFound,
    RuntimeClosed,
    SessionBusy,
    SessionExists,
    SessionNotFound,
    SessionTerminated,
    StoreError,
    Unauthorized,
    UnsupportedMediaType,
)
from jidoka.problems import (
    PROBLEM_BASE,
    PROBLEMS,
    KeyNotFound,
    MalformedBody,
    NestingTooDeep,
    Problem,
    error_from_problem,
    problem_for,
    problem_of,
    status_for,
)
from jidoka.store.base import CommitOutcomeUnknown, StoreUnavailable

SID = "01KDVDNA002TGFDYKMPAK7J69H"

#: Every attribute an error may carry; each must come back unchanged.
ATTRIBUTES = (
    "session_id",
    "path",
    "limit",
    "maximum",
    "actual",
    "reason",
    "from_status",
    "to_status",
    "argument",
    "field",
    "role",
    "data_dir",
    "provider",
    "status",
    "retryable",
    "host",
    "origin",
    "content_type",
)

# Several realistic instances per class: with and without a session, optional fields set or not.
CASES: dict[str, Callable[[], JidokaError]] = {
    "JidokaError": lambda: JidokaError("something failed", session_id=SID),
    "JidokaError-sessionless": lambda: JidokaError("the server is misconfigured"),
    "SessionNotFound": lambda: SessionNotFound(SID),
    "RunNotFound": lambda: RunNotFound(SID, "run_01KDVDNA002TGFDYKMPAK7J69H"),
    "SessionTerminated": lambda: SessionTerminated(SID, reason="timeout"),
    "SessionTerminated-no-reason": lambda: SessionTerminated(SID),
    "InvalidTransition": lambda: InvalidTransition(SID, "terminated", "active"),
    "InvalidArgument": lambda: InvalidArgument(
        "limit must be positive", argument="limit", session_id=SID
    ),
    "InvalidArgument-sessionless": lambda: InvalidArgument("bad cursor", argument="cursor"),
    "InvalidRole": lambda: InvalidRole(SID, "robot"),
    "InvalidRole-sessionless": lambda: InvalidRole(None, "robot"),
    "InvalidConfig": lambda: InvalidConfig(
        "must be at least 1", field="max_history", session_id=SID
    ),
    "InvalidConfig-sessionless": lambda: InvalidConfig("unknown store", field="store"),
    "PathNotAllowed": lambda: PathNotAllowed(SID, "../etc/passwd", "escapes the project root"),
    "PathNotAllowed-sessionless": lambda: PathNotAllowed(None, "/etc", "not a regular file"),
    "LimitExceeded": lambda: LimitExceeded(
        "max_files", 50, session_id=SID, actual=51, path="src/a.py"
    ),
    "LimitExceeded-bytes": lambda: LimitExceeded(
        "max_message_bytes", 1 << 20, session_id=SID, actual=(1 << 20) + 1
    ),
    "LimitExceeded-sessionless": lambda: LimitExceeded("max_sessions", 10_000),
    "Unauthorized": lambda: Unauthorized("missing or unknown bearer token"),
    "Unauthorized-session": lambda: Unauthorized("no such token", session_id=SID),
    "StoreError": lambda: StoreError("write failed: disk full", session_id=SID),
    "CommitOutcomeUnknown": lambda: CommitOutcomeUnknown(
        "the connection broke mid-commit; the log will say", session_id=SID
    ),
    "RuntimeClosed": lambda: RuntimeClosed("the runtime is shutting down"),
    "NotOwner": lambda: NotOwner(SID, owner="n2", owner_url="http://10.0.0.6:8765"),
    "NotOwner-unknown": lambda: NotOwner(SID),
    "ProjectRootUnavailable": lambda: ProjectRootUnavailable(SID, "/srv/projects/x", "n1"),
    "SessionExists": lambda: SessionExists(SID),
    "SessionBusy": lambda: SessionBusy(SID),
    "LLMError": lambda: LLMError(
        "rate limited by the provider",
        provider="openai",
        session_id=SID,
        status=429,
        retryable=True,
    ),
    "LLMError-bare": lambda: LLMError("connection reset", provider="anthropic"),
    "DataDirLocked": lambda: DataDirLocked("/var/lib/jidoka", "pid 123"),
    "UnsupportedMediaType": lambda: UnsupportedMediaType("text/plain;charset=UTF-8"),
    "UnsupportedMediaType-none": lambda: UnsupportedMediaType(None),
    "HostNotAllowed": lambda: HostNotAllowed("evil.test:8765"),
    "OriginNotAllowed": lambda: OriginNotAllowed("http://127.0.0.1:9999"),
}


def _round_trip(exc: JidokaError) -> tuple[dict[str, Any], JidokaError]:
    problem = problem_for(exc, request_id="req-1")
    decoded = msgspec.json.decode(msgspec.json.encode(problem))
    return decoded, error_from_problem(decoded, status=problem["status"])


def test_every_error_class_has_a_case() -> None:
    """Every public error, and every class outside ``errors`` that travels as its own problem
    type (``CommitOutcomeUnknown``, from the store)."""
    classes = {getattr(errors, name) for name in errors.__all__}
    classes.add(CommitOutcomeUnknown)
    assert classes == {type(make()) for make in CASES.values()}


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_keeps_class_message_and_attributes(name: str) -> None:
    original = CASES[name]()
    problem, rebuilt = _round_trip(original)
    assert type(rebuilt) is type(original)
    assert str(rebuilt) == str(original)
    assert rebuilt.message == original.message
    for attribute in ATTRIBUTES:
        assert getattr(rebuilt, attribute, None) == getattr(original, attribute, None), attribute
    assert problem["detail"] == str(original)
    assert problem["request_id"] == "req-1"
    assert problem["type"].startswith(PROBLEM_BASE)
    assert problem["status"] == status_for(original)
    assert "Traceback" not in msgspec.json.encode(problem).decode()


@pytest.mark.parametrize(
    ("name", "status", "slug"),
    [
        ("JidokaError", 500, "internal-error"),
        ("SessionNotFound", 404, "session-not-found"),
        ("RunNotFound", 404, "run-not-found"),
        ("SessionTerminated", 409, "session-terminated"),
        ("InvalidTransition", 409, "invalid-transition"),
        ("SessionExists", 409, "session-exists"),
        ("SessionBusy", 409, "session-busy"),
        ("LLMError", 502, "llm-error"),
        ("InvalidRole", 422, "invalid-role"),
        ("InvalidConfig", 422, "invalid-config"),
        ("InvalidArgument", 422, "invalid-argument"),
        ("PathNotAllowed", 422, "path-not-allowed"),
        ("LimitExceeded", 429, "limit-exceeded"),
        ("LimitExceeded-bytes", 413, "limit-exceeded"),
        ("LimitExceeded-sessionless", 429, "limit-exceeded"),
        ("Unauthorized", 401, "unauthorized"),
        ("UnsupportedMediaType", 415, "unsupported-media-type"),
        ("HostNotAllowed", 421, "host-not-allowed"),
        ("OriginNotAllowed", 403, "origin-not-allowed"),
        ("StoreError", 503, "store-error"),
        ("RuntimeClosed", 503, "runtime-closed"),
    ],
)
def test_type_and_status_follow_the_documented_table(name: str, status: int, slug: str) -> None:
    problem = problem_for(CASES[name]())
    assert problem["status"] == status
    assert problem["type"] == PROBLEM_BASE + slug


@pytest.mark.parametrize(
    ("limit", "status"),
    [
        ("max_message_bytes", 413),
        ("max_request_bytes", 413),
        ("max_working_context_bytes", 413),
        ("max_sessions", 429),
        ("max_files", 429),
        ("max_inflight_requests", 429),
    ],
)
def test_size_limits_are_413_and_other_limits_429(limit: str, status: int) -> None:
    error = LimitExceeded(limit, 10, actual=11)
    assert status_for(error) == status
    problem, rebuilt = _round_trip(error)
    assert problem["status"] == status
    assert isinstance(rebuilt, LimitExceeded)
    assert (rebuilt.limit, rebuilt.maximum, rebuilt.actual) == (limit, 10, 11)


def test_problem_carries_only_the_errors_own_members() -> None:
    problem = problem_for(SessionNotFound(SID))
    assert set(problem) == {"type", "title", "status", "detail", "session_id"}
    problem = problem_for(LimitExceeded("max_files", 50, session_id=SID, actual=51))
    assert problem["limit"] == "max_files"
    assert (problem["maximum"], problem["actual"]) == (50, 51)
    assert "path" not in problem  # None is left out, not sent as null


def test_unknown_type_is_a_plain_jidoka_error_with_the_detail() -> None:
    problem = {
        "type": PROBLEM_BASE + "quota-of-the-future",
        "title": "Something new",
        "status": 418,
        "detail": f"session {SID!r}: a newer server says no",
        "session_id": SID,
    }
    rebuilt = error_from_problem(problem, status=418)
    assert type(rebuilt) is JidokaError
    assert str(rebuilt) == f"session {SID!r}: a newer server says no"
    assert rebuilt.session_id == SID


def test_foreign_type_uri_is_a_plain_jidoka_error() -> None:
    problem = {"type": "https://example.com/probs/out-of-credit", "detail": "no credit"}
    rebuilt = error_from_problem(problem, status=403)
    assert type(rebuilt) is JidokaError
    assert str(rebuilt) == "no credit"
    assert rebuilt.session_id is None


def test_missing_detail_falls_back_to_title_then_status() -> None:
    with_title = error_from_problem({"type": "about:blank", "title": "Not Found"}, status=404)
    assert str(with_title) == "Not Found"
    bare = error_from_problem({}, status=502)
    assert type(bare) is JidokaError
    assert str(bare) == "HTTP 502"


def test_known_type_with_missing_members_still_rebuilds() -> None:
    """A sparse problem (another implementation, an older server) gives the right class."""
    rebuilt = error_from_problem(
        {"type": PROBLEM_BASE + "limit-exceeded", "detail": "too many"}, status=429
    )
    assert isinstance(rebuilt, LimitExceeded)
    assert str(rebuilt) == "too many"
    rebuilt = error_from_problem(
        {"type": PROBLEM_BASE + "invalid-argument", "detail": "bad"}, status=422
    )
    assert type(rebuilt) is InvalidArgument
    assert str(rebuilt) == "bad"


def test_wrongly_typed_members_are_ignored() -> None:
    problem = problem_for(LimitExceeded("max_files", 50, session_id=SID, actual=51))
    problem.update(maximum="fifty", actual=True, session_id=7)
    rebuilt = error_from_problem(problem, status=429)
    assert isinstance(rebuilt, LimitExceeded)
    assert rebuilt.maximum == 0
    assert rebuilt.actual is None
    assert rebuilt.session_id is None


# --- the one table ---------------------------------------------------------------------------

#: Public errors that never travel as a problem document: the remote client raises it when
#: there is no answer at all to rebuild from.
CLIENT_ONLY = {"ServerUnavailable"}
#: The errors only the HTTP layer raises (rows of their own; rebuilt by the row their slug names).
SERVER_CASES: dict[str, Callable[[], JidokaError]] = {
    "KeyNotFound": lambda: KeyNotFound(SID, "notes"),
    "MalformedBody": lambda: MalformedBody("body is not valid JSON", argument="body"),
    "NestingTooDeep": lambda: NestingTooDeep("body", argument="body", maximum=128),
}
HTTP_API = Path(__file__).resolve().parents[2] / "docs" / "http-api.md"


def _public_errors() -> set[type[JidokaError]]:
    return {
        value
        for name in jidoka.__all__
        if isinstance(value := getattr(jidoka, name), type)
        and issubclass(value, JidokaError)
        and name not in CLIENT_ONLY
    }


def test_every_public_error_has_a_row_of_its_own() -> None:
    rows = [row.error for row in PROBLEMS]
    assert len(rows) == len(set(rows)), "one row per class"
    assert _public_errors() <= set(rows)
    for name in CLIENT_ONLY:
        assert getattr(jidoka, name) not in rows


def test_rows_are_most_specific_first() -> None:
    """The first isinstance match wins, so no row may hide a subclass's row below it."""
    for index, row in enumerate(PROBLEMS):
        for later in PROBLEMS[index + 1 :]:
            assert not issubclass(later.error, row.error), (row.error, later.error)


@pytest.mark.parametrize("row", PROBLEMS, ids=lambda row: row.error.__name__)
def test_every_row_round_trips_with_its_fields(row: Problem) -> None:
    makes = [*CASES.values(), *SERVER_CASES.values()]
    instances = [exc for make in makes if type(exc := make()) is row.error]
    assert instances, f"no case builds a {row.error.__name__}"
    for original in instances:
        problem, rebuilt = _round_trip(original)
        assert problem_of(original) is row
        assert problem["type"] == row.type_uri
        assert problem["title"] == row.title
        assert problem["status"] == status_for(original)
        extra = set(problem) - {"type", "title", "status", "detail", "request_id", "session_id"}
        assert extra <= set(row.fields)
        rebuilder = row if row.rebuild is not None else problem_of_slug(row.slug)
        assert type(rebuilt) is rebuilder.error
        assert str(rebuilt) == str(original)
        for name in ("session_id", *row.fields):
            attribute = "status" if name == "provider_status" else name
            if hasattr(rebuilt, attribute):
                assert getattr(rebuilt, attribute) == getattr(original, attribute), name


def problem_of_slug(slug: str) -> Problem:
    return next(row for row in PROBLEMS if row.slug == slug and row.rebuild is not None)


def test_the_http_api_table_says_what_the_rows_say() -> None:
    """docs/http-api.md's error table: each row's slug, status and class, as PROBLEMS has them."""
    lines = HTTP_API.read_text(encoding="utf-8").split("## Errors", 1)[1].splitlines()
    table = [line for line in lines if line.startswith("| `")]
    for row in PROBLEMS:
        line = next((text for text in table if f"`{row.slug}`" in text.split(" | ")[0]), "")
        assert line, f"{row.slug} is not in docs/http-api.md's error table"
        assert str(row.status) in line, (row.slug, row.status)
        if row.error in _public_errors():
            assert f"`{row.error.__name__}`" in line, row.error.__name__


@pytest.mark.parametrize(
    ("make", "retry_after"),
    [
        (CASES["NotOwner"], "1"),
        (lambda: StoreUnavailable("the store cannot be reached", session_id=SID), "1"),
        (lambda: RuntimeClosed("the runtime is shutting down"), "1"),
        (CASES["CommitOutcomeUnknown"], None),  # read the log first: never "just retry"
        (CASES["ProjectRootUnavailable"], None),  # retrying does not mount the files
        (CASES["StoreError"], None),
    ],
)
def test_errors_a_client_may_resend_say_when(
    make: Callable[[], JidokaError], retry_after: str | None
) -> None:
    from jidoka.server.responses import problem_response

    response = problem_response(make(), "r1")
    assert response.headers.get("retry-after") == retry_after
