"""The exceptions Jidoka raises, all rooted in :class:`JidokaError`.

Every error carries what it is about as attributes (``session_id``, ``path``, ``limit`` ...) and
says it in its message, so a log line or an HTTP problem document is useful on its own. The tree
of every error a caller can meet (defined here unless a module is named)::

    JidokaError
    ├── SessionNotFound          no live session and no tombstone with that id
    ├── RunNotFound              the session has no run with that id
    ├── SessionTerminated        the session has ended; it can be read, not changed
    ├── InvalidTransition        a lifecycle move the state machine forbids
    ├── InvalidArgument          bad input to a public call (names the argument); a ValueError too
    │   ├── InvalidRole          a message role other than user | assistant | system
    │   ├── InvalidConfig        a bad SessionConfig / Settings field (names the field)
    │   └── UnsupportedMediaType an HTTP request body that does not say it is JSON
    ├── PathNotAllowed           a path outside the session's project root, or not a regular file
    ├── LimitExceeded            a configured bound was hit (names the limit and its value)
    ├── Unauthorized             the caller may not do this
    ├── HostNotAllowed           an HTTP request whose Host is not a name of the server
    ├── OriginNotAllowed         a browser page of another origin tried to change something
    ├── SessionExists            restoring a session whose id is live
    ├── SessionBusy              a turn is running and the session's policy is ``reject``, or a
    │   │                        compaction meets a turn (or a turn a compaction)
    │   └── CompactionConflict   (session.session) the conversation changed under a compaction
    ├── LLMError                 the model provider failed (names the session and provider)
    ├── StoreError               the session store failed (names the session)
    │   ├── CorruptSession       (session.persistence) one stored session cannot be rebuilt
    │   ├── SeqConflict          (store.base) an append lost the race for its seq
    │   ├── StoreUnavailable     (store.base) the store cannot be reached; retry
    │   │   └── CommitOutcomeUnknown  (store.base) cut off mid-commit; the log will tell
    │   └── SchemaError          (store.base) a database this version cannot read
    ├── SnapshotError            (session.snapshot) a snapshot or saved copy that does not decode
    ├── NotOwner                 (a cluster) another node owns the session; retry (it moves)
    │   └── OwnershipLost        (store.base) the fence moved under an append; a StoreError too
    ├── ProjectRootUnavailable   (a cluster) the node cannot see the session's project root
    ├── BusUnavailable           (bus._redis_support) the Redis bus cannot be reached at start
    ├── DataDirLocked            another runtime owns the data directory
    ├── RuntimeClosed            the runtime (or one of its parts) was used after it closed
    └── ServerUnavailable        (remote) RemoteClient cannot reach the server; the call may or
                                 may not have taken effect

The in-process :class:`~jidoka.Client` raises them, and :class:`~jidoka.RemoteClient` re-raises
the same classes from the server's problem documents, so catching them works the same whichever
client is used (``ServerUnavailable`` is the remote client's own: the network failed).

A few subclasses stay inside the package and are never seen as such: ``ToolError``
(``tools.files``: a tool's refusal, handed back to the model as the tool's result);
``MalformedBody`` and ``NestingTooDeep`` (``server.responses``, ``server.inputs``: request bodies
the server refuses, answered as ``InvalidArgument`` problem documents, 400 and 422);
``RouteNotFound`` (``server.responses``: a 404/405 problem document); and the two
``KeyNotFound`` (``server.operations`` answers 404; ``RemoteClient.get_working_context`` turns
that 404 back into its default).
"""

from __future__ import annotations

__all__ = [
    "DataDirLocked",
    "HostNotAllowed",
    "InvalidArgument",
    "InvalidConfig",
    "InvalidRole",
    "InvalidTransition",
    "JidokaError",
    "LLMError",
    "LimitExceeded",
    "NotOwner",
    "OriginNotAllowed",
    "PathNotAllowed",
    "ProjectRootUnavailable",
    "RuntimeClosed",
    "SessionBusy",
    "SessionExists",
    "RunNotFound",
    "SessionNotFound",
    "SessionTerminated",
    "StoreError",
    "Unauthorized",
    "UnsupportedMediaType",
]


