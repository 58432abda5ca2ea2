"""The provider of one session's agent: made on first use, kept while the session's
``llm_config`` stays the same, made again (and the old one closed) when it changes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import msgspec

from .providers import ClientCache, make_provider
from .types import Provider

__all__ = ["ProviderSlot"]


class ProviderSlot:
    """Holds the session's provider and the config it was made for."""

    __slots__ = ("_clients", "_environ", "_key", "_provider", "_session_id")

    def __init__(
        self, session_id: str, environ: Mapping[str, str], clients: ClientCache | None
    ) -> None:
        self._session_id = session_id
        self._environ = environ
        self._clients = clients
        self._provider: Provider | None = None
        self._key: bytes | None = None

    async def get(self, llm_config: dict[str, Any]) -> Provider:
        """The provider for this config, made once (and again only if the config changes).

        Made in a worker thread: the first one imports its SDK, which must not stall the loop.
        """
        key = msgspec.json.encode(llm_config)
        if self._provider is None or key != self._key:
            old = self._provider
            self._provider = await asyncio.to_thread(
                make_provider,
                llm_config,
                environ=self._environ,
                session_id=self._session_id,
                clients=self._clients,
            )
            self._key = key
            if old is not None:
                await old.aclose()
        return self._provider

    @property
    def current(self) -> Provider | None:
        """The provider made last (``None``: none yet, or closed)."""
        return self._provider

    def replace(self, provider: Provider) -> None:
        """Use ``provider`` for the config of the one made last (benchmarks swap in an
        instrumented one); the one it replaces is left to its owner."""
        if self._provider is None:
            raise RuntimeError("no provider made yet: nothing to replace")
        self._provider = provider

    async def aclose(self) -> None:
        """Close the provider (its failure to close is not the caller's)."""
        provider, self._provider = self._provider, None
        if provider is not None:
            with contextlib.suppress(Exception):
                await provider.aclose()
