"""The Redis server the Redis bus's tests run against, and a key prefix per test.

``JIDOKA_TEST_REDIS_URL`` names the server (default :data:`DEFAULT_URL`). Whether it answers is
asked once per test process (a PING with a short timeout): if it does not, the tests that need it
are skipped with the reason, except on CI (``CI=true``), where a missing server is a failure,
not a silent skip of the whole backend.

Every test gets its own prefix (``jt:<hex>``) for its channels and keys, so tests running in
parallel on one server never hear each other; keys under it are deleted afterwards (the bus
keeps none today, but whatever a test leaves behind goes).
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
import redis.asyncio as aioredis

from jidoka.bus.redis import redacted_url

__all__ = [
    "DEFAULT_URL",
    "URL_VARIABLE",
    "address_of",
    "key_prefix",
    "redis_url",
    "require_redis",
    "unreachable_reason",
    "url_via",
]

URL_VARIABLE = "JIDOKA_TEST_REDIS_URL"
DEFAULT_URL = "redis://127.0.0.1:6379/0"
#: How long the probe waits for the server (a bound).
CONNECT_TIMEOUT = 3

#: Read once, at import: every test's fixtures then remove the ``JIDOKA_*`` variables.
_URL: str = os.environ.get(URL_VARIABLE) or DEFAULT_URL


def redis_url() -> str:
    return _URL


def address_of(url: str) -> tuple[str, int]:
    """The host and port a ``redis://`` URL names (what a proxy forwards to)."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


def url_via(url: str, port: int) -> str:
    """``url`` pointed at ``127.0.0.1:port`` (a proxy) instead of its own server."""
    parts = urlsplit(url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@functools.cache
def unreachable_reason(url: str) -> str | None:
    """``None`` if the server answers, else why not (asked once per process and URL)."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT) as client:
            client.ping()
    except (redis.RedisError, OSError) as exc:
        return f"Redis not reachable at {redacted_url(url)}: {str(exc).strip()}"
    return None


def require_redis() -> str:
    """The URL of a server that answers; else skip the test (fail it on CI)."""
    url = redis_url()
    reason = unreachable_reason(url)
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: the Redis tests must run)", pytrace=False)
        pytest.skip(reason)
    return url


@asynccontextmanager
async def key_prefix(url: str) -> AsyncIterator[str]:
    """A prefix no other test uses, for the block; keys under it are deleted afterwards."""
    prefix = f"jt:{secrets.token_hex(6)}"
    try:
        yield prefix
    finally:
        client = aioredis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT)
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()
