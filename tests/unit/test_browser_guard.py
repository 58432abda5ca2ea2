"""The browser checks as pure functions: Host parsing and policy, Origin policy, JSON media types,
``--allowed-host`` validation; and the app in process on a wildcard address.

The same checks against a real server are in tests/e2e/test_local_web.py, and from a real
browser in tests/browser/test_hostile_page.py.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest

import jidoka
from jidoka.errors import InvalidConfig
from jidoka.server.app import create_app
from jidoka.server.browser_guard import (
    BrowserGuard,
    HostPattern,
    HostPolicy,
    OriginPolicy,
    is_json_media_type,
    parse_allowed_host,
    split_host,
)
from jidoka.server.config import ServerConfig


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("localhost", ("localhost", None)),
        ("LocalHost:8765", ("localhost", 8765)),
        ("example.com.", ("example.com", None)),
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("[::1]", ("::1", None)),
        ("[::1]:8765", ("::1", 8765)),
        ("under_score.test", ("under_score.test", None)),
        ("", None),
        (":8765", None),
        ("::1", None),  # IPv6 needs brackets
        ("[::1", None),
        ("[not-v6]:1", None),
        ("host:", None),
        ("host:99999", None),
        ("host:12a", None),
        ("host:\uff18\uff10", None),  # non-ASCII digits
        ("ho st", None),
        ("evil.test/x", None),
        ("a..b", None),
        ("[::1]x", None),
    ],
)
def test_split_host(value: str, parsed: tuple[str, int | None] | None) -> None:
    assert split_host(value) == parsed


@pytest.mark.parametrize(
    ("entry", "pattern"),
    [
        ("jidoka.example.com", HostPattern("jidoka.example.com")),
        ("Jidoka.Example.com:8443", HostPattern("jidoka.example.com", 8443)),
        ("*.example.com", HostPattern("example.com", None, subdomains=True)),
        (".example.com:80", HostPattern("example.com", 80, subdomains=True)),
        ("[fd00::1]:8765", HostPattern("fd00::1", 8765)),
        ("10.0.0.5", HostPattern("10.0.0.5")),
        ("*", None),
    ],
)
def test_allowed_host_entries(entry: str, pattern: HostPattern | None) -> None:
    assert parse_allowed_host(entry) == pattern


@pytest.mark.parametrize("entry", ["", "*.", "**.x", "http://x", "x:y", "*.10.0.0.1", "a b"])
def test_bad_allowed_host_is_invalid_config_naming_it(entry: str) -> None:
    with pytest.raises(InvalidConfig) as raised:
        parse_allowed_host(entry)
    assert raised.value.field == "allowed_hosts"
    assert repr(entry) in str(raised.value)
    with pytest.raises(InvalidConfig):
        ServerConfig(allowed_hosts=(entry,))


def test_allowed_hosts_from_the_environment() -> None:
    config = ServerConfig.from_env({"JIDOKA_ALLOWED_HOSTS": "a.test, *.b.test,,"})
    assert config.allowed_hosts == ("a.test", "*.b.test")
    flags = ServerConfig.from_env({"JIDOKA_ALLOWED_HOSTS": "a.test"}, allowed_hosts=("c.test",))
    assert flags.allowed_hosts == ("c.test",)


def test_default_hosts_on_loopback() -> None:
    policy = HostPolicy("127.0.0.1")
    allowed = ["localhost", "localhost:8765", "127.0.0.1:8765", "[::1]:8765", "[::1]", None]
    for host in allowed:
        assert policy.allows(host, 8765), host
    for host in ["localhost:8766", "evil.test", "evil.test:8765", "10.0.0.5", "[::1]:1", "a b"]:
        assert not policy.allows(host, 8765), host
    assert policy.allows("localhost:1234", None)  # the local port is not known


def test_a_named_or_specific_bind_address_is_a_default() -> None:
    assert HostPolicy("10.0.0.5").allows("10.0.0.5:8765", 8765)
    assert not HostPolicy("10.0.0.5").allows("10.0.0.6:8765", 8765)
    assert HostPolicy("fd00::1").allows("[fd00::1]:8765", 8765)
    assert HostPolicy("box.lan").allows("box.lan:8765", 8765)


@pytest.mark.parametrize("bind", ["0.0.0.0", "::"])
def test_a_wildcard_bind_takes_ip_addresses_and_listed_names_only(bind: str) -> None:
    policy = HostPolicy(bind)
    assert policy.wildcard
    for host in ["192.168.1.5:8765", "10.0.0.5", "[fd00::5]:8765", "localhost:8765"]:
        assert policy.allows(host, 8765), host
    for host in ["box.lan:8765", "evil.test", "192.168.1.5:9000"]:
        assert not policy.allows(host, 8765), host
    named = HostPolicy(bind, ["box.lan", "*.corp.test:443"])
    assert named.allows("box.lan:9000", 8765)  # a listed name at any port, unless it says one
    assert named.allows("api.corp.test:443", 8765)
    assert not named.allows("api.corp.test:8443", 8765)
    assert not named.allows("corp.test:443", 8765)


def test_star_allows_every_host() -> None:
    policy = HostPolicy("127.0.0.1", ["*"])
    assert policy.allows("evil.test", 8765)
    assert policy.allows("not a host", 8765)


def test_origin_policy() -> None:
    policy = OriginPolicy(["http://app.test:5173/"])
    assert policy.allows("http://app.test:5173", None)  # listed: whatever the Host
    assert policy.allows("http://127.0.0.1:8765", "127.0.0.1:8765")  # own
    assert policy.allows("http://LOCALHOST:8765", "localhost:8765")
    assert policy.allows("http://[::1]:8765", "[::1]:8765")
    assert policy.allows("https://jidoka.test", "jidoka.test")  # default ports
    assert policy.allows("https://jidoka.test:443", "jidoka.test")
    assert policy.allows("http://jidoka.test", "jidoka.test:80")
    for origin, host in [
        ("http://127.0.0.1:9", "127.0.0.1:8765"),
        ("http://localhost:8765", "127.0.0.1:8765"),
        ("https://jidoka.test", "jidoka.test:80"),
        ("null", "127.0.0.1:8765"),
        ("file://", "127.0.0.1:8765"),
        ("http://x:99999", "x:99999"),
        ("http://127.0.0.1:8765", None),
        ("http://127.0.0.1:8765", "bad host"),
        ("https://app.test:5173", "127.0.0.1:8765"),
    ]:
        assert not policy.allows(origin, host), (origin, host)
    assert OriginPolicy(["*"]).allows("http://evil.test", "127.0.0.1:8765")


@pytest.mark.parametrize(
    ("content_type", "json"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("APPLICATION/JSON", True),
        ("application/problem+json", True),
        ("application/merge-patch+json;charset=UTF-8", True),
        ("text/plain", False),
        ("text/json", False),
        ("application/jsonp", False),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
        ("+json", False),
        ("", False),
        (None, False),
    ],
)
def test_json_media_types(content_type: str | None, json: bool) -> None:
    assert is_json_media_type(content_type) is json


async def test_the_app_on_a_wildcard_address_warns_and_refuses_names(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """In process (no socket is bound): the policy create_app builds from the config."""
    config = ServerConfig(host="0.0.0.0", tokens={"t" * 16: "alice"})
    headers = {"Authorization": "Bearer " + "t" * 16}
    async with jidoka.Runtime(store="memory") as rt:
        with caplog.at_level(logging.WARNING, logger="jidoka.server"):
            app = create_app(rt, config)
        assert "--allowed-host" in caplog.text
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, headers=headers) as http:
            by_ip = await http.get("http://192.168.1.5/v1/sessions")
            assert by_ip.status_code == 200
            by_name = await http.get("http://box.lan/v1/sessions")
            assert by_name.status_code == 421
            assert by_name.json()["host"] == "box.lan"
        caplog.clear()
        named = ServerConfig(host="0.0.0.0", tokens=config.tokens, allowed_hosts=("box.lan",))
        with caplog.at_level(logging.WARNING, logger="jidoka.server"):
            app = create_app(rt, named)
        assert "--allowed-host" not in caplog.text
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, headers=headers) as http:
            assert (await http.get("http://box.lan/v1/sessions")).status_code == 200


async def test_a_refused_handshake_without_the_denial_extension_is_a_bare_close() -> None:
    """A server that cannot send a body with a refused handshake gets a close before accept
    (uvicorn answers 403); the app behind the guard is never called."""
    sent: list[MutableMapping[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app must not see a refused handshake")

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    guard = BrowserGuard(app, hosts=HostPolicy("127.0.0.1"), origins=OriginPolicy())
    scope = {
        "type": "websocket",
        "path": "/v1/ws",
        "headers": [(b"host", b"127.0.0.1:8765"), (b"origin", b"http://evil.test")],
        "server": ("127.0.0.1", 8765),
    }
    await guard(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "origin not allowed"}]
    sent.clear()
    await guard({**scope, "headers": [(b"host", b"evil.test:8765")]}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "host not allowed"}]
