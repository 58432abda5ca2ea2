"""Property tests of the server's input decoders: whatever bytes or text come in, the only
exceptions that come out are the documented :class:`~jidoka.InvalidArgument` kinds.

The decoders are called directly (no server): the JSON body and command decoder with arbitrary
bytes, arbitrary text and documents nested to any depth; the query parsers with arbitrary query
strings, non-ASCII digits included; the router's match with arbitrary paths. hypothesis runs a
bounded, derandomized number of examples (:data:`FUZZ`), so a run is reproducible in CI.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.datastructures import QueryParams
from starlette.responses import Response
from starlette.routing import Route

from jidoka.errors import InvalidArgument
from jidoka.server import ws
from jidoka.server.inputs import (
    MAX_JSON_DEPTH,
    MAX_QUERY_INT_DIGITS,
    NestingTooDeep,
    check_query,
    decode_json,
    parse_seq,
    query_int,
    query_str,
)
from jidoka.server.responses import MalformedBody, RouteNotFound
from jidoka.server.router import ApiRoute, build_router
from jidoka.server.routes import ROUTES
from jidoka.wire import CreateSessionRequest, WorkingContextWrite

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
#: Every type a body or a command is decoded into.
BODY_TYPES: list[type[Any]] = sorted(
    {spec.body for spec in ROUTES if spec.body is not None} | {ws._Command},
    key=lambda kind: kind.__name__,
)
#: Characters ``str.isdigit`` (or ``int``) accepts that are not ASCII digits.
ODD_DIGITS = "²³¹١٢٣۴५০๑𝟙①⑴０"
_query_text = st.text(
    st.one_of(st.characters(), st.sampled_from(list(ODD_DIGITS + "0123456789=&%+;"))),
    max_size=60,
)


def _nested(depth: int, shapes: list[bool]) -> bytes:
    """``depth`` levels of arrays and objects (``shapes``, cycled: True is an object)."""
    opening, closing = [], []
    for level in range(depth):
        if shapes[level % len(shapes)]:
            opening.append(b'{"k": ')
            closing.append(b"}")
        else:
            opening.append(b"[")
            closing.append(b"]")
    return b"".join(opening) + b"1" + b"".join(reversed(closing))


# --- JSON ---------------------------------------------------------------------------------------


#: The start of a body or command whose free-form part then opens many levels, unclosed: the
#: decoder goes as deep as the brackets before it can tell the document is cut short.
_DEEP_PREFIXES = [b'{"value": ', b'{"metadata": {"a": ', b'{"fields": {"a": ',
                  b'{"op": "x", "args": {"a": ', b""]  # fmt: skip
_raw_documents = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    st.tuples(st.sampled_from(_DEEP_PREFIXES), st.integers(0, 20_000), st.binary(max_size=10)).map(
        lambda parts: parts[0] + b"[" * parts[1] + parts[2]
    ),
)


@pytest.mark.parametrize("kind", BODY_TYPES, ids=lambda kind: kind.__name__)
@FUZZ
@given(raw=_raw_documents)
def test_any_bytes_decode_or_raise_invalid_argument(kind: type[Any], raw: bytes) -> None:
    try:
        decode_json(raw, kind)
    except InvalidArgument as exc:
        assert exc.argument, exc
        assert exc.message, exc


@FUZZ
@given(text=st.one_of(st.text(max_size=300), _raw_documents.map(lambda raw: raw.decode("latin-1"))))
def test_any_text_frame_decodes_as_a_command_or_raises_invalid_argument(text: str) -> None:
    try:
        decode_json(text, ws._Command, argument="command", what="the command")
    except InvalidArgument as exc:
        assert exc.argument, exc


@FUZZ
@given(
    depth=st.one_of(
        st.integers(1, 3 * MAX_JSON_DEPTH),
        st.sampled_from([MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, 999, 1_000, 5_000, 100_000]),
    ),
    shapes=st.lists(st.booleans(), min_size=1, max_size=5),
)
@example(depth=100_000, shapes=[False])
@example(depth=MAX_JSON_DEPTH, shapes=[True])
def test_nesting_is_refused_past_the_limit_and_only_there(depth: int, shapes: list[bool]) -> None:
    """``{"value": <depth levels>}`` is ``depth + 1`` levels: accepted up to the limit,
    refused past it with the limit named -- however deep (no ``RecursionError``)."""
    raw = b'{"value": ' + _nested(depth, shapes) + b"}"
    if depth + 1 <= MAX_JSON_DEPTH:
        assert decode_json(raw, WorkingContextWrite).value == msgspec.json.decode(raw)["value"]
        return
    with pytest.raises(NestingTooDeep) as refused:
        decode_json(raw, WorkingContextWrite)
    assert refused.value.limit == "max_json_depth"
    assert refused.value.maximum == MAX_JSON_DEPTH
    assert refused.value.argument == "body"
    assert "max_json_depth" in refused.value.message
    # Brackets inside strings are text, not nesting: as many as the depth, and still accepted.
    text = "[" * depth + "{" * depth
    body = msgspec.json.encode({"metadata": {"note": text}})
    assert decode_json(body, CreateSessionRequest).metadata == {"note": text}


@pytest.mark.parametrize(
    ("raw", "error", "argument"),
    [
        (b"{", MalformedBody, "body"),
        (b"", MalformedBody, "body"),
        (b"\xff", MalformedBody, "body"),
        (b'"not an object"', InvalidArgument, "body"),
        (b'{"metadata": 5}', InvalidArgument, "metadata"),
        (b'{"config": {"x": 1e999}}', InvalidArgument, "config"),
        (b'{"project_root": ["a"]}', InvalidArgument, "project_root"),
        (b'{"bogus": 1}', InvalidArgument, "body"),
    ],
)
def test_decoding_errors_name_what_is_wrong(
    raw: bytes, error: type[InvalidArgument], argument: str
) -> None:
    with pytest.raises(error) as refused:
        decode_json(raw, CreateSessionRequest)
    assert refused.value.argument == argument


# --- query strings ------------------------------------------------------------------------------


@FUZZ
@given(raw=_query_text)
@example(raw="limit=²")
@example(raw="limit=١٢")
@example(raw="limit=" + "9" * 40)
@example(raw="limit=1&limit=2")
def test_query_int_is_ascii_digits_within_bounds_or_invalid_argument(raw: str) -> None:
    params = QueryParams(raw)
    try:
        value = query_int(params, "limit", default=100, minimum=1, maximum=1000)
    except InvalidArgument as exc:
        assert exc.argument == "limit"
        return
    given_values = params.getlist("limit")
    if not given_values:
        assert value == 100
        return
    assert len(given_values) == 1
    text = given_values[0]
    assert text.isascii()
    assert text.isdecimal()
    assert len(text) <= MAX_QUERY_INT_DIGITS
    assert value == int(text)
    assert 1 <= value <= 1000


@FUZZ
@given(raw=st.text(st.one_of(st.characters(), st.sampled_from(list(ODD_DIGITS))), max_size=30))
@example(raw="²")
@example(raw="9" * 19)
def test_event_positions_are_ascii_digits_or_invalid_argument(raw: str) -> None:
    try:
        value = parse_seq(raw, argument="after_seq", source="after_seq")
    except InvalidArgument as exc:
        assert exc.argument == "after_seq"
        assert len(exc.message) < 300  # the value is quoted, cut short
        return
    assert raw.isascii()
    assert raw.isdecimal()
    assert len(raw) <= MAX_QUERY_INT_DIGITS
    assert value == int(raw) >= 0


@FUZZ
@given(raw=_query_text)
def test_query_str_and_check_query_only_raise_invalid_argument(raw: str) -> None:
    params = QueryParams(raw)
    allowed = {"limit", "status", "cursor"}
    try:
        check_query(params, allowed)
    except InvalidArgument as exc:
        assert exc.argument in {name[:64] for name in params if name not in allowed}
    else:
        assert set(params) <= allowed
    for name in allowed:
        try:
            query_str(params, name)
        except InvalidArgument as exc:
            assert exc.argument == name
            assert len(params.getlist(name)) > 1


# --- routing ------------------------------------------------------------------------------------


async def _endpoint(request: Any) -> Any:
    return Response(b"{}", media_type="application/json")


ROUTER = build_router(
    [
        ApiRoute(spec.path, spec.method, _endpoint, query=spec.query, stream=spec.stream)
        for spec in ROUTES
    ]
)


async def _nothing() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _ignore(message: Any) -> None:
    pass


@FUZZ
@given(
    path=st.one_of(
        st.text(max_size=80).map(lambda text: "/" + text),
        st.lists(st.sampled_from(["v1", "sessions", "events", "x", "", "working-context",
                                  "saved-sessions", "files", "²"]), max_size=7).map(
            lambda parts: "/" + "/".join(parts)),
    ),
    method=st.sampled_from(["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS", "ü"]),
)  # fmt: skip
def test_router_matches_any_path_without_raising(path: str, method: str) -> None:
    """Any path is routed, or refused with a 404/405 problem; a stream is only ever a GET of
    a route declared as one (whatever the path ends with)."""
    scope: dict[str, Any] = {"type": "http", "path": path, "method": method, "headers": []}
    routing = ROUTER(scope, _nothing, _ignore)
    try:
        routing.send(None)  # nothing in it waits: it finishes in one step, without a loop
    except StopIteration:
        pass
    except RouteNotFound as refused:
        assert refused.status in (404, 405)
    else:
        routing.close()
        raise AssertionError("routing waited for something")
    route = scope.get("route")
    if isinstance(route, ApiRoute) and route.stream and method in (route.methods or ()):
        assert method in ("GET", "HEAD")
        assert any(spec.stream and spec.path == route.path for spec in ROUTES)


_PLAIN = [
    Route(route.path, _endpoint, methods=list(route.methods or ()))
    for route in ROUTER.routes
    if isinstance(route, ApiRoute)
]


@FUZZ
@given(
    path=st.one_of(
        st.text(max_size=60).map(lambda text: "/" + text),
        st.lists(st.sampled_from(["v1", "sessions", "events", "messages", "x", "", "files",
                                  "working-context", "/events", "s/messages"]), max_size=6).map(
            lambda parts: "/" + "/".join(parts)),
    ),
    method=st.sampled_from(["GET", "POST", "DELETE"]),
)  # fmt: skip
def test_the_suffix_test_rules_out_only_what_starlette_would(path: str, method: str) -> None:
    """:class:`ApiRoute` skips the regular expression when the path does not end with the
    template's fixed tail: for every route, the match is Starlette's own."""
    scope = {"type": "http", "path": path, "method": method, "headers": []}
    routes = [route for route in ROUTER.routes if isinstance(route, ApiRoute)]
    for ours, plain in zip(routes, _PLAIN, strict=True):
        assert ours.matches(scope)[0] == plain.matches(scope)[0], (ours.path, path)
