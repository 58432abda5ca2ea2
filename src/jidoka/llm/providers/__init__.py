"""Model providers, chosen by name from a session's ``llm_config``.

``llm_config`` keys (all optional in a session's config; the runtime's ``JIDOKA_LLM_*`` defaults
fill the gaps, key by key):

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
``timeout``         > 0 seconds per HTTP read/connect (default 60)
``max_retries``     >= 0 (default 3), the SDK's retries before the answer starts
``system_prompt``   the instructions at the head of the system message (replaces the default)
``tool_choice``     ``auto`` (default: not sent), ``required``, ``none``, or the name of a tool:
                    sent with the first model call of each turn, ``auto`` after (for servers
                    that act on tools only when one is named, e.g. llama-cpp-python)
``script``          the turns of the ``scripted`` provider (see :mod:`.scripted`)
==================  =========================================================================

Keys are never stored: an ``api_key`` in ``llm_config`` is refused. A provider module is imported
only when a session uses it, so the ``openai`` SDK stays an optional extra.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Final

from ...errors import InvalidConfig
from ..types import Provider
from .scripted import ScriptedProvider, check_turn

__all__ = [
    "DEFAULT_CONTEXT_WINDOW",
    "PROVIDERS",
    "ClientCache",
    "make_provider",
    "validate_llm_config",
]

#: The provider names ``llm_config.provider`` accepts.
PROVIDERS: Final = ("openai", "scripted")
DEFAULT_CONTEXT_WINDOW: Final = 8192

_KEYS: Final = (
    "provider",
    "model",
    "base_url",
    "api_key_env",
    "temperature",
    "max_tokens",
    "context_window",
    "timeout",
    "max_retries",
    "system_prompt",
    "tool_choice",
    "script",
)
#: ``tool_choice`` values that are not a tool's name.
TOOL_CHOICES: Final = ("auto", "required", "none")
#: The longest ``system_prompt`` accepted (characters); ``max_llm_config_bytes`` bounds it too.
MAX_SYSTEM_PROMPT: Final = 32_768
_ENV_NAME_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"
)


class ClientCache:
    """SDK clients shared by the sessions that reach the same endpoint the same way.

    An SDK client holds an SSL context and a connection pool: about 50 ms of CPU to make and
    most of a megabyte to keep. One per chatting session would make a thousand sessions cost a
    gigabyte; sharing one per (endpoint, key, timeout, retries) also reuses connections. The
    cache owns the clients: providers that use it never close them, :meth:`aclose` does.
    """

    def __init__(self) -> None:
        self._clients: dict[Hashable, asyncio.Future[Any]] = {}

    async def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The client for ``key``, made once by ``build`` in a worker thread (it blocks)."""
        future = self._clients.get(key)
        if future is None:
            future = asyncio.ensure_future(asyncio.to_thread(build))
            self._clients[key] = future
        try:
            return await asyncio.shield(future)
        except Exception:
            if self._clients.get(key) is future:
                del self._clients[key]  # the next caller tries again
            raise

    def __len__(self) -> int:
        return len(self._clients)

    async def aclose(self) -> None:
        futures, self._clients = list(self._clients.values()), {}
        for future in futures:
            with contextlib.suppress(Exception):
                client = await future
                await client.close()


def make_provider(
    llm_config: dict[str, Any],
    *,
    environ: Mapping[str, str],
    defaults: Mapping[str, Any] | None = None,
    session_id: str | None = None,
    clients: ClientCache | None = None,
) -> Provider:
    """Build the provider ``llm_config`` names (over ``defaults``, key by key).

    The API key is read from ``environ`` now, so a missing variable fails here, naming it.
    Raises :class:`~jidoka.errors.InvalidConfig` for a bad or incomplete config.
    """
    config = {**(defaults or {}), **llm_config}
    try:
        validate_llm_config(config)
    except InvalidConfig as exc:
        if session_id is None:
            raise
        raise InvalidConfig(exc.message, field=exc.field, session_id=session_id) from None
    provider = config.get("provider")
    if provider == "scripted":
        return ScriptedProvider(config.get("script") or (), session_id=session_id)
    if provider == "openai":
        try:
            from .openai import OpenAIProvider
        except ImportError as exc:
            raise InvalidConfig(
                f"the openai provider needs the openai SDK ({exc}); "
                "install it with: pip install 'jidoka-core[llm]'",
                field="llm_config.provider",
                session_id=session_id,
            ) from exc
        return OpenAIProvider.from_config(
            config, environ=environ, session_id=session_id, clients=clients
        )
    raise InvalidConfig(
        f"no model provider configured: set llm_config.provider (or JIDOKA_LLM_PROVIDER) to "
        f"one of {', '.join(PROVIDERS)}",
        field="llm_config.provider",
        session_id=session_id,
    )


