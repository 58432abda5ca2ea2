"""Cluster fixtures: three real ``jidoka serve`` nodes on the machine's Postgres and Redis, each
behind proxies the test controls (tests/support/cluster.py), on a schema and a Redis prefix of the
test's own, removed afterwards. Skipped without Postgres, Redis or a ``jidoka serve`` with cluster
flags; failed instead under ``CI=true``.

A failing test's report carries the tail of every node's stderr (the hook below is the one
tests/e2e/conftest.py defines for its servers, which cluster nodes are).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import pytest_runtest_makereport
from tests.support.cluster import Cluster, require_cluster

__all__ = ["cluster", "pytest_runtest_makereport"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Three started, ready nodes ``n1``, ``n2``, ``n3`` (lease TTL 2 s)."""
    dsn, bus = require_cluster()
    with Cluster(tmp_path, size=3, dsn=dsn, bus_url=bus) as started:
        yield started
