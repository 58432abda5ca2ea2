"""The test MCP server's ``add`` over stdio: ``python tests/support/mcp_stdio_calc.py``.

What a session's ``mcp_servers`` entry with ``command`` runs (where the runtime allows stdio
servers); it needs only the ``mcp`` package, not Jidoka.
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

server = MCPServer("calc")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


if __name__ == "__main__":
    server.run()  # stdio