def validate_llm_config(llm_config: dict[str, Any]) -> None:
    """Check the shape of ``llm_config`` without building anything (nor reading any key).

    Every key is optional (the runtime's defaults may supply it); a present key must be known and
    of the right type. Raises :class:`~jidoka.errors.InvalidConfig` naming the field, e.g.
    ``llm_config.temperature``. Messages never repeat string values, which could be secrets.
    """
    if not isinstance(llm_config, Mapping):
        raise InvalidConfig(
            f"llm_config must be an object, got {type(llm_config).__name__}",
            field="llm_config",
        )
    if "api_key" in llm_config:
        raise InvalidConfig(
            "llm_config.api_key is not accepted (keys are never stored): put the key in an "
            "environment variable and name it in api_key_env",
            field="llm_config.api_key",
        )
    for key in llm_config:
        if key not in _KEYS:
            name = key if isinstance(key, str) else repr(key)
            raise InvalidConfig(
                f"llm_config.{name} is not a known key; known keys: {', '.join(_KEYS)}",
                field=f"llm_config.{name}",
            )
    provider = llm_config.get("provider")
    if provider is not None and provider not in PROVIDERS:
        shown = repr(provider) if isinstance(provider, str) and len(provider) <= 40 else "value"
        raise InvalidConfig(
            f"llm_config.provider: unknown provider {shown}; available: {', '.join(PROVIDERS)}",
            field="llm_config.provider",
        )
    _check_string(llm_config, "model")
    base_url = _check_string(llm_config, "base_url")
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise _bad("base_url", "must be an http:// or https:// URL")
    # "" means "no key", as JIDOKA_LLM_API_KEY_ENV="" does for the runtime's default.
    variable = llm_config.get("api_key_env")
    if variable != "":
        variable = _check_string(llm_config, "api_key_env")
    if variable and (variable[0].isdigit() or not set(variable) <= _ENV_NAME_CHARS):
        raise _bad(
            "api_key_env",
            "must be the NAME of an environment variable (letters, digits, underscores), "
            "not the key itself",
        )
    _check_number(llm_config, "temperature", minimum=0.0, maximum=2.0)
    _check_number(llm_config, "timeout", minimum=0.0, exclusive=True)
    _check_int(llm_config, "max_tokens", minimum=1)
    _check_int(llm_config, "context_window", minimum=1)
    _check_int(llm_config, "max_retries", minimum=0)
    system_prompt = _check_string(llm_config, "system_prompt")
    if system_prompt is not None and len(system_prompt) > MAX_SYSTEM_PROMPT:
        raise _bad("system_prompt", f"is longer than {MAX_SYSTEM_PROMPT} characters")
    tool_choice = _check_string(llm_config, "tool_choice")
    if (
        tool_choice is not None
        and tool_choice not in TOOL_CHOICES
        and (len(tool_choice) > 64 or not set(tool_choice) <= _ENV_NAME_CHARS | {"-"})
    ):
        raise _bad("tool_choice", f"must be one of {', '.join(TOOL_CHOICES)} or a tool's name")
    script = llm_config.get("script")
    if script is not None:
        if provider is not None and provider != "scripted":
            raise _bad("script", "is only used by the scripted provider")
        if not isinstance(script, list):
            raise _bad("script", "must be a list of turns")
        for index, turn in enumerate(script):
            check_turn(turn, f"llm_config.script[{index}]")


def _bad(key: str, message: str) -> InvalidConfig:
    return InvalidConfig(f"llm_config.{key} {message}", field=f"llm_config.{key}")


def _check_string(config: Mapping[str, Any], key: str) -> str | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _bad(key, "must be a non-empty string")
    return value


def _check_number(
    config: Mapping[str, Any],
    key: str,
    *,
    minimum: float,
    maximum: float | None = None,
    exclusive: bool = False,
) -> None:
    value = config.get(key)
    if value is None:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and (value > minimum if exclusive else value >= minimum)
    ok = ok and (maximum is None or value <= maximum)
    if not ok:
        bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
        if maximum is not None:
            bound = f"between {minimum:g} and {maximum:g}"
        shown = repr(value) if isinstance(value, int | float) else type(value).__name__
        raise _bad(key, f"must be a number {bound}, got {shown}")


def _check_int(config: Mapping[str, Any], key: str, *, minimum: int) -> None:
    value = config.get(key)
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        shown = repr(value) if isinstance(value, int | float) else type(value).__name__
        raise _bad(key, f"must be an integer >= {minimum}, got {shown}")
