"""One entry of a session's ``config.mcp_servers``: a Model Context Protocol server whose tools
the session's agent may use (:class:`MCPServerConfig`). Import it from :mod:`jidoka.config`.

It lives apart from :class:`~jidoka.config.SessionConfig` so that the agent's MCP client
(:mod:`jidoka.llm.mcp`) can read it without the runtime's settings, and it imports nothing of
Jidoka's but its errors.

A config never holds a secret: ``headers`` maps a header name to the *name* of an environment
variable of the runtime, whose value is sent; the log and the store only ever see the name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Final
from urllib.parse import urlsplit

import msgspec

from .errors import InvalidConfig

__all__ = [
    "MAX_MCP_SERVERS",
    "MCP_PREFIX",
    "MCPServerConfig",
    "check_mcp_servers",
    "mcp_tool_name",
]

#: Servers one session may list (each is a connection its agent holds open).
MAX_MCP_SERVERS: Final = 16
#: What every MCP tool's name starts with, as the model sees it: ``mcp__{server}__{tool}``.
MCP_PREFIX: Final = "mcp__"
#: Longest tool name the model APIs take (OpenAI's ``^[a-zA-Z0-9_-]{1,64}$``).
MAX_TOOL_NAME: Final = 64

_ServerName = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_-]{1,32}$")]
_HeaderName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")]
_EnvName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
_ToolName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_Arg = Annotated[str, msgspec.Meta(max_length=4096)]
#: Headers the transport sets itself: a config must not override them.
_RESERVED_HEADERS: Final = frozenset(
    {"host", "content-type", "content-length", "accept", "mcp-session-id", "connection"}
)
_MODEL_NAME: Final = re.compile(r"[^A-Za-z0-9_-]")


class MCPServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """An MCP server: streamable HTTP at ``url``, or (only where the server operator allows
    stdio, ``Settings.mcp_allow_stdio``) a local process ``command`` with ``args``.

    Its tools reach the model as ``mcp__{name}__{tool}``: ``allowed_tools`` (``None``: all)
    says which; ``require_approval`` (``True``, or a list of tool names) makes a call wait for
    ``approve()``, as a write does under ``allow_write: "ask"``.
    """

    #: Lower-case letters, digits, ``_`` and ``-``, at most 32; unique in the session; no
    #: ``__`` (it separates the parts of a tool's name).
    name: _ServerName
    #: The streamable-HTTP endpoint (``http://`` or ``https://``).
    url: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    #: Header name -> name of the environment variable whose value is sent as that header.
    headers: Annotated[dict[_HeaderName, _EnvName], msgspec.Meta(max_length=32)] = {}
    allowed_tools: Annotated[list[_ToolName], msgspec.Meta(max_length=256)] | None = None
    require_approval: bool | Annotated[list[_ToolName], msgspec.Meta(max_length=256)] = False
    #: A stdio server: the executable (and its arguments), run with a minimal environment.
    command: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)] | None = None
    args: Annotated[list[_Arg], msgspec.Meta(max_length=64)] = []

    def __post_init__(self) -> None:
        # A ValueError here becomes msgspec's ValidationError at ``mcp_servers[i]``, so the
        # InvalidConfig names the entry; the message names the field within it.
        if "__" in self.name:
            raise ValueError(f"MCP server name {self.name!r} must not contain '__'")
        if (self.url is None) == (self.command is None):
            raise ValueError(f"MCP server {self.name!r} needs exactly one of 'url' and 'command'")
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    f"MCP server {self.name!r}: 'url' must be an http:// or https:// URL "
                    f"with a host, got {self.url!r}"
                )
        if self.command is not None and self.headers:
            raise ValueError(f"MCP server {self.name!r}: 'headers' are for a 'url' server only")
        if self.command is None and self.args:
            raise ValueError(f"MCP server {self.name!r}: 'args' are for a 'command' server only")
        reserved = sorted(h for h in self.headers if h.lower() in _RESERVED_HEADERS)
        if reserved:
            raise ValueError(
                f"MCP server {self.name!r}: header {reserved[0]!r} is set by the transport"
            )

    @property
    def stdio(self) -> bool:
        return self.command is not None

    def needs_approval(self, tool: str) -> bool:
        """Whether a call of this server's ``tool`` (its own name) waits for ``approve()``."""
        if isinstance(self.require_approval, bool):
            return self.require_approval
        return tool in self.require_approval

    def allows(self, tool: str) -> bool:
        return self.allowed_tools is None or tool in self.allowed_tools


def mcp_tool_name(server: str, tool: str) -> str | None:
    """The name the model sees for ``server``'s ``tool``: ``mcp__{server}__{tool}``, with what
    the model APIs refuse in a name (``.``, ``/``, spaces ...) made ``_``; ``None`` if it would
    be longer than they take (64 characters)."""
    name = f"{MCP_PREFIX}{server}__{_MODEL_NAME.sub('_', tool)}"
    return name if len(name) <= MAX_TOOL_NAME else None


def check_mcp_servers(
    servers: Sequence[MCPServerConfig], *, session_id: str | None = None, allow_stdio: bool = True
) -> None:
    """What one entry cannot check alone: names unique, at most :data:`MAX_MCP_SERVERS`, and
    (``allow_stdio`` false) no stdio server. Raises :class:`~jidoka.InvalidConfig`."""
    if len(servers) > MAX_MCP_SERVERS:
        raise InvalidConfig(
            f"config field 'mcp_servers' has {len(servers)} servers; at most "
            f"{MAX_MCP_SERVERS} are allowed",
            field="mcp_servers",
            session_id=session_id,
        )
    seen: set[str] = set()
    for index, server in enumerate(servers):
        if server.name in seen:
            raise InvalidConfig(
                f"config field 'mcp_servers': the name {server.name!r} is used twice",
                field=f"mcp_servers[{index}].name",
                session_id=session_id,
            )
        seen.add(server.name)
        if server.stdio and not allow_stdio:
            raise InvalidConfig(
                f"config field 'mcp_servers': {server.name!r} is a stdio server ('command'), "
                "which this server does not allow (its operator can: jidoka serve "
                "--mcp-allow-stdio, or JIDOKA_MCP_ALLOW_STDIO=1)",
                field=f"mcp_servers[{index}].command",
                session_id=session_id,
            )
