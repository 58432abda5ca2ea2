"""Runtime settings: from arguments, from ``JIDOKA_*`` environment variables, or both.

Precedence, highest first: keyword arguments to :class:`~jidoka.Runtime` (or
:meth:`Settings.from_env`'s ``overrides``), then environment variables, then the defaults below.
Every field can be set from the environment as ``JIDOKA_<FIELD NAME IN CAPITALS>``; the session
defaults as one JSON object in ``JIDOKA_SESSION_DEFAULTS`` (the fields of
:class:`~jidoka.SessionConfig`). A bad value raises :class:`~jidoka.InvalidConfig` naming the
field (and the variable it came from). The ceilings on what a session's config may ask for are
one JSON object in ``JIDOKA_SESSION_CEILINGS`` (the fields of
:class:`~jidoka.session.state.SessionCeilings`); the session defaults must lie within them.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final, Literal

import msgspec

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
from .errors import InvalidConfig
from .session.state import SessionCeilings, SessionConfig, convert_or_raise

__all__ = [
    "MAX_SYSTEM_PROMPT",
    "PROVIDERS",
    "STORES",
    "TOOL_CHOICES",
    "LLMConfig",
    "ScriptCall",
    "ScriptError",
    "ScriptTurn",
    "ScriptUsage",
    "Settings",
]

#: Store backends by name.
STORES: Final = ("memory", "sqlite")

_Positive = Annotated[int, msgspec.Meta(ge=1)]
_NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything a :class:`~jidoka.Runtime` is configured with."""

    #: Where durable stores keep their files (created if missing; one runtime owns it at a time).
    data_dir: str = ".jidoka"
    #: Session store backend: ``sqlite`` (durable, in ``data_dir``) or ``memory`` (fast, nothing
    #: survives the process).
    store: str = "sqlite"
    #: SQLite durability: ``full`` (an acknowledged call survives a power cut) or ``normal``
    #: (survives a crash of the process; a power cut may lose the last commits).
    durability: Literal["full", "normal"] = "full"
    #: A session's projection is snapshotted every this many events, so loading it reads one
    #: snapshot plus the tail of its log.
    snapshot_interval: _Positive = 500
    #: Largest the SQLite database may grow, in bytes (``None``: no bound but the disk's). A
    #: write that would pass it fails like a full disk: ``StoreError``, nothing half-applied.
    max_database_bytes: Annotated[int, msgspec.Meta(ge=65_536)] | None = None
    #: Live sessions at most; creating one more raises ``LimitExceeded``.
    max_sessions: _Positive = 100_000
    #: Terminated sessions remembered (as small tombstones); the oldest is forgotten first.
    max_tombstones: _Positive = 10_000
    #: Events a subscription may have queued before the slow-consumer policy applies.
    subscriber_queue_size: _Positive = 1_000
    #: Stored bytes a subscription that is catching up (or replaying) reads from the store at
    #: once, besides ``subscriber_queue_size`` events; a larger event is read alone.
    subscriber_page_bytes: _Positive = 262_144
    #: Agent turns waiting to run, across all sessions; one more raises
    #: ``LimitExceeded('max_queued_turns_total')`` (each session also has ``max_queued_turns``).
    max_queued_turns_total: _Positive = 1_000
    #: File cache budget in bytes, in total and per session.
    cache_max_bytes: _Positive = 64 * 1024 * 1024
    cache_session_max_bytes: _Positive = 8 * 1024 * 1024
    #: Seconds a worker gets to finish after cancellation before it is abandoned (and logged).
    shutdown_grace_seconds: _NonNegativeFloat = 5.0
    #: JSON size bounds of a session's metadata and llm_config, in bytes.
    max_metadata_bytes: _Positive = 16_384
    max_llm_config_bytes: _Positive = 16_384
    #: Events the memory store keeps per session (older ones are trimmed).
    memory_max_events_per_session: _Positive = 100_000
    #: Server-wide LLM defaults (``JIDOKA_LLM_*``); a session's ``llm_config`` overrides them
    #: key by key. The API key itself is never a setting: ``llm_api_key_env`` names the
    #: environment variable that holds it.
    llm_provider: str | None = None
    llm_model: str | None = None
    llm_base_url: str | None = None
    llm_api_key_env: str | None = None
    llm_context_window: _Positive | None = None
    llm_max_tokens: _Positive | None = None
    llm_temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    #: Defaults for new sessions; ``create_session(config=...)`` overrides field by field.
    session_defaults: SessionConfig = SessionConfig()
    #: The largest value a session's config may give each limit (``InvalidConfig`` past one).
    session_ceilings: SessionCeilings = SessionCeilings()

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
            if name == "store" and raw not in STORES:
                raise InvalidConfig(
                    f"{variable}={raw!r}: unknown store; available: {', '.join(STORES)}",
                    field=name,
                )
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
        if settings.store not in STORES:
            raise InvalidConfig(
                f"unknown store {settings.store!r}; available: {', '.join(STORES)}", field="store"
            )
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
        return settings

    def session_config(self, config: object) -> SessionConfig:
        """A new session's config: ``config``'s fields over :attr:`session_defaults`, each
        limit within :attr:`session_ceilings` (:class:`~jidoka.InvalidConfig` names the first
        that is not)."""
        config = SessionConfig.from_dict(config, base=self.session_defaults)
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
