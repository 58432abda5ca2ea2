"""Which backends a :class:`~jidoka.config.Settings` names (store, bus), how they are
checked, and how they are shown in banners and logs without their credentials.

Kept apart from :mod:`jidoka.config` so that the rules about backends (a node of a cluster
needs PostgreSQL and Redis) read in one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .errors import InvalidConfig

if TYPE_CHECKING:
    from .config import Settings

__all__ = [
    "POSTGRES_PREFIXES",
    "REDIS_PREFIXES",
    "STORES",
    "check_cluster",
    "check_store",
    "describe_bus",
    "describe_store",
]

#: Store backends by name.
STORES: Final = ("memory", "sqlite")
#: How a ``store`` setting names a PostgreSQL database (a libpq URL).
POSTGRES_PREFIXES: Final = ("postgresql://", "postgres://")


def describe_store(settings: Settings) -> str:
    """The store, for banners and logs: a PostgreSQL URL shows its host, database and schema,
    never its user or password."""
    store = settings.store
    if not store.startswith(POSTGRES_PREFIXES):
        return store
    where = store.split("://", 1)[1].rsplit("@", 1)[-1].split("?", 1)[0]
    return f"postgres, schema {settings.postgres_schema} at {where or 'the local socket'}"


#: How a ``bus`` setting names a Redis server.
REDIS_PREFIXES: Final = ("redis://", "rediss://", "unix://")


def describe_bus(settings: Settings) -> str:
    """The bus, for banners and logs: a Redis URL shows its host only (never a password)."""
    bus = settings.bus
    if not bus.startswith(REDIS_PREFIXES):
        return bus
    where = bus.split("://", 1)[1].rsplit("@", 1)[-1].split("?", 1)[0]
    return f"redis at {where}, prefix {settings.bus_prefix}"


def check_cluster(settings: Settings) -> None:
    """A bus is ``memory`` or a Redis URL; a node of a cluster needs Postgres and Redis."""
    bus = settings.bus
    if bus != "memory" and not bus.startswith(REDIS_PREFIXES):
        raise InvalidConfig(
            "unknown bus; available: memory, or a Redis URL (redis://host:6379/0)", field="bus"
        )
    if settings.advertise_url is not None and not settings.advertise_url.startswith(
        ("http://", "https://")
    ):
        raise InvalidConfig(
            "advertise_url must be an http:// or https:// URL", field="advertise_url"
        )
    if settings.node_id is None:
        return
    if not settings.store.startswith(POSTGRES_PREFIXES):
        raise InvalidConfig(
            "a node of a cluster (node_id set) needs a PostgreSQL store (--store "
            "postgresql://…): it holds the leases, owners and fences",
            field="store",
        )
    if not bus.startswith(REDIS_PREFIXES):
        raise InvalidConfig(
            "a node of a cluster (node_id set) needs a Redis bus (--bus redis://…): event "
            "streams must reach every node",
            field="bus",
        )


def check_store(value: str, where: str) -> None:
    """Refuse a ``store`` that is neither a known backend nor a PostgreSQL URL (the URL itself
    is never echoed: it may hold a password)."""
    if value in STORES or value.startswith(POSTGRES_PREFIXES):
        return
    shown = repr(value) if "://" not in value else f"{value.split('://', 1)[0]}://…"
    raise InvalidConfig(
        f"{where}{shown}: unknown store; available: {', '.join(STORES)}, or a PostgreSQL URL "
        "(postgresql://user@host/db)",
        field="store",
    )
