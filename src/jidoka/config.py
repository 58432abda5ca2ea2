"""Configuration: the runtime's :class:`Settings` and each session's :class:`SessionConfig`.

Settings come from arguments, from ``JIDOKA_*`` environment variables, or both.

Precedence, highest first: keyword arguments to :class:`~jidoka.Runtime` (or
:meth:`Settings.from_env`'s ``overrides``), then environment variables, then the defaults below.
Every field can be set from the environment as ``JIDOKA_<FIELD NAME IN CAPITALS>``; the session
defaults as one JSON object in ``JIDOKA_SESSION_DEFAULTS`` (the fields of
:class:`~jidoka.SessionConfig`). A bad value raises :class:`~jidoka.InvalidConfig` naming the
field (and the variable it came from). The ceilings on what a session's config may ask for are
one JSON object in ``JIDOKA_SESSION_CEILINGS`` (the fields of
:class:`SessionCeilings`); the session defaults must lie within them.

A session's own config (:class:`SessionConfig`, given to ``create_session``) lives here too, next
to the settings that default and bound it, so the session package reads configuration and
configuration knows nothing of sessions.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final, Literal

import msgspec

from ._backends import (
    POSTGRES_PREFIXES,
    REDIS_PREFIXES,
    STORES,
    check_cluster,
    check_store,
    describe_bus,
    describe_store,
)
from ._convert import convert_or_raise
from ._llm_config import (
    MAX_SYSTEM_PROMPT,
    PROVIDERS,
    TOOL_CHOICES,
    LLMConfig,
    ScriptCall,
    ScriptError,
    ScriptTurn,
    ScriptUsage,
)
from ._mcp_config import MAX_MCP_SERVERS, MCPServerConfig, check_mcp_servers
from .errors import InvalidConfig

__all__ = [
    "CONFIG_SCHEMA_VERSION",
    "MAX_SYSTEM_PROMPT",
    "PROVIDERS",
    "POSTGRES_PREFIXES",
    "REDIS_PREFIXES",
    "STORES",
    "TOOL_CHOICES",
    "LLMConfig",
    "MCPServerConfig",
    "ScriptCall",
    "ScriptError",
    "ScriptTurn",
    "ScriptUsage",
    "SessionCeilings",
    "SessionConfig",
    "Settings",
    "convert_or_raise",
    "describe_bus",
    "describe_store",
]


#: The ``schema_version`` that :meth:`SessionConfig.to_dict` writes and ``from_dict`` reads.
CONFIG_SCHEMA_VERSION: Final = 1

_PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
_NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
_NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
_PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


class SessionConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Per-session limits and behaviour. Immutable, so sessions with equal configs share one.

    Build one with :meth:`from_dict` (or ``SessionConfig(**fields).validated()``: the plain
    constructor does not check bounds); a bad field raises :class:`~jidoka.InvalidConfig`
    naming it.
    """

    #: Messages kept in the projection's history; the oldest is dropped beyond it (the log keeps
    #: every message).
    max_history: _PositiveInt = 100
    #: Active files per session; adding one more raises ``LimitExceeded``.
    max_files: _PositiveInt = 50
    #: Largest file that can be added or read into context, in bytes.
    max_file_bytes: _PositiveInt = 1_048_576
    #: Largest message content, in UTF-8 bytes.
    max_message_bytes: _PositiveInt = 262_144
    #: File index entries per session (active files and files the agent looked at).
    max_index_entries: _PositiveInt = 1_000
    #: Total JSON size of the working context, in bytes.
    max_working_context_bytes: _PositiveInt = 1_048_576
    #: Seconds without activity after which an active session becomes idle.
    idle_after_seconds: _PositiveFloat = 300.0
    #: Minutes a session may stay idle before it is terminated (reason ``timeout``); 0 disables.
    timeout_minutes: _NonNegativeFloat = 30.0
    #: Keep the session in the durable store (no effect with the memory store).
    persistence_enabled: bool = True
    #: Worker restarts allowed within ``max_restart_seconds`` before the session is terminated.
    max_restarts: _NonNegativeInt = 3
    max_restart_seconds: _PositiveFloat = 5.0
    #: Feature flags by name, for extensions.
    features: dict[str, bool] = {}
    #: The agent: model calls per turn at most (each round of tool calls takes one); past it the
    #: turn stops with an ``error`` event and ``LimitExceeded('max_iterations')``.
    max_iterations: _PositiveInt = 10
    #: What a chat (or a user message) does while a turn runs: wait its turn (``queue``), fail
    #: with ``SessionBusy`` (``reject``), or cancel the running turn first (``interrupt``).
    concurrent_turn_policy: Literal["queue", "reject", "interrupt"] = "queue"
    #: Whether the agent's tools may write files: ``False``, ``True``, or ``"ask"`` (each write
    #: emits ``approval_requested`` and waits for ``approve()``; no answer in time denies).
    allow_write: bool | Literal["ask"] = False
    approval_timeout_seconds: _PositiveFloat = 300.0
    #: Seconds one tool call may take (its blocking work runs off the event loop).
    tool_timeout_seconds: _PositiveFloat = 30.0
    #: Turns that may wait behind the running one (policy ``queue``); one more raises
    #: ``LimitExceeded('max_queued_turns')``. Each waiting turn holds its text in memory.
    max_queued_turns: _PositiveInt = 16
    #: Model Context Protocol servers whose tools the agent may use, as ``mcp__{server}__{tool}``
    #: (:class:`MCPServerConfig`; names unique; a stdio one only where the runtime allows it).
    mcp_servers: Annotated[list[MCPServerConfig], msgspec.Meta(max_length=MAX_MCP_SERVERS)] = []

    @classmethod
    def from_dict(
        cls, data: object, *, session_id: str | None = None, base: SessionConfig | None = None
    ) -> SessionConfig:
        """Validate a mapping into a config; missing fields come from ``base`` (or the defaults).

        Accepts the output of :meth:`to_dict`, including its ``schema_version``.
        """
        if data is None:
            return base if base is not None else cls()
        if isinstance(data, SessionConfig):
            return data.validated(session_id=session_id)
        if not isinstance(data, dict):
            raise InvalidConfig(
                f"config must be a mapping, got {type(data).__name__}",
                field="config",
                session_id=session_id,
            )
        fields = dict(data)
        version = fields.pop("schema_version", CONFIG_SCHEMA_VERSION)
        if version != CONFIG_SCHEMA_VERSION:
            raise InvalidConfig(
                f"unsupported config schema_version {version!r} (this version reads "
                f"{CONFIG_SCHEMA_VERSION})",
                field="schema_version",
                session_id=session_id,
            )
        if base is not None and fields:
            merged = msgspec.structs.asdict(base)
            merged.update(fields)
            fields = merged
        elif base is not None:
            return base
        config = convert_or_raise(fields, cls, session_id=session_id)
        check_mcp_servers(config.mcp_servers, session_id=session_id)
        return config

    def validated(self, *, session_id: str | None = None) -> SessionConfig:
        """This config if every field is within bounds, else :class:`InvalidConfig`."""
        convert_or_raise(msgspec.to_builtins(self), SessionConfig, session_id=session_id)
        check_mcp_servers(self.mcp_servers, session_id=session_id)
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping with ``schema_version``, the inverse of :meth:`from_dict`."""
        out: dict[str, Any] = {"schema_version": CONFIG_SCHEMA_VERSION}
        out.update(msgspec.to_builtins(self))
        return out


_CeilingInt = Annotated[int, msgspec.Meta(ge=1)] | None
_CeilingFloat = Annotated[float, msgspec.Meta(gt=0)] | None


class SessionCeilings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The largest value a session's config may give each of its limits: the operator's bound
    on what one client can make the runtime hold (memory, disk, time) through ``create_session``.

    One field per numeric :class:`SessionConfig` field, of the same name (``features``: how
    many flags). ``None`` lifts a ceiling. ``timeout_minutes`` 0 ("never") is always accepted:
    what idle sessions hold is bounded by ``max_sessions``, not by their timeout.
    """

    max_history: _CeilingInt = 10_000
    max_files: _CeilingInt = 1_000
    max_file_bytes: _CeilingInt = 16 * 1_048_576
    max_message_bytes: _CeilingInt = 4 * 1_048_576
    max_index_entries: _CeilingInt = 100_000
    max_working_context_bytes: _CeilingInt = 16 * 1_048_576
    idle_after_seconds: _CeilingFloat = 86_400.0
    timeout_minutes: _CeilingFloat = 10_080.0
    max_restarts: _CeilingInt = 100
    max_restart_seconds: _CeilingFloat = 3_600.0
    features: _CeilingInt = 64
    max_iterations: _CeilingInt = 100
    approval_timeout_seconds: _CeilingFloat = 86_400.0
    tool_timeout_seconds: _CeilingFloat = 3_600.0
    max_queued_turns: _CeilingInt = 256

    @classmethod
    def from_dict(cls, data: object) -> SessionCeilings:
        """Validate a mapping into ceilings; fields left out keep their defaults."""
        if isinstance(data, SessionCeilings):
            return data
        if not isinstance(data, dict):
            raise InvalidConfig(
                f"session ceilings must be a mapping, got {type(data).__name__}",
                field="session_ceilings",
            )
        return convert_or_raise(dict(data), cls)

    def check(self, config: SessionConfig, *, session_id: str | None = None) -> SessionConfig:
        """``config`` if every limit is within its ceiling, else :class:`InvalidConfig` naming
        the field, its value and the ceiling."""
        for name in self.__struct_fields__:
            ceiling: int | float | None = getattr(self, name)
            if ceiling is None:
                continue
            value = getattr(config, name)
            if name == "features":
                if len(value) > ceiling:
                    raise InvalidConfig(
                        f"config field 'features' has {len(value)} flags; this runtime allows "
                        f"at most {ceiling}",
                        field=name,
                        session_id=session_id,
                    )
                continue
            if name == "timeout_minutes" and value == 0:
                continue  # "never": see the class docstring
            if value > ceiling:
                raise InvalidConfig(
                    f"config field {name!r} is {value!r}, above this runtime's ceiling of "
                    f"{ceiling!r}",
                    field=name,
                    session_id=session_id,
                )
        return config


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything a :class:`~jidoka.Runtime` is configured with."""

    #: Where durable stores keep their files (created if missing; one runtime owns it at a time).
    data_dir: str = ".jidoka"
    #: Session store backend: ``sqlite`` (durable, in ``data_dir``), ``memory`` (fast, nothing
    #: survives the process), or a PostgreSQL URL ``postgresql://user@host/db`` (durable, and
    #: shareable by several nodes; needs the ``postgres`` extra).
    store: str = "sqlite"
    #: The PostgreSQL schema the store keeps its tables in (created if missing).
    postgres_schema: Annotated[str, msgspec.Meta(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = "jidoka"
    #: Connections the PostgreSQL store's read pool may open (the writer has one of its own).
    postgres_pool_size: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 8
    #: Seconds to wait for PostgreSQL before a call fails with ``StoreUnavailable`` (503).
    postgres_connect_timeout: Annotated[float, msgspec.Meta(gt=0, le=300)] = 5.0
    #: The event bus: ``memory`` (this process only) or a Redis URL ``redis://host:6379/0``
    #: (events travel between the nodes of a cluster; needs the ``redis`` extra).
    bus: str = "memory"
    #: The prefix of every Redis key and channel the bus uses (several clusters, one Redis).
    bus_prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] = "jidoka"
    #: This node's id in a cluster. Setting it makes the runtime a node of a cluster: it needs
    #: a PostgreSQL ``store`` (which holds the leases, owners and fences) and a Redis ``bus``.
    node_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")] | None = (
        None
    )
    #: The URL other nodes reach this node's HTTP API at (``http://10.0.0.5:8765``); a
    #: server without it advertises the address it listens on.
    advertise_url: str | None = None
    #: Seconds a node's lease lasts without renewal: a lost node's sessions move to others
    #: about this long after it stopped renewing. Renewed three times per period.
    lease_ttl: Annotated[float, msgspec.Meta(ge=0.5, le=600)] = 10.0
    #: SQLite durability: ``full`` (an acknowledged call survives a power cut) or ``normal``
    #: (survives a crash of the process; a power cut may lose the last commits).
    durability: Literal["full", "normal"] = "full"
    #: A session's projection is snapshotted every this many events, so loading it reads one
    #: snapshot plus the tail of its log.
    snapshot_interval: _PositiveInt = 500
    #: Keep a turn's ``llm_stream_chunk`` events in the store after it has ended. ``False``:
    #: once a turn has ended they are dropped in the background (its ``llm_response`` holds
    #: the whole answer), so a turn stores about twice its answer plus its tool results; a
    #: stream replayed across them gets one ``events_dropped`` marker per gap.
    keep_stream_chunks: bool = True
    #: Largest the SQLite database may grow, in bytes (``None``: no bound but the disk's). A
    #: write that would pass it fails like a full disk: ``StoreError``, nothing half-applied.
    max_database_bytes: Annotated[int, msgspec.Meta(ge=131_072)] | None = None
    #: Live sessions at most; creating one more raises ``LimitExceeded``.
    max_sessions: _PositiveInt = 100_000
    #: Terminated sessions remembered (as small tombstones); the oldest is forgotten first.
    max_tombstones: _PositiveInt = 10_000
    #: Retention (off by default): seconds a terminated session's log, snapshots and head stay
    #: stored after it ended; the retention sweep then removes them (``session_purged``,
    #: reason ``expired``). A saved copy is kept: it has ``saved_ttl``. ``None``: for ever.
    terminated_ttl: _PositiveFloat | None = None
    #: Seconds a saved copy is kept after it was saved; then the sweep removes the copy (and
    #: only it). ``None``: for ever.
    saved_ttl: _PositiveFloat | None = None
    #: Seconds between retention sweeps (while a TTL is set): an expired session is removed at
    #: most about this late.
    retention_sweep_seconds: _PositiveFloat = 60.0
    #: Sessions (or saved copies) one retention batch removes at most: each batch is one
    #: transaction, so this bounds how long a sweep holds the store at a time.
    retention_batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    #: Seconds between the runs' sweeps: how late, at most, a cluster resumes the queued runs
    #: of a node that died when nobody touches their session (and expires idempotency keys).
    run_sweep_seconds: _PositiveFloat = 30.0
    #: Events a subscription may have queued before the slow-consumer policy applies.
    subscriber_queue_size: _PositiveInt = 1_000
    #: Stored bytes a subscription that is catching up (or replaying) reads from the store at
    #: once, besides ``subscriber_queue_size`` events; a larger event is read alone.
    subscriber_page_bytes: _PositiveInt = 262_144
    #: Agent turns waiting to run, across all sessions; one more raises
    #: ``LimitExceeded('max_queued_turns_total')`` (each session also has ``max_queued_turns``).
    max_queued_turns_total: _PositiveInt = 1_000
    #: File cache budget in bytes, in total and per session.
    cache_max_bytes: _PositiveInt = 64 * 1024 * 1024
    cache_session_max_bytes: _PositiveInt = 8 * 1024 * 1024
    #: Seconds a worker gets to finish after cancellation before it is abandoned (and logged).
    shutdown_grace_seconds: _NonNegativeFloat = 5.0
    #: JSON size bounds of a session's metadata and llm_config, in bytes.
    max_metadata_bytes: _PositiveInt = 16_384
    max_llm_config_bytes: _PositiveInt = 16_384
    #: Events the memory store keeps per session (older ones are trimmed).
    memory_max_events_per_session: _PositiveInt = 100_000
    #: Server-wide LLM defaults (``JIDOKA_LLM_*``); a session's ``llm_config`` overrides them
    #: key by key. The API key itself is never a setting: ``llm_api_key_env`` names the
    #: environment variable that holds it.
    llm_provider: str | None = None
    llm_model: str | None = None
    llm_base_url: str | None = None
    llm_api_key_env: str | None = None
    llm_context_window: _PositiveInt | None = None
    llm_max_tokens: _PositiveInt | None = None
    llm_temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    #: Defaults for new sessions; ``create_session(config=...)`` overrides field by field.
    session_defaults: SessionConfig = SessionConfig()
    #: The largest value a session's config may give each limit (``InvalidConfig`` past one).
    session_ceilings: SessionCeilings = SessionCeilings()
    #: Sessions may list stdio MCP servers (``mcp_servers[].command``): each runs a local
    #: process as the server's user, so only an operator who trusts every client turns it on.
    mcp_allow_stdio: bool = False
    #: Where run webhooks may be sent: origins or URL prefixes (``JIDOKA_WEBHOOK_ALLOW``,
    #: comma-separated; checked by :mod:`jidoka.runs.allow`). Empty: every webhook is refused.
    webhook_allow: tuple[str, ...] = ()
    #: The key webhooks are signed with, ``whsec_<base64>`` (``JIDOKA_WEBHOOK_SECRET``; never a
    #: flag, never in ``repr``). Unset: a run asking for a webhook is refused.
    webhook_secret: str | None = None

    def __repr__(self) -> str:
        secret = "***" if self.webhook_secret else None
        hidden = msgspec.structs.replace(self, webhook_secret=secret)
        fields = ", ".join(f"{n}={getattr(hidden, n)!r}" for n in self.__struct_fields__)
        return f"Settings({fields})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``JIDOKA_*`` variables (``os.environ`` by default), then ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.__struct_fields__:
            variable = f"JIDOKA_{name.upper()}"
            if variable not in env:
                continue
            raw = env[variable]
            if name in _JSON_FIELDS:
                try:
                    values[name] = _JSON_FIELDS[name](msgspec.json.decode(raw))
                except msgspec.DecodeError as exc:
                    raise InvalidConfig(f"{variable} is not JSON: {exc}", field=name) from None
                except InvalidConfig as exc:
                    field = exc.field if exc.field.startswith(name) else f"{name}.{exc.field}"
                    raise InvalidConfig(f"{variable}: {exc.message}", field=field) from None
                continue
            if name == "store":
                check_store(raw, f"{variable}=")
            if name == "webhook_allow":  # comma-separated, like JIDOKA_CORS_ORIGINS
                values[name] = tuple(e.strip() for e in raw.split(",") if e.strip())
                continue
            try:
                values[name] = msgspec.convert(raw, _field_types(cls)[name], strict=False)
            except msgspec.ValidationError as exc:
                raise InvalidConfig(f"{variable}={raw!r}: {exc}", field=name) from None
        values.update(overrides)
        return cls.build(values)

    @classmethod
    def build(cls, values: Mapping[str, Any]) -> Settings:
        """Validate a mapping into settings (``session_defaults`` and ``session_ceilings`` may
        be dicts); the session defaults must lie within the ceilings."""
        fields = dict(values)
        for name, parse in _JSON_FIELDS.items():
            if fields.get(name) is not None:
                fields[name] = parse(fields[name])
        unknown = set(fields) - set(cls.__struct_fields__)
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidConfig(f"unknown setting {name!r}", field=name)
        if isinstance(fields.get("data_dir"), os.PathLike):
            fields["data_dir"] = os.fspath(fields["data_dir"])
        structs = {name: fields.pop(name) for name in _JSON_FIELDS if name in fields}
        structs = {name: value for name, value in structs.items() if value is not None}
        settings = convert_or_raise(fields, cls)
        check_store(settings.store, "store ")
        check_cluster(settings)
        if structs:
            settings = msgspec.structs.replace(settings, **structs)
        try:
            settings.session_ceilings.check(settings.session_defaults)
        except InvalidConfig as exc:
            raise InvalidConfig(
                f"session_defaults: {exc.message} (lower the default or raise "
                "JIDOKA_SESSION_CEILINGS)",
                field=f"session_defaults.{exc.field}",
            ) from None
        if not settings.mcp_allow_stdio:
            try:
                check_mcp_servers(settings.session_defaults.mcp_servers, allow_stdio=False)
            except InvalidConfig as exc:
                raise InvalidConfig(
                    f"session_defaults: {exc.message}", field=f"session_defaults.{exc.field}"
                ) from None
        return settings

    def session_config(self, config: object) -> SessionConfig:
        """A new session's config: ``config``'s fields over :attr:`session_defaults`, each
        limit within :attr:`session_ceilings` (:class:`~jidoka.InvalidConfig` names the first
        that is not)."""
        config = SessionConfig.from_dict(config, base=self.session_defaults)
        check_mcp_servers(config.mcp_servers, allow_stdio=self.mcp_allow_stdio)
        return self.session_ceilings.check(config)


#: Settings given as one JSON object (in ``JIDOKA_<NAME>``), and how each is validated.
_JSON_FIELDS: Final[dict[str, Callable[[Any], Any]]] = {
    "session_defaults": SessionConfig.from_dict,
    "session_ceilings": SessionCeilings.from_dict,
}


def _field_types(cls: type[Settings]) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def llm_defaults(settings: Settings) -> dict[str, Any]:
    """The ``JIDOKA_LLM_*`` settings as ``llm_config`` keys (unset ones left out).

    ``JIDOKA_LLM_API_KEY_ENV`` set but empty means "no key" (a local server), as
    ``"api_key_env": null`` does in a session's ``llm_config``.
    """
    if settings.llm_api_key_env == "":
        return {**llm_defaults(msgspec.structs.replace(settings, llm_api_key_env=None)),
                "api_key_env": None}  # fmt: skip
    return {
        key: value
        for key, value in (
            ("provider", settings.llm_provider),
            ("model", settings.llm_model),
            ("base_url", settings.llm_base_url),
            ("api_key_env", settings.llm_api_key_env),
            ("context_window", settings.llm_context_window),
            ("max_tokens", settings.llm_max_tokens),
            ("temperature", settings.llm_temperature),
        )
        if value is not None
    }
