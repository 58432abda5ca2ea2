"""What ``jidoka serve`` is told: address, tokens, limits. Flags override ``JIDOKA_*`` variables.

Kept apart from :class:`~jidoka.config.Settings` (the runtime's) because a runtime embedded in
another program has no server; the CLI builds both from its flags and the environment.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from ..errors import InvalidConfig
from .browser_guard import parse_allowed_host

__all__ = ["ServerConfig", "load_tokens"]


class ServerConfig(msgspec.Struct, kw_only=True, frozen=True):
    """The server's settings; see ``docs/http-api.md`` for what each one does."""

    host: str = "127.0.0.1"
    #: 0 picks a free port (the chosen one is printed).
    port: int = 8765
    #: token -> principal. Empty with ``insecure_no_auth`` off: ``jidoka serve`` makes one.
    tokens: dict[str, str] = {}
    insecure_no_auth: bool = False
    cors_origins: tuple[str, ...] = ()
    #: More ``Host`` names to answer to (``name[:port]``, ``*.domain``, ``*`` for any) besides
    #: the loopback names and the bound address: see :class:`~.browser_guard.HostPolicy`.
    allowed_hosts: tuple[str, ...] = ()
    max_body_bytes: int = 1 << 20
    max_inflight: int = 64
    #: Event streams (SSE, WebSocket subscriptions) one principal may have open at once.
    max_streams_per_principal: int = 32
    #: Seconds a stream ticket (``POST /v1/stream-tickets``) stays good, at most 60.
    stream_ticket_ttl: float = 30.0
    #: Unused stream tickets one principal may hold, and all principals together.
    max_stream_tickets_per_principal: int = 32
    max_stream_tickets: int = 4096
    heartbeat_seconds: float = 15.0
    shutdown_timeout: float = 10.0
    #: Log one line per request (method, path, status, duration, request id).
    access_log: bool = True
    #: If set, a session's ``project_root`` must lie inside this directory (relative roots are
    #: taken from it). Unset, a client may open any directory the server can read: fine for a
    #: personal server on loopback, not for one shared by several principals.
    projects_dir: str | None = None
    # Connection limits (docs/operations.md, "Connection limits"); enforced by
    # :class:`jidoka.server.protocol.LimitedHttpProtocol`.
    #: Largest request head (request line and headers); beyond it a 431 and a close.
    max_header_bytes: int = 16 << 10
    #: Seconds a request head may take from its first byte to its blank line (slowloris).
    header_timeout: float = 10.0
    #: Seconds a request body may go without a byte arriving before the request is ended (408).
    body_timeout: float = 30.0
    #: Seconds a connection may sit with no request in progress (fresh or after a response).
    idle_timeout: float = 5.0
    #: Open connections (HTTP, event streams and WebSockets alike); beyond it a 503 and a close.
    max_connections: int = 1024

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InvalidConfig(f"port must be 0..65535, got {self.port}", field="port")
        if self.max_streams_per_principal < 1:
            raise InvalidConfig(
                "max_streams_per_principal must be at least 1", field="max_streams_per_principal"
            )
        if not 0 < self.stream_ticket_ttl <= 60:
            raise InvalidConfig(
                f"stream_ticket_ttl must be more than 0 and at most 60 seconds, "
                f"got {self.stream_ticket_ttl}",
                field="stream_ticket_ttl",
            )
        for name in (
            "max_body_bytes",
            "max_inflight",
            "max_connections",
            "max_stream_tickets_per_principal",
            "max_stream_tickets",
        ):
            if getattr(self, name) < 1:
                raise InvalidConfig(f"{name} must be at least 1", field=name)
        if self.max_header_bytes < 1024:
            raise InvalidConfig(
                f"max_header_bytes must be at least 1024, got {self.max_header_bytes}",
                field="max_header_bytes",
            )
        for name in (
            "heartbeat_seconds",
            "shutdown_timeout",
            "header_timeout",
            "body_timeout",
            "idle_timeout",
        ):
            value = getattr(self, name)
            if not value > 0 or value == float("inf"):
                raise InvalidConfig(f"{name} must be a positive number, got {value}", field=name)
        for token, principal in self.tokens.items():
            if len(token) < 16:
                raise InvalidConfig(
                    "every token must be at least 16 characters long", field="tokens"
                )
            if not principal:
                raise InvalidConfig("every token needs a non-empty principal", field="tokens")
        for entry in self.allowed_hosts:
            parse_allowed_host(entry)  # InvalidConfig naming the entry
        if not self.tokens and not self.insecure_no_auth and not self.is_loopback:
            raise InvalidConfig(
                f"refusing to serve {self.host!r} (not a loopback address) without tokens; "
                "configure JIDOKA_TOKENS or --tokens-file, or pass --insecure-no-auth",
                field="host",
            )

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def auth_enabled(self) -> bool:
        return not self.insecure_no_auth

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerConfig:
        """``JIDOKA_HOST``, ``JIDOKA_PORT``, ``JIDOKA_TOKENS``, ``JIDOKA_CORS_ORIGINS``,
        ``JIDOKA_ALLOWED_HOSTS`` (comma-separated),
        ``JIDOKA_MAX_BODY_BYTES``, ``JIDOKA_MAX_INFLIGHT``, ``JIDOKA_STREAM_TICKET_TTL``,
        ``JIDOKA_MAX_STREAM_TICKETS_PER_PRINCIPAL``, and the connection limits
        ``JIDOKA_MAX_HEADER_BYTES``, ``JIDOKA_HEADER_TIMEOUT``, ``JIDOKA_BODY_TIMEOUT``,
        ``JIDOKA_IDLE_TIMEOUT``, ``JIDOKA_MAX_CONNECTIONS``; ``overrides`` (flags) win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, field, kind in (
            ("JIDOKA_HOST", "host", str),
            ("JIDOKA_PROJECTS_DIR", "projects_dir", str),
            ("JIDOKA_PORT", "port", int),
            ("JIDOKA_MAX_BODY_BYTES", "max_body_bytes", int),
            ("JIDOKA_MAX_INFLIGHT", "max_inflight", int),
            ("JIDOKA_MAX_STREAMS_PER_PRINCIPAL", "max_streams_per_principal", int),
            ("JIDOKA_STREAM_TICKET_TTL", "stream_ticket_ttl", float),
            ("JIDOKA_MAX_STREAM_TICKETS_PER_PRINCIPAL", "max_stream_tickets_per_principal", int),
            ("JIDOKA_MAX_HEADER_BYTES", "max_header_bytes", int),
            ("JIDOKA_HEADER_TIMEOUT", "header_timeout", float),
            ("JIDOKA_BODY_TIMEOUT", "body_timeout", float),
            ("JIDOKA_IDLE_TIMEOUT", "idle_timeout", float),
            ("JIDOKA_MAX_CONNECTIONS", "max_connections", int),
        ):
            raw = env.get(name)
            if raw:
                try:
                    values[field] = kind(raw)
                except ValueError:
                    raise InvalidConfig(f"{name}={raw!r} is not valid", field=field) from None
        if env.get("JIDOKA_TOKENS"):
            values["tokens"] = parse_tokens(env["JIDOKA_TOKENS"], "JIDOKA_TOKENS")
        for name, field in (
            ("JIDOKA_CORS_ORIGINS", "cors_origins"),
            ("JIDOKA_ALLOWED_HOSTS", "allowed_hosts"),
        ):
            if env.get(name):
                values[field] = tuple(o.strip() for o in env[name].split(",") if o.strip())
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except TypeError as exc:
            raise InvalidConfig(str(exc), field="server") from None


def parse_tokens(text: str, source: str) -> dict[str, str]:
    """``{"<token>": "<principal>", ...}`` from JSON text; ``source`` names it in errors."""
    try:
        tokens = json.loads(text)
    except ValueError as exc:
        raise InvalidConfig(f"{source} is not valid JSON: {exc}", field="tokens") from None
    if not isinstance(tokens, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tokens.items()
    ):
        raise InvalidConfig(
            f'{source} must be a JSON object {{"<token>": "<principal>", ...}}', field="tokens"
        )
    return tokens


def load_tokens(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a tokens file (the same JSON as ``JIDOKA_TOKENS``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidConfig(
            f"cannot read tokens file {str(path)!r}: {exc}", field="tokens"
        ) from None
    return parse_tokens(text, f"tokens file {str(path)!r}")
