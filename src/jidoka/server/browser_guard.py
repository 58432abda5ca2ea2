"""What a web page the user merely opens can make the server do: nothing.

A server on the user's own machine is reachable by every page their browser shows, and tokens
alone do not protect it (``--insecure-no-auth`` has none). Three doors, each closed here:

- **Simple cross-site requests.** A page may send a ``POST`` to any address without asking
  first (``fetch(..., {mode: "no-cors"})``, a ``<form>``), with a ``text/plain`` body or none at
  all; it cannot read the answer, but the request does its work. So a request that declares a
  body must say it is JSON (``application/json`` or ``application/*+json``; 415 otherwise), which
  a simple request cannot; and a request that can change something (``POST``, ``PUT``,
  ``PATCH``, ``DELETE``) whose ``Origin`` header (every browser sends one with these) is neither
  the server's own origin nor a ``--cors-origin`` is refused (403).
- **WebSockets.** Browsers apply no CORS to them: any page may open ``/v1/ws`` and read what it
  answers. The handshake carries ``Origin``, checked the same way; a refused handshake is a 403
  and the socket never opens. Without an ``Origin`` (a program, not a browser) it goes on.
- **DNS rebinding.** A page on a name the attacker controls re-points that name at 127.0.0.1;
  for the browser the server is then the page's own origin, CORS and ``Origin`` checks included.
  Only the ``Host`` header still names the attacker's domain, so it must be a name the server is
  known by (421 otherwise): the loopback names and the bound address, plus ``--allowed-host``.

A request without ``Origin`` or ``Host`` cannot come from a browser and is let through; the
probes (``/healthz``, ``/readyz``) answer whatever ``Host`` an orchestrator sends. Refusals are
:class:`~jidoka.JidokaError` subclasses, so HTTP ones become problem documents in
:class:`~jidoka.server.middleware.Problems` (which sits outside this one); a refused
WebSocket handshake gets the same document where the server can send a body with it.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import HostNotAllowed, InvalidConfig, OriginNotAllowed, UnsupportedMediaType
from .middleware import REQUEST_ID_KEY
from .responses import problem_response

__all__ = [
    "BrowserGuard",
    "HostPolicy",
    "OriginPolicy",
    "is_json_media_type",
    "parse_allowed_host",
]

logger = logging.getLogger("jidoka.server")

#: Names that always mean this machine; a browser never lets a page re-point them.
LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})
#: Paths answered for any Host: probes say nothing private, and orchestrators call them by IP.
PROBES: Final = frozenset({"/healthz", "/readyz"})
#: Methods a page can use to change something; browsers send ``Origin`` with each of them.
UNSAFE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_NAME: Final = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_PORT: Final = re.compile(r"[0-9]{1,5}")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def split_host(value: str) -> tuple[str, int | None] | None:
    """``name``, ``name:port``, ``[v6]`` or ``[v6]:port`` as (lower-case name without a final
    dot, port or ``None``); ``None`` if it is none of those."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            return None
        if not bracket:
            return None
    else:
        name, colon, port_text = value.partition(":")
        rest = colon + port_text
        name = name.removesuffix(".")
        if not _NAME.fullmatch(name):
            return None
    if not rest:
        return name, None
    if not rest.startswith(":") or not _PORT.fullmatch(rest[1:]) or int(rest[1:]) > 65535:
        return None
    return name, int(rest[1:])


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class HostPattern:
    """One ``--allowed-host``: a name (or, with ``subdomains``, every name below it) and a port
    (``None``: any port, as a reverse proxy in front may use its own)."""

    name: str
    port: int | None = None
    subdomains: bool = False

    def matches(self, name: str, port: int | None) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.subdomains:
            return name.endswith("." + self.name)
        return name == self.name


def parse_allowed_host(entry: str) -> HostPattern | None:
    """An ``--allowed-host`` value as a pattern; ``None`` for ``*`` (any Host). Raises
    :class:`~jidoka.InvalidConfig` naming the entry if it is not ``host[:port]``,
    ``*.domain[:port]`` or ``.domain[:port]``."""
    text = entry.strip()
    if text == "*":
        return None
    subdomains = text.startswith(("*.", "."))
    parsed = split_host(text.removeprefix("*").removeprefix(".") if subdomains else text)
    if parsed is None or not parsed[0] or (subdomains and _is_ip(parsed[0])):
        raise InvalidConfig(
            f"allowed host {entry!r} is not host[:port], *.domain[:port] or .domain[:port] "
            "(an IPv6 address in brackets), nor '*'",
            field="allowed_hosts",
        )
    return HostPattern(parsed[0], parsed[1], subdomains)


def is_wildcard_address(host: str) -> bool:
    """Whether binding ``host`` listens on every address (``0.0.0.0``, ``::``)."""
    try:
        return host == "" or ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


