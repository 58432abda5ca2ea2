"""What the Redis bus needs around redis-py: the client itself (or a clear word that the ``redis``
extra is missing), the error it raises when Redis is out of reach, and URLs without credentials
for every message and log line."""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit, urlunsplit

from ..errors import JidokaError

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
except ImportError as _missing:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "jidoka.bus.redis needs redis-py, which is not installed: pip install 'jidoka-core[redis]'"
    ) from _missing

__all__ = [
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "CLOSE_FLUSH",
    "COMMAND_TIMEOUT",
    "CONNECT_TIMEOUT",
    "LINK_ERRORS",
    "SEND_BATCH",
    "BusUnavailable",
    "NoBackoff",
    "Retry",
    "aioredis",
    "describe",
    "redacted_url",
]

#: Reconnect backoff: the first wait, doubled after each failure up to the cap.
BACKOFF_FIRST: Final = 0.1
BACKOFF_MAX: Final = 2.0
#: Events sent to Redis per round trip (one pipeline) at most.
SEND_BATCH: Final = 256
#: How long connecting and a command may take before the link counts as down.
CONNECT_TIMEOUT: Final = 3.0
COMMAND_TIMEOUT: Final = 5.0
#: How long ``aclose`` waits for the events still queued to be sent.
CLOSE_FLUSH: Final = 1.0
#: The errors that mean "the link to Redis is down" (the client raises its own or the OS's).
LINK_ERRORS: Final = (RedisError, OSError, TimeoutError)


class BusUnavailable(JidokaError):
    """The bus could not reach Redis when it started (the message names the URL, without
    credentials)."""


def redacted_url(url: str) -> str:
    """``url`` without its password or query (``redis://user:***@host:6379/0``)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            port = f":{parts.port}" if parts.port else ""
            netloc = f"{parts.username or ''}:***@{parts.hostname or ''}{port}"
        return urlunsplit(parts._replace(netloc=netloc, query=""))
    except ValueError:
        return "<unparseable URL>"


def describe(exc: BaseException) -> str:
    """The error's class and message (redis-py's never include the password)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
