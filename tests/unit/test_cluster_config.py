"""The cluster's settings: what a node of a cluster needs (a PostgreSQL store, a Redis bus), what
its fields accept, and that ``JIDOKA_*`` variables set them like every other setting."""

from __future__ import annotations

from typing import Any

import pytest

from jidoka.config import Settings, describe_bus
from jidoka.errors import InvalidConfig

PG = "postgresql://jidoka@db.internal/jidoka"
REDIS = "redis://cache.internal:6379/0"
NODE: dict[str, Any] = {"store": PG, "bus": REDIS, "node_id": "n1"}


def test_a_node_with_a_postgres_store_and_a_redis_bus_is_accepted() -> None:
    settings = Settings.build(
        {**NODE, "advertise_url": "http://10.0.0.5:8765", "lease_ttl": 2.0, "bus_prefix": "c1"}
    )
    assert (settings.node_id, settings.advertise_url, settings.lease_ttl) == (
        "n1", "http://10.0.0.5:8765", 2.0,
    )  # fmt: skip
    assert describe_bus(settings) == "redis at cache.internal:6379/0, prefix c1"


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_a_node_without_a_postgres_store_is_refused_naming_the_store(store: str) -> None:
    with pytest.raises(InvalidConfig, match="needs a PostgreSQL store") as info:
        Settings.build({**NODE, "store": store})
    assert info.value.field == "store"


def test_a_node_without_a_redis_bus_is_refused_naming_the_bus() -> None:
    with pytest.raises(InvalidConfig, match="needs a Redis bus") as info:
        Settings.build({**NODE, "bus": "memory"})
    assert info.value.field == "bus"


@pytest.mark.parametrize("bus", ["kafka://broker:9092", "redis", "Memory", "http://cache:6379"])
def test_an_unknown_bus_is_refused(bus: str) -> None:
    with pytest.raises(InvalidConfig, match="unknown bus") as info:
        Settings.build({"bus": bus})
    assert info.value.field == "bus"


def test_a_redis_bus_without_a_node_is_allowed() -> None:
    """One server may use Redis for its streams without being a node of a cluster."""
    assert Settings.build({"bus": "rediss://cache:6380/1"}).node_id is None


@pytest.mark.parametrize("url", ["10.0.0.5:8765", "ftp://10.0.0.5", "//10.0.0.5", ""])
def test_the_advertised_url_must_be_http(url: str) -> None:
    with pytest.raises(InvalidConfig, match="http") as info:
        Settings.build({**NODE, "advertise_url": url})
    assert info.value.field == "advertise_url"


@pytest.mark.parametrize("node_id", ["", "-n1", "n 1", "n1/2", "x" * 64, "nœud"])
def test_a_node_id_that_cannot_travel_in_headers_is_refused(node_id: str) -> None:
    with pytest.raises(InvalidConfig) as info:
        Settings.build({**NODE, "node_id": node_id})
    assert info.value.field == "node_id"


@pytest.mark.parametrize("ttl", [0, 0.4, -1, 601])
def test_the_lease_ttl_is_bounded(ttl: float) -> None:
    with pytest.raises(InvalidConfig) as info:
        Settings.build({**NODE, "lease_ttl": ttl})
    assert info.value.field == "lease_ttl"


def test_the_cluster_settings_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "JIDOKA_STORE": PG,
            "JIDOKA_BUS": REDIS,
            "JIDOKA_BUS_PREFIX": "cluster-7",
            "JIDOKA_NODE_ID": "node-2.eu_west",
            "JIDOKA_ADVERTISE_URL": "https://n2.internal:8443",
            "JIDOKA_LEASE_TTL": "2.5",
        }
    )
    assert (settings.store, settings.bus, settings.bus_prefix) == (PG, REDIS, "cluster-7")
    assert (settings.node_id, settings.advertise_url, settings.lease_ttl) == (
        "node-2.eu_west", "https://n2.internal:8443", 2.5,
    )  # fmt: skip


def test_the_environment_is_checked_as_a_whole() -> None:
    """A node id from the environment with the default (memory) bus is refused like one given
    as an argument; an argument can complete it."""
    env = {"JIDOKA_STORE": PG, "JIDOKA_NODE_ID": "n1"}
    with pytest.raises(InvalidConfig, match="needs a Redis bus"):
        Settings.from_env(env)
    assert Settings.from_env(env, bus=REDIS).node_id == "n1"


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("JIDOKA_LEASE_TTL", "soon", "lease_ttl"),
        ("JIDOKA_BUS_PREFIX", "has space", "bus_prefix"),
        ("JIDOKA_NODE_ID", "n/1", "node_id"),
    ],
)
def test_a_bad_variable_is_refused_naming_its_field(variable: str, value: str, field: str) -> None:
    with pytest.raises(InvalidConfig) as info:
        Settings.from_env({"JIDOKA_STORE": PG, "JIDOKA_BUS": REDIS, variable: value})
    assert info.value.field == field
    assert variable in str(info.value)
