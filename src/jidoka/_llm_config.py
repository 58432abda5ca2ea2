"""A session's ``llm_config`` as a Struct (:class:`LLMConfig`), with the turns of the scripted
provider's ``script`` (:class:`ScriptTurn`). Import them from :mod:`jidoka.config`.

They live apart from :class:`~jidoka.config.Settings` so that the model layer can use them
without importing the runtime's settings, and this module imports nothing of Jidoka's but its
errors: no package depends back on it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, UnsetType

from .errors import InvalidConfig

__all__ = [
    "MAX_SYSTEM_PROMPT",
    "PROVIDERS",
    "TOOL_CHOICES",
    "LLMConfig",
    "ScriptCall",
    "ScriptError",
    "ScriptTurn",
    "ScriptUsage",
]

#: The provider names ``llm_config.provider`` accepts.
PROVIDERS: Final = ("openai", "scripted")
#: ``tool_choice`` values that are not a tool's name.
TOOL_CHOICES: Final = ("auto", "required", "none")
#: The longest ``system_prompt`` accepted (characters); ``max_llm_config_bytes`` bounds it too.
MAX_SYSTEM_PROMPT: Final = 32_768

_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
_Count = Annotated[int, msgspec.Meta(ge=0)]


class ScriptCall(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A tool call in a scripted turn: ``arguments`` an object (sent as its JSON) or a string
    passed as it is (how a test feeds the tool layer invalid JSON)."""

    name: str
    id: str | None = None
    arguments: str | dict[str, Any] | None = None


class ScriptUsage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The usage a scripted turn reports (what is left out is estimated)."""

    prompt_tokens: _Count | UnsetType = UNSET
    completion_tokens: _Count | UnsetType = UNSET
    total_tokens: _Count | UnsetType = UNSET


class ScriptError(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The failure a scripted turn raises after its chunks, as an ``LLMError``."""

    message: str | None = None
    status: int | None = None
    retryable: bool | None = None


