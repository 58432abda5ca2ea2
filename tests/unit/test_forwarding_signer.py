"""The signed header nodes forward commands with: what it binds (method, path with query,
principal, node, time, body) and what it refuses, through the same entry points the server
uses (:class:`Forwarding` checks a request's scope, :func:`check_body` its body)."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request

from jidoka.errors import Unauthorized
from jidoka.server.forwarding import FORWARDED_KEY, MAX_SKEW, Forwarding, Signer, check_body

SECRET = "0123456789abcdef" * 4
NOW = 1_767_225_600.0
TARGET = "/v1/sessions/S1/messages?wait=true"
BODY = b'{"role":"user","content":"hi"}'


def signer(node: str = "n1", *, now: float = NOW, secret: str = SECRET) -> Signer:
    return Signer(secret, node, now=lambda: now)


def scope_of(method: str, target: str) -> dict[str, Any]:
    path, _, query = target.partition("?")
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [],
    }


def receiving(verifier: Signer) -> Forwarding:
    forwarding = Forwarding()
    forwarding.signer = verifier
    return forwarding


@pytest.mark.parametrize(
    "principal", [None, "alice", "", "a;b;c", "ünï cödé ✓", "tab\tand\nnewline", "=" * 7]
)
def test_a_signed_request_verifies_with_its_principal_node_and_digest(
    principal: str | None,
) -> None:
    header = signer().sign("POST", TARGET, principal, BODY)
    got, node, digest = signer("n2").verify(header, "POST", TARGET)
    assert (got, node) == (principal, "n1")
    scope = scope_of("POST", TARGET)
    assert receiving(signer("n2")).principal_of(scope, header) == principal
    assert scope[FORWARDED_KEY] == ("n1", digest)
    check_body(Request(scope), BODY)  # the body it was signed for passes


def test_a_request_that_was_not_signed_is_not_checked_for_a_body() -> None:
    check_body(Request(scope_of("POST", TARGET)), b"anything")


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("PUT", TARGET),  # another method
        ("POST", "/v1/sessions/S2/messages?wait=true"),  # another session
        ("POST", "/v1/sessions/S1/messages"),  # the query dropped
        ("POST", "/v1/sessions/S1/messages?wait=false"),  # the query changed
    ],
)
def test_a_header_replayed_on_another_request_is_refused(method: str, target: str) -> None:
    header = signer().sign("POST", TARGET, "alice", BODY)
    with pytest.raises(Unauthorized, match="signature does not match"):
        signer().verify(header, method, target)
    with pytest.raises(Unauthorized, match="signature does not match"):
        receiving(signer()).principal_of(scope_of(method, target), header)


def fields(header: str) -> list[str]:
    return header.split(";")


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (1, "n9"),  # another sending node
        (2, str(int(NOW) - 1)),  # another time
        (3, "Ym9i"),  # another principal (base64 of "bob")
        (3, "-"),  # the principal removed
        (4, "0" * 64),  # another body digest
        (5, "f" * 64),  # a forged mac
    ],
)
def test_a_changed_field_breaks_the_signature(index: int, value: str) -> None:
    parts = fields(signer().sign("POST", TARGET, "alice", BODY))
    assert parts[index] != value
    parts[index] = value
    with pytest.raises(Unauthorized, match="signature does not match"):
        signer().verify(";".join(parts), "POST", TARGET)


def test_another_clusters_secret_is_refused() -> None:
    header = signer(secret="another cluster").sign("POST", TARGET, "alice", BODY)
    with pytest.raises(Unauthorized, match="signature does not match"):
        signer().verify(header, "POST", TARGET)


@pytest.mark.parametrize("header", ["", "v1;n1", "v2;n1;1;-;00;00", "v1;n1;1;-;00;00;extra"])
def test_a_malformed_header_is_refused(header: str) -> None:
    with pytest.raises(Unauthorized, match="malformed"):
        signer().verify(header, "POST", TARGET)


@pytest.mark.parametrize("offset", [MAX_SKEW + 1, -(MAX_SKEW + 1), 3600.0])
def test_a_header_from_outside_the_clock_window_is_refused(offset: float) -> None:
    header = signer(now=NOW - offset).sign("POST", TARGET, "alice", BODY)
    with pytest.raises(Unauthorized, match="s old"):
        signer().verify(header, "POST", TARGET)


def test_a_header_within_the_clock_window_is_accepted() -> None:
    header = signer(now=NOW - MAX_SKEW + 1).sign("POST", TARGET, "alice", BODY)
    assert signer().verify(header, "POST", TARGET)[0] == "alice"


def test_a_different_body_is_refused() -> None:
    header = signer().sign("POST", TARGET, "alice", BODY)
    scope = scope_of("POST", TARGET)
    receiving(signer()).principal_of(scope, header)
    with pytest.raises(Unauthorized, match="body does not match"):
        check_body(Request(scope), BODY + b" ")
    with pytest.raises(Unauthorized, match="body does not match"):
        check_body(Request(scope), b"")


def test_a_server_that_is_no_node_accepts_no_forwarded_request() -> None:
    header = signer().sign("POST", TARGET, "alice", BODY)
    with pytest.raises(Unauthorized, match="no node of a cluster"):
        Forwarding().principal_of(scope_of("POST", TARGET), header)
