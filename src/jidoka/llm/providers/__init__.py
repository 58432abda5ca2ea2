"""Model providers, chosen by name from a session's ``llm_config``.

The keys of ``llm_config`` and their rules are :class:`~jidoka.config.LLMConfig`'s (all optional
in a session's config; the runtime's ``JIDOKA_LLM_*`` defaults fill the gaps, key by key).
A provider module is imported only when a session uses it, so the ``openai`` SDK stays an
optional extra.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Final

from ..._llm_config import PROVIDERS, LLMConfig
from ...errors import InvalidConfig
from ..types import Provider
from .scripted import ScriptedProvider

__all__ = [
    "DEFAULT_CONTEXT_WINDOW",
    "PROVIDERS",
    "ClientCache",
    "make_provider",
]

DEFAULT_CONTEXT_WINDOW: Final = 8192


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
        checked = LLMConfig.from_dict(config)
    except InvalidConfig as exc:
        if session_id is None:
            raise
        raise InvalidConfig(exc.message, field=exc.field, session_id=session_id) from None
    if checked.provider == "scripted":
        return ScriptedProvider(config.get("script") or (), session_id=session_id)
    if checked.provider == "openai":
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
