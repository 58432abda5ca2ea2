"""Any node serves any request: commands on a session owned elsewhere go to its owner.

A node of a cluster that receives a command for a session it does not hold looks up the
session's owner in the store. If a live node owns it, the request is sent there as it came
(method, path, query, body), with the caller's principal in a signed internal header
(:class:`Signer`) instead of the caller's token; the answer comes back as the owner gave it. If
no live node owns it, this node takes it and serves the command (activation on demand). One hop
at most: a forwarded request is always served where it lands, and a node that turns out not to
be the owner (it lost the session a moment ago) answers ``421 not-owner``, after which the
forwarding node looks the owner up once more and tries once more.

Reads of the log and event streams never come here: every node serves them from the store and
the bus.

**The internal header** ``Jidoka-Forwarded: v1;<node>;<unix time>;<principal>;<body sha256>;
<hmac>`` is an HMAC-SHA256, keyed with the cluster's secret (kept in the store's schema), over
the method, the path with its query, the principal, the time and the body's digest. A node
accepts it only if the HMAC matches and the time is within :data:`MAX_SKEW` of its own clock,
and it checks the body against the digest before it uses it. Anyone who can read the secret can
write the store directly anyway; keep the nodes' port on a private network or behind TLS, since
a captured header could be replayed within that window.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from ..errors import InvalidConfig, NotOwner, StoreError, Unauthorized
from ..store.base import CommitOutcomeUnknown

if TYPE_CHECKING:
    from ..cluster.node import ClusterNode

__all__ = [
    "FORWARDED_HEADER",
    "FORWARDED_KEY",
    "MAX_SKEW",
    "Forwarder",
    "Forwarding",
    "Signer",
    "check_body",
]

logger = logging.getLogger("jidoka.cluster")

_T = TypeVar("_T")

#: Sessions whose owner's address the routing cache keeps at most.
_ROUTES_KEPT: Final = 65_536

FORWARDED_HEADER: Final = "jidoka-forwarded"
#: The scope key of a verified forwarded request: ``(from node, body digest)``.
FORWARDED_KEY: Final = "jidoka.forwarded"
#: Seconds a forwarded request's time may differ from the receiving node's clock.
MAX_SKEW: Final = 60.0
#: Headers of a request that travel with it to the owner (besides the internal one).
_REQUEST_HEADERS: Final = ("content-type", "accept", "x-request-id", "idempotency-key")
#: Headers of the owner's answer that travel back.
_RESPONSE_HEADERS: Final = ("content-type", "location", "retry-after", "cache-control")


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(text: str) -> str:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()


class Signer:
    """Signs and checks the internal header with the cluster's secret."""

    def __init__(self, secret: str, node_id: str, *, now: Callable[[], float] = time.time) -> None:
        self._key = hashlib.sha256(b"jidoka-forwarded\0" + secret.encode()).digest()
        self.node_id = node_id
        self._now = now

    def _mac(self, method: str, target: str, node: str, when: str, who: str, digest: str) -> str:
        message = "\n".join((method, target, node, when, who, digest)).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def sign(self, method: str, target: str, principal: str | None, body: bytes) -> str:
        """The header for a request this node forwards (``target``: path and query)."""
        when = str(int(self._now()))
        who = "-" if principal is None else _b64(principal)
        digest = hashlib.sha256(body).hexdigest()
        mac = self._mac(method, target, self.node_id, when, who, digest)
        return f"v1;{self.node_id};{when};{who};{digest};{mac}"

    def verify(self, header: str, method: str, target: str) -> tuple[str | None, str, str]:
        """``(principal, from node, body digest)`` of a forwarded request, or
        :class:`Unauthorized`."""
        parts = header.split(";")
        if len(parts) != 6 or parts[0] != "v1":
            raise Unauthorized("malformed internal forwarding header")
        _, node, when, who, digest, mac = parts
        expected = self._mac(method, target, node, when, who, digest)
        if not hmac.compare_digest(mac, expected):
            raise Unauthorized("the internal forwarding header's signature does not match")
        try:
            age = abs(self._now() - int(when))
            principal = None if who == "-" else _unb64(who)
        except (ValueError, UnicodeDecodeError):
            raise Unauthorized("malformed internal forwarding header") from None
        if age > MAX_SKEW:
            raise Unauthorized(
                f"the internal forwarding header is {age:.0f} s old (nodes' clocks differ?)"
            )
        return principal, node, digest


def check_body(request: Request, body: bytes) -> None:
    """A forwarded request's body must be the one its header was signed for."""
    forwarded = request.scope.get(FORWARDED_KEY)
    if forwarded is not None and hashlib.sha256(body).hexdigest() != forwarded[1]:
        raise Unauthorized("the forwarded request's body does not match its signed digest")


