"""``jidoka cluster status``: the nodes of a cluster, as any of its nodes sees them.

One remote call (``GET /v1/cluster``): each node's id, address, whether its lease is valid now
(by the database's clock), how long ago it renewed and how many live sessions it owns. A server
that is no node of a cluster answers with no nodes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from .common import DEFAULT_URL, JsonOption, TokenOption, UrlOption, run_remote
from .help import Command, Group
from .output import Output, timestamp

if TYPE_CHECKING:
    from ..remote import RemoteClient
    from ..wire import ClusterStatus

__all__ = ["app"]

app = typer.Typer(
    name="cluster",
    help="Look at the nodes of a cluster.",
    no_args_is_help=True,
    cls=Group,
)


@app.command(cls=Command)
def status(
    url: UrlOption = DEFAULT_URL, token: TokenOption = None, json: JsonOption = False
) -> None:
    """The nodes: address, lease, last heartbeat and sessions owned."""

    async def work(client: RemoteClient) -> ClusterStatus:
        return await client.cluster_status()

    answer = run_remote(url, token, work)
    out = Output(json=json)
    if out.json:
        out.document(answer)
        return
    if answer.node_id is None:
        out.line("not a cluster: this server is a single node")
        return
    out.line(f"asked node {answer.node_id}; lease {answer.lease_ttl:g} s")
    headers = ["NODE", "URL", "STATE", "LEASE", "HEARTBEAT", "AGE", "SESSIONS"]
    rows = (
        [
            node.node_id,
            node.advertise_url,
            node.state,
            "valid" if node.alive else "expired",
            timestamp(node.heartbeat_at),
            f"{node.heartbeat_age:.1f}s",
            str(node.owned_sessions),
        ]
        for node in answer.nodes
    )
    out.table(headers, rows, empty="no nodes")