class ScriptTurn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One model call of the ``scripted`` provider (:mod:`jidoka.llm.providers.scripted`
    says what each key does); every key is optional."""

    chunks: list[str] | None = None
    text: str | None = None
    tool_calls: list[ScriptCall] | None = None
    usage: ScriptUsage | None = None
    finish_reason: str | None = None
    error: ScriptError | None = None
    delay: Annotated[float, msgspec.Meta(ge=0)] | None = None
    hang: bool | None = None

    @classmethod
    def check(cls, turn: object, field: str, *, session_id: str | None = None) -> None:
        """Raise :class:`~jidoka.InvalidConfig` naming the key (``field`` and the path under
        it, e.g. ``llm_config.script[1].chunks``) unless ``turn`` is a well-formed turn."""
        try:
            msgspec.convert(turn, cls, strict=True)
        except msgspec.ValidationError as exc:
            what, path = _split_path(str(exc))
            where = field + ("" if not path else path if path.startswith("[") else f".{path}")
            raise InvalidConfig(f"{where}: {what}", field=where, session_id=session_id) from None


def _split_path(text: str) -> tuple[str, str]:
    """A msgspec validation message as (what is wrong, the path under ``$``)."""
    found = _AT.search(text)
    if found is None:  # pragma: no cover - msgspec always says where
        return text, ""
    return text[: found.start()], found.group(1)


_AT: Final = re.compile(r" - at `\$\.?([^`]*)`$")


class LLMConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A session's ``llm_config``: which model provider its agent uses, and how.

    Every key is optional in a session's config: the runtime's ``JIDOKA_LLM_*`` defaults fill
    the gaps, key by key. ``null`` is a value (it overrides a default with "none"); a key left
    out is :data:`msgspec.UNSET`.

    ==================  =========================================================================
    ``provider``        ``"openai"`` (any OpenAI-compatible endpoint) or ``"scripted"`` (offline)
    ``model``           the model name sent to the endpoint
    ``base_url``        the endpoint, e.g. ``http://127.0.0.1:8000/v1`` (default: OpenAI's)
    ``api_key_env``     the *name* of the environment variable holding the key (default
                        ``OPENAI_API_KEY``); ``null`` or ``""`` for a local server that needs no key
    ``temperature``     0 to 2
    ``max_tokens``      > 0, the answer's length bound
    ``context_window``  > 0 tokens (default 8192): no request of a turn is larger than
                        ``context_window - max_tokens`` (counted with the runtime's token counter)
    ``auto_compact_at`` a share of ``context_window`` (0 < x <= 1, e.g. 0.8; default off): a
                        turn whose prompt would be larger first compacts the conversation
                        (the session's model summarises all but the newest 4 messages, when
                        they are worth it: see :func:`jidoka.llm.compaction.auto_compact`)
    ``timeout``         > 0 seconds per HTTP read/connect (default 60)
    ``max_retries``     >= 0 (default 3), the SDK's retries before the answer starts
    ``system_prompt``   the instructions at the head of the system message (replaces the default)
    ``tool_choice``     ``auto`` (default: not sent), ``required``, ``none``, or the name of a tool:
                        sent with the first model call of each turn, ``auto`` after (for servers
                        that act on tools only when one is named, e.g. llama-cpp-python)
    ``script``          the turns of the ``scripted`` provider (see
                        :mod:`jidoka.llm.providers.scripted`)
    ==================  =========================================================================

    Keys are never stored: an ``api_key`` is refused, and no message repeats a string value
    (it could be one).
    """

    provider: Literal["openai", "scripted"] | UnsetType | None = UNSET
    model: _NonEmpty | UnsetType | None = UNSET
    base_url: Annotated[str, msgspec.Meta(pattern="^https?://")] | UnsetType | None = UNSET
    #: "" means "no key", as ``JIDOKA_LLM_API_KEY_ENV=""`` does for the runtime's default.
    api_key_env: (
        Annotated[str, msgspec.Meta(pattern="^([A-Za-z_][A-Za-z0-9_]*)?$")] | UnsetType | None
    ) = UNSET
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | UnsetType | None = UNSET
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | UnsetType | None = UNSET
    context_window: Annotated[int, msgspec.Meta(ge=1)] | UnsetType | None = UNSET
    auto_compact_at: Annotated[float, msgspec.Meta(gt=0, le=1)] | UnsetType | None = UNSET
    timeout: Annotated[float, msgspec.Meta(gt=0)] | UnsetType | None = UNSET
    max_retries: Annotated[int, msgspec.Meta(ge=0)] | UnsetType | None = UNSET
    system_prompt: (
        Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SYSTEM_PROMPT)] | UnsetType | None
    ) = UNSET
    #: A mode of :data:`TOOL_CHOICES` or a tool's name (the modes fit the pattern too).
    tool_choice: (
        Annotated[str, msgspec.Meta(pattern="^[A-Za-z0-9_-]{1,64}$")] | UnsetType | None
    ) = UNSET
    script: list[ScriptTurn] | UnsetType | None = UNSET

    @classmethod
    def from_dict(cls, value: object) -> LLMConfig:
        """Validate a session's ``llm_config`` (an :class:`LLMConfig` is returned as is).

        Checks the shape only: nothing is built and no key variable is read. Raises
        :class:`~jidoka.InvalidConfig` naming the field, e.g. ``llm_config.temperature``.
        """
        if isinstance(value, LLMConfig):
            return value
        if not isinstance(value, Mapping):
            raise InvalidConfig(
                f"llm_config must be an object, got {type(value).__name__}", field="llm_config"
            )
        if "api_key" in value:
            raise InvalidConfig(
                "llm_config.api_key is not accepted (keys are never stored): put the key in an "
                "environment variable and name it in api_key_env",
                field="llm_config.api_key",
            )
        for key in value:
            if key not in cls.__struct_fields__:
                name = key if isinstance(key, str) else repr(key)
                raise InvalidConfig(
                    f"llm_config.{name} is not a known key; known keys: "
                    f"{', '.join(cls.__struct_fields__)}",
                    field=f"llm_config.{name}",
                )
        try:
            config = msgspec.convert(value, cls, strict=True)
        except msgspec.ValidationError as exc:
            what, path = _split_path(str(exc))
            if path.startswith("script["):  # inside a turn: msgspec's words, with the path
                where = f"llm_config.{path}"
                raise InvalidConfig(f"{where}: {what}", field=where) from None
            key = path.partition(".")[0]
            raise _bad_llm_key(key, value.get(key)) from None
        if config.script not in (UNSET, None) and config.provider not in (UNSET, None, "scripted"):
            raise InvalidConfig(
                "llm_config.script is only used by the scripted provider",
                field="llm_config.script",
            )
        return config

    def to_dict(self) -> dict[str, Any]:
        """The keys that were given (a ``null`` one too), in field order."""
        return {
            name: value
            for name in self.__struct_fields__
            if (value := getattr(self, name)) is not UNSET
        }


_NUMBERS: Final = frozenset(
    {"temperature", "max_tokens", "context_window", "auto_compact_at", "timeout", "max_retries"}
)
#: What a valid value of each key is, for the messages.
_LLM_RULES: Final = {
    "model": "must be a non-empty string",
    "base_url": "must be an http:// or https:// URL",
    "api_key_env": (
        "must be the NAME of an environment variable (letters, digits, underscores), "
        "not the key itself"
    ),
    "temperature": "must be a number between 0 and 2",
    "max_tokens": "must be an integer >= 1",
    "context_window": "must be an integer >= 1",
    "auto_compact_at": "must be a number > 0 and <= 1 (a share of context_window)",
    "timeout": "must be a number > 0",
    "max_retries": "must be an integer >= 0",
    "system_prompt": f"must be a non-empty string of at most {MAX_SYSTEM_PROMPT} characters",
    "tool_choice": f"must be one of {', '.join(TOOL_CHOICES)} or a tool's name",
    "script": "must be a list of turns",
}


def _bad_llm_key(key: str, value: object) -> InvalidConfig:
    """The error for a bad ``llm_config`` value; it shows the value only if it is a number."""
    if key == "provider":
        shown = repr(value) if isinstance(value, str) and len(value) <= 40 else "value"
        return InvalidConfig(
            f"llm_config.provider: unknown provider {shown}; available: {', '.join(PROVIDERS)}",
            field="llm_config.provider",
        )
    if key not in _LLM_RULES:  # pragma: no cover - every field has a rule
        return InvalidConfig(f"llm_config.{key} is not valid", field=f"llm_config.{key}")
    got = ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        got = f", got {value!r}"
    elif not isinstance(value, str) or key in _NUMBERS:
        got = f", got {type(value).__name__}"
    return InvalidConfig(f"llm_config.{key} {_LLM_RULES[key]}{got}", field=f"llm_config.{key}")