class JidokaError(Exception):
    """Root of every error Jidoka raises on purpose.

    ``session_id`` is the session the error is about, or ``None`` when it concerns no session.
    """

    session_id: str | None

    def __init__(self, message: str, *, session_id: str | None = None) -> None:
        if session_id is not None and session_id not in message:
            message = f"session {session_id!r}: {message}"
        super().__init__(message)
        self.session_id = session_id

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class SessionNotFound(JidokaError):
    """No session with this id exists (neither live nor remembered as a tombstone)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} not found", session_id=session_id)


class RunNotFound(JidokaError):
    """The session has no run with this id (a run of another session is not found either)."""

    def __init__(self, session_id: str | None, run_id: str) -> None:
        super().__init__(f"no run {run_id!r:.80} in this session", session_id=session_id)
        self.run_id = run_id


class SessionTerminated(JidokaError):
    """The session has terminated: its tombstone can be read, but nothing can change it."""

    def __init__(self, session_id: str, *, reason: str | None = None) -> None:
        why = f" (reason: {reason})" if reason else ""
        super().__init__(f"session {session_id!r} is terminated{why}", session_id=session_id)
        self.reason = reason


class InvalidTransition(JidokaError):
    """A lifecycle transition the state machine does not allow."""

    def __init__(self, session_id: str, from_status: str, to_status: str) -> None:
        super().__init__(
            f"session {session_id!r} cannot go from {str(from_status)!r} to {str(to_status)!r}",
            session_id=session_id,
        )
        self.from_status = str(from_status)
        self.to_status = str(to_status)


class InvalidArgument(JidokaError, ValueError):
    """A public call got an argument it cannot accept; ``argument`` names it."""

    def __init__(self, message: str, *, argument: str, session_id: str | None = None) -> None:
        prefix = f"session {session_id!r}: " if session_id else ""
        super().__init__(f"{prefix}{message}", session_id=session_id)
        self.argument = argument


class InvalidRole(InvalidArgument):
    """A message role outside ``user | assistant | system``."""

    def __init__(self, session_id: str | None, role: object) -> None:
        super().__init__(
            f"invalid role {role!r}: expected one of 'user', 'assistant', 'system'",
            argument="role",
            session_id=session_id,
        )
        self.role = role


class InvalidConfig(InvalidArgument):
    """A configuration field failed validation; ``field`` names it (dotted for nested fields)."""

    def __init__(self, message: str, *, field: str, session_id: str | None = None) -> None:
        super().__init__(message, argument=field, session_id=session_id)
        self.field = field


class UnsupportedMediaType(InvalidArgument):
    """An HTTP request body whose ``Content-Type`` is not JSON (``content_type``: what was
    sent, ``None`` for nothing). Refused even when the body is JSON: a web page can send that
    type-less or as ``text/plain`` to any server without the browser asking it first."""

    def __init__(self, content_type: str | None) -> None:
        got = repr(content_type) if content_type else "none"
        super().__init__(
            f"the request body must be JSON with Content-Type: application/json (got {got})",
            argument="content-type",
        )
        self.content_type = content_type


class PathNotAllowed(JidokaError):
    """A path that the session's sandbox refuses; ``reason`` says which rule it broke."""

    def __init__(self, session_id: str | None, path: str, reason: str) -> None:
        who = f"session {session_id!r}: " if session_id else ""
        super().__init__(f"{who}path {path!r} not allowed: {reason}", session_id=session_id)
        self.path = path
        self.reason = reason


class LimitExceeded(JidokaError):
    """A configured bound was hit. ``limit`` is the setting's name, ``maximum`` its value."""

    def __init__(
        self,
        limit: str,
        maximum: int,
        *,
        session_id: str | None = None,
        actual: int | None = None,
        path: str | None = None,
    ) -> None:
        who = f"session {session_id!r}: " if session_id else ""
        what = f" for {path!r}" if path else ""
        got = f" (got {actual})" if actual is not None else ""
        super().__init__(f"{who}limit {limit}={maximum} exceeded{what}{got}", session_id=session_id)
        self.limit = limit
        self.maximum = maximum
        self.actual = actual
        self.path = path


class Unauthorized(JidokaError):
    """The caller is not allowed to do this (missing or unknown credentials)."""


class HostNotAllowed(JidokaError):
    """The request's ``Host`` is not a name the server answers to (421 over HTTP): what a page
    that re-pointed its own domain at the server (DNS rebinding) sends. ``--allowed-host``
    adds names."""

    def __init__(self, host: str) -> None:
        super().__init__(
            f"Host {host!r} is not a name of this server; "
            "start it with --allowed-host to accept that name"
        )
        self.host = host


class OriginNotAllowed(JidokaError):
    """A browser page of another origin (``origin``) tried to change something or open the
    WebSocket (403 over HTTP). ``--cors-origin`` allows an origin."""

    def __init__(self, origin: str) -> None:
        super().__init__(
            f"requests from the web origin {origin!r} are refused; "
            "start the server with --cors-origin to allow it"
        )
        self.origin = origin


class StoreError(JidokaError):
    """The session store failed; the operation on ``session_id`` did not take effect."""


class NotOwner(JidokaError):
    """In a cluster, this node does not own the session (another node does, named by ``owner``
    and reachable at ``owner_url`` when known), or no longer may write to it. Nothing was done:
    retry at the owner (a node that forwards requests does so once by itself)."""

    def __init__(
        self,
        session_id: str,
        detail: str = "",
        *,
        owner: str | None = None,
        owner_url: str | None = None,
    ) -> None:
        where = f"node {owner!r} owns it" if owner else "this node does not own it"
        super().__init__(detail or f"{where}; retry there", session_id=session_id)
        self.owner = owner
        self.owner_url = owner_url


class ProjectRootUnavailable(JidokaError):
    """In a cluster, the node that took the session cannot see its ``project_root`` (every node
    must see project files at the same path: shared storage). The session is left to others."""

    def __init__(self, session_id: str, path: str, node: str) -> None:
        super().__init__(
            f"the project root {path!r} does not exist on node {node!r}; project files must be "
            "on storage every node sees at the same path",
            session_id=session_id,
        )
        self.path = path
        self.node = node


class RuntimeClosed(JidokaError):
    """A runtime, manager, store or bus was used after it was closed (or before it started)."""


class DataDirLocked(JidokaError):
    """Another process (or runtime) already owns this data directory."""

    def __init__(self, data_dir: str, detail: str = "") -> None:
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"the data directory {data_dir!r} is in use by another Jidoka runtime{extra}; "
            "only one process may own it at a time"
        )
        self.data_dir = data_dir


class SessionExists(JidokaError):
    """A session with this id is already live (e.g. restoring over a live session)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} is already live", session_id=session_id)


class SessionBusy(JidokaError):
    """A turn is already running and the session's ``concurrent_turn_policy`` is ``reject``."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} is busy with a turn", session_id=session_id)


class LLMError(JidokaError):
    """The model provider failed: ``provider`` names it, ``status`` is its HTTP status if any,
    ``retryable`` says whether trying again later may help. Never carries an API key."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        session_id: str | None = None,
        status: int | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message, session_id=session_id)
        self.provider = provider
        self.status = status
        self.retryable = retryable
