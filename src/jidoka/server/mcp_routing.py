"""Where an MCP tool's verb runs on a node of a cluster: on the node that owns its session.

An HTTP command on a session another node owns is forwarded to that node as it came
(:mod:`jidoka.server.forwarding`). A tool call cannot be: it is one JSON-RPC message that names
a tool, not the verb's route. So the verb's own HTTP request is made (the one
:class:`~jidoka.RemoteClient` would send, from the verb table) and sent to the owner through the
same :class:`~jidoka.server.forwarding.Forwarder`, signed for the caller's principal; the owner
serves it as any forwarded command, checking whose session it is, and its answer -- a result or
a problem -- comes back as the verb's result or the error the problem stands for. Nobody live
owns the session: it is served here (activation on demand), as over HTTP. Off a cluster, and for
verbs that name no session, the verb runs here on the principal's scoped client.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import msgspec

from .._remote_verbs import request_for
from ..errors import JidokaError
from ..problems import error_from_problem
from ..scoped import ScopedClient
from ..verbs import Scope, Verb
from .forwarding import Answer, Forwarding
from .routes import SERVED_ANYWHERE

__all__ = ["OwnerRouting"]


class OwnerRouting:
    """Runs a verb for an MCP tool where its session lives (see the module)."""

    __slots__ = ("forwarding",)

    def __init__(self, forwarding: Forwarding | None = None) -> None:
        self.forwarding = forwarding

    async def __call__(self, scoped: ScopedClient, verb: Verb, args: Any) -> Any:
        forwarder = self.forwarding.forwarder if self.forwarding is not None else None
        sid = getattr(args, "session_id", None)
        if (
            forwarder is None
            or verb.scope is not Scope.SESSION
            or verb.name in SERVED_ANYWHERE
            or not isinstance(sid, str)
            or forwarder.is_live(sid)
        ):
            return await scoped.run(verb, args)
        session_id = sid
        request = request_for(verb, msgspec.structs.asdict(args))
        target = request.path + ("?" + urlencode(request.params) if request.params else "")
        body = request.body or b""
        headers = {"Content-Type": "application/json"} if request.body is not None else {}

        # One-element tuples: ``None`` from ``there`` means "not the owner after all", and a
        # verb may answer ``None`` itself (approve).
        async def here() -> tuple[Any]:
            return (await scoped.run(verb, args),)

        async def there(url: str) -> tuple[Any] | None:
            answer = await forwarder.send(
                url, request.method, target, body, headers, session_id, scoped.principal,
                long_lived=request.long_lived,
            )  # fmt: skip
            return None if answer is None else (_result(verb, answer),)

        (result,) = await forwarder.route(session_id, here, there)
        return result


def _result(verb: Verb, answer: Answer) -> Any:
    """The owner's answer as the verb's result, or the error its problem document stands for."""
    if answer.status >= 400:
        try:
            problem = msgspec.json.decode(answer.content)
        except msgspec.DecodeError:
            problem = None
        if not isinstance(problem, dict):
            raise JidokaError(f"the owner node answered {answer.status} without a problem")
        raise error_from_problem(problem, status=answer.status)
    if verb.result is None or answer.status == 204:
        return None
    return msgspec.json.decode(answer.content, type=verb.result)