def target_of(request: Request) -> str:
    """The path and query a request was sent to, as signed."""
    path = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string", b"")
    text = path.decode("latin-1")
    return f"{text}?{query.decode('latin-1')}" if query else text


class Answer(NamedTuple):
    """The owner's answer to a forwarded request."""

    status: int
    headers: dict[str, str]
    content: bytes


class Forwarder:
    """Sends commands to the owner of their session (see the module)."""

    def __init__(
        self,
        node: ClusterNode,
        signer: Signer,
        is_live: Callable[[str], bool],
        *,
        read_timeout: float = 60.0,
        turn_timeout: float = 330.0,
        keepalive: float = 2.0,
    ) -> None:
        try:  # the cluster extra; a single node never imports it
            import aiohttp
        except ImportError as exc:
            raise InvalidConfig(
                "a node of a cluster needs the cluster extra (pip install "
                f"'jidoka-core[cluster]'): {exc}",
                field="node_id",
            ) from None
        self.node = node
        #: Whether this node holds the session now (then the command is served here).
        self.is_live = is_live
        self.signer = signer
        # One pool to every other node, on aiohttp: against httpx on this hop it spent a fifth
        # to a tenth of the CPU per request (docs/performance.md, "Cluster").
        self._http = aiohttp.ClientSession(
            # Idle connections are dropped before the other node would close them (its
            # idle_timeout): a request is never sent on a connection closing under it.
            connector=aiohttp.TCPConnector(
                limit=256, limit_per_host=128, keepalive_timeout=keepalive
            ),
            auto_decompress=False,
            trust_env=False,
        )
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=read_timeout)
        # A turn awaited (?wait=true) answers when it ends.
        self._turn_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=5.0, sock_read=turn_timeout
        )
        #: Where sessions owned elsewhere were found (id -> (URL, until when on this node's
        #: monotonic clock)), newest last: a routing cache, never an authority. An entry lasts
        #: no longer than the owner's lease as the lookup saw it, so an owner that stopped
        #: renewing (dead, paused, cut off) is looked up again once others may take its
        #: sessions; a wrong entry before then costs a 421 and a fresh lookup.
        self._owners: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.forwarded = 0
        self.retried = 0
        self.failed = 0

    async def aclose(self) -> None:
        await self._http.close()

    def _cached(self, session_id: str) -> str | None:
        found = self._owners.get(session_id)
        if found is None:
            return None
        url, until = found
        if time.monotonic() >= until:
            del self._owners[session_id]
            return None
        return url

    async def owner_url(self, session_id: str) -> str | None:
        """Where a command on the session goes: another live node's URL, or ``None`` to serve
        it here (this node owns it, nobody live does, or there is no such session)."""
        where = await self.node.locate(session_id)
        if (
            where is None
            or not where.alive
            or where.url is None
            or where.node in (None, self.node.node_id)
        ):
            self._owners.pop(session_id, None)
            return None
        self._owners[session_id] = (where.url, time.monotonic() + where.lease_left)
        self._owners.move_to_end(session_id)
        if len(self._owners) > _ROUTES_KEPT:
            self._owners.popitem(last=False)
        return where.url

    async def route(
        self,
        session_id: str,
        serve_here: Callable[[], Awaitable[_T]],
        send: Callable[[str], Awaitable[_T | None]],
    ) -> _T:
        """Serve a command on ``session_id`` where it belongs: ``send(url)`` to its live owner
        (``None`` back means that node was not the owner after all), else ``serve_here()``
        (which takes the session if nobody live has it). A :class:`NotOwner` on the way (the
        session moved meanwhile) sends it round once more, from the lookup."""
        for attempt in (1, 2):
            url = self._cached(session_id) if attempt == 1 else None
            if url is None:
                url = await self.owner_url(session_id)
            try:
                if url is None:
                    return await serve_here()
                answer = await send(url)
                if answer is not None:
                    return answer
            except NotOwner:
                self._owners.pop(session_id, None)
                if attempt == 2:
                    raise
            self._owners.pop(session_id, None)
            self.retried += 1
        raise NotOwner(session_id, "its owner changed twice while a request looked for it; retry")

    async def send(
        self,
        url: str,
        method: str,
        target: str,
        body: bytes,
        headers: dict[str, str],
        session_id: str,
        principal: str | None,
        *,
        long_lived: bool = False,
    ) -> Answer | None:
        """Send one request to the node at ``url`` (``target``: path and query), signed for
        ``principal``; its answer, or ``None`` if that node says it is not the owner (421).

        A node that cannot be reached did nothing: :class:`NotOwner` (retry; it is looked up
        afresh). One that took the request and then broke the connection or went silent may
        have done it: a change comes back as :class:`CommitOutcomeUnknown` (read the log before
        resending), never as a failure."""
        import aiohttp  # imported by __init__ already

        headers = {**headers, FORWARDED_HEADER: self.signer.sign(method, target, principal, body)}
        self.forwarded += 1
        self.node.forwards += 1
        timeout = self._turn_timeout if long_lived else self._timeout

        async def call() -> Answer:
            async with self._http.request(
                method,
                url.rstrip("/") + target,
                data=body,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            ) as answer:
                content = await answer.read()
                kept = {
                    name: value
                    for name in _RESPONSE_HEADERS
                    if (value := answer.headers.get(name)) is not None
                }
                return Answer(answer.status, kept, content)

        try:
            found = await self._within_lease(session_id, url, call())
        except aiohttp.ClientConnectorError as exc:
            self.failed += 1
            logger.warning("session %s: forwarding to %s failed: %r", session_id, url, exc)
            raise NotOwner(
                session_id,
                f"its owner node at {url} does not answer ({type(exc).__name__}); another node "
                "takes the session once that node's lease has run out: retry",
            ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failed += 1
            logger.warning("session %s: %s to %s broke: %r", session_id, method, url, exc)
            if method in ("GET", "HEAD"):
                raise NotOwner(
                    session_id, f"its owner node at {url} did not answer in time: retry"
                ) from None
            raise CommitOutcomeUnknown(
                f"the command was sent to its owner node at {url}, which did not answer "
                f"({type(exc).__name__}); it may have been applied: read the session's log "
                "before sending it again",
                session_id=session_id,
            ) from None
        if found.status == 421 and found.headers.get("content-type", "").startswith(
            "application/problem+json"
        ):
            return None
        return found

    async def _within_lease(
        self, session_id: str, url: str, call: Coroutine[Any, Any, Answer]
    ) -> Answer:
        """``call``'s answer, waited for only while the owner at ``url`` keeps its lease: an
        owner that stopped renewing (paused, cut off from the store) may be replaced once the
        lease runs out, and the caller should not hang on it meanwhile. At the lease's end (as
        last looked up) the owner is looked up again; still the same live node: wait on. Else
        the call is abandoned as :class:`TimeoutError` (its outcome unknown)."""
        found = self._owners.get(session_id)
        until = found[1] if found is not None and found[0] == url else time.monotonic() + 1.0
        task = asyncio.ensure_future(call)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=max(until - time.monotonic(), 0))
                if done:
                    return task.result()
                try:
                    where = await self.node.locate(session_id)
                except StoreError:  # cannot tell from here: keep waiting, ask again soon
                    until = time.monotonic() + 1.0
                    continue
                if where is None or not where.alive or where.url != url:
                    raise TimeoutError(f"the owner at {url} lost its lease while answering")
                until = time.monotonic() + max(where.lease_left, 0.05)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def forward(
        self,
        request: Request,
        url: str,
        session_id: str,
        principal: str | None,
        *,
        long_lived: bool = False,
    ) -> Response | None:
        """An HTTP request, sent on as it came (see :meth:`send`); the owner's answer."""
        headers = {
            name: value
            for name in _REQUEST_HEADERS
            if (value := request.headers.get(name)) is not None
        }
        body = await request.body()
        answer = await self.send(
            url,
            request.method,
            target_of(request),
            body,
            headers,
            session_id,
            principal,
            long_lived=long_lived,
        )
        if answer is None:
            return None
        return Response(answer.content, answer.status, answer.headers)


class Forwarding:
    """What the app's middleware and routes share about forwarding: set once the runtime runs
    (the secret is read from the store), empty on a node that is no node of a cluster."""

    __slots__ = ("forwarder", "signer")

    def __init__(self) -> None:
        self.signer: Signer | None = None
        self.forwarder: Forwarder | None = None

    def principal_of(self, scope: MutableMapping[str, Any], header: str) -> str | None:
        """Check a forwarded request's header; its principal (the scope notes the request as
        forwarded, with the digest its body must match)."""
        signer = self.signer
        if signer is None:
            raise Unauthorized("this server forwards no requests (it is no node of a cluster)")
        method = str(scope["method"])
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if isinstance(raw, bytes) else str(scope["path"])
        query = scope.get("query_string", b"")
        if isinstance(query, bytes) and query:
            path = f"{path}?{query.decode('latin-1')}"
        principal, node, digest = signer.verify(header, method, path)
        scope[FORWARDED_KEY] = (node, digest)
        return principal