class HostPolicy:
    """Which ``Host`` headers name this server.

    By default the loopback names and the bound address, each with the port the request came
    in on or none. On a wildcard address (``0.0.0.0``, ``::``) the machine's names cannot be
    known, so any IP address is taken as well (a page can only make a browser send an IP as
    ``Host`` by being loaded from that very address and port, which is this server), and a
    name works only once it is listed with ``--allowed-host``. ``*`` there turns the check off.
    """

    def __init__(self, bind_host: str, allowed: Iterable[str] = ()) -> None:
        patterns = [parse_allowed_host(entry) for entry in allowed]
        self.any = any(pattern is None for pattern in patterns)
        self.patterns = tuple(pattern for pattern in patterns if pattern is not None)
        self.wildcard = is_wildcard_address(bind_host)
        bound = split_host(bind_host) or split_host(f"[{bind_host}]")
        names = set(LOOPBACK_NAMES)
        if bound is not None and not self.wildcard:
            names.add(bound[0])
        self.default_names = frozenset(names)

    def allows(self, host: str | None, local_port: int | None) -> bool:
        """Whether a request with this ``Host`` (``None``: none sent) that arrived on
        ``local_port`` (``None``: not known) may be served."""
        if self.any or host is None:
            return True
        parsed = split_host(host)
        if parsed is None:
            return False
        name, port = parsed
        by_default = name in self.default_names or (self.wildcard and _is_ip(name))
        if by_default and (port is None or local_port is None or port == local_port):
            return True
        return any(pattern.matches(name, port) for pattern in self.patterns)


class OriginPolicy:
    """Which browser origins may change things or open the WebSocket: the server's own (the
    scheme, host and port the request's ``Host`` names) and the ``--cors-origin`` ones (``*``
    in them: every origin, as for CORS)."""

    def __init__(self, cors_origins: Iterable[str] = ()) -> None:
        listed = {origin.strip().lower().rstrip("/") for origin in cors_origins}
        self.any = "*" in listed
        self.listed = frozenset(listed)

    def allows(self, origin: str, host: str | None) -> bool:
        if self.any or origin.strip().lower() in self.listed:
            return True
        try:
            parts = urlsplit(origin.strip().lower())
            origin_port = parts.port
        except ValueError:
            return False
        default = _DEFAULT_PORTS.get(parts.scheme)
        if default is None or parts.hostname is None or host is None:
            return False  # "null" (a sandboxed frame, a file) and other opaque origins
        own = split_host(host)
        if own is None:
            return False
        own_port = own[1] if own[1] is not None else default
        return (parts.hostname.removesuffix("."), origin_port or default) == (own[0], own_port)


def is_json_media_type(content_type: str | None) -> bool:
    """``application/json`` or ``application/<anything>+json``, parameters (charset) allowed."""
    if content_type is None:
        return False
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _declares_body(scope: Scope) -> bool:
    length = _header(scope, b"content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return _header(scope, b"transfer-encoding") is not None


class BrowserGuard:
    """The ASGI middleware that applies :class:`HostPolicy`, :class:`OriginPolicy` and the JSON
    rule (see the module's docstring). It goes inside ``Problems`` and ``RequestId``, which
    turn what it raises into problem documents with the request's id."""

    def __init__(self, app: ASGIApp, *, hosts: HostPolicy, origins: OriginPolicy) -> None:
        self.app = app
        self.hosts = hosts
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            self.check(scope, websocket=False)
        elif kind == "websocket":
            try:
                self.check(scope, websocket=True)
            except (HostNotAllowed, OriginNotAllowed) as exc:
                await self._refuse_handshake(scope, receive, send, exc)
                return
        await self.app(scope, receive, send)

    def check(self, scope: Scope, *, websocket: bool) -> None:
        """Raise the refusal for this request, if any."""
        path: str = scope["path"]
        host = _header(scope, b"host")
        if path not in PROBES:
            server = scope.get("server")
            local_port = server[1] if server and isinstance(server[1], int) else None
            if not self.hosts.allows(host, local_port):
                raise HostNotAllowed(host or "")
        origin = _header(scope, b"origin")
        if (
            origin is not None
            and (websocket or scope["method"] in UNSAFE_METHODS)
            and not self.origins.allows(origin, host)
        ):
            raise OriginNotAllowed(origin)
        if not websocket and path.startswith("/v1/") and _declares_body(scope):
            content_type = _header(scope, b"content-type")
            if not is_json_media_type(content_type):
                raise UnsupportedMediaType(content_type)

    @staticmethod
    async def _refuse_handshake(
        scope: Scope, receive: Receive, send: Send, exc: HostNotAllowed | OriginNotAllowed
    ) -> None:
        """Answer the handshake with the problem (status and body) where the server supports
        a denial response, else with a bare 403; either way the socket never opens."""
        request_id = scope.get(REQUEST_ID_KEY)
        logger.info("WebSocket %s refused: %s", scope["path"], exc)
        if "websocket.http.response" in scope.get("extensions", {}):
            headers = {"X-Request-ID": request_id} if request_id else None
            await problem_response(exc, request_id, headers)(scope, receive, send)
        else:
            # A close reason has at most 123 bytes: the problem's name, not its detail.
            reason = (
                "origin not allowed" if isinstance(exc, OriginNotAllowed) else "host not allowed"
            )
            await send({"type": "websocket.close", "code": 1008, "reason": reason})
