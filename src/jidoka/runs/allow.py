"""Where webhooks may go: the operator's allow-list (``--webhook-allow``, ``JIDOKA_WEBHOOK_ALLOW``).

A webhook URL comes from a client, and the server is what calls it: without a list, any client
could make the server POST to its own loopback, to the cloud's metadata address, or to a service
behind the firewall. So nothing is allowed by default, and an entry names a destination exactly:
an origin (``https://hooks.example.com``) or a URL prefix (``http://127.0.0.1:8123/hooks/``).

A URL matches an entry when its scheme, host and port are the entry's (the host compared
case-insensitively in its IDNA form, a default port made explicit, so ``https://h`` and
``https://h:443`` are one origin) and its path starts with the entry's path *segment by segment*
(``/hooks`` allows ``/hooks`` and ``/hooks/a``, never ``/hooksevil``). Nothing is compared as a
substring, and a URL that parsers could read two ways is refused before any comparison: userinfo
(``https://allowed@evil``), a fragment, a backslash, whitespace or control characters, a host
with characters a host name cannot have (``%``-escapes included), a path with ``.``/``..``
segments or an escaped ``/``, a non-http(s) scheme, or more than :data:`MAX_URL_LENGTH`
characters.
"""

from __future__ import annotations

from typing import Final, NamedTuple
from urllib.parse import SplitResult, unquote, urlsplit

from ..errors import InvalidArgument, InvalidConfig

__all__ = ["MAX_URL_LENGTH", "AllowEntry", "check_webhook", "parse_allow", "parse_allow_entry"]

#: The longest webhook URL accepted, in characters.
MAX_URL_LENGTH: Final = 2048
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_HOST_CHARACTERS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")
_IPV6_CHARACTERS: Final = frozenset("0123456789abcdef:.")


class AllowEntry(NamedTuple):
    """One parsed entry: the URLs under ``scheme://host:port/segments...``."""

    scheme: str
    host: str
    port: int
    segments: tuple[str, ...]

    def allows(self, scheme: str, host: str, port: int, segments: tuple[str, ...]) -> bool:
        return (scheme, host, port) == (self.scheme, self.host, self.port) and segments[
            : len(self.segments)
        ] == self.segments


class _Malformed(ValueError):
    """Why a URL cannot be used (the text goes into the caller's error)."""


def _parse(url: object) -> tuple[SplitResult, str, str, int, tuple[str, ...]]:
    """The URL's parts, normalised: ``(split, scheme, host, port, path segments)``."""
    if not isinstance(url, str):
        raise _Malformed(f"it is a {type(url).__name__}, not a string")
    if len(url) > MAX_URL_LENGTH:
        raise _Malformed(f"it is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) <= 0x20 or 0x7F <= ord(c) <= 0x9F for c in url) or "\\" in url:
        raise _Malformed("it has whitespace, control characters or a backslash")
    try:
        split = urlsplit(url)
        port = split.port
    except ValueError as exc:
        raise _Malformed(str(exc)) from None
    scheme = split.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise _Malformed("only http and https URLs can be webhooks")
    if "#" in url:
        raise _Malformed("it has a fragment")
    if "@" in split.netloc:
        raise _Malformed("it has userinfo (user:password@)")
    host = _host(split)
    segments = _segments(split.path)
    return split, scheme, host, port if port is not None else _DEFAULT_PORTS[scheme], segments


def _host(split: SplitResult) -> str:
    raw = split.hostname or ""
    if not raw:
        raise _Malformed("it has no host")
    if split.netloc.startswith("["):
        if not set(raw) <= _IPV6_CHARACTERS:
            raise _Malformed("its IPv6 address is malformed")
        return f"[{raw}]"
    try:
        host = raw.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise _Malformed("its host is not a valid (IDNA) host name") from None
    if not set(host) <= _HOST_CHARACTERS or host.startswith(".") or ".." in host:
        raise _Malformed("its host has characters a host name cannot have")
    return host


def _segments(path: str) -> tuple[str, ...]:
    """The path's segments as a server reads them (``%``-escapes decoded); a trailing ``/`` adds
    no segment, so the entry ``/hooks/`` is the entry ``/hooks``."""
    if not path or path == "/":
        return ()
    parts = path[1:].split("/") if path.startswith("/") else path.split("/")
    if parts and parts[-1] == "":
        parts.pop()
    decoded = []
    for part in parts:
        text = unquote(part, errors="strict") if "%" in part else part
        if text in (".", "..") or "/" in text or "\\" in text:
            raise _Malformed("its path has '.' or '..' segments or an escaped slash")
        decoded.append(text)
    return tuple(decoded)


def parse_allow_entry(entry: str) -> AllowEntry:
    """An allow-list entry, or :class:`~jidoka.InvalidConfig` (field ``webhook_allow``) naming
    it and what is wrong with it."""
    try:
        split, scheme, host, port, segments = _parse(entry)
    except (_Malformed, UnicodeError) as exc:
        raise InvalidConfig(
            f"webhook allow-list entry {entry!r} is not an http(s) origin or URL prefix: {exc}",
            field="webhook_allow",
        ) from None
    if split.query or entry.endswith("?"):
        raise InvalidConfig(
            f"webhook allow-list entry {entry!r} has a query; give an origin or a path prefix",
            field="webhook_allow",
        )
    return AllowEntry(scheme, host, port, segments)


def parse_allow(entries: tuple[str, ...] | list[str]) -> tuple[AllowEntry, ...]:
    """Every entry parsed (the first bad one raises)."""
    return tuple(parse_allow_entry(entry) for entry in entries)


def check_webhook(url: object, allow: tuple[AllowEntry, ...]) -> str:
    """``url`` if a webhook may be sent to it, else :class:`~jidoka.InvalidArgument` (argument
    ``webhook``) naming the URL and why: malformed, or not on the allow-list."""
    shown = repr(url)[:200]
    try:
        _, scheme, host, port, segments = _parse(url)
    except (_Malformed, UnicodeError) as exc:
        raise InvalidArgument(
            f"webhook URL {shown} is malformed: {exc}", argument="webhook"
        ) from None
    assert isinstance(url, str)
    if not allow:
        raise InvalidArgument(
            f"webhook URL {shown} is not allowed: this server allows no webhook destinations "
            "(its operator sets them with --webhook-allow or JIDOKA_WEBHOOK_ALLOW)",
            argument="webhook",
        )
    if not any(entry.allows(scheme, host, port, segments) for entry in allow):
        raise InvalidArgument(
            f"webhook URL {shown} is not allowed: it matches no entry of the server's webhook "
            "allow-list",
            argument="webhook",
        )
    return url
