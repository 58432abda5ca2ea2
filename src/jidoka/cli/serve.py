"""``jidoka serve``: flags and ``JIDOKA_*`` variables into a server config and runtime settings,
then :func:`jidoka.server.serve.run_server`.

This is deliberately thin: precedence (flag, then environment, then default) and validation
live in :meth:`ServerConfig.from_env <jidoka.server.config.ServerConfig.from_env>` and
:meth:`Settings.from_env <jidoka.config.Settings.from_env>`, so the command and an embedding
program configure a server the same way. A flag left out is passed as ``None`` (or not at all),
which lets the variable or the default apply.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import Settings
from ..errors import InvalidConfig
from ..runs.policy import WebhookPolicy
from .common import USAGE, CommandFailed

__all__ = ["serve"]

_EXTRA_HINT = "jidoka serve needs the server extra: pip install 'jidoka-core[server]'"
_SERVER = "Server"
_RUNTIME = "Runtime"
_LIMITS = "Limits"
_CLUSTER = "Cluster"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


def serve(
    host: Annotated[
        str | None,
        typer.Option(
            help="Address to bind (env JIDOKA_HOST; default 127.0.0.1).",
            show_default=False,
            rich_help_panel=_SERVER,
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Port; 0 picks a free one (env JIDOKA_PORT; default 8765).",
            show_default=False,
            rich_help_panel=_SERVER,
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the store keeps its files (env JIDOKA_DATA_DIR; default ./.jidoka).",
            show_default=False,
            rich_help_panel=_RUNTIME,
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            help="Session store: sqlite, memory, or a PostgreSQL URL postgresql://user@host/db"
            " (env JIDOKA_STORE; default sqlite).",
            show_default=False,
            rich_help_panel=_RUNTIME,
        ),
    ] = None,
    postgres_schema: Annotated[
        str | None,
        typer.Option(
            help="PostgreSQL schema for the store's tables (env JIDOKA_POSTGRES_SCHEMA;"
            " default jidoka).",
            show_default=False,
            rich_help_panel=_RUNTIME,
        ),
    ] = None,
    bus: Annotated[
        str | None,
        typer.Option(
            help="Event bus: memory, or a Redis URL redis://host:6379/0 (env JIDOKA_BUS;"
            " default memory).",
            show_default=False,
            rich_help_panel=_CLUSTER,
        ),
    ] = None,
    bus_prefix: Annotated[
        str | None,
        typer.Option(
            help="Prefix of the bus's Redis keys and channels (env JIDOKA_BUS_PREFIX;"
            " default jidoka).",
            show_default=False,
            rich_help_panel=_CLUSTER,
        ),
    ] = None,
    node_id: Annotated[
        str | None,
        typer.Option(
            help="Run as this node of a cluster (needs a PostgreSQL --store and a Redis --bus)"
            " (env JIDOKA_NODE_ID).",
            show_default=False,
            rich_help_panel=_CLUSTER,
        ),
    ] = None,
    advertise_url: Annotated[
        str | None,
        typer.Option(
            help="The URL other nodes reach this one at, e.g. http://10.0.0.5:8765"
            " (env JIDOKA_ADVERTISE_URL; default the address it listens on).",
            show_default=False,
            rich_help_panel=_CLUSTER,
        ),
    ] = None,
    lease_ttl: Annotated[
        float | None,
        typer.Option(
            help="Seconds a node's lease lasts without renewal; a lost node's sessions move"
            " after about this long (env JIDOKA_LEASE_TTL; default 10).",
            show_default=False,
            rich_help_panel=_CLUSTER,
        ),
    ] = None,
    tokens_file: Annotated[
        Path | None,
        typer.Option(
            help='JSON {"<token>": "<principal>", ...}; replaces JIDOKA_TOKENS.',
            show_default=False,
            rich_help_panel=_SERVER,
        ),
    ] = None,
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth",
            help="Serve without tokens, even on a non-loopback address.",
            rich_help_panel=_SERVER,
        ),
    ] = False,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            help="Allow this browser origin (repeatable) (env JIDOKA_CORS_ORIGINS).",
            show_default=False,
            rich_help_panel=_SERVER,
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Also answer requests whose Host is this name (repeatable; name[:port], "
            "*.domain, or * for any) (env JIDOKA_ALLOWED_HOSTS).",
            show_default=False,
            rich_help_panel=_SERVER,
        ),
    ] = None,
    webhook_allow: Annotated[
        list[str] | None,
        typer.Option(
            help="Allow run webhooks to this origin or URL prefix (repeatable), e.g. "
            "https://hooks.example.com (env JIDOKA_WEBHOOK_ALLOW; default: none). Webhooks are "
            "signed with JIDOKA_WEBHOOK_SECRET (never a flag).",
            show_default=False,
            rich_help_panel=_RUNTIME,
        ),
    ] = None,
    projects_dir: Annotated[
        Path | None,
        typer.Option(
            file_okay=False,
            help="Confine session project roots to this directory (env JIDOKA_PROJECTS_DIR).",
            show_default=False,
            rich_help_panel=_SERVER,
        ),
    ] = None,
    max_body_bytes: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Largest request body (env JIDOKA_MAX_BODY_BYTES; default 1 MiB).",
            show_default=False,
            rich_help_panel=_LIMITS,
        ),
    ] = None,
    max_inflight: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Requests in flight per principal (env JIDOKA_MAX_INFLIGHT; default 64).",
            show_default=False,
            rich_help_panel=_LIMITS,
        ),
    ] = None,
    max_streams: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Event streams open at once per principal, SSE and WebSocket subscriptions "
            "(env JIDOKA_MAX_STREAMS_PER_PRINCIPAL; default 32).",
            show_default=False,
            rich_help_panel=_LIMITS,
        ),
    ] = None,
    heartbeat: Annotated[
        float | None,
        typer.Option(
            help="Seconds of silence before an event stream gets a keep-alive (default 15).",
            show_default=False,
            rich_help_panel=_LIMITS,
        ),
    ] = None,
    shutdown_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds in-flight requests get to finish on shutdown (default 10).",
            show_default=False,
            rich_help_panel=_LIMITS,
        ),
    ] = None,
    max_header_bytes: Annotated[
        int | None,
        typer.Option(
            min=1024,
            help="Largest request head, 431 beyond (env JIDOKA_MAX_HEADER_BYTES; default 16 KiB).",
            show_default=False,
            rich_help_panel=_LIMITS,
        ),
    ] = None,
    header_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds a request head may take (env JIDOKA_HEADER_TIMEOUT; default 10).",
            show_default=False,
            rich_help_panel=_LIMITS,
        ),
    ] = None,
    body_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds a request body may stall (env JIDOKA_BODY_TIMEOUT; default 30).",
            show_default=False,
            rich_help_panel=_LIMITS,
        ),
    ] = None,
    idle_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds an idle connection stays open (env JIDOKA_IDLE_TIMEOUT; default 5).",
            show_default=False,
            rich_help_panel=_LIMITS,
        ),
    ] = None,
    max_connections: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Open connections, streams included; 503 beyond (env JIDOKA_MAX_CONNECTIONS; "
            "default 1024).",
            show_default=False,
            rich_help_panel=_LIMITS,
        ),
    ] = None,
    mcp_allow_stdio: Annotated[
        bool,
        typer.Option(
            "--mcp-allow-stdio",
            help="Let sessions run stdio MCP servers (mcp_servers[].command): local processes"
            " as this server's user (env JIDOKA_MCP_ALLOW_STDIO).",
            rich_help_panel=_RUNTIME,
        ),
    ] = False,
    log_level: Annotated[
        LogLevel, typer.Option(help="Log verbosity (to stderr).", rich_help_panel=_SERVER)
    ] = LogLevel.INFO,
) -> None:
    """Run the HTTP/SSE/WebSocket server until SIGTERM or Ctrl-C; prints its URL and token."""
    try:  # the server extra; ``jidoka.server`` imports Starlette and uvicorn
        from ..server.config import ServerConfig, load_tokens
        from ..server.serve import run_server
    except ImportError as exc:
        raise CommandFailed(f"{_EXTRA_HINT} ({exc})") from None

    overrides: dict[str, Any] = {
        "host": host,
        "port": port,
        "max_body_bytes": max_body_bytes,
        "max_inflight": max_inflight,
        "max_streams_per_principal": max_streams,
        "heartbeat_seconds": heartbeat,
        "shutdown_timeout": shutdown_timeout,
        "max_header_bytes": max_header_bytes,
        "header_timeout": header_timeout,
        "body_timeout": body_timeout,
        "idle_timeout": idle_timeout,
        "max_connections": max_connections,
        "cors_origins": tuple(cors_origin) if cors_origin else None,
        "allowed_hosts": tuple(allowed_host) if allowed_host else None,
        "insecure_no_auth": True if insecure_no_auth else None,
        "projects_dir": os.fspath(projects_dir) if projects_dir is not None else None,
    }
    runtime: dict[str, Any] = {}
    if data_dir is not None:
        runtime["data_dir"] = os.fspath(data_dir)
    if store is not None:
        runtime["store"] = store
    if postgres_schema is not None:
        runtime["postgres_schema"] = postgres_schema
    if mcp_allow_stdio:
        runtime["mcp_allow_stdio"] = True
    cluster = {
        "bus": bus,
        "bus_prefix": bus_prefix,
        "node_id": node_id,
        "advertise_url": advertise_url,
        "lease_ttl": lease_ttl,
    }
    runtime.update({name: value for name, value in cluster.items() if value is not None})
    if webhook_allow:
        runtime["webhook_allow"] = tuple(webhook_allow)
    try:
        if tokens_file is not None:
            overrides["tokens"] = load_tokens(tokens_file)
        config = ServerConfig.from_env(os.environ, **overrides)
        settings = Settings.from_env(os.environ, **runtime)
        WebhookPolicy.from_settings(settings)  # a bad entry or secret stops here, with its field
    except InvalidConfig as exc:
        raise CommandFailed(exc.message, USAGE) from None

    code = run_server(config, settings, log_level=str(log_level))
    if code:
        raise typer.Exit(code)
